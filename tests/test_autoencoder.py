"""The frame autoencoder: shapes, bad input, training on engine frames, checkpoints, latents in the cache."""
import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.data.cache import Cache, CacheWriter, ClipDataset, MissingLatentsError
from worldsim.data.policies import ExplorationPolicy
from worldsim.engine.env import VoxelEnv
from worldsim.models.autoencoder import (Autoencoder, AutoencoderConfig, ChannelsLastDecode, GraphedDecode, psnr, ssim,
                                         to_uint8)
from worldsim.models.train_autoencoder import (
    DecoderTuneConfig, encode_cache, load_autoencoder, train_autoencoder, tune_decoder, with_decoder_blocks)
from worldsim.training import CheckpointError, TrainConfig, load_weights, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(height=32, width=32, latent_channels=8, enc_channels=(16, 32, 32), enc_blocks=1,
            dec_channels=(32, 32, 16), dec_blocks=1)
EPISODES, FRAMES = 2, 64
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory, one_thread):
    """A small training cache of 32×32 engine frames driven by the exploration policy."""
    path = tmp_path_factory.mktemp("ae") / "cache"
    env = VoxelEnv(width=32, height=32, view_distance=16)
    with CacheWriter(path, width=32, height=32) as writer:
        for e in range(EPISODES):
            policy = ExplorationPolicy(seed=e)
            obs, info = env.reset(seed=e)
            frames, acts = [], []
            for _ in range(FRAMES):
                action = policy.act(obs, info)
                frames.append(obs)
                acts.append(action)
                obs, _, _, _, info = env.step(action)
            writer.add_episode(np.stack(frames), acts, {"name": f"ep{e}", "seed": e, "source": "engine"})
    return path


@pytest.fixture(scope="module")
def trained(engine_cache, tmp_path_factory):
    """The tiny autoencoder trained for a few hundred steps through run_world.py; its run directory.

    In a subprocess with one OpenMP thread: in-process, on a shared 2-core machine, the steps ran many times
    slower under pytest than the same steps in a plain process.
    """
    run = tmp_path_factory.mktemp("ae") / "run"
    subprocess.run([sys.executable, "run_world.py", "mode=train_autoencoder", "autoencoder=tiny",
                    f"train.data={engine_cache}", f"train.out_dir={run}", "train.steps=200", "train.batch_size=16",
                    "train.lr=3e-3", "train.warmup_steps=20", "train.ckpt_every=0", "train.sample_every=100",
                    "train.log_every=10", "train.ema=0.0"], cwd=ROOT, check=True, timeout=300, env=ONE_THREAD)
    return run


def frames_of(cache_dir, n=64) -> torch.Tensor:
    return torch.from_numpy(np.array(Cache(cache_dir).frames[:n]))


def test_shapes_and_dtypes():
    model = Autoencoder(AutoencoderConfig(**TINY)).eval()
    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        latents = model.encode(frames)
        assert latents.shape == (5, 8, 4, 4) == (5, *model.config.latent_shape) and latents.dtype == torch.float32
        assert torch.equal(model.encode(frames.permute(0, 3, 1, 2).float() / 127.5 - 1), latents)  # float in [-1, 1]
        out = model.decode(latents)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32 and out.abs().max() <= 1.0
    assert to_uint8(out).shape == (5, 32, 32, 3) and to_uint8(out).dtype == torch.uint8


def test_default_config_makes_64_tokens_of_128_by_128_frames():
    config = AutoencoderConfig()
    c, h, w = config.latent_shape
    assert (h // 2) * (w // 2) == 64  # the dynamics model's 2×2 patches


@pytest.mark.parametrize("frames, words", [
    (torch.zeros(2, 64, 64, 3, dtype=torch.uint8), ["(B, 32, 32, 3)", "(2, 64, 64, 3)"]),
    (torch.zeros(2, 32, 32, 3, dtype=torch.int32), ["uint8", "torch.int32"]),
    (torch.zeros(2, 32, 32, 3), ["(B, 3, 32, 32)", "(2, 32, 32, 3)"]),  # float frames must be channels-first
    (torch.zeros(32, 32, 3, dtype=torch.uint8), ["(B, 32, 32, 3)", "(32, 32, 3)"]),
])
def test_bad_frames_are_clear_errors(frames, words):
    model = Autoencoder(AutoencoderConfig(**TINY))
    with pytest.raises(ValueError) as error:
        model.encode(frames)
    assert all(w in str(error.value) for w in words), str(error.value)


def test_bad_config_is_an_error():
    with pytest.raises(ValueError, match="multiples of 8"):
        AutoencoderConfig(height=100)


def test_training_lowers_the_loss_and_raises_psnr(trained, engine_cache):
    with open(trained / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    frames = frames_of(engine_cache)
    torch.manual_seed(0)
    untrained, model = Autoencoder(AutoencoderConfig(**TINY)).eval(), load_autoencoder(trained)
    assert model.config == untrained.config  # configs/autoencoder/tiny.yaml is TINY
    x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        before = psnr(untrained.decode(untrained.encode(frames)), x).mean()
        after = psnr(model.decode(model.encode(frames)), x).mean()
        assert ssim(model.decode(model.encode(frames)), x).mean() > ssim(untrained.decode(untrained.encode(frames)), x).mean()
    print(f"PSNR {before:.1f} → {after:.1f} dB")
    assert after > before + 8.0, (before, after)


def test_latents_are_normalised_on_training_frames(trained, engine_cache):
    model = load_autoencoder(trained)
    with torch.no_grad():
        latents = model.encode(frames_of(engine_cache, n=EPISODES * FRAMES))  # (N, C, h, w)
    assert latents.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (latents.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_save_then_load_gives_identical_outputs(trained, engine_cache, tmp_path):
    model = load_autoencoder(trained)
    save_checkpoint(tmp_path, model, model.config, name="model")
    again = load_autoencoder(tmp_path)
    frames = frames_of(engine_cache, 8)
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(frames)), again.decode(again.encode(frames)))


def test_a_checkpoint_that_does_not_fit_names_the_tensor(trained):
    other = Autoencoder(AutoencoderConfig(**{**TINY, "latent_channels": 4}))
    with pytest.raises(CheckpointError, match="encoder.conv_out.weight"):
        load_weights(other, trained / "model.safetensors")


def short_run(engine_cache, out_dir, **overrides) -> TrainConfig:
    values = dict(out_dir=str(out_dir), data=str(engine_cache), steps=8, batch_size=4, lr=1e-3, warmup_steps=2,
                  ckpt_every=4, log_every=2, sample_every=0, ema=0.9)
    return TrainConfig(**{**values, **overrides})


def test_resume_after_a_kill_equals_an_uninterrupted_run(engine_cache, tmp_path):
    from safetensors.torch import load_file
    config = AutoencoderConfig(**TINY)
    torch.manual_seed(0)
    train_autoencoder(config, short_run(engine_cache, tmp_path / "whole"), progress=False)
    torch.manual_seed(0)
    cut = short_run(engine_cache, tmp_path / "cut")
    assert train_autoencoder(config, cut, progress=False, stop_after=6)["stopped"]  # last checkpoint: step 4
    assert not (tmp_path / "cut" / "model.json").read_text().count("latent_stats")  # not fitted on a stopped run
    torch.manual_seed(123)
    assert train_autoencoder(config, cut, progress=False)["step"] == 8
    for name in ("model", "ema"):
        whole, resumed = (load_file(str(tmp_path / run / f"{name}.safetensors")) for run in ("whole", "cut"))
        assert whole.keys() == resumed.keys()
        for key in whole:
            assert torch.equal(whole[key], resumed[key]), (name, key)  # latent_std/mean included


def test_two_process_gloo_ddp_run_through_run_world(engine_cache, tmp_path):
    """torchrun --nproc_per_node=2 run_world.py mode=train_autoencoder: gloo on the CPU, one set of outputs."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "run_world.py", "mode=train_autoencoder", "autoencoder=tiny",
         f"train.data={engine_cache}", f"train.out_dir={run}", "train.steps=4", "train.batch_size=4",
         "train.warmup_steps=1", "train.ckpt_every=0", "train.sample_every=0", "train.log_every=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / "checkpoints" / "step_00000004" / "training_state.json").read_text())
    assert len(state["rng"]) == 2 and state["data"]["world_size"] == 2
    model = load_autoencoder(run)  # the latent normalisation was fitted once, by rank 0, after training
    assert json.loads((run / "model.json").read_text())["latent_stats"]["frames"] > 0
    assert bool((model.latent_std > 0).all())


def test_encode_cache_writes_latents_that_clip_dataset_returns(trained, engine_cache, tmp_path):
    cache_dir = shutil.copytree(engine_cache, tmp_path / "cache")
    with pytest.raises(MissingLatentsError, match="mode=encode"):
        ClipDataset(cache_dir, frames_per_clip=4, latents=True)
    encode_cache(trained, cache_dir, batch_size=50)
    clips = ClipDataset(cache_dir, frames_per_clip=4, stride=4, latents=True)
    item = clips[3]
    assert item["latents"].shape == (4, 8, 4, 4) and item["latents"].dtype == torch.float32
    model = load_autoencoder(trained)
    with torch.no_grad():
        expected = model.encode(item["frames"])
    assert torch.allclose(item["latents"], expected, atol=2e-2, rtol=1e-2)  # stored as float16
    assert Cache(cache_dir).latent_info["shape"] == [8, 4, 4]
    assert "latents" not in ClipDataset(cache_dir, frames_per_clip=4)[0]


def test_run_world_trains_and_encodes(trained, engine_cache, tmp_path):
    assert (trained / "model.safetensors").exists() and (trained / "samples" / "step_000200.png").exists()
    assert json.loads((trained / "model.json").read_text())["latent_stats"]["frames"] == EPISODES * FRAMES
    cache_dir = shutil.copytree(engine_cache, tmp_path / "cache")
    subprocess.run([sys.executable, "run_world.py", "mode=encode", f"encode.checkpoint={trained}",
                    f"encode.cache={cache_dir}"], cwd=ROOT, check=True, timeout=120, env=ONE_THREAD)
    assert Cache(cache_dir).latents.shape == (EPISODES * FRAMES, 8, 4, 4)


def test_tune_decoder_keeps_the_encoder_and_raises_psnr(trained, engine_cache, tmp_path):
    cache_dir = shutil.copytree(engine_cache, tmp_path / "cache")
    tuned = tmp_path / "tuned"
    config = TrainConfig(out_dir=str(tuned), data=str(cache_dir), steps=150)
    with pytest.raises(MissingLatentsError, match="mode=encode"):
        tune_decoder(DecoderTuneConfig(autoencoder=str(trained)), config)
    encode_cache(trained, cache_dir, batch_size=64)
    subprocess.run([sys.executable, "run_world.py", "mode=tune_decoder", f"tune_decoder.autoencoder={trained}",
                    "tune_decoder.l2_weight=4", f"train.data={cache_dir}", f"train.out_dir={tuned}",
                    "train.steps=150", "train.batch_size=16", "train.lr=2e-3", "train.warmup_steps=10",
                    "train.ckpt_every=0", "train.sample_every=0", "train.log_every=10", "train.ema=0.0"],
                   cwd=ROOT, check=True, timeout=300, env=ONE_THREAD)
    before, after = load_autoencoder(trained), load_autoencoder(tuned)
    for name, tensor in before.encoder.state_dict().items():
        assert torch.equal(tensor, after.encoder.state_dict()[name]), name
    assert torch.equal(before.latent_mean, after.latent_mean) and torch.equal(before.latent_std, after.latent_std)
    assert after.config.l2_weight == 4.0 and after.config.latent_shape == before.config.latent_shape
    frames = frames_of(cache_dir)
    with torch.no_grad():
        latents = before.encode(frames)
        assert torch.equal(latents, after.encode(frames))  # every latent made with the original stays valid
        target = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        gain = psnr(after.decode(latents), target).mean() - psnr(before.decode(latents), target).mean()
    assert gain > 1.0, f"tuning the decoder changed PSNR by {gain:.2f} dB"
    meta = json.loads((tuned / "model.json").read_text())
    assert meta["decoder_tuned_from"]["autoencoder"] == str(trained) and meta["latent_stats"] is not None


def test_a_decoder_of_other_depth_starts_from_the_blocks_it_shares(trained):
    """Fewer blocks keep each level's first ones (the rest are skipped); more add identities: the frames equal the
    source decoder's with those blocks skipped, or its own."""
    source = load_autoencoder(trained)
    z = torch.randn(3, *source.config.latent_shape)
    grown = with_decoder_blocks(source, replace(source.config, dec_blocks=source.config.dec_blocks + 1))
    shrunk = with_decoder_blocks(source, replace(source.config, dec_blocks=0))
    skipped = copy.deepcopy(source)
    for level in skipped.decoder.levels:
        for j in range(1, len(level)):
            level[j] = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(grown.decode(z), source.decode(z), atol=1e-6)
        assert torch.allclose(shrunk.decode(z), skipped.decode(z), atol=1e-6)
        assert not torch.allclose(shrunk.decode(z), source.decode(z), atol=1e-3)  # the skipped blocks did something
    for model in (grown, shrunk):
        for name, tensor in source.encoder.state_dict().items():
            assert torch.equal(tensor, model.encoder.state_dict()[name]), name
        assert torch.equal(model.latent_mean, source.latent_mean) and torch.equal(model.latent_std, source.latent_std)
    assert sum(p.numel() for p in shrunk.decoder.parameters()) < sum(p.numel() for p in source.decoder.parameters())
    with pytest.raises(ValueError, match="only dec_blocks may change"):
        with_decoder_blocks(source, replace(source.config, dec_channels=(64, 32, 16)))


def test_tune_decoder_trains_a_shallower_decoder_for_the_same_latents(trained, engine_cache, tmp_path):
    cache_dir = shutil.copytree(engine_cache, tmp_path / "cache")
    encode_cache(trained, cache_dir, batch_size=64)
    tuned = tmp_path / "shallow"
    tune_decoder(DecoderTuneConfig(autoencoder=str(trained), dec_blocks=0),
                 TrainConfig(out_dir=str(tuned), data=str(cache_dir), steps=20, batch_size=8, lr=1e-3, warmup_steps=2,
                             ckpt_every=0, sample_every=0, log_every=10))
    before, after = load_autoencoder(trained), load_autoencoder(tuned)
    assert after.config.dec_blocks == 0 and json.loads((tuned / "model.json").read_text())["config"]["dec_blocks"] == 0
    frames = frames_of(cache_dir)
    with torch.no_grad():
        latents = before.encode(frames)
        assert torch.equal(latents, after.encode(frames))
        target = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        start = with_decoder_blocks(before, replace(before.config, dec_blocks=0)).decode(latents)
        assert psnr(after.decode(latents), target).mean() > psnr(start, target).mean()  # it trained from that start
    with pytest.raises(ValueError, match="dec_blocks"):
        DecoderTuneConfig(autoencoder=str(trained), dec_blocks=-1)
    with pytest.raises(ValueError, match="dec_blocks"):
        DecoderTuneConfig(autoencoder=str(trained), dec_blocks=1.5)


def test_tune_decoder_refuses_latents_of_another_autoencoder(trained, engine_cache, tmp_path):
    cache_dir = shutil.copytree(engine_cache, tmp_path / "cache")
    encode_cache(trained, cache_dir, batch_size=64)
    index_path = Path(cache_dir) / "index.json"
    index = json.loads(index_path.read_text())
    index["latents"]["std"] = [2 * v for v in index["latents"]["std"]]
    index_path.write_text(json.dumps(index))
    config = TrainConfig(out_dir=str(tmp_path / "tuned"), data=str(cache_dir), steps=10)
    with pytest.raises(ValueError, match="not by .*mode=encode"):
        tune_decoder(DecoderTuneConfig(autoencoder=str(trained)), config)
    with pytest.raises(ValueError, match="is the autoencoder being tuned"):
        tune_decoder(DecoderTuneConfig(autoencoder=str(trained)), TrainConfig(out_dir=str(trained), data=str(cache_dir)))
    with pytest.raises(ValueError, match="l2_weight"):
        DecoderTuneConfig(autoencoder=str(trained), l2_weight=-1.0)
    assert not (tmp_path / "tuned").exists()


def test_graphed_decode_refuses_cpu_latents():
    model = Autoencoder(AutoencoderConfig(**TINY))
    with pytest.raises(ValueError, match="CUDA graphs"):
        GraphedDecode(model)(torch.zeros(1, *model.config.latent_shape))


def test_channels_last_decode_gives_the_frames_of_decode_and_leaves_the_model_alone(trained):
    model = load_autoencoder(trained)
    latents = torch.randn(3, *model.config.latent_shape, generator=torch.Generator().manual_seed(0))
    decode = ChannelsLastDecode(model)
    with torch.no_grad():
        expected = model.decode(latents)
    out = decode(latents)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert (out - expected).abs().max() < 1e-4 and out.abs().max() <= 1.0
    assert (to_uint8(out).int() - to_uint8(expected).int()).abs().max() <= 1  # rounding may tip one level
    assert all(p.is_contiguous() for p in model.decoder.parameters())  # the model's own weights keep their layout
    with pytest.raises(ValueError, match="latents"):
        decode(torch.zeros(1, 3, 4, 4))
    half = ChannelsLastDecode(model, torch.bfloat16)(latents)  # bf16: float frames, a few levels from fp32's
    assert half.dtype == torch.float32 and half.abs().max() <= 1.0
    levels = (to_uint8(half).int() - to_uint8(expected).int()).abs()
    assert 0 < levels.max() <= 8 and levels.float().mean() < 1.0
    assert all(p.dtype == torch.float32 for p in model.decoder.parameters())
