"""Data benchmarks: clip loading from the training cache on one core, and mp4 encoding/decoding in the writer.

    python -m worldsim.data.bench [CACHE_DIR] [--out PATH]    prints a table and saves bench_results/data.json
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from worldsim.data.cache import Cache, ClipDataset, write_cache
from worldsim.data.interchange import TrajectoryWriter, read_trajectory
from worldsim.engine import actions

DEFAULT_OUT = "bench_results/data.json"


def _synthetic_cache(directory: Path, resolution: int, frames: int, episode_length: int = 256) -> Path:
    """A cache of random frames: loading speed does not depend on what the pixels show."""
    rng = np.random.default_rng(0)
    episodes = []
    for e, start in enumerate(range(0, frames, episode_length)):
        n = min(episode_length, frames - start)
        episodes.append((rng.integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8),
                         rng.random((n, actions.ACTION_DIM), dtype=np.float32), {"name": f"ep{e}"}))
    return write_cache(directory, episodes)


def time_clip_loading(cache_dir, frames_per_clip: int, batch_size: int, epochs: int, seed: int = 0) -> dict:
    """Frames/s through a shuffled DataLoader with no workers and one torch thread (after one warm-up pass)."""
    dataset = ClipDataset(cache_dir, frames_per_clip=frames_per_clip, stride=frames_per_clip // 2 or 1)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=dataset.sampler(seed), num_workers=0)
    for _ in loader:  # warm the page cache: this measures loading, not the disk
        pass
    start, frames = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            frames += batch["frames"].shape[0] * batch["frames"].shape[1]
    seconds = time.perf_counter() - start
    height, width = dataset.resolution
    return {"case": f"clip loading {height}x{width}, T={frames_per_clip}, batch {batch_size}, 0 workers, 1 thread",
            "frames": frames, "seconds": seconds, "frames_per_s": frames / seconds}


def bench_clip_loading(cache_dir=None, frames_per_clip: int = 16, batch_size: int = 16, resolution: int = 128,
                       num_frames: int = 2048, epochs: int = 3, out: str | Path | None = DEFAULT_OUT,
                       encode: bool = True, console: Console | None = None) -> list[dict]:
    """Time clip loading from `cache_dir` (a synthetic cache when None) and, if `encode`, mp4 writing at
    `resolution`; print a table, save JSON to `out` (None: don't) and return the rows."""
    console = console or Console()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if cache_dir is None:
            cache_dir = _synthetic_cache(Path(tmp) / "cache", resolution, num_frames)
        rows.append(time_clip_loading(cache_dir, frames_per_clip, batch_size, epochs))
        rows[-1]["cache_frames"] = len(Cache(cache_dir))
        if encode:
            frames, acts, infos = engine_frames(resolution, 100)
            for pix_fmt in ("yuv444p", "yuv420p"):
                rows += time_encoding(Path(tmp) / pix_fmt, frames, acts, infos, pix_fmt, repeats=10)
    table = Table(title="data benchmarks")
    for column in ("case", "frames", "seconds", "frames/s", "PSNR dB", "KB/frame"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for row in rows:
        table.add_row(row["case"], str(row["frames"]), f"{row['seconds']:.2f}", f"{row['frames_per_s']:,.0f}",
                      f"{row['psnr_db']:.1f}" if "psnr_db" in row else "",
                      f"{row['kb_per_frame']:.1f}" if "kb_per_frame" in row else "")
    console.print(table)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"torch_threads": 1, "rows": rows}, indent=2) + "\n")
        console.print(f"saved {out}")
    return rows


def engine_frames(resolution: int, steps: int, seed: int = 0):
    """Frames, actions and infos of the engine walking and turning (real textures for the encoder)."""
    from worldsim.engine.env import VoxelEnv
    env = VoxelEnv(width=resolution, height=resolution)
    obs, info = env.reset(seed=seed)
    frames, acts, infos = [], [], []
    for t in range(steps):
        action = {"forward": 1, "jump": int(t % 17 == 0), "camera": np.array([np.sin(t / 9), 4.0], np.float32)}
        frames.append(obs), acts.append(action), infos.append(info)
        obs, _, _, _, info = env.step(action)
    return np.stack(frames), acts, infos


def time_encoding(stem: Path, frames: np.ndarray, acts: list, infos: list, pix_fmt: str, repeats: int) -> list[dict]:
    """Rows for TrajectoryWriter (encode + jsonl + close) on `frames` written `repeats` times, with the PSNR
    and size of the result, and for read_trajectory of it (decode + parse)."""
    height, width = frames.shape[1:3]
    start = time.perf_counter()
    with TrajectoryWriter(stem, width, height, pix_fmt=pix_fmt) as writer:
        for _ in range(repeats):
            for frame, action, info in zip(frames, acts, infos):
                writer.write(frame, action, info)
    seconds = time.perf_counter() - start
    n = repeats * len(frames)
    start = time.perf_counter()
    decoded = read_trajectory(stem).frames
    decode_seconds = time.perf_counter() - start
    mse = np.mean((decoded[: len(frames)].astype(np.float64) - frames) ** 2)
    size = stem.with_name(stem.name + ".mp4").stat().st_size
    return [{"case": f"mp4 writing {height}x{width} {pix_fmt} (engine frames, encoder threads=1)", "frames": n,
             "seconds": seconds, "frames_per_s": n / seconds, "psnr_db": float(10 * np.log10(255 ** 2 / mse)),
             "kb_per_frame": size / n / 1024},
            {"case": f"mp4 reading {height}x{width} {pix_fmt} (read_trajectory)", "frames": n,
             "seconds": decode_seconds, "frames_per_s": n / decode_seconds}]


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="Clip loading from a training cache on one core and mp4 "
                                     "encoding/decoding in the writer; prints a table and saves JSON.")
    parser.add_argument("cache", nargs="?", help="a training cache directory (default: a synthetic one)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the JSON written")
    args = parser.parse_args(argv)
    bench_clip_loading(args.cache, out=args.out)


if __name__ == "__main__":
    main()
