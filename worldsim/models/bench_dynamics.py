"""Sampler speed: milliseconds per generated frame at batch 1 and frames/s at larger batches, decode included.

    python -m worldsim.models.bench_dynamics [--config tiny] [--steps 4] [--batches 1 16 64] [--threads 1]
                                             [--context-frames W] [--autoencoder cpu] [--out PATH]
                                             [--train-batch 64]   # also training tokens/s and MFU
                                             [--graphs off|on|both] # CUDA-graph replay of each step
                                             [--compile off|on|both] # the step under torch.compile

Weights are random (speed does not depend on them). Decode uses the autoencoder config named by
--autoencoder (configs/autoencoder/NAME.yaml, random weights) or a trained run directory; `none` times the
dynamics alone. The prompt fills the whole window, so every timed chunk reads a full (wrapped) ring, as in
a long play. Prints a table and writes JSON.
"""
import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from worldsim.models.dynamics import ACTION_DIM, DynamicsConfig, DynamicsModel
from worldsim.sampling import Sampler

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load_yaml_config(group: str, name: str, cls):
    return cls(**yaml.safe_load((CONFIGS / group / f"{name}.yaml").read_text()))


def make_decoder(spec: str, device):
    """A `decode(latents (B, C, h, w)) -> frames` callable, or None for --autoencoder none."""
    if spec == "none":
        return None
    from worldsim.models.autoencoder import Autoencoder, AutoencoderConfig
    if Path(spec).is_dir():
        from worldsim.models.train_autoencoder import load_autoencoder
        model = load_autoencoder(spec, device=device)
    else:
        model = Autoencoder(load_yaml_config("autoencoder", spec, AutoencoderConfig)).to(device)
    return model.eval().decode


def time_case(config, batch, steps, frames, warmup, decode, device, seed=0, graphs=False, dtype=torch.float32,
              compile=False):
    """Seconds per step() (one chunk) and per decode of that chunk, for each timed chunk; compile: the buffered
    step under torch.compile (Sampler(compile=True), graphs=True), compiled in the warm-up."""
    torch.manual_seed(seed)
    model = DynamicsModel(config).to(device, dtype)
    with torch.no_grad():
        for p in model.parameters():  # AdaLN-zero would make every output 0; timing wants real numbers
            p.add_(0.02 * torch.randn_like(p))
    sampler = Sampler(model, batch_size=batch, steps=steps, seed=seed, graphs=graphs or compile, compile=compile)
    c = config
    prompt = torch.randn(batch, c.context_frames, c.latent_channels, c.latent_height, c.latent_width, device=device,
                         dtype=dtype)
    sampler.reset(prompt, torch.zeros(batch, c.context_frames - 1, ACTION_DIM, device=device, dtype=dtype))
    action = torch.zeros(batch, c.chunk_frames, ACTION_DIM, device=device, dtype=dtype)
    step_s, decode_s = [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # the GPU work, not its launch
    with torch.inference_mode():
        for i in range(warmup + frames):
            t0 = time.perf_counter()
            x = sampler.step(action)
            sync()
            t1 = time.perf_counter()
            if decode is not None:
                decode(x.flatten(0, 1).float())
            sync()
            t2 = time.perf_counter()
            if i >= warmup:
                step_s.append(t1 - t0)
                decode_s.append(t2 - t1)
    return step_s, decode_s


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
H100_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM: the MFU denominator


def attention_pairs(config: DynamicsConfig, frames: int) -> int:
    """(query, key) token pairs the block-causal windowed mask allows in a clip of `frames` frames."""
    K, n = config.chunk_frames, config.tokens_per_frame
    window_chunks = max(1, config.context_frames // K)
    pairs = 0
    for f in range(frames):
        chunk = f // K
        first = max(0, chunk - window_chunks + 1) * K
        pairs += n * n * (min(frames, (chunk + 1) * K) - first)
    return pairs


def train_flops_per_clip(config: DynamicsConfig, model: DynamicsModel, frames: int) -> float:
    """Forward+backward FLOPs of one clip: 6·params·tokens for the matrices, 12·pairs·width per layer for attention."""
    tokens = frames * config.tokens_per_frame
    params = sum(p.numel() for p in model.parameters())
    return 6.0 * params * tokens + 12.0 * attention_pairs(config, frames) * config.n_embd * config.n_layer


def time_training(config: DynamicsConfig, batch: int, device, steps: int = 20, warmup: int = 5,
                  peak_tflops: float = H100_BF16_TFLOPS, compile: bool = False) -> dict:
    """Training throughput of flow_matching_loss + backward + AdamW on random clips of context_frames frames:
    bf16 autocast on CUDA (fp32 on the CPU), tokens/s and model FLOPs utilisation; `compile`: the model under
    torch.compile, as train.compile=true runs it (its compile happens in the untimed warm-up steps)."""
    from worldsim.models.objective import flow_matching_loss
    torch.manual_seed(0)
    model = DynamicsModel(config).to(device)
    net = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    c, T = config, config.context_frames
    latents = torch.randn(batch, T, c.latent_channels, c.latent_height, c.latent_width, device=device)
    actions = torch.zeros(batch, T, ACTION_DIM, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast:
            loss, _ = flow_matching_loss(net, config, latents, actions)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    flops = batch * train_flops_per_clip(config, model, T) / seconds
    return {"batch": batch, "compile": compile, "frames_per_clip": T, "ms_per_step": 1e3 * seconds,
            "tokens_per_s": batch * T * config.tokens_per_frame / seconds, "tflops": flops / 1e12,
            "mfu": flops / (peak_tflops * 1e12) if device.type == "cuda" else None}


def run(args, on_row=None) -> list[dict]:
    """Time each (batch, graphs, compile) case; `on_row(rows)` after each, so that a run stopped at its time limit
    keeps the cases it finished."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_yaml_config("dynamics", args.config, DynamicsConfig)
    if args.context_frames:
        config = dataclasses.replace(config, context_frames=args.context_frames)
    decode = make_decoder(args.autoencoder, device)
    rows = []
    modes = {"off": [False], "on": [True], "both": [False, True]}
    cases = []  # compiled, a step is always the buffered one (graphs): (b, False, True) is (b, True, True)
    for case in ((b, g or c, c) for b in args.batches for g in modes[args.graphs] for c in modes[args.compile]):
        if case not in cases:
            cases.append(case)
    for batch, graphs, compile in cases:
        chunks = max(5, math.ceil(args.frames / (batch * config.chunk_frames)))
        warmup = max(2, math.ceil(args.warmup / batch))
        step_s, decode_s = time_case(config, batch, args.steps, chunks, warmup, decode, device, graphs=graphs,
                                     dtype=DTYPES[args.dtype], compile=compile)
        frames_per_step = batch * config.chunk_frames
        dyn = statistics.median(step_s) / frames_per_step
        dec = statistics.median(decode_s) / frames_per_step
        total = statistics.median([a + b for a, b in zip(step_s, decode_s)]) / frames_per_step
        rows.append({"config": args.config, "batch": batch, "dtype": args.dtype,
                     "graphs": (graphs or compile) and device.type == "cuda", "compile": compile,
                     "steps": args.steps, "chunk_frames": config.chunk_frames,
                     "context_frames": config.context_frames, "ms_per_frame_dynamics": 1e3 * dyn,
                     "ms_per_frame_decode": 1e3 * dec, "ms_per_frame_total": 1e3 * total,
                     "frames_per_s": 1.0 / total, "ms_per_step_p90": 1e3 * sorted(step_s)[int(0.9 * len(step_s))]})
        if on_row is not None:
            on_row(rows)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="configs/dynamics/NAME.yaml")
    parser.add_argument("--steps", type=int, default=4, help="Euler steps per chunk")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--frames", type=int, default=60, help="timed frames per case (at least 5 chunks)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames first (at least 2 chunks)")
    parser.add_argument("--context-frames", type=int, default=0, help="override the config's window (0: keep)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--autoencoder", default="cpu", help="configs/autoencoder/NAME.yaml, a run dir, or none")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-batch", type=int, default=0, help="also time training at this batch (0: skip)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="the sampler's model and KV cache (play's world.precision); decode stays fp32")
    parser.add_argument("--skip-sampler", action="store_true", help="time only training")
    parser.add_argument("--train-compile", action="store_true", help="time training under torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="the MFU denominator")
    parser.add_argument("--graphs", choices=("off", "on", "both"), default="off",
                        help="Sampler(graphs=True): each step replays as a CUDA graph (on the CPU it runs eagerly)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="Sampler(compile=True): the buffered step under torch.compile (with graphs on CUDA), "
                             "compiled in the warm-up")
    parser.add_argument("--out", default="bench_results/dynamics.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "autoencoder": args.autoencoder,
            "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
            "timing": "median of perf_counter around Sampler.step and decode, each ended by a device "
                      "synchronize on CUDA; ring buffer wrapped"}

    def save(rows, training=None):
        out.write_text(json.dumps({"meta": meta, "rows": rows, "training": training}, indent=1) + "\n")

    def finished(rows):  # each case as it ends: a stage stopped at its time limit keeps what it measured
        r = rows[-1]
        print(f"batch {r['batch']}, graphs {'yes' if r['graphs'] else 'no'}, "
              f"compiled {'yes' if r['compile'] else 'no'}: "
              f"{r['ms_per_frame_total']:.2f} ms a frame "
              f"({r['ms_per_frame_dynamics']:.2f} dynamics, {r['ms_per_frame_decode']:.2f} decode), "
              f"{r['frames_per_s']:.1f} frames/s", flush=True)
        save(rows)

    rows = [] if args.skip_sampler else run(args, on_row=finished)
    training = None
    if args.train_batch:
        config = load_yaml_config("dynamics", args.config, DynamicsConfig)
        training = time_training(config, args.train_batch, torch.device(args.device), peak_tflops=args.peak_tflops,
                                 compile=args.train_compile)

    window = load_yaml_config("dynamics", args.config, DynamicsConfig).context_frames
    table = Table(title=f"dynamics sampler, {args.config} (window {args.context_frames or window}), "
                        f"{args.steps} Euler steps per chunk (commit fused), {args.dtype}, "
                        f"decode: {args.autoencoder}, {args.device}, {torch.get_num_threads()} threads")
    for col in ("batch", "CUDA graph", "compiled", "ms/frame dynamics", "ms/frame decode", "ms/frame total",
                "frames/s", "p90 ms/step"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["batch"]), "yes" if r["graphs"] else "no", "yes" if r["compile"] else "no",
                      f"{r['ms_per_frame_dynamics']:.2f}", f"{r['ms_per_frame_decode']:.2f}",
                      f"{r['ms_per_frame_total']:.2f}", f"{r['frames_per_s']:.1f}", f"{r['ms_per_step_p90']:.2f}")
    if rows:
        Console().print(table)
    if training is not None:
        mfu = "n/a (CPU)" if training["mfu"] is None else f"{100 * training['mfu']:.1f}% of {args.peak_tflops:g} TFLOP/s"
        print(f"training, batch {training['batch']} × {training['frames_per_clip']} frames: "
              f"{training['ms_per_step']:.1f} ms/step, {training['tokens_per_s']:,.0f} tokens/s, "
              f"{training['tflops']:.1f} TFLOP/s, MFU {mfu}")
    save(rows, training)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
