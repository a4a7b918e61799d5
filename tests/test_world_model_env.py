"""The world model behind the engine's interface: check_env, seeded determinism, info keys, the twin,
snapshot/restore, the vector env against single envs, prompts from seeds, trajectories and images, bad input."""
import dataclasses
import os
import warnings

import gymnasium
import gymnasium.utils.env_checker
import numpy as np
import pytest
import torch

import worldsim  # noqa: F401  (registers the environments)
from worldsim.engine import actions
from worldsim.engine.env import VoxelEnv
from worldsim.envs.world_model import (WorldModelConfig, WorldModelEnv, WorldModelVectorEnv, load_world,
                                        random_world)
from worldsim.models.autoencoder import AutoencoderConfig
from worldsim.models.dynamics import DynamicsConfig
from worldsim.training.checkpoint import CheckpointError
from worldsim.rollout import unbatch

from test_dynamics import one_thread  # noqa: F401  (autouse: one torch thread)

ENGINE = {"view_distance": 16}


def tiny_configs(**dynamics_changes):
    dynamics = DynamicsConfig(latent_channels=8, latent_height=4, latent_width=4, n_head=2, n_embd=64,
                              **{"n_layer": 2, "context_frames": 6, **dynamics_changes})
    autoencoder = AutoencoderConfig(height=32, width=32, latent_channels=8, enc_channels=(16, 32, 32),
                                    dec_channels=(32, 32, 16))
    return dynamics, autoencoder


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny untrained world checkpoint: 32×32 frames, 4×4×8 latents, 2 layers."""
    return str(random_world(tmp_path_factory.mktemp("world"), *tiny_configs()))


def make(world, **kw):
    from worldsim.engine.env import EngineConfig
    return WorldModelEnv(checkpoint=world, engine=EngineConfig(**ENGINE), **kw)


def walk(n, seed=0):
    space = actions.action_space()
    space.seed(seed)
    out = []
    for _ in range(n):
        a = space.sample()
        a["camera"] = np.clip(a["camera"], -10, 10)
        out.append(a)
    return out


def test_check_env_passes(world):
    env = gymnasium.make("worldsim/WorldModel-v0", checkpoint=world, timing=False, render_mode="rgb_array",
                         engine=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gymnasium.utils.env_checker.check_env(env.unwrapped)
    # ResourceWarnings come from the collector freeing other tests' objects, not from the checker
    unexpected = [str(w.message) for w in caught if "symmetric and normalized" not in str(w.message)
                  and not issubclass(w.category, ResourceWarning)]
    assert unexpected == []
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    assert env.action_space == VoxelEnv().action_space


def test_same_seed_same_frames_other_seed_other_frames(world):
    runs = []
    for seed in (3, 3, 4):
        env = make(world)
        frames = [env.reset(seed=seed)[0]] + [env.step(a)[0] for a in walk(6)]
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert not np.array_equal(runs[0][1], runs[0][2])  # the world moves


def test_info_reports_model_keys_and_the_twin_engine_keys(world):
    env = make(world)
    obs, info = env.reset(seed=1)
    assert info["tick"] == 0 and info["seed"] == 1 and info["ms_per_frame"] is None
    assert "pos" not in info  # no twin: the model has no position
    action = {**actions.noop(), "hotbar.3": 1}
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["tick"] == info["step"] == 1 and info["selected_slot"] == 2 and info["ms_per_frame"] > 0
    assert info["denoise_steps"] == 4 and info["context_frames"] == 5  # the cache holds 6 - 1 frames
    env.set_steps(2)
    assert env.step(actions.noop())[4]["denoise_steps"] == 2

    twin = make(world, twin=True)
    engine = VoxelEnv(width=32, height=32, **ENGINE)
    twin.reset(seed=1)
    engine.reset(seed=1)
    for a in [actions.noop()] * (twin.prompt_frames - 1):  # the prompt: P - 1 still frames
        engine.step(a)
    for a in walk(4):
        _, _, _, _, info = twin.step(a)
        truth, *_, engine_info = engine.step(a)
    np.testing.assert_array_equal(twin.twin_frame, truth)
    assert info["pos"] == engine_info["pos"] and info["yaw"] == engine_info["yaw"]


def test_snapshot_restore_replays_exactly(world):
    env = make(world, twin=True)
    env.reset(seed=2)
    for a in walk(3):
        env.step(a)
    snap = env.snapshot()
    later = walk(5, seed=1)
    first = [env.step(a)[0] for a in later]
    assert np.array_equal(env.restore(snap), snap["frame"])
    second = [env.step(a)[0] for a in later]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    assert env.step(actions.noop())[4]["tick"] == 9


def test_vector_env_equals_single_envs_with_autoreset(world):
    n, steps = 3, 7
    vec = WorldModelVectorEnv(n, checkpoint=world, max_episode_steps=3, timing=False, engine=None)
    singles = [WorldModelEnv(checkpoint=world, max_episode_steps=3, timing=False) for _ in range(n)]
    vec_obs, vec_info = vec.reset(seed=11)
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=11 + i)
        np.testing.assert_array_equal(vec_obs[i], obs)
    done = [False] * n
    for t in range(steps):
        batch = [walk(1, seed=100 * t + i)[0] for i in range(n)]
        vec_obs, _, _, vec_trunc, vec_info = vec.step({k: np.stack([a[k] for a in batch]) for k in batch[0]})
        for i, env in enumerate(singles):
            if done[i]:
                (obs, info), trunc = env.reset(), False
            else:
                obs, _, _, trunc, info = env.step(batch[i])
            assert np.abs(vec_obs[i].astype(int) - obs).max() <= 1  # batched matmuls may round differently
            assert vec_trunc[i] == trunc and vec_info["seed"][i] == info["seed"] and vec_info["tick"][i] == info["tick"]
            done[i] = trunc
    assert vec_info["seed"][0] != 11  # restarted in a new world


def test_compiled_vector_env_equals_the_plain_one(tmp_path):
    """world.compile=true runs the sampler's buffered step and the decode under torch.compile with inductor, which
    generates and runs fused CPU kernels here: the same frames as the plain env's to a level of 255 (fusion reorders
    the float arithmetic), through an autoreset. (The sampler's tests trace every variant with aot_eager.)
    One layer, one Euler step and one decoder block a level (the shipped decoder's): inductor's C++ compiles on two cores are most of this test's time."""
    dynamics, autoencoder = tiny_configs(n_layer=1)
    world = random_world(tmp_path, dynamics, dataclasses.replace(autoencoder, dec_blocks=1))  # as shipped
    kw = dict(checkpoint=world, max_episode_steps=3, timing=False, engine=None, steps=1)
    plain, compiled = WorldModelVectorEnv(2, **kw), WorldModelVectorEnv(2, **kw, compile=True)
    sampler = compiled.imagination.sampler
    assert sampler.compile is True and sampler.graphs and not sampler.capture  # buffered, not captured off CUDA
    for a, b in zip(plain.reset(seed=3)[0], compiled.reset(seed=3)[0]):
        np.testing.assert_array_equal(a, b)  # the prompt: encoded and shown, not decoded
    for t in range(5):
        batch = [walk(1, seed=10 * t + i)[0] for i in range(2)]
        step = {k: np.stack([a[k] for a in batch]) for k in batch[0]}
        made, want = compiled.step(step)[0].astype(int), plain.step(step)[0].astype(int)
        assert np.abs(made - want).max() <= 1


def test_a_compiled_env_compiles_everything_play_runs_at_its_reset(world):
    """world.compile in the env play drives: the first reset compiles the commit ahead (`prepare`) and the step
    after it, so that play's steps and prepares then compile nothing (a compile mid-play is a stall of seconds),
    nor do steps without a prepare, which commit first. Nor do they leave anything in the thread's context: a config
    patch built per compiled call kept one ContextVar entry a call (0.4 KB a frame, 30 MB an hour of play).
    Traced with aot_eager here, as in the sampler's tests."""
    import contextvars
    from torch._dynamo.utils import counters
    env = make(world, compile=True, timing=False)
    sampler = env.imagination.sampler
    sampler._bodies = {kind: torch.compile(body, fullgraph=True, dynamic=False, backend="aot_eager")
                       for kind, body in {"fused": sampler._graph_body, "commit": sampler._commit_body,
                                          "denoise": sampler._denoise_body}.items()}
    decode = env.imagination.decode._torchdynamo_orig_callable  # (the decoder too: inductor runs in the test above)
    env.imagination.decode = torch.compile(decode, fullgraph=True, dynamic=False, backend="aot_eager")
    env.reset(seed=0)
    graphs, entries = counters["stats"]["unique_graphs"], len(contextvars.copy_context())
    for a in walk(4):
        env.step(a)
        env.prepare()
    for a in walk(3):  # a caller that never prepares (a gymnasium loop, the headless walk): the step commits first
        env.step(a)
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(contextvars.copy_context()) == entries


def test_a_compile_that_fails_is_named(world, monkeypatch):
    """world.compile=true where torch.compile cannot compile (no C compiler, say): a clear error at the reset
    that compiles, naming the setting to turn off."""
    import worldsim.sampling

    def failing_backend(graph, inputs):
        raise OSError("no C compiler here")

    real = torch.compile
    monkeypatch.setattr(worldsim.sampling.torch, "compile",
                        lambda fn, **kw: real(fn, **{**kw, "backend": failing_backend}))
    env = make(world, compile=True, timing=False)
    with pytest.raises(RuntimeError, match=r"world.compile=true: .*no C compiler here.*world.compile=false"):
        env.reset(seed=0)


def test_vector_infos_are_batched_as_gymnasium_batches_them(world):
    vec = WorldModelVectorEnv(3, checkpoint=world, engine=None)  # timing on: ms_per_frame is None, then a float
    for infos in (vec.reset(seed=0)[1], vec.step(vec.action_space.sample())[4]):
        expected = {}
        for i in range(3):
            expected = vec._add_info(expected, {k: v.item() if isinstance(v, np.generic) else v
                                                for k, v in unbatch(infos, i).items()}, i)
        assert list(infos) == list(expected)
        for key, value in expected.items():
            assert infos[key].dtype == value.dtype and infos[key].tolist() == value.tolist(), key


def test_vector_frames_are_new_arrays_that_later_steps_leave_alone(world):
    vec = WorldModelVectorEnv(2, checkpoint=world, engine=None, render_mode="rgb_array", max_episode_steps=2)
    seen = [vec.reset(seed=0)[0]]
    kept = [seen[0].copy()]
    for _ in range(3):  # the third step restarts the batch
        seen.append(vec.step(vec.action_space.sample())[0])
        kept.append(seen[-1].copy())
        np.testing.assert_array_equal(np.stack(vec.render()), seen[-1])
    for a, b in zip(seen, seen[1:]):
        assert not np.shares_memory(a, b)
    for obs, copy in zip(seen, kept):  # no step wrote into the frames an earlier one returned
        np.testing.assert_array_equal(obs, copy)


def test_bad_batched_action_names_the_sub_env(world):
    vec = WorldModelVectorEnv(2, checkpoint=world, engine=None)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"'jump'\] must be 0 or 1, got 3 \(sub-env 1\)"):
        vec.step({"jump": np.array([0, 3])})


def test_registered_make_vec(world):
    vec = gymnasium.make_vec("worldsim/WorldModel-v0", num_envs=2, vectorization_mode="vector_entry_point",
                             checkpoint=world)
    assert isinstance(vec.unwrapped, WorldModelVectorEnv)
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, info = vec.reset(seed=0)
    assert obs.shape == (2, 32, 32, 3) and list(info["seed"]) == [0, 1]
    obs, *_ = vec.step(vec.action_space.sample())
    assert obs in vec.observation_space


def test_chunks_of_several_frames_play_one_frame_per_step(tmp_path):
    world = random_world(tmp_path / "k2", *tiny_configs(chunk_frames=2, context_frames=6))
    env = make(str(world))
    env.reset(seed=0)
    frames = [env.step(a)[0] for a in walk(5)]
    assert len({f.tobytes() for f in frames}) == 5


def engine_trajectory(path, frames=10, size=32):
    from worldsim.data.interchange import TrajectoryWriter
    env = VoxelEnv(width=size, height=size, **ENGINE)
    obs, info = env.reset(seed=5)
    with TrajectoryWriter(path, size, size, source="engine", seed=5) as writer:
        for a in walk(frames):
            writer.write(obs, a, info)
            obs, *_, info = env.step(a)
    return path


def test_trajectory_prompt_starts_from_its_frames(world, tmp_path):
    stem = engine_trajectory(tmp_path / "traj")
    env = make(world, prompt=str(stem))
    obs, info = env.reset(seed=0)
    from worldsim.data.interchange import read_trajectory
    assert env.prompt_frames == 5  # PROMPT_FRAMES capped by the window of 6 - 1 frames
    np.testing.assert_array_equal(obs, read_trajectory(stem).frames[4])
    assert env.step(actions.noop())[0].shape == (32, 32, 3)


def test_image_prompt_of_another_size_is_resized_with_a_warning(world, tmp_path):
    from PIL import Image
    path = tmp_path / "start.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(path)
    with pytest.warns(UserWarning, match="64×48 frames resized to the model's 32×32 \\(stretched"):
        env = make(world, prompt=str(path))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and (obs == 90).all()
    with pytest.warns(UserWarning) as said:
        assert make(world, prompt=str(path), twin=True).config.twin is False
    assert any("engine twin (F5 in play) starts only from a seed prompt, so it is off for" in str(w.message)
               for w in said)


@pytest.mark.parametrize("damage", ["garbage mp4", "missing jsonl", "too short", "bad image"])
def test_broken_prompts_are_clear_errors_naming_the_file(world, tmp_path, damage):
    stem = engine_trajectory(tmp_path / "traj", frames=10 if damage != "too short" else 4)
    target = str(stem)
    if damage == "garbage mp4":
        (tmp_path / "traj.mp4").write_bytes(b"not a video")
    elif damage == "missing jsonl":
        (tmp_path / "traj.jsonl").unlink()
    elif damage == "bad image":
        (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
        target = str(tmp_path / "x.png")
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        make(world, prompt=target)
    assert str(tmp_path) in str(e.value)


def test_missing_and_corrupt_checkpoints_are_clear_errors(world, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_world(tmp_path / "nope")
    import worldsim.envs
    monkeypatch.setattr(worldsim.envs, "ASSETS", tmp_path / "no_assets")  # no world ships: None names nothing
    with pytest.raises(ValueError, match="checkpoint=PATH.*none ships"):
        load_world(None)
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    (broken / "dynamics" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="dynamics/model.safetensors"):
        load_world(broken)
    shutil.rmtree(broken / "autoencoder")
    with pytest.raises(FileNotFoundError, match="autoencoder"):
        load_world(broken)


def test_a_device_this_machine_lacks_is_named(world):
    from worldsim.envs.world_model import resolve_device
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")
    for device, said in (("gpu", "must be auto, cpu or cuda"), ("mps", "must be auto, cpu or cuda")):
        with pytest.raises(ValueError, match=said):
            WorldModelEnv(checkpoint=world, device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="world.device=cuda:1 but torch .* sees no CUDA device"):
            WorldModelEnv(checkpoint=world, device="cuda:1")


def test_mismatched_autoencoder_is_named(tmp_path):
    dynamics, autoencoder = tiny_configs()
    world = random_world(tmp_path / "w", DynamicsConfig(**{**vars(dynamics), "latent_channels": 16}), autoencoder)
    with pytest.raises(CheckpointError, match="latents"):
        load_world(world)


def test_bad_actions_raise_naming_the_problem(world):
    env = make(world)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="forward"):
        env.step({"forward": 2})
    assert torch.get_num_threads() == min(WorldModelConfig().torch_threads, os.cpu_count())  # pinned, not reset


@pytest.mark.parametrize("field", ["twin", "timing", "cuda_graphs", "compile"])
def test_switches_that_are_not_booleans_are_refused(field):
    with pytest.raises(ValueError, match=f"world.{field} must be true or false"):
        WorldModelConfig(checkpoint="x", **{field: "maybe"})


@pytest.mark.parametrize("threads", [0, -1, 1.5, "two", True])
def test_torch_threads_that_are_not_a_positive_count_are_refused(threads):
    with pytest.raises(ValueError, match="world.torch_threads must be null or a positive whole number"):
        WorldModelConfig(checkpoint="x", torch_threads=threads)
    assert WorldModelConfig(checkpoint="x", torch_threads=None).torch_threads is None


def test_bf16_precision_samples_close_to_fp32_and_leaves_given_models_alone(world):
    models = load_world(world)
    full, half = (make(world, twin=False, models=models, precision=p) for p in ("fp32", "bf16"))
    assert models[0].head.weight.dtype == torch.float32  # the given models were copied, not cast
    assert half.imagination.sampler.model.head.weight.dtype == torch.bfloat16
    assert half.imagination.sampler.caches[0].k.dtype == torch.bfloat16
    frames = []
    for env in (full, half):
        obs, _ = env.reset(seed=4)
        frames.append([obs] + [env.step(a)[0] for a in walk(3, seed=1)])
    for a, b in zip(*frames):
        assert np.abs(a.astype(int) - b).mean() < 3.0
    with pytest.raises(ValueError, match="world.precision must be one of"):
        WorldModelConfig(checkpoint="x", precision="fp16")


def test_commit_last_step_is_a_world_setting_that_leaves_given_models_alone(tmp_path):
    """world.commit_last_step overrides the model's: the env's sampler writes each frame from its last Euler step
    (other frames than the model's default, snapshots still replay exactly), the given model keeps its config."""
    world = str(random_world(tmp_path / "w", *tiny_configs(context_noise_max=0.5)))  # 3 steps: the last at 1/3
    models = load_world(world)
    frames = []
    for setting in (None, True):
        env = make(world, twin=False, models=models, steps=3, commit_last_step=setting)
        assert env.imagination.sampler.config.commit_last_step is bool(setting)
        obs, _ = env.reset(seed=4)
        moves = walk(4, seed=1)
        frames.append([obs] + [env.step(a)[0] for a in moves[:2]])
        state = env.snapshot()
        after = [env.step(a)[0] for a in moves[2:]]
        env.restore(state)
        assert all(np.array_equal(x, env.step(a)[0]) for x, a in zip(after, moves[2:]))
    assert models[0].config.commit_last_step is False
    assert any(not np.array_equal(a, b) for a, b in zip(*frames))
    with pytest.raises(ValueError, match="world.commit_last_step must be true, false or null"):
        WorldModelConfig(checkpoint="x", commit_last_step="yes")


def test_decode_precision_picks_the_decoder_and_bf16_frames_stay_close_to_fp32(world, monkeypatch):
    import worldsim.envs.world_model as world_model
    models = load_world(world)
    full, half = (make(world, twin=False, models=models, decode_precision=p) for p in ("fp32", "bf16"))
    assert half.imagination.decode.decoder.conv_in.weight.dtype == torch.bfloat16
    assert full.imagination.decode.decoder.conv_in.weight.dtype == torch.float32
    assert models[1].decoder.conv_in.weight.dtype == torch.float32  # the decoder was copied, not cast
    frames = []
    for env in (full, half):
        obs, _ = env.reset(seed=4)  # prompts are encoded in fp32 by both
        frames.append([obs] + [env.step(a)[0] for a in walk(3, seed=1)])
    np.testing.assert_array_equal(frames[0][0], frames[1][0])  # the first frame is the prompt's, not decoded
    for a, b in zip(frames[0][1:], frames[1][1:]):
        assert not np.array_equal(a, b) and np.abs(a.astype(int) - b).max() <= 8
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):  # auto: bf16 where the CPU has it
        monkeypatch.setattr(world_model, "native_bf16", lambda: native)
        assert WorldModelConfig(checkpoint="x").decode_dtype("cpu") == dtype
    assert WorldModelConfig(checkpoint="x").decode_dtype("cuda") == torch.float32
    assert WorldModelConfig(checkpoint="x", decode_precision="fp32").decode_dtype("cpu") == torch.float32
    with pytest.raises(ValueError, match="world.decode_precision must be one of"):
        WorldModelConfig(checkpoint="x", decode_precision="half")


@pytest.mark.parametrize("chunk_frames", [1, 2])
def test_prepare_between_steps_changes_no_frame(tmp_path, chunk_frames):
    """`prepare` (play runs it while a frame is shown) moves the commit out of the next step: the frames are
    those of steps without it (to float rounding: at most one level), and ms_to_frame is the step's part."""
    world = str(random_world(tmp_path / "w", *tiny_configs(chunk_frames=chunk_frames, context_frames=6,
                                                            view_memory=True, camera_warp=70.0)))
    with pytest.raises(RuntimeError, match="reset"):
        make(world).prepare()
    runs = []
    for prepare in (False, True):
        env = make(world, twin=False)
        env.reset(seed=3)
        frames, infos = [], []
        for a in walk(7, seed=2):
            obs, *_, info = env.step(a)
            frames.append(obs)
            infos.append(info)
            if prepare:
                env.prepare()
        runs.append(np.stack(frames))
    assert np.abs(runs[0].astype(int) - runs[1]).max() <= 1
    assert all(info["ms_to_frame"] <= info["ms_per_frame"] for info in infos)  # the last run's, with prepare
    assert any(info["ms_to_frame"] < info["ms_per_frame"] for info in infos)
