"""A quick held-out check of a dynamics run on recorded clips, without the engine: prints a table, saves JSON.

    python -m worldsim.eval.clips --checkpoint runs/dyn --autoencoder runs/ae --data data/heldout/cache \
        --steps 2 --context-noise 0.0 [--spread-seeds 8]

From clips spread evenly over each episode of a training cache (held-out seeds), the model is prompted with
the clip's first frames (encoded) and rolls on with the recorded actions, all clips as one batch. At each
horizon its decoded frame is scored (PSNR, the eval's own metric) against the recorded frame, beside copying
the last prompt frame and the autoencoder's reconstruction; the mean brightness difference shows drift. A
minute on the CPU where `mode=eval` takes several: for choosing sampling settings and checkpoints, with
`mode=eval` (engine twin, action following, consistency, stability) for the final word.

With `--spread-seeds N` it also draws each clip's next frame under N noise seeds (`sample_spread`): the spread of
those draws against the error of their mean says whether the sampler samples the frame or averages it.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from worldsim.eval import metrics


def clip_starts(cache, span: int, per_episode: int) -> list[int]:
    """First frames of `per_episode` clips of `span` frames spread evenly over each episode long enough."""
    starts = []
    for e in range(cache.num_episodes):
        episode = cache.episode_slice(e)
        if episode.stop - episode.start >= span:
            starts += sorted(set(np.linspace(episode.start, episode.stop - span, per_episode).astype(int).tolist()))
    if not starts:
        raise ValueError(f"no episode of {cache.directory} holds a clip of {span} frames (prompt + horizon)")
    return starts


@torch.no_grad()
def rollout_clips(dynamics, autoencoder, cache, *, prompt: int = 8, horizons=(1, 4, 16, 64), per_episode: int = 8,
                  steps: int | None = None, seed: int = 0) -> dict:
    """PSNR per horizon of the model's rollouts, copy-last and the autoencoder, over clips of `cache`."""
    from worldsim.models.autoencoder import frames_to_float, to_uint8
    from worldsim.sampling import Sampler
    horizons = sorted(int(h) for h in horizons)
    span = prompt + horizons[-1]
    starts = clip_starts(cache, span, per_episode)
    frames = np.stack([np.asarray(cache.frames[s:s + span]) for s in starts])  # (N, span, H, W, 3) uint8
    acts = torch.from_numpy(np.stack([np.asarray(cache.actions[s:s + span]) for s in starts])).float()
    N = len(starts)
    encode = lambda x: autoencoder.encode(frames_to_float(torch.from_numpy(x), autoencoder.config))
    decode = lambda z: to_uint8(autoencoder.decode(z)).numpy()
    latents = torch.stack([encode(frames[i, :prompt]) for i in range(N)])  # (N, P, C, h, w)
    sampler = Sampler(dynamics, batch_size=N, steps=steps, seed=seed)
    sampler.reset(latents, acts[:, :prompt - 1])
    rows = {}
    for h in range(1, horizons[-1] + 1):
        z = sampler.step(acts[:, prompt - 2 + h])  # the action taken at the frame before the new one
        if h not in horizons:
            continue
        truth, made = frames[:, prompt - 1 + h], decode(z[:, 0])
        per_clip = metrics.psnr(made, truth)
        rows[str(h)] = {
            "model": float(per_clip.mean()),
            "copy_last": float(metrics.psnr(frames[:, prompt - 1], truth).mean()),
            "autoencoder": float(metrics.psnr(decode(encode(truth)), truth).mean()),
            "brightness_difference": float(made.astype(np.float32).mean() - truth.astype(np.float32).mean()),
            "model_per_clip": [round(float(p), 3) for p in per_clip],  # for paired comparisons of two runs
        }
    return {"clips": N, "prompt_frames": prompt, "steps": sampler.steps,
            "context_noise": dynamics.config.context_noise, "sample_shift": dynamics.config.sample_shift,
            "psnr": rows}


@torch.no_grad()
def sample_spread(dynamics, autoencoder, cache, *, prompt: int = 8, per_episode: int = 8, steps=(1, 2, 4, 8),
                  seeds=range(8)) -> dict:
    """Whether the sampler draws the next frame or averages it: from each clip's prompt, the next frame's latents
    under every noise seed in `seeds`, for each count of Euler steps. Per count, over all latent elements:
    - spread: their variance across the seeds; error: the mean square distance of their mean from the recorded
      frame's latents; ratio = spread / error. Samples of a right posterior have a spread equal to the error of
      their mean (ratio 1); a sampler that returns the posterior mean has none (ratio 0) and drops the part of
      every change it cannot predict, which over a long run is a haze;
    - change_made, change_real: the mean square change from the last prompt frame, made and recorded;
    - std_made, std_real: the frames' spatial standard deviation of latents per channel (contrast), averaged."""
    from worldsim.models.autoencoder import frames_to_float
    from worldsim.sampling import Sampler
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("sample_spread needs at least one noise seed")
    starts = clip_starts(cache, prompt + 1, per_episode)
    frames = np.stack([np.asarray(cache.frames[s:s + prompt + 1]) for s in starts])  # (N, P + 1, H, W, 3)
    acts = torch.from_numpy(np.stack([np.asarray(cache.actions[s:s + prompt]) for s in starts])).float()
    latents = torch.stack([autoencoder.encode(frames_to_float(torch.from_numpy(f), autoencoder.config))
                           for f in frames])                                          # (N, P + 1, C, h, w)
    real, last = latents[:, prompt], latents[:, prompt - 1]
    rows = {}
    for count in steps:
        made = []
        for seed in seeds:
            sampler = Sampler(dynamics, batch_size=len(starts), steps=int(count), seed=seed)
            sampler.reset(latents[:, :prompt], acts[:, :prompt - 1])
            made.append(sampler.step(acts[:, prompt - 1])[:, 0])
        made = torch.stack(made)                                                      # (S, N, C, h, w)
        spread = made.var(dim=0, unbiased=False).mean().item() if len(seeds) > 1 else 0.0
        error = (made.mean(dim=0) - real).pow(2).mean().item()
        rows[str(count)] = {"spread": spread, "error": error, "ratio": spread / error if error > 0 else None,
                            "change_made": (made - last).pow(2).mean().item(),
                            "change_real": (real - last).pow(2).mean().item(),
                            "std_made": made.flatten(3).std(dim=-1).mean().item(),
                            "std_real": real.flatten(2).std(dim=-1).mean().item()}
    return {"clips": len(starts), "seeds": seeds, "steps": rows}


def main(argv=None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from worldsim.data.cache import Cache
    from worldsim.envs.world_model import load_world
    from worldsim.models.dynamics_config import with_sampling
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="dynamics run directory (its EMA weights when saved), "
                                                            "or a world directory")
    parser.add_argument("--autoencoder", help="autoencoder run directory (not needed for a world directory)")
    parser.add_argument("--data", required=True, help="a training cache of held-out episodes")
    parser.add_argument("--steps", type=int, help="Euler steps per frame (default: the model's)")
    parser.add_argument("--context-noise", type=float, help="level finished frames enter the cache at "
                                                            "(default: the model's)")
    parser.add_argument("--shift", type=float, help="shift of the steps' levels (default: the model's)")
    parser.add_argument("--start", type=float, help="level the steps start from, 1 from noise (default: the model's)")
    parser.add_argument("--idle-start", type=float, help="the start of frames whose action does nothing, 0: --start "
                                                         "(default: the model's)")
    parser.add_argument("--idle-turn", type=float, help="the most camera move, degrees per tick, of an idle action "
                                                        "(default: the model's)")
    parser.add_argument("--keep-view", action=argparse.BooleanOptionalAction, default=None,
                        help="frames whose action holds no button keep the view they know (default: the model's)")
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--per-episode", type=int, default=8, help="clips per episode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spread-seeds", type=int, default=0,
                        help="> 0: also measure whether the sampler draws or averages the next frame (sample_spread) "
                             "over this many noise seeds")
    parser.add_argument("--spread-steps", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="Euler step counts of the spread measure")
    parser.add_argument("--commit-last-step", action=argparse.BooleanOptionalAction, default=None,
                        help="each frame enters the caches from its last Euler step's pass, not a commit pass "
                             "(default: the model's)")
    parser.add_argument("--out", help="JSON path (default: clips.json in the checkpoint directory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dynamics, autoencoder = load_world(args.checkpoint, args.autoencoder)
    dynamics.config = with_sampling(dynamics.config, context_noise=args.context_noise, sample_shift=args.shift,
                                    sample_start=args.start, idle_start=args.idle_start, idle_turn=args.idle_turn,
                                    keep_view=args.keep_view, commit_last_step=args.commit_last_step)
    cache = Cache(args.data, expect_resolution=(autoencoder.config.height, autoencoder.config.width))
    result = rollout_clips(dynamics.eval(), autoencoder.eval(), cache, prompt=args.prompt, horizons=args.horizons,
                           per_episode=args.per_episode, steps=args.steps)
    result.update(checkpoint=args.checkpoint, autoencoder=args.autoencoder, data=args.data)
    table = Table(title=f"PSNR dB on {result['clips']} clips of {args.data} ({result['steps']} steps, shift "
                        f"{result['sample_shift']}, context noise {result['context_noise']})")
    for column in ("world", *(f"t+{h}" for h in result["psnr"])):
        table.add_column(column, justify="right")
    for name in ("model", "copy_last", "autoencoder", "brightness_difference"):
        table.add_row(name, *(f"{row[name]:.2f}" for row in result["psnr"].values()))
    Console().print(table)
    if args.spread_seeds > 0:
        result["spread"] = sample_spread(dynamics, autoencoder, cache, prompt=args.prompt,
                                         per_episode=args.per_episode, steps=args.spread_steps,
                                         seeds=range(args.spread_seeds))
        table = Table(title=f"the next frame's latents over {args.spread_seeds} noise seeds: spread across seeds "
                            "against the error of their mean (1: draws, 0: averages)")
        names = ("spread", "error", "ratio", "change_made", "change_real", "std_made", "std_real")
        for column in ("steps", *names):
            table.add_column(column, justify="right")
        for count, row in result["spread"]["steps"].items():
            table.add_row(count, *("-" if row[name] is None else f"{row[name]:.3f}" for name in names))
        Console().print(table)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "clips.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:  # missing or mismatched inputs: one line naming them
        raise SystemExit(f"error: {e}") from None
