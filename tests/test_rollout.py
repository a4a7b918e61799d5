"""Batched rollouts: N envs equal N single envs with the same seeds, written trajectories, the policy kinds
(names, make_policy factories, batch callables) and a clear error for an import path that does not resolve."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldsim.data.cache import Cache
from worldsim.data.interchange import list_trajectories, read_trajectory
from worldsim.data.policies import make_policy
from worldsim.engine.env import EngineConfig, VoxelVectorEnv
from worldsim.envs.world_model import WorldModelEnv, WorldModelVectorEnv, random_world
from worldsim.rollout import EpisodeWriters, is_factory, make_batch_policy, rollout, stack_actions, unbatch, unbatch_all

from test_dynamics import one_thread  # noqa: F401  (autouse: one torch thread)
from test_world_model_env import tiny_configs

from cli import run_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return str(random_world(tmp_path_factory.mktemp("world"), *tiny_configs()))


def forward_batch(obs):
    """A batch policy: everyone walks forward and turns right a little."""
    n = len(obs)
    return {"forward": np.ones(n, np.int64), "camera": np.tile(np.array([0.0, 2.0], np.float32), (n, 1))}


def test_n_env_rollouts_equal_n_single_env_rollouts(world):
    n, steps, seed = 3, 6, 20
    vec = WorldModelVectorEnv(n, checkpoint=world, timing=False)
    policy = make_batch_policy("explore", n, seed)
    obs, infos = vec.reset(seed=seed)
    batched = [obs]
    for _ in range(steps):
        obs, *_, infos = vec.step(policy(obs, infos))
        batched.append(obs)
    batched = np.stack(batched, axis=1)  # (n, steps + 1, H, W, 3)
    for i in range(n):
        env, single_policy = WorldModelEnv(checkpoint=world, timing=False), make_policy("explore", seed=seed + i)
        obs, info = env.reset(seed=seed + i)
        frames = [obs]
        for _ in range(steps):
            obs, *_, info = env.step(single_policy.act(obs, info))
            frames.append(obs)
        assert np.abs(batched[i].astype(int) - np.stack(frames)).max() <= 1  # batched matmuls may round apart


def test_random_policies_act_as_one_random_policy_per_env():
    """The batched random policy (make_batch_policy("random")) gives, step after step, the very actions of one
    RandomPolicy per sub-env seeded seed + i, stacked: each generator draws what its own act would."""
    from worldsim.data.policies import PolicyConfig, RandomPolicies
    from worldsim.rollout import PerEnvPolicies
    n, seed = 5, 7
    config = PolicyConfig(random_camera_std=30.0)  # wide: some draws clip at the camera's limit
    batched = make_batch_policy("random", n, seed, config)
    singles = PerEnvPolicies([make_policy("random", config, seed + i) for i in range(n)])
    assert isinstance(batched, RandomPolicies)
    obs, infos = np.zeros((n, 8, 8, 3), np.uint8), {}
    for _ in range(4):
        got, want = batched(obs, infos), singles(obs, infos)
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


def test_rollout_writes_one_trajectory_per_episode(world, tmp_path):
    vec = WorldModelVectorEnv(2, checkpoint=world, max_episode_steps=4)
    writers = EpisodeWriters(tmp_path, "model", 20, {"world": "model"})
    result = rollout(vec, make_batch_policy("random", 2, 0), steps=7, seed=3, writers=writers)
    assert result["frames"] == 14 and result["fps"] > 0
    stems = list_trajectories(tmp_path)
    assert len(stems) == 4 == len(result["trajectories"])  # 2 envs × (4 frames, then a new episode of 2)
    first = read_trajectory(stems[0])
    assert first.source == "model" and len(first) == 4 and first.seed == 3
    assert sorted(len(read_trajectory(s)) for s in stems) == [2, 2, 4, 4]


def test_batch_callables_and_factories_by_import_path():
    engine = VoxelVectorEnv(2, EngineConfig(width=32, height=32, view_distance=16), render_device="cpu")
    policy = make_batch_policy("test_rollout:forward_batch", 2, 0)
    result = rollout(engine, policy, steps=10, seed=0)
    assert result["frames"] == 20
    obs, infos = engine.reset(seed=0)
    assert unbatch(infos, 1)["seed"] == 1
    assert is_factory(make_policy.__globals__["RandomPolicy"]) and not is_factory(forward_batch)
    factory = make_batch_policy("worldsim.data.policies:RandomPolicy", 2, 5)
    actions = factory(obs, infos)
    assert actions["camera"].shape == (2, 2) and set(actions) >= {"forward", "camera"}


def test_stacked_actions_and_unbatched_infos():
    chosen = [{"forward": 1, "camera": [1.0, 2.0]}, {"jump": True}, {"camera": np.array([0.0, -3.0], np.float32)}]
    batch = stack_actions(chosen)
    assert batch["forward"].tolist() == [1, 0, 0] and batch["jump"].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(batch["camera"], [[1, 2], [0, 0], [0, -3]])
    with pytest.raises(ValueError, match=r"must be 0 or 1, got 2 \(sub-env 1\)"):
        stack_actions([{"forward": 0}, {"forward": 2}])
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(sub-env 0\)"):
        stack_actions([{"camera": [1.0]}, {"camera": [1.0, 2.0]}])
    with pytest.raises(ValueError, match=r"dict.*\(sub-env 1\)"):
        stack_actions([{}, [1, 2]])
    infos = {"seed": np.array([4, 5]), "_seed": np.array([True, True]), "x": np.array([1.5, 0.0]),
             "_x": np.array([True, False])}
    assert unbatch_all(infos, 2) == [unbatch(infos, 0), unbatch(infos, 1)] == [{"seed": 4, "x": 1.5}, {"seed": 5}]


@pytest.mark.parametrize("path, problem", [("no_such_module:act", "cannot import module 'no_such_module'"),
                                           ("worldsim.data.policies:nothing", "has no attribute 'nothing'"),
                                           ("nonsense", "neither")])
def test_unresolvable_policy_is_a_clear_error_naming_it(path, problem):
    with pytest.raises(ValueError, match=problem) as e:
        make_batch_policy(path, 2, 0)
    assert path in str(e.value)


def test_every_source_names_its_view_in_the_options_it_records(world, tmp_path):
    """options.json of a recording names fov and view_distance whatever made it: the engine or a world model, one
    env or a batch, wrapped by gymnasium or not (a world model's are the engine's it starts from)."""
    import gymnasium

    from worldsim.data.interchange import env_options
    engine = EngineConfig(width=64, height=64, fov=60.0, view_distance=32)
    envs = [gymnasium.make("worldsim/VoxelWorld-v0", config=engine), VoxelVectorEnv(2, engine),
            WorldModelEnv(checkpoint=world, engine=engine), WorldModelVectorEnv(2, checkpoint=world, engine=engine)]
    for env in envs:
        options = env_options(env)
        assert (options["fov"], options["view_distance"]) == (60.0, 32), type(env)
    assert env_options(envs[2])["checkpoint"] == world  # and the model's own settings
    assert run_world("mode=rollout", "world=engine", "rollout.num_envs=1", "rollout.steps=3", "rollout.progress=false",
                     f"rollout.out_dir={tmp_path}") is None
    options = read_trajectory(list_trajectories(tmp_path)[0]).options
    assert (options["fov"], options["view_distance"], options["world"]) == (70.0, 48, "engine")


def test_mode_rollout_takes_the_issue_s_shorthand_and_other_modes_refuse_it(tmp_path):
    """`mode=rollout policy=random num_envs=2 steps=3` is rollout.num_envs and rollout.steps; elsewhere an error."""
    done = subprocess.run([sys.executable, "run_world.py", "mode=rollout", "world=engine", "policy=random",
                           "num_envs=2", "steps=3", "rollout.progress=false", "rollout.fmt=cache",
                           f"rollout.out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the real command line, once
    trajectories = [read_trajectory(path) for path in list_trajectories(tmp_path)]
    assert len(trajectories) == 2 and all(len(t.actions) == 3 for t in trajectories)
    cache = Cache(tmp_path / "cache")  # rollout.fmt=cache: the training cache of those trajectories
    assert cache.num_frames == 6 and len(cache.episodes) == 2
    assert np.allclose(cache.actions[:3], trajectories[0].vectors) or np.allclose(cache.actions[:3], trajectories[1].vectors)
    refused = run_world("mode=generate", "steps=3", f"generate.out_dir={tmp_path / 'gen'}")
    assert "rollout.steps" in refused and not (tmp_path / "gen").exists()


def test_mode_rollout_with_a_bad_policy_fails_before_writing(tmp_path):
    said = run_world("mode=rollout", "world=engine", "policy=nope.mod:act", f"rollout.out_dir={tmp_path}")
    assert "policy 'nope.mod:act' does not resolve" in said
    assert not any(tmp_path.iterdir())


def test_rollout_speed_resets_once_and_times_only_the_steps(world, monkeypatch):
    from worldsim.play.bench import rollout_speed
    resets = []
    original = WorldModelVectorEnv.reset
    monkeypatch.setattr(WorldModelVectorEnv, "reset", lambda self, **kw: resets.append(kw) or original(self, **kw))
    result = rollout_speed(world, 2, steps=3, warmup=1)
    assert len(resets) == 1 and result["frames"] == 6 and result["fps"] > 0 and result["reset_s"] > 0


def test_play_bench_latency_takes_the_first_drawn_frame_that_reflects_each_probe():
    from worldsim.play.bench import resolve
    nan = float("nan")
    probes, latencies = [(3, 1.0), (5, 2.0)], []
    resolve(probes, [(2, 0.9), (3, nan), (4, 1.05)], latencies)  # frame (3) was never drawn: (4) shows probe 3
    assert latencies == [pytest.approx(50.0)] and probes == [(5, 2.0)]
    resolve(probes, [(4, 1.05), (5, nan)], latencies)            # not drawn yet: the probe waits
    assert probes == [(5, 2.0)]
    # the game keeps only its last frames; a probe resolved as play goes is not matched to a later one
    resolve(probes, [(5, 2.08), (6, 2.13)], latencies)
    assert latencies == [pytest.approx(50.0), pytest.approx(80.0)] and probes == []


def test_soak_reports_memory_and_time_along_the_run(world):
    """The soak's JSON carries the resident-memory series (to tell growth that levels off from a leak), Python's
    memory blocks at the same frames (to tell Python objects kept from native growth) and the time per frame in
    twentieths, besides the totals; the table leaves the series out."""
    from worldsim.play.bench import WARMUP_FRAMES, print_table, soak
    frames = WARMUP_FRAMES + 10
    result = soak(world, frames, fps=20)
    series = result["rss_mb_series"]
    assert [f for f, _ in series] == list(range(0, frames, frames // 20)) and all(mb > 0 for _, mb in series)
    assert [f for f, _ in result["python_blocks_series"]] == [f for f, _ in series]
    assert all(isinstance(n, int) and n > 0 for _, n in result["python_blocks_series"])
    assert len(result["ms_per_frame_by_twentieth"]) == 20 and min(result["ms_per_frame_by_twentieth"]) > 0
    assert result["rss_growth_mb"] == pytest.approx(result["rss_mb_end"] - result["rss_mb_after_warmup"])
    assert isinstance(result["python_blocks_per_frame"], float)
    assert soak(world, WARMUP_FRAMES - 1, fps=20)["python_blocks_per_frame"] is None  # no frame after the warm-up
    print_table({"soak": result})  # lists are not rows
