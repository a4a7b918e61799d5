"""Conversion both ways between a directory of interchange trajectories and a training cache.

    python -m worldsim.data.convert SRC [SRC ...] DST   (run_world.py: mode=convert convert.src=... convert.dst=...)

The direction follows SRC: a cache (it has index.json) becomes trajectories, a directory of trajectories
becomes a cache. Several trajectory directories join into one cache, in the order given; an episode whose name
an earlier directory already used is renamed DIRNAME_NAME. An episode that cannot be read is skipped with a
warning naming it; the rest convert.
"""
import os
import sys
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from worldsim.data.cache import Cache, CacheWriter, is_cache
from worldsim.data.interchange import (DEFAULT_FPS, TrajectoryError, TrajectoryNotFoundError, TrajectoryWriter,
                                       list_trajectories, read_trajectory)
from worldsim.data.vpt import SOURCES


def _read_quietly(stem):
    """(trajectory, None) or (None, the error) for one trajectory; run in reader threads."""
    try:
        return read_trajectory(stem, warn_unfinished=False), None  # an unfinished recording's prefix is expected
    except (TrajectoryError, FileNotFoundError) as e:
        return None, e


def _read_ahead(stems, threads: int):
    """(stem, trajectory, error) in order, decoded by `threads` threads at most 2·threads ahead (PyAV decodes
    without the GIL, so the mp4s of a directory decode in parallel while memory stays bounded)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending, queue = deque(), iter(stems)
        for stem in islice(queue, 2 * threads):
            pending.append((stem, pool.submit(_read_quietly, stem)))
        while pending:
            stem, future = pending.popleft()
            for more in islice(queue, 1):
                pending.append((more, pool.submit(_read_quietly, more)))
            yield (stem, *future.result())


def interchange_to_cache(src_dir, cache_dir, overwrite: bool = False, threads: int | None = None) -> dict:
    """Read every trajectory in `src_dir` (a directory, or a list of them joined in order; unfinished recordings
    give their prefix) into a new cache, decoding with `threads` threads (default: one per core, at most 8); the
    cache is the same for any number."""
    dirs = [src_dir] if isinstance(src_dir, (str, os.PathLike)) else list(src_dir)
    stems = [stem for directory in dirs for stem in list_trajectories(directory, include_unfinished=True)]
    threads = threads or min(8, os.cpu_count() or 1)
    writer, skipped, frames, names = None, [], 0, set()
    try:
        for stem, trajectory, error in _read_ahead(stems, threads):
            if error is not None:
                warnings.warn(f"skipping trajectory {stem}: {error}", stacklevel=2)
                skipped.append(str(stem))
                continue
            height, width = trajectory.frames.shape[1:3]
            if writer is None:
                writer = CacheWriter(cache_dir, width, height, overwrite=overwrite)
            elif (height, width) != (writer.height, writer.width):
                warnings.warn(f"skipping trajectory {stem}: {width}×{height} frames, the cache is "
                              f"{writer.width}×{writer.height}", stacklevel=2)
                skipped.append(str(stem))
                continue
            name = trajectory.name if trajectory.name not in names else f"{Path(stem).parent.name}_{trajectory.name}"
            if name in names:
                raise TrajectoryError(f"{stem}: the episode name {name!r} is taken twice; rename one directory")
            names.add(name)
            meta = {"name": name, "seed": trajectory.seed, "source": trajectory.source,
                    "options": trajectory.options}
            writer.add_episode(trajectory.frames, trajectory.actions, meta, trajectory.infos)
            frames += len(trajectory)
        if writer is None:
            raise TrajectoryError(f"{', '.join(map(str, dirs))}: no readable trajectories to convert")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()
    return {"direction": "interchange → cache", "src": ", ".join(map(str, dirs)), "dst": str(cache_dir),
            "episodes": len(stems) - len(skipped), "frames": frames, "skipped": skipped}


def cache_to_interchange(cache_dir, out_dir) -> dict:
    """Write every episode of a cache as NAME.mp4 + NAME.jsonl + NAME-options.json in `out_dir`."""
    cache = Cache(cache_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = 0
    for e, episode in enumerate(cache.episodes):
        options = dict(episode.get("options") or {})
        for name in ("resolution", "fps", "source", "seed", "versions", "frames", "complete", "pix_fmt", "crf"):
            options.pop(name, None)
        source = episode.get("source") if episode.get("source") in SOURCES else "engine"
        fps = (episode.get("options") or {}).get("fps", DEFAULT_FPS)
        name = episode.get("name") or f"episode-{e:05d}"
        span = cache.episode_slice(e)
        with TrajectoryWriter(out_dir / name, cache.width, cache.height, fps=fps, source=source,
                              seed=episode.get("seed"), options=options) as writer:
            for frame, action, info in zip(cache.frames[span], cache.episode_actions(e), cache.episode_infos(e)):
                writer.write(np.asarray(frame), action, info)
        frames += span.stop - span.start
    return {"direction": "cache → interchange", "src": str(cache_dir), "dst": str(out_dir),
            "episodes": cache.num_episodes, "frames": frames, "skipped": []}


def convert(src, dst, overwrite: bool = False) -> dict:
    """Convert `src` (a cache, a directory of trajectories, or a list of such directories to join) into the other
    form at `dst`; prints a summary."""
    sources = [Path(src)] if isinstance(src, (str, os.PathLike)) else [Path(s) for s in src]
    if not sources:
        raise ValueError("convert needs at least one source")
    for path in sources:
        if not path.exists():
            raise TrajectoryNotFoundError(f"{path}: no such file or directory")
    caches = [path for path in sources if is_cache(path)]
    if caches and len(sources) > 1:
        raise ValueError(f"only directories of trajectories join into one cache; {caches[0]} is a cache "
                         "(convert it to trajectories first)")
    if caches:
        summary = cache_to_interchange(sources[0], dst)
    else:
        summary = interchange_to_cache(sources, dst, overwrite=overwrite)
    skipped = f", skipped {len(summary['skipped'])} unreadable" if summary["skipped"] else ""
    print(f"converted {summary['src']} ({summary['direction']}) to {summary['dst']}: "
          f"{summary['episodes']} episodes, {summary['frames']} frames{skipped}")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python -m worldsim.data.convert SRC [SRC ...] DST", file=sys.stderr)
        return 2
    try:
        convert(argv[:-1] if len(argv) > 2 else argv[0], argv[-1])
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
