"""The interchange form: writer → reader round trip, VPT jsonl, keyframes, killed writers, bad input."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from worldsim.data import vpt
from worldsim.data.interchange import (KEYFRAME_INTERVAL, TrajectoryError, TrajectoryNotFoundError,
                                       TrajectoryWriter, cleanup_partial, list_trajectories, read_trajectory)
from worldsim.engine import actions
from worldsim.engine.env import VoxelEnv

REPO = Path(__file__).resolve().parents[1]


def play_engine(steps: int, seed: int = 3):
    """Frames, actions and infos of a short engine episode with walking, turning, jumping, hotbar and hands."""
    env = VoxelEnv(width=64, height=64, view_distance=16)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    frames, acts, infos = [], [], []
    for t in range(steps):
        a = actions.noop()
        a["forward"], a["jump"], a["attack"] = 1, int(rng.random() < 0.1), int(t > steps // 2)
        a["use"], a["sprint"] = int(t % 11 == 5), int(t % 3 == 0)
        a[f"hotbar.{t % 9 + 1}"] = int(t % 7 == 0)
        a["camera"] = np.array([rng.normal() * 2, 3 + rng.normal()], np.float32)
        frames.append(obs), acts.append(actions.validate(a)), infos.append(info)
        obs, _, _, _, info = env.step(a)
    return np.stack(frames), acts, infos


@pytest.fixture(scope="module")
def episode():
    return play_engine(40)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def assert_actions_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for t, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), t
        for key in w:
            assert np.array_equal(g[key], w[key]), (t, key, g[key], w[key])


def write(stem, frames, acts, infos, **kwargs) -> list[Path]:
    with TrajectoryWriter(stem, frames.shape[2], frames.shape[1], seed=3, options={"fov": 70.0}, **kwargs) as w:
        for f, a, i in zip(frames, acts, infos):
            w.write(f, a, i)
    return w.close()


def test_round_trip_is_exact_for_actions_and_infos_and_close_for_frames(tmp_path, episode):
    frames, acts, infos = episode
    files = write(tmp_path / "ep", frames, acts, infos)
    assert [p.name for p in files] == ["ep.mp4", "ep.jsonl", "ep-options.json"]
    assert list_trajectories(tmp_path) == [tmp_path / "ep"]
    traj = read_trajectory(tmp_path / "ep")
    assert traj.frames.shape == frames.shape and traj.frames.dtype == np.uint8
    assert psnr(traj.frames, frames) >= 40.0
    assert_actions_equal(traj.actions, acts)
    assert traj.infos == infos
    assert np.array_equal(traj.vectors, np.stack([actions.to_vector(a) for a in acts]))
    assert traj.options["resolution"] == [64, 64] and traj.options["fps"] == 20 and traj.options["fov"] == 70.0
    assert traj.options["complete"] is True and traj.seed == 3 and traj.source == "engine"
    assert traj.options["versions"]["format"] == 1 and "worldsim" in traj.options["versions"]


def test_jsonl_lines_carry_vpt_fields(tmp_path, episode):
    frames, acts, infos = episode
    write(tmp_path / "ep", frames[:8], acts[:8], infos[:8])
    line = json.loads((tmp_path / "ep.jsonl").read_text().splitlines()[0])
    assert "key.keyboard.w" in line["keyboard"]["keys"] and "key.keyboard.1" in line["keyboard"]["keys"]
    assert "key.keyboard.left.control" in line["keyboard"]["keys"]
    assert line["mouse"]["dy"] * vpt.CAMERA_DEGREES_PER_PIXEL == pytest.approx(float(acts[0]["camera"][0]))
    assert line["mouse"]["dx"] * vpt.CAMERA_DEGREES_PER_PIXEL == pytest.approx(float(acts[0]["camera"][1]))
    assert (line["xpos"], line["ypos"], line["zpos"]) == tuple(infos[0]["pos"])
    assert line["isGuiOpen"] is False and line["source"] == "engine" and line["seed"] == 3
    assert line["hotbar"] == 0 and line["tick"] == 0


def test_keyframes_at_most_every_20_frames(tmp_path, episode):
    frames, acts, infos = episode
    write(tmp_path / "ep", frames, acts, infos)
    with av.open(str(tmp_path / "ep.mp4")) as container:
        keyframes = [i for i, p in enumerate(p for p in container.demux(video=0) if p.size) if p.is_keyframe]
    assert keyframes[0] == 0
    assert max(np.diff(keyframes + [len(frames)])) <= KEYFRAME_INTERVAL


def test_odd_dimensions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        TrajectoryWriter(tmp_path / "odd", 63, 64)


def test_wrong_frame_shape_is_refused(tmp_path):
    with TrajectoryWriter(tmp_path / "ep", 64, 64) as w:
        with pytest.raises(ValueError, match=r"\(64, 64, 3\)"):
            w.write(np.zeros((32, 32, 3), np.uint8), actions.noop(), {})
        w.write(np.zeros((64, 64, 3), np.uint8), actions.noop(), {})


VPT_LINES = [
    # stuck attack from the start (newButtons == [0]), hotbar 0, walking forward and turning right
    {"mouse": {"x": 640, "y": 360, "dx": 20.0, "dy": -10.0, "buttons": [0], "newButtons": [0]},
     "keyboard": {"keys": ["key.keyboard.w", "key.keyboard.left.control"], "newKeys": [], "chars": ""},
     "isGuiOpen": False, "hotbar": 0, "yaw": 12.5, "pitch": -3.0, "xpos": 1.5, "ypos": 64.0, "zpos": -2.5,
     "tick": 100, "milli": 1},
    # scroll wheel to slot 2 (hotbar.3), jump, sneak; attack still stuck
    {"mouse": {"dx": 0.0, "dy": 0.0, "buttons": [0], "newButtons": []},
     "keyboard": {"keys": ["key.keyboard.space", "key.keyboard.left.shift", "key.keyboard.escape"]},
     "isGuiOpen": False, "hotbar": 2, "yaw": 15.5, "pitch": -4.5, "xpos": 1.5, "ypos": 64.0, "zpos": -2.0,
     "tick": 101},
    # a new attack press ends the stuck state; use; key 5; drop; strafing
    {"mouse": {"dx": -2400.0, "dy": 4.0, "buttons": [0, 1, 2], "newButtons": [0, 1, 2]},
     "keyboard": {"keys": ["key.keyboard.5", "key.keyboard.q", "key.keyboard.a", "key.keyboard.d",
                           "key.keyboard.s"]},
     "isGuiOpen": False, "hotbar": 4, "yaw": 0.0, "pitch": 0.0, "xpos": 1.5, "ypos": 64.0, "zpos": -2.0,
     "tick": 102},
    # inventory open: the mouse moves a cursor, the camera stays
    {"mouse": {"dx": 30.0, "dy": 30.0, "buttons": [], "newButtons": []},
     "keyboard": {"keys": ["key.keyboard.e"]},
     "isGuiOpen": True, "hotbar": 4, "yaw": 0.0, "pitch": 0.0, "xpos": 1.5, "ypos": 64.0, "zpos": -2.0,
     "tick": 103},
]


def expected_vpt_actions() -> list[dict]:
    def action(camera=(0.0, 0.0), **buttons):
        a = actions.noop()
        a.update(buttons)
        a["camera"] = np.array(camera, np.float32)
        return a
    return [action((-1.5, 3.0), forward=1, sprint=1),
            action(jump=1, sneak=1, **{"hotbar.3": 1}),
            action((0.6, -180.0), attack=1, use=1, drop=1, left=1, right=1, back=1, **{"hotbar.5": 1}),
            action(inventory=1)]


def test_hand_written_vpt_jsonl_parses_to_the_expected_actions(tmp_path):
    assert_actions_equal(vpt.parse_actions(VPT_LINES), expected_vpt_actions())
    with TrajectoryWriter(tmp_path / "contractor", 64, 64) as w:  # any video with one frame per line
        for _ in VPT_LINES:
            w.write(np.full((64, 64, 3), 90, np.uint8), actions.noop(), {})
    (tmp_path / "contractor-options.json").unlink()  # VPT data comes without our options file
    (tmp_path / "contractor.jsonl").write_text("".join(json.dumps(line) + "\n" for line in VPT_LINES))
    traj = read_trajectory(tmp_path / "contractor.mp4")
    assert_actions_equal(traj.actions, expected_vpt_actions())
    assert traj.infos[0] == {"pos": (1.5, 64.0, -2.5), "yaw": 12.5, "pitch": -3.0, "tick": 100, "selected_slot": 0}
    assert traj.options["fps"] == 20 and traj.options["resolution"] == [64, 64]


def test_flat_dotted_vpt_fields_are_read_too():
    flat = {"keyboard.keys": ["key.keyboard.w"], "mouse.dx": 24.0, "mouse.dy": 0.0, "mouse.buttons": [1],
            "hotbar": 0}
    (action,) = vpt.parse_actions([flat])
    assert action["forward"] == 1 and action["use"] == 1 and np.allclose(action["camera"], [0.0, 3.6])


@pytest.fixture
def written(tmp_path, episode):
    frames, acts, infos = episode
    write(tmp_path / "ep", frames[:24], acts[:24], infos[:24])
    return tmp_path / "ep"


def test_a_missing_path_names_the_file(tmp_path):
    with pytest.raises(TrajectoryNotFoundError, match="nothing.mp4"):
        read_trajectory(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_trajectories(tmp_path / "nowhere")


def test_a_truncated_mp4_names_the_file(written):
    mp4 = written.with_name("ep.mp4")
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with pytest.raises(TrajectoryError, match="ep.mp4"):
        read_trajectory(written)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_missing_or_extra_jsonl_lines_name_the_file(written, change):
    jsonl = written.with_name("ep.jsonl")
    lines = jsonl.read_text().splitlines(keepends=True)
    lines = lines[:-1] if change == "missing" else lines + [lines[-1]]
    jsonl.write_text("".join(lines))
    with pytest.raises(TrajectoryError, match=r"ep\.jsonl: (23|25) lines for the 24 frames"):
        read_trajectory(written)


def test_a_malformed_jsonl_line_names_the_file_and_line(written):
    jsonl = written.with_name("ep.jsonl")
    lines = jsonl.read_text().splitlines(keepends=True)
    lines[6] = lines[6][:30] + "\n"
    jsonl.write_text("".join(lines))
    with pytest.raises(TrajectoryError, match=r"ep\.jsonl:7: malformed JSON"):
        read_trajectory(written)


def test_a_line_missing_a_field_names_the_file_and_line(written):
    jsonl = written.with_name("ep.jsonl")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    del lines[9]["keyboard"]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(TrajectoryError, match=r"ep\.jsonl:10: missing field 'keyboard.keys'"):
        read_trajectory(written)


WRITER_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from worldsim.data.interchange import TrajectoryWriter
    from worldsim.engine import actions
    stem, atomic, kill_after = sys.argv[1], sys.argv[2] == "atomic", int(sys.argv[3])
    w = TrajectoryWriter(stem, 64, 64, source="human", atomic=atomic, flush_every=20)
    for t in range(1000):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[:, : (t % 64) + 1] = (40 + t % 200, 90, 160)
        a = actions.noop()
        a["forward"] = t % 2
        a["camera"] = np.array([0.25 * (t % 5), -1.5], np.float32)
        w.write(frame, a, {"tick": t})
        if t + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
""")


def run_killed_writer(tmp_path, atomic: bool, kill_after: int) -> Path:
    stem = tmp_path / "rec"
    result = subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(stem), "atomic" if atomic else "plain",
                             str(kill_after)], cwd=REPO, capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    return stem


def test_a_killed_recording_leaves_a_readable_prefix(tmp_path):
    stem = run_killed_writer(tmp_path, atomic=False, kill_after=55)
    assert list_trajectories(tmp_path) == []  # not complete ...
    assert list_trajectories(tmp_path, include_unfinished=True) == [stem]  # ... but readable
    with pytest.warns(UserWarning, match="not finished"):
        traj = read_trajectory(stem)
    assert 20 <= len(traj) <= 55
    assert traj.source == "human"
    for t, (action, info) in enumerate(zip(traj.actions, traj.infos)):
        assert info["tick"] == t and action["forward"] == t % 2
        assert np.array_equal(action["camera"], np.array([0.25 * (t % 5), -1.5], np.float32))
    assert abs(int(traj.frames[-1, 0, 0, 0]) - (40 + (len(traj) - 1) % 200)) <= 3


def test_a_killed_atomic_writer_leaves_nothing_that_passes_for_whole(tmp_path):
    run_killed_writer(tmp_path, atomic=True, kill_after=45)
    assert list_trajectories(tmp_path) == [] and list_trajectories(tmp_path, include_unfinished=True) == []
    removed = cleanup_partial(tmp_path)
    assert sorted(removed) == ["rec.partial.jsonl", "rec.partial.mp4"]
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_atomic_writer_leaves_nothing(tmp_path, episode):
    frames, acts, infos = episode
    with pytest.raises(RuntimeError, match="boom"):
        with TrajectoryWriter(tmp_path / "ep", 64, 64) as w:
            for f, a, i in zip(frames[:10], acts, infos):
                w.write(f, a, i)
            raise RuntimeError("boom")
    assert list_trajectories(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_cleanup_removes_a_half_renamed_trajectory(tmp_path, episode):
    frames, acts, infos = episode
    write(tmp_path / "ep", frames[:5], acts, infos)
    (tmp_path / "ep-options.json").rename(tmp_path / "ep.partial-options.json")  # died before the last rename
    assert list_trajectories(tmp_path) == []
    assert sorted(cleanup_partial(tmp_path)) == ["ep.jsonl", "ep.mp4", "ep.partial-options.json"]
    assert list(tmp_path.iterdir()) == []
