"""The flow-matching loss of a dynamics checkpoint on fixed clips of a cache: prints it, saves JSON.

    python -m worldsim.eval.loss --checkpoint assets/world/dynamics --data data/heldout/cache
    python -m worldsim.eval.loss --checkpoint runs/dyn --data data/train/cache --episodes 0 30

The clips (every `--stride` frames, then a fixed draw of `--clips` of them), their noise levels and their noise
are the same for every checkpoint, so two checkpoints' numbers are paired: the way to tell whether a run fits
held-out worlds better, or how far its training worlds are ahead of unseen ones (overfitting), in a minute.
The loss is the training objective's, with the checkpoint's own settings (objective.flow_matching_loss).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def clip_loss(model, cache, *, episodes: tuple[int, int] | None = None, clips: int = 192, stride: int = 50,
              repeats: int = 2, batch: int = 16, seed: int = 0) -> dict:
    """Mean loss over `repeats` draws of noise on `clips` clips of the cache's episodes [lo, hi), with its
    standard error over batches."""
    from worldsim.data.cache import ClipDataset
    from worldsim.models.objective import flow_matching_loss
    config = model.config
    dataset = ClipDataset(cache, config.context_frames, stride=stride, latents=True)
    episode = dataset.clip_episodes
    lo, hi = episodes if episodes is not None else (0, int(episode.max()) + 1 if len(episode) else 0)
    chosen = np.flatnonzero((episode >= lo) & (episode < hi))
    if len(chosen) == 0:
        raise ValueError(f"{cache}: no clip of {config.context_frames} frames in episodes {lo}..{hi - 1} "
                         f"(the cache has {int(episode.max()) + 1 if len(episode) else 0} long enough)")
    chosen = np.sort(np.random.default_rng(seed).choice(chosen, size=min(clips, len(chosen)), replace=False))
    model.eval()
    losses = []
    for r in range(repeats):
        generator = torch.Generator().manual_seed(seed + r)
        for b in range(0, len(chosen), batch):
            items = [dataset[int(i)] for i in chosen[b:b + batch]]
            latents = torch.stack([item["latents"] for item in items])
            actions = torch.stack([item["actions"] for item in items])
            losses.append(flow_matching_loss(model, config, latents, actions, generator)[0].item())
    losses = np.asarray(losses)
    return {"loss": float(losses.mean()), "standard_error": float(losses.std() / np.sqrt(len(losses))),
            "clips": int(len(chosen)), "episodes": [int(lo), int(hi)], "repeats": repeats, "stride": stride,
            "seed": seed}


def main(argv=None) -> dict:
    from worldsim.models.dynamics import load_dynamics
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a dynamics run or a world's dynamics/ directory "
                        "(its EMA weights when it has them)")
    parser.add_argument("--data", required=True, help="a training cache with latents (mode=encode)")
    parser.add_argument("--episodes", type=int, nargs=2, metavar=("FIRST", "END"),
                        help="the cache's episodes FIRST .. END - 1 (default: all)")
    parser.add_argument("--clips", type=int, default=192)
    parser.add_argument("--stride", type=int, default=50, help="frames between candidate clip starts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="loss.json", help="JSON path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    directory = Path(args.checkpoint)
    name = "ema" if (directory / "ema.safetensors").exists() else "model"
    result = clip_loss(load_dynamics(directory, name=name), args.data, clips=args.clips, stride=args.stride,
                       episodes=tuple(args.episodes) if args.episodes else None)
    result.update(checkpoint=str(directory), weights=name, data=str(args.data))
    print(f"{directory} ({name}) on {result['clips']} clips of {args.data}, episodes {result['episodes'][0]}.."
          f"{result['episodes'][1] - 1}: loss {result['loss']:.4f} ± {result['standard_error']:.4f}")
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    from worldsim.training.checkpoint import CheckpointError
    try:
        main()
    except (FileNotFoundError, CheckpointError, ValueError) as e:  # bad input: its message, not a traceback
        raise SystemExit(f"error: {e}") from None
