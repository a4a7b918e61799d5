"""Dataset generation: readable episodes, the batched path, kill-and-resume, the cache, the settings check."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from worldsim.data.generate import EPISODE_PREFIX, PROGRESS_FILE, STATS_FILE, GenerateConfig, generate
from worldsim.data.interchange import list_trajectories, read_trajectory
from worldsim.data.policies import PolicyConfig
from worldsim.engine.env import EngineConfig

TINY = EngineConfig(width=32, height=32, view_distance=16)
REPO = Path(__file__).resolve().parents[1]


def config(out_dir, **overrides) -> GenerateConfig:
    return GenerateConfig(**{"out_dir": str(out_dir), "episodes": 2, "frames_per_episode": 40, "workers": 1,
                             "seed": 7, "device": "cpu", "progress": False, **overrides})


def quiet() -> Console:
    return Console(record=True, width=200, file=io.StringIO())  # no file handle left for the GC to warn about


def assert_same_episodes(a_dir: Path, b_dir: Path) -> None:
    a_stems, b_stems = list_trajectories(a_dir), list_trajectories(b_dir)
    assert [s.name for s in a_stems] == [s.name for s in b_stems]
    for a_stem, b_stem in zip(a_stems, b_stems):
        a, b = read_trajectory(a_stem), read_trajectory(b_stem)
        np.testing.assert_array_equal(a.frames, b.frames)
        assert (a_stem.with_name(a_stem.name + ".jsonl").read_text()
                == b_stem.with_name(b_stem.name + ".jsonl").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of three episodes, in one process."""
    out = tmp_path_factory.mktemp("reference")
    summary = generate(config(out, episodes=3, frames_per_episode=60), TINY, PolicyConfig(), console=quiet())
    return out, summary


def test_writes_readable_episodes_and_stats(reference):
    out, summary = reference
    stems = list_trajectories(out)
    assert [s.name for s in stems] == ["episode_000000", "episode_000001", "episode_000002"]
    for i, stem in enumerate(stems):
        trajectory = read_trajectory(stem)
        assert trajectory.frames.shape == (60, 32, 32, 3)
        assert len(trajectory.actions) == 60
        assert trajectory.seed == 7 + i
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["episodes"] == 3 and stats["actions"]["frames"] == 180
    assert summary["frames_made"] == 180


def test_rerun_skips_finished_and_extends(reference, tmp_path):
    out, _ = reference
    again = generate(config(out, episodes=3, frames_per_episode=60), TINY, PolicyConfig(), console=quiet())
    assert again["episodes_made"] == 0 and again["episodes"] == 3
    (out / "episode_000001.mp4").rename(tmp_path / "moved.mp4")  # an episode lost after it finished
    again = generate(config(out, episodes=3, frames_per_episode=60), TINY, PolicyConfig(), console=quiet())
    assert again["episodes_made"] == 1 and again["episodes"] == 3 and again["actions"]["frames"] == 180
    with pytest.raises(ValueError, match="frames_per_episode"):
        generate(config(out, episodes=3, frames_per_episode=50), TINY, PolicyConfig(), console=quiet())


@pytest.mark.parametrize("workers", [1, 2])
def test_batched_vector_env_path_matches_processes(reference, tmp_path, workers):
    """Episodes stepped two at a time in VoxelVectorEnvs (in one process, or one per worker) equal single ones."""
    out, _ = reference
    summary = generate(config(tmp_path, episodes=3, frames_per_episode=60, batched=True, vector_envs=2,
                              workers=workers), TINY, PolicyConfig(), console=quiet())
    assert summary["batched"] and summary["episodes"] == 3
    assert_same_episodes(out, tmp_path)


KILLED_RUN = """
import sys
from rich.console import Console
from worldsim.data.generate import GenerateConfig, generate
from worldsim.data.policies import PolicyConfig
from worldsim.engine.env import EngineConfig
generate(GenerateConfig(out_dir=sys.argv[1], episodes=3, frames_per_episode=60, workers=2, seed=7, device="cpu",
                        progress=False), EngineConfig(width=32, height=32, view_distance=16), PolicyConfig(),
         console=Console(quiet=True))
"""


def test_kill_and_resume_gives_the_uninterrupted_result(reference, tmp_path):
    out, _ = reference
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path)], cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            progress = tmp_path / PROGRESS_FILE
            finished = json.loads(progress.read_text())["finished"] if progress.exists() else {}
            if finished and list(tmp_path.glob("*.partial*")):
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the generator and its workers, mid-episode
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    time.sleep(0.2)  # let the killed processes' files settle
    finished_before = {int(i) for i in json.loads((tmp_path / PROGRESS_FILE).read_text())["finished"]}
    assert 0 < len(finished_before) < 3
    # Every episode the log calls finished is whole on disk, and nothing half-written is listed as a trajectory.
    # An episode whose files were finished just before the kill, but not yet logged, may be listed too: the
    # resume makes it again.
    listed = {int(stem.name[len(EPISODE_PREFIX):]): stem for stem in list_trajectories(tmp_path)}
    assert finished_before <= set(listed)
    for stem in listed.values():
        assert len(read_trajectory(stem).frames) == 60
    console = quiet()
    summary = generate(config(tmp_path, episodes=3, frames_per_episode=60), TINY, PolicyConfig(), console=console)
    assert summary["episodes_made"] == 3 - len(finished_before)
    said = console.export_text()
    assert "removed" in said and "unfinished" in said and "episode_0000" in said
    assert not list(tmp_path.glob("*.partial*"))
    assert_same_episodes(out, tmp_path)


def test_builds_a_training_cache(tmp_path):
    cache = pytest.importorskip("worldsim.data.cache")
    summary = generate(config(tmp_path, fmt="cache"), TINY, PolicyConfig(), console=quiet())
    dataset = cache.ClipDataset(summary["cache"], frames_per_clip=8, stride=8)
    assert len(dataset) == 2 * (40 // 8)
    clip = dataset[0]
    assert clip["frames"].shape == (8, 32, 32, 3) and clip["actions"].shape == (8, 25)
    assert cache.Cache(summary["cache"]).num_episodes == 2
    summary = generate(config(tmp_path, episodes=3, fmt="cache"), TINY, PolicyConfig(), console=quiet())
    assert cache.Cache(summary["cache"]).num_episodes == 3  # rebuilt with the new episode


def test_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        GenerateConfig(out_dir=str(tmp_path), fmt="zip")
    with pytest.raises(ValueError, match="unknown policy"):
        generate(config(tmp_path), TINY, PolicyConfig(name="wander"), console=quiet())
