"""The held-out clip check: rollouts of a world on recorded clips, scored against copy-last and the autoencoder."""
import json

import numpy as np
import pytest

from worldsim.data.cache import Cache, CacheWriter
from worldsim.envs.world_model import load_world
from worldsim.eval import clips
from worldsim.models.autoencoder import AutoencoderConfig
from worldsim.models.dynamics import DynamicsConfig


@pytest.fixture(scope="module")
def world_and_cache(tmp_path_factory):
    from worldsim.envs.world_model import random_world
    root = tmp_path_factory.mktemp("clips")
    dynamics = DynamicsConfig(latent_channels=8, latent_height=4, latent_width=4, n_layer=2, n_head=2, n_embd=64,
                              context_frames=4, sample_steps=2)
    autoencoder = AutoencoderConfig(height=32, width=32, latent_channels=8, enc_channels=(16, 32, 32),
                                    dec_channels=(32, 32, 16))
    world = random_world(root / "world", dynamics, autoencoder)
    rng = np.random.default_rng(0)
    with CacheWriter(root / "cache", width=32, height=32) as writer:
        for e, n in enumerate((20, 9, 14)):  # the middle episode is too short for a clip of 3 + 8 frames
            frames = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), n, axis=0)
            frames[1::2, :4] = 0  # every other frame differs from the one before it
            writer.add_episode(frames, np.zeros((n, 25), np.float32), {"name": f"ep{e}", "seed": e})
    return world, root / "cache"


def test_clip_starts_fit_each_episode():
    class Fake:
        num_episodes, directory = 2, "fake"
        episode_slice = staticmethod(lambda e: [slice(0, 10), slice(10, 13)][e])
    assert clips.clip_starts(Fake(), span=4, per_episode=3) == [0, 3, 6]
    with pytest.raises(ValueError, match="no episode"):
        clips.clip_starts(Fake(), span=11, per_episode=3)


def test_rollout_clips_scores_every_horizon_and_saves_json(world_and_cache, tmp_path):
    world, cache = world_and_cache
    out = tmp_path / "clips.json"
    result = clips.main(["--checkpoint", str(world), "--data", str(cache), "--prompt", "3", "--horizons", "1", "2",
                         "8", "--per-episode", "2", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["clips"] == 4 and result["steps"] == 2 and set(result["psnr"]) == {"1", "2", "8"}
    for row in result["psnr"].values():
        assert set(row) == {"model", "copy_last", "autoencoder", "brightness_difference", "model_per_clip"}
        assert len(row["model_per_clip"]) == 4 and abs(sum(row["model_per_clip"]) / 4 - row["model"]) < 1e-2
    # copy-last is exact where the frame repeats: two frames back (t+2 of a prompt ending on the same parity)
    assert result["psnr"]["2"]["copy_last"] == 100.0 and result["psnr"]["1"]["copy_last"] < 100.0
    # an untrained world is far from the frames; the same seed gives the same numbers
    assert result["psnr"]["1"]["model"] < 30
    again = clips.rollout_clips(*load_world(world), Cache(cache), prompt=3, horizons=(1, 2, 8), per_episode=2)
    assert again["psnr"] == result["psnr"]


def test_sampling_overrides_reach_the_sampler(world_and_cache, tmp_path):
    world, cache = world_and_cache
    args = ["--checkpoint", str(world), "--data", str(cache), "--prompt", "3", "--horizons", "1", "--per-episode",
            "1", "--threads", "1", "--context-noise", "0.0"]
    plain = clips.main([*args, "--out", str(tmp_path / "a.json")])
    shifted = clips.main([*args, "--shift", "4", "--out", str(tmp_path / "b.json")])
    assert plain["sample_shift"] == 1.0 and shifted["sample_shift"] == 4.0 and shifted["context_noise"] == 0.0
    assert shifted["psnr"]["1"]["model"] != plain["psnr"]["1"]["model"]  # other levels, another frame


def test_sample_spread_is_zero_for_one_seed_twice_and_its_error_is_that_one_sample_s(world_and_cache):
    world, cache = world_and_cache
    dynamics, autoencoder = load_world(world)
    cache = Cache(cache)
    same = clips.sample_spread(dynamics, autoencoder, cache, prompt=3, per_episode=2, steps=(1, 2), seeds=[5, 5])
    alone = clips.sample_spread(dynamics, autoencoder, cache, prompt=3, per_episode=2, steps=(1, 2), seeds=[5])
    assert same["clips"] == 6 and set(same["steps"]) == {"1", "2"}  # a clip is 4 frames: every episode holds two
    for count in ("1", "2"):
        assert same["steps"][count]["spread"] == 0.0 and same["steps"][count]["ratio"] == 0.0
        assert same["steps"][count]["error"] == pytest.approx(alone["steps"][count]["error"], rel=1e-6)
    several = clips.sample_spread(dynamics, autoencoder, cache, prompt=3, per_episode=2, steps=(2,), seeds=range(3))
    row = several["steps"]["2"]
    assert row["spread"] > 0 and row["ratio"] == pytest.approx(row["spread"] / row["error"])
    assert row["change_real"] == same["steps"]["2"]["change_real"] and row["std_real"] > 0
    with pytest.raises(ValueError, match="seed"):
        clips.sample_spread(dynamics, autoencoder, cache, prompt=3, per_episode=2, seeds=[])


def test_spread_seeds_add_the_spread_to_the_json(world_and_cache, tmp_path):
    world, cache = world_and_cache
    out = tmp_path / "clips.json"
    result = clips.main(["--checkpoint", str(world), "--data", str(cache), "--prompt", "3", "--horizons", "1",
                         "--per-episode", "2", "--threads", "1", "--spread-seeds", "2", "--spread-steps", "1",
                         "--out", str(out)])
    assert json.loads(out.read_text())["spread"] == result["spread"]
    assert result["spread"]["seeds"] == [0, 1] and set(result["spread"]["steps"]) == {"1"}
