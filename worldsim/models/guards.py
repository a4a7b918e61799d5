"""Set a trained dynamics run's sampler guards from a latent cache, without training.

The guards are sampling settings drawn from the data, not weights: `guard_range` (each channel's frame-mean
percentiles, `latent_guard`) and `spread_floor` (each channel's spatial-std percentile, `spread_guard`). Training
records them when asked; this writes a copy of a finished run (its model and EMA weights, unchanged) whose config
carries them, to evaluate or ship:

    python -m worldsim.models.guards runs/br2 --data data/train/cache --spread-guard 5 --out runs/br2s

A percentile of 0 removes that guard; one left out keeps the run's.
"""
import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

from worldsim.data.cache import Cache
from worldsim.models.dynamics import DynamicsConfig
from worldsim.training.checkpoint import config_from_dict, read_json, write_json

NAMES = ("model", "ema")


def _spaced_frames(latents, max_frames: int) -> np.ndarray:
    """At most max_frames evenly spaced frames of `latents` (memory-mapped is fine), as float32."""
    return np.asarray(latents[::max(1, -(-len(latents) // max_frames))], dtype=np.float32)


def frame_mean_range(latents, percentile: float, max_frames: int = 20000) -> tuple:
    """guard_range of frames (N, C, h, w) (a cache's latents, memory-mapped is fine): the `percentile` and
    100 - `percentile` percentiles of each channel's spatial mean, over at most max_frames evenly spaced frames."""
    if len(latents) == 0:
        raise ValueError("frame_mean_range needs at least one frame")
    means = _spaced_frames(latents, max_frames).mean(axis=(2, 3))
    low, high = np.percentile(means, [percentile, 100 - percentile], axis=0)  # (C,) each
    return tuple(float(v) for v in np.concatenate([low, high]))


def frame_spread_floor(latents, percentile: float, max_frames: int = 20000) -> tuple:
    """spread_floor of frames (N, C, h, w) (memory-mapped is fine): the `percentile` percentile of each channel's
    spatial std, over at most max_frames evenly spaced frames."""
    if len(latents) == 0:
        raise ValueError("frame_spread_floor needs at least one frame")
    stds = _spaced_frames(latents, max_frames).std(axis=(2, 3))
    return tuple(float(v) for v in np.percentile(stds, percentile, axis=0))


def with_guards(run, data, out, latent_guard: float | None = None, spread_guard: float | None = None) -> dict:
    """Copy the run in RUN to OUT with its guards recomputed from the cache DATA's latents; returns the new
    config as a dict. OUT must be new (nothing there is overwritten)."""
    run, out = Path(run), Path(out)
    names = [n for n in NAMES if (run / f"{n}.json").is_file()]
    if not names:
        raise FileNotFoundError(f"{run}: no model.json or ema.json: not a dynamics run")
    missing = [f"{n}.safetensors" for n in names if not (run / f"{n}.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"{run}: {', '.join(missing)} missing beside its .json")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; give a new directory")
    latents = Cache(data).latents
    metas = {n: read_json(run / f"{n}.json") for n in names}
    config = config_from_dict(metas[names[0]]["config"], DynamicsConfig, source=str(run / f"{names[0]}.json"))
    shape = (config.latent_channels, config.latent_height, config.latent_width)
    if tuple(latents.shape[1:]) != shape:
        raise ValueError(f"{data}: latents are (C, h, w) = {tuple(latents.shape[1:])}, the run's model takes {shape}")
    changes = {}
    if latent_guard is not None:
        changes["latent_guard"] = latent_guard
        changes["guard_range"] = frame_mean_range(latents, latent_guard) if latent_guard > 0 else None
    if spread_guard is not None:
        changes["spread_guard"] = spread_guard
        changes["spread_floor"] = frame_spread_floor(latents, spread_guard) if spread_guard > 0 else None
    config = dataclasses.replace(config, **changes)  # checks the values
    out.mkdir(parents=True, exist_ok=True)
    record = {"from": str(run), "data": str(data), "latent_guard": latent_guard, "spread_guard": spread_guard}
    for name, meta in metas.items():
        shutil.copyfile(run / f"{name}.safetensors", out / f"{name}.safetensors")
        write_json(out / f"{name}.json", {**meta, "config": dataclasses.asdict(config), "guards": record})
    return dataclasses.asdict(config)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a dynamics run directory (model.json / ema.json and their weights)")
    parser.add_argument("--data", required=True, help="the latent cache the guards are measured on")
    parser.add_argument("--out", required=True, help="a new directory for the guarded copy")
    parser.add_argument("--latent-guard", type=float, default=None, help="frame-mean percentile (0: no guard)")
    parser.add_argument("--spread-guard", type=float, default=None, help="spatial-std percentile (0: no floor)")
    args = parser.parse_args(argv)
    try:
        config = with_guards(args.run, args.data, args.out, args.latent_guard, args.spread_guard)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.out}: {args.run} with latent_guard {config['latent_guard']}, spread_guard {config['spread_guard']}")


if __name__ == "__main__":
    main()
