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
from worldsim.play.game import Game, InputState, PlayConfig, facing_name  # noqa: E402

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


def test_no_display_is_one_clear_error():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    result = subprocess.run([sys.executable, "run_world.py", "world=engine"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no display" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_values_are_named():
    result = subprocess.run([sys.executable, "run_world.py", "mode=nope"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "unknown mode 'nope'" in result.stderr
    result = subprocess.run([sys.executable, "run_world.py", "mode=bench", "engine.width=0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "width" in result.stderr and "Traceback" not in result.stderr


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
