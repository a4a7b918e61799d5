"""The training cache, ClipDataset and conversion between the cache and the interchange form."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from worldsim.data.cache import (Cache, CacheError, CacheNotFoundError, CacheWriter, ClipDataset,
                                 ResolutionMismatchError, write_cache)
from worldsim.data.convert import convert
from worldsim.data.interchange import TrajectoryWriter, list_trajectories, read_trajectory
from worldsim.engine import actions
from worldsim.engine.env import VoxelEnv

LENGTHS = (7, 12, 5, 1)  # the last is shorter than any clip


def synthetic_episode(e: int, length: int, size=(8, 10)):
    """Frames whose pixels say (episode, frame) and action vectors that say the same."""
    frames = np.zeros((length, *size, 3), np.uint8)
    frames[..., 0], frames[..., 1] = e, np.arange(length)[:, None, None]
    vectors = np.zeros((length, actions.ACTION_DIM), np.float32)
    vectors[:, 11] = 1.0  # forward
    vectors[:, 15] = np.linspace(-1, 1, length)  # camera pitch
    return frames, vectors, {"name": f"ep{e}", "seed": 100 + e, "source": "engine"}


@pytest.fixture
def cache_dir(tmp_path):
    return write_cache(tmp_path / "cache", (synthetic_episode(e, n) for e, n in enumerate(LENGTHS)))


def test_cache_round_trip_is_exact(cache_dir):
    cache = Cache(cache_dir, expect_resolution=(8, 10))
    assert cache.resolution == (8, 10) and len(cache) == sum(LENGTHS) and cache.num_episodes == len(LENGTHS)
    assert cache.episode_starts.tolist() == [0, 7, 19, 24, 25]
    assert cache.latents is None
    for e, n in enumerate(LENGTHS):
        frames, vectors, meta = synthetic_episode(e, n)
        span = cache.episode_slice(e)
        assert np.array_equal(cache.frames[span], frames) and np.array_equal(cache.actions[span], vectors)
        assert {k: cache.episodes[e][k] for k in meta} == meta
    # plain numpy reads every array
    assert np.load(cache_dir / "frames.npy", mmap_mode="r").shape == (sum(LENGTHS), 8, 10, 3)
    assert not (cache_dir.parent / "cache.partial").exists()


def test_cache_keeps_exact_camera_and_infos_of_action_dicts(tmp_path):
    acts = [{"forward": 1, "camera": np.array([12.5, -0.1], np.float32)},
            {"camera": np.array([0.3, 33.0], np.float32)}]
    infos = [{"pos": (1.0, 2.0, 3.0), "tick": 0, "edits": []},
             {"pos": (1.5, 2.0, 3.0), "tick": 1, "edits": [(1, 2, 3, 4, 0)]}]
    with CacheWriter(tmp_path / "c", width=4, height=2) as writer:
        writer.add_episode(np.zeros((2, 2, 4, 3), np.uint8), acts, {"name": "a"}, infos)
    cache = Cache(tmp_path / "c")
    got = cache.episode_actions(0)
    assert np.array_equal(got[0]["camera"], acts[0]["camera"]) and got[0]["forward"] == 1
    assert np.array_equal(got[1]["camera"], acts[1]["camera"]) and got[1]["forward"] == 0
    assert cache.actions[0, 15] == 1.0  # the model's vector clips at CAMERA_MAX_DEGREES
    assert cache.episode_infos(0) == infos


def test_clips_never_cross_episodes(cache_dir):
    for stride in (1, 2, 3):
        dataset = ClipDataset(cache_dir, frames_per_clip=4, stride=stride)
        assert len(dataset) == sum(len(range(0, n - 4 + 1, stride)) for n in LENGTHS)
        seen = set()
        for item in dataset:
            frames = item["frames"]
            assert frames.shape == (4, 8, 10, 3) and frames.dtype == torch.uint8
            assert item["actions"].shape == (4, 25) and item["actions"].dtype == torch.float32
            assert (frames[..., 0] == item["episode"]).all()
            assert frames[:, 0, 0, 1].tolist() == list(range(item["start"], item["start"] + 4))
            assert item["start"] % stride == 0
            seen.add((item["episode"], item["start"]))
        assert len(seen) == len(dataset)
    assert len(ClipDataset(cache_dir, frames_per_clip=13)) == 0


def test_workers_give_the_same_items_as_the_main_process(cache_dir):
    dataset = ClipDataset(Cache(cache_dir), frames_per_clip=3, stride=2)

    def items(workers):
        loader = DataLoader(dataset, batch_size=4, sampler=dataset.sampler(seed=7), num_workers=workers)
        return [(b["frames"], b["actions"], b["episode"], b["start"]) for b in loader]

    state = pickle.dumps(dataset)
    assert len(state) < 10_000  # the memory maps stay behind; each worker opens its own
    assert torch.equal(pickle.loads(state)[5]["frames"], dataset[5]["frames"])
    main, parallel = items(0), items(2)
    assert len(main) == len(parallel) > 0
    for a, b in zip(main, parallel):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_order_is_deterministic_for_a_seed(cache_dir):
    dataset = ClipDataset(cache_dir, frames_per_clip=2)
    assert list(dataset.sampler(3)) == list(dataset.sampler(3))
    assert list(dataset.sampler(3)) != list(dataset.sampler(4))
    assert sorted(dataset.sampler(3)) == list(range(len(dataset)))
    assert np.array_equal(dataset.shuffle_indices(5), dataset.shuffle_indices(5))
    assert sorted(dataset.shuffle_indices(5)) == list(range(len(dataset)))


def test_a_cache_of_another_resolution_is_refused(cache_dir):
    with pytest.raises(ResolutionMismatchError, match=r"\(8, 10\).*expected \(128, 128\)"):
        Cache(cache_dir, expect_resolution=(128, 128))
    with pytest.raises(ResolutionMismatchError):
        ClipDataset(cache_dir, frames_per_clip=2, expect_resolution=(10, 8))


def test_missing_and_corrupt_caches_name_the_file(tmp_path, cache_dir):
    with pytest.raises(CacheNotFoundError, match="nowhere"):
        Cache(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheNotFoundError, match="index.json"):
        Cache(tmp_path / "empty")
    frames = cache_dir / "frames.npy"
    frames.write_bytes(frames.read_bytes()[:1000])
    with pytest.raises(CacheError, match="frames.npy"):
        Cache(cache_dir)
    (cache_dir / "index.json").write_text("{not json")
    with pytest.raises(CacheError, match="index.json"):
        Cache(cache_dir)


def test_an_aborted_cache_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with CacheWriter(tmp_path / "c", width=10, height=8) as writer:
            writer.add_episode(*synthetic_episode(0, 3))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileExistsError):
        write_cache(tmp_path, [synthetic_episode(0, 3)])


def engine_trajectory_dir(directory, episodes=2, steps=15):
    env = VoxelEnv(width=64, height=64, view_distance=16)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        obs, info = env.reset(seed=e)
        with TrajectoryWriter(directory / f"ep{e}", 64, 64, seed=e, options={"fov": 70.0}) as writer:
            for t in range(steps):
                a = {"forward": 1, "attack": int(t > 8), "hotbar.2": int(t == 3),
                     "camera": np.array([rng.normal(), 12 * rng.normal()], np.float32)}
                writer.write(obs, a, info)
                obs, _, _, _, info = env.step(a)


def test_conversion_round_trip(tmp_path):
    engine_trajectory_dir(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "cache")
    convert(tmp_path / "cache", tmp_path / "out")
    cache = Cache(tmp_path / "cache", expect_resolution=(64, 64))
    assert [e["name"] for e in cache.episodes] == ["ep0", "ep1"] and [e["seed"] for e in cache.episodes] == [0, 1]
    assert [p.name for p in list_trajectories(tmp_path / "out")] == ["ep0", "ep1"]
    for e, stem in enumerate(list_trajectories(tmp_path / "src")):
        original, back = read_trajectory(stem), read_trajectory(tmp_path / "out" / stem.name)
        assert np.array_equal(cache.frames[cache.episode_slice(e)], original.frames)  # the cache is exact
        mse = np.mean((back.frames.astype(float) - original.frames) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) >= 40.0  # one more encode
        for a, b in zip(original.actions, back.actions):
            assert all(np.array_equal(a[k], b[k]) for k in a)
        assert back.infos == original.infos
        assert (back.seed, back.source, back.options["fov"]) == (e, "engine", 70.0)


def test_the_cache_is_the_same_for_any_number_of_reader_threads(tmp_path):
    from worldsim.data.convert import interchange_to_cache
    engine_trajectory_dir(tmp_path / "src", episodes=5, steps=4)
    for threads in (1, 3):
        interchange_to_cache(tmp_path / "src", tmp_path / f"cache{threads}", threads=threads)
    one, three = Cache(tmp_path / "cache1"), Cache(tmp_path / "cache3")
    assert [e["name"] for e in three.episodes] == [f"ep{i}" for i in range(5)]
    assert np.array_equal(np.asarray(one.frames), np.asarray(three.frames))
    assert np.array_equal(np.asarray(one.actions), np.asarray(three.actions))


def test_one_bad_episode_is_skipped_with_a_warning(tmp_path):
    engine_trajectory_dir(tmp_path / "src", episodes=3, steps=6)
    bad = tmp_path / "src" / "ep1.jsonl"
    bad.write_text(bad.read_text() + "{}\n")
    with pytest.warns(UserWarning, match=r"ep1.*7 lines for the 6 frames"):
        summary = convert(tmp_path / "src", tmp_path / "cache")
    assert summary["episodes"] == 2 and summary["skipped"] == [str(tmp_path / "src" / "ep1")]
    assert [e["name"] for e in Cache(tmp_path / "cache").episodes] == ["ep0", "ep2"]


def test_directories_join_into_one_cache(tmp_path):
    """Several trajectory directories make one cache in the order given; a name taken by an earlier directory
    is prefixed by its own directory's name."""
    engine_trajectory_dir(tmp_path / "train", episodes=2, steps=4)
    engine_trajectory_dir(tmp_path / "still", episodes=1, steps=3)
    summary = convert([tmp_path / "train", tmp_path / "still"], tmp_path / "cache")
    assert summary["episodes"] == 3 and summary["frames"] == 11
    cache = Cache(tmp_path / "cache")
    assert [e["name"] for e in cache.episodes] == ["ep0", "ep1", "still_ep0"]
    alone = read_trajectory(tmp_path / "still" / "ep0")
    assert np.array_equal(cache.frames[cache.episode_slice(2)], alone.frames)
    with pytest.raises(ValueError, match="is a cache"):
        convert([tmp_path / "cache", tmp_path / "train"], tmp_path / "again")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert([tmp_path / "train", tmp_path / "nowhere"], tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_convert_names_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        convert(tmp_path / "missing", tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="no readable trajectories"):
            convert(tmp_path / "empty", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
