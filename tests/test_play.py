"""The pygame game, driven headless through SDL's dummy video driver with scripted input events."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
import pygame  # noqa: E402

from worldsim.engine.env import VoxelEnv  # noqa: E402
from worldsim.play.controls import InputState  # noqa: E402
from worldsim.play.game import Game, PlayConfig, facing_name  # noqa: E402
from worldsim.play.worker import StepResult  # noqa: E402

from cli import run_world  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def key(kind, k):
    return pygame.event.Event(kind, key=k, mod=0, unicode="", scancode=0)


@pytest.fixture
def game():
    env = VoxelEnv(width=32, height=24, view_distance=16)
    game = Game(env, PlayConfig(scale=2), seed=0)
    game.mouse.set(True)
    yield game
    pygame.display.quit()


def test_input_state_turns_events_into_actions():
    state = InputState(PlayConfig(mouse_sensitivity=0.5, arrow_degrees=4.0))
    state.handle(key(pygame.KEYDOWN, pygame.K_w))
    state.handle(key(pygame.KEYDOWN, pygame.K_LCTRL))
    state.handle(key(pygame.KEYDOWN, pygame.K_3))
    state.handle(key(pygame.KEYDOWN, pygame.K_UP))
    state.handle(pygame.event.Event(pygame.MOUSEMOTION, rel=(10, -2), pos=(0, 0), buttons=(0, 0, 0)))
    state.handle(pygame.event.Event(pygame.MOUSEMOTION, rel=(4, 0), pos=(0, 0), buttons=(0, 0, 0)))
    state.handle(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(0, 0)))
    action = state.action(selected_slot=0)
    assert action["forward"] == action["sprint"] == action["hotbar.3"] == action["attack"] == 1
    assert action["back"] == action["use"] == 0
    np.testing.assert_allclose(action["camera"], [-1.0 - 4.0, 7.0])  # pitch: mouse up and arrow up; yaw: right
    second = state.action(selected_slot=2)  # presses and motion last one tick, held keys stay
    assert second["forward"] == 1 and second["hotbar.3"] == 0
    np.testing.assert_allclose(second["camera"], [-4.0, 0.0])
    state.handle(key(pygame.KEYUP, pygame.K_w))
    state.handle(pygame.event.Event(pygame.MOUSEWHEEL, x=0, y=-1, flipped=False))
    third = state.action(selected_slot=8)
    assert third["forward"] == 0 and third["hotbar.1"] == 1  # wheel down from slot 9 wraps to slot 1


def test_game_walks_selects_and_quits(game):
    start = np.array(game.info["pos"])
    assert game.tick([key(pygame.KEYDOWN, pygame.K_w), key(pygame.KEYDOWN, pygame.K_4)])
    assert game.info["selected_slot"] == 3
    for _ in range(20):
        assert game.tick([])
    assert game.info["pos"][2] - start[2] > 2.0  # a second of walking along +z (yaw 0)
    assert game.tick([key(pygame.KEYUP, pygame.K_w), key(pygame.KEYDOWN, pygame.K_F3)])
    assert game.overlay and game.overlay_lines()[1].startswith("XYZ")
    assert game.window.get_size() == (64, 48)
    assert game.tick([key(pygame.KEYDOWN, pygame.K_ESCAPE)])  # frees the mouse
    assert not game.mouse.captured
    assert not game.tick([key(pygame.KEYDOWN, pygame.K_ESCAPE)])  # quits


def test_play_freezes_what_it_starts_with_out_of_the_collector_and_thaws_it_at_the_end(game):
    """A full garbage collection walks every object the collector tracks, and holds the interpreter meanwhile: with
    the model and its compiled graphs (over 500,000 objects) 0.5 s on the 2-core CPU, a stall mid-play. What exists
    when play starts lives as long as the game, so `start` freezes it and `close` lets it go again."""
    import gc
    gc.unfreeze()
    game.start()
    assert gc.get_freeze_count() > 1000  # the engine, pygame and torch's objects at least
    game.close()
    assert gc.get_freeze_count() == 0


def test_the_capturing_click_is_not_an_attack(game):
    game.mouse.set(False)
    game.tick([pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(5, 5))])
    assert game.mouse.captured and "attack" not in game.input.held


def test_window_shows_the_frame(game):
    game.tick([])
    shown = pygame.surfarray.array3d(game.window).swapaxes(0, 1)
    np.testing.assert_array_equal(shown[::2, ::2], game.obs)


def test_facing_names():
    assert [facing_name(y) for y in (0, 90, 180, 270, -90)] == ["south", "west", "north", "east", "east"]


def test_no_display_says_so_in_one_line_then_walks_headless_into_an_mp4(tmp_path):
    from worldsim.data.interchange import list_trajectories, read_trajectory
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    result = subprocess.run([sys.executable, "run_world.py", "world=engine", f"play.record_dir={tmp_path}"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0] and "10-second walk headless" in lines[0]
    [stem] = list_trajectories(tmp_path)
    assert f"wrote {stem}.mp4" in result.stdout and "frames/s" in result.stdout
    trajectory = read_trajectory(stem)
    assert len(trajectory) == 200 and trajectory.source == "engine"
    assert trajectory.infos[-1]["pos"] != trajectory.infos[0]["pos"]  # it walked


def test_bad_config_values_are_named(monkeypatch):
    """Each exits with one line naming the key and the value, no traceback (run_world's dispatch in this process:
    an exception other than its clean exit would fail the test)."""
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(name, raising=False)
    for args, said in ((["mode=nope"], "unknown mode 'nope'"),
                       (["mode=bench", "engine.width=0"], "engine.width must be a positive whole number"),
                       (["mode=rollout", "rollout.steps=two"], "rollout.steps must be a whole number, got 'two'"),
                       (["world.twin=maybe"], "world.twin must be true or false, got 'maybe'"),
                       (["world.device=gpu"], "world.device must be auto, cpu or cuda[:i], got 'gpu'")):
        assert (run_world(*args) or "").startswith(f"error: {said}"), args


def test_r_records_what_was_played(game, tmp_path):
    from worldsim.data.interchange import read_trajectory
    game.config.record_dir = str(tmp_path)
    game.tick([key(pygame.KEYDOWN, pygame.K_r), key(pygame.KEYDOWN, pygame.K_w)])
    assert game.recording is not None
    for _ in range(24):
        game.tick([])
    game.tick([key(pygame.KEYDOWN, pygame.K_2), key(pygame.KEYDOWN, pygame.K_r)])  # stops before this tick
    assert game.recording is None and len(game.saved) == 1
    trajectory = read_trajectory(game.saved[0])
    assert len(trajectory.frames) == 25 and trajectory.source == "human"
    assert all(a["forward"] == 1 for a in trajectory.actions) and trajectory.actions[0]["hotbar.2"] == 0
    assert trajectory.infos[-1]["tick"] == 24
    np.testing.assert_array_equal(trajectory.frames.shape[1:], game.obs.shape)


def test_closing_mid_recording_keeps_it(tmp_path):
    from worldsim.data.interchange import list_trajectories
    env = VoxelEnv(width=32, height=24, view_distance=16)
    game = Game(env, PlayConfig(scale=1, max_ticks=30, record_dir=str(tmp_path)), seed=1)
    pygame.event.post(key(pygame.KEYDOWN, pygame.K_r))
    game.run()  # ends at max_ticks with the recording still on
    assert [p.name for p in list_trajectories(tmp_path)] == [game.saved[0].stem]


# ---------------------------------------------------------------------------------------------- the world model
@pytest.fixture(scope="module")
def model_world(tmp_path_factory):
    from worldsim.envs.world_model import random_world
    from test_world_model_env import tiny_configs
    return str(random_world(tmp_path_factory.mktemp("world"), *tiny_configs()))


@pytest.fixture
def model_game(model_world, tmp_path):
    import torch
    from worldsim.envs.world_model import WorldModelEnv
    threads = torch.get_num_threads()
    env = WorldModelEnv(checkpoint=model_world, twin=True, engine=None)
    config = PlayConfig(scale=2, generation="inline", snapshot_every=5, rewind_seconds=1.0,
                        record_dir=str(tmp_path / "rec"), screenshot_dir=str(tmp_path / "shots"))
    game = Game(env, config, seed=0)
    game.mouse.set(True)
    yield game
    game.close()
    torch.set_num_threads(threads)


def motion(dx, dy):
    return pygame.event.Event(pygame.MOUSEMOTION, rel=(dx, dy), pos=(0, 0), buttons=(0, 0, 0))


def test_model_play_with_posted_events_moves_the_view_and_records(model_game):
    from worldsim.data.interchange import read_trajectory
    game = model_game
    start = game.obs.copy()
    for event in (key(pygame.KEYDOWN, pygame.K_r), key(pygame.KEYDOWN, pygame.K_w), motion(30, 0)):
        pygame.event.post(event)
    assert game.tick(pygame.event.get())
    assert game.info["yaw"] == pytest.approx(30 * game.config.mouse_sensitivity)  # the twin engine turned
    for _ in range(9):
        assert game.tick(pygame.event.get())
    assert not np.array_equal(game.obs, start) and game.info["tick"] == 10
    assert "4 steps  context 5" in game.hud_line() and "ms/frame" in game.hud_line()
    assert game.info["ms_to_frame"] < game.info["ms_per_frame"]  # the loop ran the commit after drawing
    pygame.event.post(key(pygame.KEYDOWN, pygame.K_r))
    game.tick(pygame.event.get())
    trajectory = read_trajectory(game.saved[0])
    assert trajectory.source == "model" and len(trajectory) == 10
    assert all(a["forward"] == 1 for a in trajectory.actions)
    assert trajectory.actions[0]["camera"][1] == pytest.approx(4.5) and trajectory.actions[1]["camera"][1] == 0


def test_rewind_restores_the_exact_earlier_frame_and_replays(model_game):
    game = model_game
    game.tick([key(pygame.KEYDOWN, pygame.K_w)])
    frames = {game.info["tick"]: game.obs.copy()}
    for _ in range(24):
        game.tick([])
        frames[game.info["tick"]] = game.obs.copy()
    game.tick([key(pygame.KEYDOWN, pygame.K_BACKSPACE)])  # at tick 25, back 20 frames to the snapshot at 5, then on
    assert game.info["tick"] == 6
    np.testing.assert_array_equal(game.obs, frames[6])
    for tick in range(7, 12):
        game.tick([])
        np.testing.assert_array_equal(game.obs, frames[tick])


def test_steps_twin_screenshot_and_new_world_keys(model_game):
    game = model_game
    game.tick([key(pygame.KEYDOWN, pygame.K_RIGHTBRACKET), key(pygame.KEYDOWN, pygame.K_RIGHTBRACKET)])
    assert game.env.steps == 6 and game.info["denoise_steps"] == 6
    game.tick([key(pygame.KEYDOWN, pygame.K_LEFTBRACKET)])
    assert game.env.steps == 5
    game.tick([key(pygame.KEYDOWN, pygame.K_F5)])
    assert game.window.get_size() == (128, 64) and "PSNR" in game.hud_line(game.env.twin_frame)
    shown = pygame.surfarray.array3d(game.window).swapaxes(0, 1)
    np.testing.assert_array_equal(shown[40::2, 64::2], game.env.twin_frame[20:])  # below the HUD text
    game.tick([key(pygame.KEYDOWN, pygame.K_F2)])
    assert game.screenshots[0].exists()
    seed = game.info["seed"]
    game.tick([key(pygame.KEYDOWN, pygame.K_n)])
    assert game.info["seed"] != seed and game.info["tick"] == 1


def test_frames_slower_than_the_pace_end_with_a_hint_naming_what_to_try(model_world):
    """`slow_play_hint` (printed when play ends): None while the model's frames keep the game's pace or too few were
    made to tell; else their median against the frame's budget, and what makes them faster on this CPU. The engine,
    which reports no model time, never gets one."""
    import torch
    from worldsim.envs.world_model import WorldModelEnv
    from worldsim.play.game import SLOW_MIN_FRAMES
    threads = torch.get_num_threads()
    env = WorldModelEnv(checkpoint=model_world, engine=None)
    for fps in (1, 1000):  # a frame's budget: 1,000 ms, which the tiny world keeps; 1 ms, which it cannot
        played = Game(env, PlayConfig(scale=1, generation="inline", fps=fps), seed=0)
        for _ in range(SLOW_MIN_FRAMES - 1):
            played.tick([])
        assert played.slow_play_hint() is None
        played.tick([])
        hint = played.slow_play_hint()
        if fps == 1:
            assert hint is None
        else:
            median = np.median(played.frame_ms)
            assert hint.startswith(f"the model's frames took {median:.0f} ms (median) against the 1 ms a frame of "
                                   "1000 frames/s")
            assert "world.compile=true" in hint and "[ takes a denoising step off" in hint
        played.close()
    torch.set_num_threads(threads)
    engine = Game(VoxelEnv(width=32, height=24, view_distance=16), PlayConfig(scale=1, fps=1000), seed=0)
    for _ in range(SLOW_MIN_FRAMES):
        engine.tick([])
    assert engine.slow_play_hint() is None
    engine.close()


def test_threaded_generation_keeps_the_loop_responsive_and_the_env_on_one_thread(model_world, tmp_path):
    """The worker makes the env and makes every call on it, so one thread computes (worker.py says why)."""
    import threading
    import time
    from worldsim.envs.world_model import WorldModelEnv
    callers, prepared = set(), []

    class Watched(WorldModelEnv):
        def __init__(self, *args, **kwargs):
            callers.add(threading.get_ident())
            super().__init__(*args, **kwargs)

        def __getattribute__(self, name):
            value = super().__getattribute__(name)
            if name == "twin_frame":  # a property that renders
                callers.add(threading.get_ident())
            if name in ("reset", "step", "snapshot", "restore", "set_steps", "prepare"):
                def watched(*args, **kwargs):
                    callers.add(threading.get_ident())
                    prepared.extend([name] if name == "prepare" else [])
                    return value(*args, **kwargs)
                return watched
            return value

    config = PlayConfig(scale=2, snapshot_every=5, rewind_seconds=1.0, record_dir=str(tmp_path / "rec"),
                        screenshot_dir=str(tmp_path / "shots"))
    game = Game(lambda: Watched(checkpoint=model_world, twin=True, engine=None), config, seed=0)
    try:
        assert game.worker is not None and game.source == "model"  # auto: the model's frames come from a worker
        game.start()
        start, loops = game.obs.copy(), 0
        game.tick([key(pygame.KEYDOWN, pygame.K_w)])
        deadline = time.perf_counter() + 30
        while game.ticks < 12 and time.perf_counter() < deadline:
            game.tick([])
            loops += 1
            time.sleep(0.005)
        assert game.ticks >= 12 and loops > game.ticks  # the loop read input between frames
        assert len(prepared) >= game.ticks - 1  # each frame's commit ran before the next input was read
        assert game.info["ms_to_frame"] < game.info["ms_per_frame"]  # and the step had less to do
        assert game.draws <= game.ticks + 1  # and redrew only for the frames and the key press
        assert not np.array_equal(game.obs, start)
        assert game.info["pos"][2] > 0.5  # walked (the twin's position)
        assert all(t == t for _, t in game.shown[-1:])  # the newest frame was drawn
        game.tick([key(pygame.KEYDOWN, pygame.K_BACKSPACE)])
        assert game.info["tick"] <= game.ticks - 5
        game.tick([key(pygame.KEYDOWN, pygame.K_RIGHTBRACKET), key(pygame.KEYDOWN, pygame.K_F5)])
        assert game.env.steps == 5 and game.twin is not None and game.window.get_size() == (128, 64)
        ticks = game.ticks
        while game.ticks < ticks + 2 and time.perf_counter() < deadline:
            game.tick([])
            time.sleep(0.005)
        assert game.ticks >= ticks + 2 and game.twin is not None  # the worker renders the twin with each frame
        seed = game.info["seed"]
        game.tick([key(pygame.KEYDOWN, pygame.K_n)])
        assert game.info["seed"] != seed
    finally:
        game.close()
    assert callers == {game.worker._thread.ident}


def test_a_world_that_cannot_be_made_is_a_clear_error_and_stops_the_worker(tmp_path):
    import threading
    from worldsim.envs.world_model import WorldModelEnv
    missing = tmp_path / "no-world"
    with pytest.raises(FileNotFoundError, match="no-world: no such world checkpoint"):
        Game(lambda: WorldModelEnv(checkpoint=str(missing)), PlayConfig(scale=1, generation="thread"), seed=0)
    assert not any(t.name == "frame-worker" and t.is_alive() for t in threading.enumerate())


def test_threaded_loop_redraws_only_for_something_new(model_game):
    from worldsim.play.worker import FrameWorker
    game = model_game
    game.worker = FrameWorker(game.input, game.config.fps)  # not started: no frames come
    game.tick([])
    assert game.draws == 1  # the first tick shows the start frame
    game.tick([])
    game.tick([motion(5, 0)])  # a mouse move shows only in the frame it makes
    assert game.draws == 1 and game.input.events_seen == 1
    game.tick([key(pygame.KEYDOWN, pygame.K_F3)])  # the overlay changes the window at once
    assert game.draws == 2 and game.overlay
    game.worker.results.put(StepResult({}, game.obs, game.info, False, 1, 0.0, 0.0, game.worker.epoch))
    game.tick([])
    assert game.draws == 3 and game.ticks == 1 and game.shown[-1][1] == game.shown[-1][1]  # a new frame: drawn


def test_engine_rewind_restores_the_position(game):
    game.config.rewind_seconds, game.config.snapshot_every = 0.5, 5
    game.tick([key(pygame.KEYDOWN, pygame.K_w)])
    positions = {game.info["tick"]: game.info["pos"]}
    for _ in range(20):
        game.tick([])
        positions[game.info["tick"]] = game.info["pos"]
    game.tick([key(pygame.KEYUP, pygame.K_w), key(pygame.KEYDOWN, pygame.K_BACKSPACE)])  # at 21: back to 10, then on
    assert game.info["tick"] == 11 and game.info["pos"][2] < positions[12][2]
