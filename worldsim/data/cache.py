"""The training cache: episodes as memory-mapped arrays, and ClipDataset, random clips that stay in one episode.

A cache is a directory:
    index.json          {"version", "height", "width", "num_frames", "episodes": [{name, seed, source, start,
                         length, options}], "latents": null (a later issue fills it)}
    frames.npy          uint8 (N, H, W, 3), the episodes one after another
    actions.npy         float32 (N, 25), the model's action vectors (worldsim.engine.actions.to_vector)
    camera.npy          float32 (N, 2), camera [pitch, yaw] in degrees exactly as sent (the vector clips at 10°)
    episode_starts.npy  int64 (E + 1,), episode e is frames[starts[e]:starts[e + 1]]
    infos.jsonl         one env info per frame (JSON), for converting back to the interchange form
    latents.npy         float16 (N, C, h, w), autoencoder latents of every frame, once `mode=encode` has run;
                        index.json then holds "latents": {"shape": [C, h, w], "dtype", "mean", "std", ...}

Every .npy opens with np.load(mmap_mode="r"). Writing is atomic per cache: CacheWriter fills DIR.partial and
renames it to DIR at close, so a killed write never leaves a DIR; the next writer of DIR removes the leftover.
"""
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, RandomSampler

from worldsim.data.interchange import Trajectory
from worldsim.data.vpt import to_json
from worldsim.engine import actions as actions_mod

log = logging.getLogger(__name__)

CACHE_VERSION = 1
INDEX = "index.json"
FRAMES, ACTIONS, CAMERA, STARTS, INFOS, LATENTS = (
    "frames.npy", "actions.npy", "camera.npy", "episode_starts.npy", "infos.jsonl", "latents.npy")
PARTIAL = ".partial"
NPY_HEADER_BYTES = 128  # a fixed-size .npy header, so the row count can be rewritten in place at close


class CacheError(ValueError):
    """A cache directory that cannot be used: the message names the file."""


class CacheNotFoundError(FileNotFoundError):
    """A cache directory or one of its files that does not exist."""


class ResolutionMismatchError(CacheError):
    """A cache whose frames are not the resolution the caller expects."""


class MissingLatentsError(CacheError):
    """Latents asked of a cache that has none yet."""

    def __init__(self, directory):
        super().__init__(f"{directory}: the cache has no latents: run python run_world.py mode=encode "
                         f"encode.cache={directory} encode.checkpoint=AUTOENCODER_RUN_DIR")


def is_cache(path) -> bool:
    """Whether `path` is a cache directory (it has the index file)."""
    return (Path(path) / INDEX).is_file()


class _GrowingNpy:
    """A .npy file appended to row by row; its header is written again with the final row count at close."""

    def __init__(self, path: Path, row_shape: tuple, dtype):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self.file = open(path, "wb")
        self._write_header()

    def _write_header(self) -> None:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.rows, *self.row_shape)})
        room = NPY_HEADER_BYTES - 10  # magic (6), version (2), header length (2)
        if len(header) + 1 > room:
            raise ValueError(f"{self.path}: array shape too large for the .npy header")
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + header.ljust(room - 1).encode() + b"\n")
        self.file.seek(0, 2)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {self.row_shape} expected, got {rows.shape[1:]}")
        self.file.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._write_header()
        self.file.close()


class CacheWriter:
    """Builds a cache episode by episode in DIR.partial and renames it to DIR at close (atomic)."""

    def __init__(self, directory, width: int, height: int, overwrite: bool = False):
        self.directory = Path(directory)
        self.width, self.height = int(width), int(height)
        if self.directory.exists() and not overwrite:
            raise FileExistsError(f"{self.directory}: already exists (overwrite=True replaces it; on the command line convert.overwrite=true)")
        self.tmp = self.directory.with_name(self.directory.name + PARTIAL)
        if self.tmp.exists():
            log.warning("removing %s, left by an unfinished cache write", self.tmp)
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.overwrite = overwrite
        self._frames = _GrowingNpy(self.tmp / FRAMES, (self.height, self.width, 3), np.uint8)
        self._actions = _GrowingNpy(self.tmp / ACTIONS, (actions_mod.ACTION_DIM,), np.float32)
        self._camera = _GrowingNpy(self.tmp / CAMERA, (2,), np.float32)
        self._infos = open(self.tmp / INFOS, "w")
        self.episodes: list[dict] = []
        self._closed = False

    def add_episode(self, frames: np.ndarray, actions, meta: dict | None = None,
                    infos: list[dict] | None = None) -> None:
        """Append one episode: frames uint8 (T, H, W, 3); actions float32 (T, 25) vectors or T action dicts;
        meta (name, seed, source, options, ...: JSON values); infos, T env infos or None."""
        frames = np.asarray(frames)
        n = len(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"{self.directory}: frames must be uint8 (T, {self.height}, {self.width}, 3), "
                             f"got {frames.dtype} {frames.shape}")
        vectors, camera = _vectors_and_camera(actions)
        if len(vectors) != n or (infos is not None and len(infos) != n):
            raise ValueError(f"{self.directory}: {n} frames but {len(vectors)} actions"
                             + ("" if infos is None else f" and {len(infos)} infos"))
        if n == 0:
            raise ValueError(f"{self.directory}: an episode needs at least one frame")
        meta = dict(meta or {})
        meta.setdefault("name", f"episode-{len(self.episodes):05d}")
        self.episodes.append({**to_json(meta), "start": self._frames.rows, "length": n})
        self._frames.append(frames)
        self._actions.append(vectors)
        self._camera.append(camera)
        for info in infos if infos is not None else [{}] * n:
            self._infos.write(json.dumps(to_json(info), separators=(",", ":")) + "\n")

    def close(self) -> Path:
        """Finish the files and rename DIR.partial to DIR; returns DIR."""
        if self._closed:
            return self.directory
        self._closed = True
        for array in (self._frames, self._actions, self._camera):
            array.close()
        self._infos.close()
        starts = np.array([e["start"] for e in self.episodes] + [self._frames.rows], dtype=np.int64)
        np.save(self.tmp / STARTS, starts)
        index = {"version": CACHE_VERSION, "height": self.height, "width": self.width,
                 "num_frames": self._frames.rows, "episodes": self.episodes, "latents": None}
        (self.tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        if self.directory.exists() and self.overwrite:
            shutil.rmtree(self.directory)
        self.tmp.rename(self.directory)
        return self.directory

    def abort(self) -> None:
        """Stop and remove the unfinished cache."""
        if self._closed:
            return
        self._closed = True
        for f in (self._frames.file, self._actions.file, self._camera.file, self._infos):
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _vectors_and_camera(actions) -> tuple[np.ndarray, np.ndarray]:
    """(T, 25) vectors and (T, 2) exact camera degrees from T action dicts or from (T, 25) vectors."""
    if isinstance(actions, np.ndarray) or torch.is_tensor(actions):
        vectors = np.asarray(actions, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != actions_mod.ACTION_DIM:
            raise ValueError(f"action vectors must have shape (T, {actions_mod.ACTION_DIM}), got {vectors.shape}")
        camera = np.stack([actions_mod.from_vector(v)["camera"] for v in vectors]) if len(vectors) \
            else np.zeros((0, 2), np.float32)
        return vectors, camera
    actions = [actions_mod.validate(a) for a in actions]
    if not actions:
        return np.zeros((0, actions_mod.ACTION_DIM), np.float32), np.zeros((0, 2), np.float32)
    return (np.stack([actions_mod.to_vector(a) for a in actions]),
            np.stack([a["camera"] for a in actions]).astype(np.float32))


def write_cache(directory, trajectories: Iterable, overwrite: bool = False) -> Path:
    """Write a cache from Trajectory objects or (frames, actions, meta) tuples; the first sets the resolution."""
    writer = None
    try:
        for item in trajectories:
            if isinstance(item, Trajectory):
                frames, acts, infos = item.frames, item.actions, item.infos
                meta = {"name": item.name, "seed": item.seed, "source": item.source, "options": item.options}
            else:
                frames, acts, meta = item
                infos = None
            if writer is None:
                writer = CacheWriter(directory, width=frames.shape[2], height=frames.shape[1], overwrite=overwrite)
            writer.add_episode(frames, acts, meta, infos)
        if writer is None:
            raise ValueError(f"{directory}: no episodes to write")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer.close()


def write_latents(directory, batches: Iterable, shape: tuple, info: dict | None = None) -> Path:
    """Write float16 latents (N, *shape) for every frame of the cache in `directory`, in frame order.

    `batches` yields arrays (b, *shape); `info` (JSON values: normalisation, checkpoint, ...) goes into the index
    beside the shape. latents.npy is filled under a temporary name and renamed into place, then index.json is
    replaced: a killed write leaves the cache as it was.
    """
    cache = Cache(directory)
    tmp = cache.directory / (LATENTS + PARTIAL)
    writer = _GrowingNpy(tmp, tuple(shape), np.float16)
    try:
        for batch in batches:
            writer.append(np.asarray(batch, dtype=np.float16))
            if writer.rows > cache.num_frames:
                raise ValueError(f"{cache.directory}: more latents than the {cache.num_frames} frames")
        writer.close()
        if writer.rows != cache.num_frames:
            raise ValueError(f"{cache.directory}: {writer.rows} latents for {cache.num_frames} frames")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, cache.directory / LATENTS)
    finally:
        writer.file.close()
        tmp.unlink(missing_ok=True)
    index_path = cache.directory / INDEX
    index = json.loads(index_path.read_text())
    index["latents"] = {"shape": [int(d) for d in shape], "dtype": "float16", **to_json(info or {})}
    index_tmp = index_path.with_name(INDEX + PARTIAL)
    index_tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(index_tmp, index_path)
    return cache.directory / LATENTS


def _load_npy(path: Path, shape: tuple, dtype) -> np.ndarray:
    if not path.exists():
        raise CacheNotFoundError(f"{path}: missing from the cache")
    try:
        array = np.load(path, mmap_mode="r") if shape[0] > 0 else np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise CacheError(f"{path}: cannot be read as a .npy array, it may be truncated ({e})") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise CacheError(f"{path}: expected {np.dtype(dtype)} {shape}, found {array.dtype} {array.shape}")
    return array


class Cache:
    """An open cache directory: memory-mapped frames, actions and camera, episode offsets and metadata."""

    def __init__(self, directory, expect_resolution: tuple[int, int] | None = None):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not self.directory.is_dir():
            raise CacheNotFoundError(f"{self.directory}: no such cache directory")
        if not index_path.is_file():
            raise CacheNotFoundError(f"{index_path}: missing, {self.directory} is not a cache")
        try:
            index = json.loads(index_path.read_text())
            self.height, self.width = int(index["height"]), int(index["width"])
            self.num_frames = int(index["num_frames"])
            self.episodes: list[dict] = list(index["episodes"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{index_path}: not a valid cache index ({type(e).__name__}: {e})") from None
        if index.get("version") != CACHE_VERSION:
            raise CacheError(f"{index_path}: cache format version {index.get('version')!r}, "
                             f"this code reads {CACHE_VERSION}")
        if expect_resolution is not None and tuple(expect_resolution) != self.resolution:
            raise ResolutionMismatchError(f"{self.directory}: frames are {self.resolution} (height, width), "
                                          f"expected {tuple(expect_resolution)}")
        n = self.num_frames
        self.frames = _load_npy(self.directory / FRAMES, (n, self.height, self.width, 3), np.uint8)
        self.actions = _load_npy(self.directory / ACTIONS, (n, actions_mod.ACTION_DIM), np.float32)
        self.camera = _load_npy(self.directory / CAMERA, (n, 2), np.float32)
        self.episode_starts = np.load(self.directory / STARTS) if (self.directory / STARTS).exists() else None
        expected = [e.get("start") for e in self.episodes] + [n]
        if self.episode_starts is None or self.episode_starts.tolist() != expected:
            raise CacheError(f"{self.directory / STARTS}: missing or disagrees with {INDEX}")
        self.latent_info: dict | None = index.get("latents")
        self.latents = None if self.latent_info is None else _load_npy(
            self.directory / LATENTS, (n, *self.latent_info["shape"]), np.float16)  # (N, C, h, w)
        self._infos_at: list[int] | None = None

    @property
    def resolution(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        return self.height, self.width

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def __len__(self) -> int:
        return self.num_frames

    def episode_slice(self, e: int) -> slice:
        return slice(int(self.episode_starts[e]), int(self.episode_starts[e + 1]))

    def episode_actions(self, e: int) -> list[dict]:
        """Episode e's actions as dicts, camera exact in degrees."""
        out = []
        for vector, camera in zip(self.actions[self.episode_slice(e)], self.camera[self.episode_slice(e)]):
            action = actions_mod.from_vector(vector)
            action["camera"] = np.array(camera, dtype=np.float32)
            out.append(action)
        return out

    def episode_infos(self, e: int) -> list[dict]:
        """Episode e's env infos (lists where the engine has tuples are turned back into tuples)."""
        span = self.episode_slice(e)
        path = self.directory / INFOS
        if not path.exists():
            return [{} for _ in range(span.stop - span.start)]
        offsets = self._info_offsets()
        with open(path, "rb") as f:
            f.seek(offsets[e])
            lines = f.read(offsets[e + 1] - offsets[e]).decode().splitlines()
        return [_info_tuples(json.loads(line)) for line in lines]

    def _info_offsets(self) -> list[int]:
        """Byte offset in infos.jsonl of each episode's first line, and of the end."""
        if self._infos_at is None:
            path, wanted, offsets, position = self.directory / INFOS, set(self.episode_starts.tolist()), [], 0
            with open(path, "rb") as f:
                for i, line in enumerate(f):
                    if i in wanted:
                        offsets.append(position)
                    position += len(line)
                lines = i + 1 if position else 0
            if lines != self.num_frames:
                raise CacheError(f"{path}: {lines} lines for {self.num_frames} frames")
            self._infos_at = offsets + [position]
        return self._infos_at


def _info_tuples(info: dict) -> dict:
    for name in ("pos", "target_block"):
        if isinstance(info.get(name), list):
            info[name] = tuple(info[name])
    if "edits" in info:
        info["edits"] = [tuple(edit) for edit in info["edits"]]
    return info


class ClipDataset(Dataset):
    """Clips of `frames_per_clip` consecutive frames that never cross an episode boundary.

    Clip starts are every `stride` frames from each episode's first frame. An item is
    {"frames": uint8 (T, H, W, 3), "actions": float32 (T, 25), "episode": int, "start": frame in the episode},
    and with `latents=True` also "latents": float32 (T, C, h, w) (the cache must have been through mode=encode).
    The memory maps open lazily in each process, so the dataset pickles small and works with DataLoader
    workers. For a shuffled order fixed by a seed use `sampler(seed)` (or `shuffle_indices(seed)`).
    """

    def __init__(self, cache, frames_per_clip: int, stride: int = 1,
                 expect_resolution: tuple[int, int] | None = None, latents: bool = False):
        if int(frames_per_clip) != frames_per_clip or frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be a positive whole number, got {frames_per_clip!r}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive whole number, got {stride!r}")
        opened = cache if isinstance(cache, Cache) else Cache(cache, expect_resolution)
        if expect_resolution is not None and tuple(expect_resolution) != opened.resolution:
            raise ResolutionMismatchError(f"{opened.directory}: frames are {opened.resolution} (height, width), "
                                          f"expected {tuple(expect_resolution)}")
        self.directory, self.frames_per_clip, self.stride = opened.directory, int(frames_per_clip), int(stride)
        self.resolution = opened.resolution
        if latents and opened.latents is None:
            raise MissingLatentsError(opened.directory)
        self.latents = bool(latents)
        starts, episodes, offsets = [], [], []
        for e in range(opened.num_episodes):
            span = opened.episode_slice(e)
            local = np.arange(0, span.stop - span.start - self.frames_per_clip + 1, self.stride, dtype=np.int64)
            starts.append(span.start + local)
            offsets.append(local)
            episodes.append(np.full(len(local), e, dtype=np.int64))
        empty = np.zeros(0, np.int64)
        self._starts = np.concatenate(starts) if starts else empty      # global frame of each clip's start
        self._offsets = np.concatenate(offsets) if offsets else empty   # its frame within its episode
        self._episodes = np.concatenate(episodes) if episodes else empty
        self._cache = opened

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def clip_episodes(self) -> np.ndarray:
        """The episode of each clip, in index order."""
        return self._episodes

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # memory maps are reopened by each worker, never pickled
        return state

    def _opened(self) -> Cache:
        if self._cache is None:
            self._cache = Cache(self.directory)
        return self._cache

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        cache = self._opened()
        s = int(self._starts[i])
        span = slice(s, s + self.frames_per_clip)
        item = {"frames": torch.from_numpy(np.array(cache.frames[span])),      # (T, H, W, 3) uint8
                "actions": torch.from_numpy(np.array(cache.actions[span])),    # (T, 25) float32
                "episode": int(self._episodes[i]), "start": int(self._offsets[i])}
        if self.latents:
            item["latents"] = torch.from_numpy(cache.latents[span].astype(np.float32))  # (T, C, h, w)
        return item

    def shuffle_indices(self, seed: int) -> np.ndarray:
        """A permutation of the clip indices fixed by `seed`."""
        return np.random.default_rng(seed).permutation(len(self))

    def sampler(self, seed: int) -> RandomSampler:
        """A shuffling sampler for DataLoader whose order in every epoch is fixed by `seed`."""
        return RandomSampler(self, generator=torch.Generator().manual_seed(int(seed)))
