"""Autoencoder benchmark: held-out PSNR/SSIM of a trained run, and decode speed (prints a table, saves JSON).

    python -m worldsim.models.bench_autoencoder --checkpoint runs/ae_cpu --data data/ae_heldout/cache

Quality is measured on a cache of frames from world seeds never used in training. Speed: decode of one frame
at batch 1 on this CPU (torch.inference_mode, channels_last, median of timed calls) with 1 and with 2 threads
(when another process holds a core, two threads wait for each other and one thread is much faster), and on CUDA
when there is one, ms at batch 1 and frames/s at batch 256 (CUDA events, after warm-up), eagerly under bf16
autocast and replayed as a CUDA graph (GraphedDecode, fp32: how play decodes on a GPU).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from worldsim.data.cache import Cache
from worldsim.models.autoencoder import Autoencoder, flops_per_decode, frames_to_float, num_params, psnr, ssim
from worldsim.models.train_autoencoder import load_autoencoder

CPU_THREADS = (1, 2)  # the development machines have 2 cores, often shared


def heldout_quality(model: Autoencoder, cache_dir, frames: int, batch_size: int = 64) -> dict:
    """Mean PSNR and SSIM of reconstructions of `frames` frames spread evenly over the cache."""
    cache = Cache(cache_dir, expect_resolution=(model.config.height, model.config.width))
    picks = np.linspace(0, cache.num_frames - 1, min(frames, cache.num_frames)).round().astype(int)
    psnrs, ssims = [], []
    with torch.inference_mode():
        for i in range(0, len(picks), batch_size):
            x = frames_to_float(torch.from_numpy(np.array(cache.frames[picks[i:i + batch_size]])), model.config)
            x = x.to(model.latent_std.device)
            recon = model.decode(model.encode(x))
            psnrs.append(psnr(recon, x).cpu())
            ssims.append(ssim(recon, x).cpu())
    p, s = torch.cat(psnrs), torch.cat(ssims)
    return {"frames": len(picks), "psnr_db": p.mean().item(), "psnr_db_min": p.min().item(),
            "ssim": s.mean().item(), "ssim_min": s.min().item(),
            "seeds": sorted({e.get("seed") for e in cache.episodes})}


def time_cpu_decode(model: Autoencoder, threads: int, calls: int = 200, warmup: int = 20) -> dict:
    """Median and p90 ms to decode one frame at batch 1 on the CPU with `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = model.cpu().to(memory_format=torch.channels_last)
    z = torch.randn(1, *model.config.latent_shape).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(warmup + calls):
            start = time.perf_counter()
            model.decode(z)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    torch.set_num_threads(previous)
    times_ms = np.array(times) * 1e3
    return {"decode_ms_median": float(np.median(times_ms)), "decode_ms_p90": float(np.percentile(times_ms, 90)),
            "threads": threads}


def time_cuda(model: Autoencoder, batch: int, calls: int = 50) -> float:
    """ms per decode call of `batch` latents on CUDA (bf16 autocast, CUDA events)."""
    model = model.cuda()
    z = torch.randn(batch, *model.config.latent_shape, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(10):
            model.decode(z)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            model.decode(z)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def time_cuda_graph(model: Autoencoder, batch: int, calls: int = 200) -> float:
    """ms per decode of `batch` latents on CUDA replayed as a CUDA graph (GraphedDecode, fp32 weights)."""
    from worldsim.models.autoencoder import GraphedDecode
    decode = GraphedDecode(model.cuda().float())
    z = torch.randn(batch, *model.config.latent_shape, device="cuda")
    for _ in range(10):
        decode(z)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        decode(z)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def bench(checkpoint: str, data: str | None, frames: int, out: str) -> dict:
    model = load_autoencoder(checkpoint)
    meta = json.loads((Path(checkpoint) / "model.json").read_text())
    result = {"checkpoint": checkpoint, "config": meta["config"], "step": meta.get("step"),
              "params_encoder": num_params(model.encoder), "params_decoder": num_params(model.decoder),
              "decode_mflop": flops_per_decode(model.config) / 1e6, "latent_shape": list(model.config.latent_shape)}
    if data:
        result["heldout"] = heldout_quality(model, data, frames)
    result["cpu"] = [time_cpu_decode(model, threads) for threads in CPU_THREADS]
    if torch.cuda.is_available():
        result["cuda"] = {"device": torch.cuda.get_device_name(), "decode_ms_batch1": time_cuda(model, 1),
                          "frames_per_s_batch256": 256 / (time_cuda(model, 256) / 1e3),
                          "decode_ms_batch1_graph_fp32": time_cuda_graph(model, 1),
                          "frames_per_s_batch256_graph_fp32": 256 / (time_cuda_graph(model, 256) / 1e3)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    show(result, out)
    return result


def show(result: dict, out: str) -> None:
    table = Table(title=f"autoencoder {result['checkpoint']} (step {result['step']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("latents (C, h, w)", str(tuple(result["latent_shape"])))
    table.add_row("parameters encoder / decoder", f"{result['params_encoder']:,} / {result['params_decoder']:,}")
    table.add_row("decode MFLOP per frame", f"{result['decode_mflop']:.0f}")
    if "heldout" in result:
        h = result["heldout"]
        table.add_row(f"held-out PSNR, {h['frames']} frames (min)", f"{h['psnr_db']:.2f} dB ({h['psnr_db_min']:.2f})")
        table.add_row("held-out SSIM (min)", f"{h['ssim']:.4f} ({h['ssim_min']:.4f})")
    for c in result["cpu"]:
        table.add_row(f"CPU decode, batch 1, {c['threads']} thread(s), median (p90)",
                      f"{c['decode_ms_median']:.2f} ms ({c['decode_ms_p90']:.2f})")
    if "cuda" in result:
        g = result["cuda"]
        table.add_row(f"{g['device']} decode, batch 1", f"{g['decode_ms_batch1']:.3f} ms")
        table.add_row(f"{g['device']} decode, batch 256", f"{g['frames_per_s_batch256']:,.0f} frames/s")
        table.add_row(f"{g['device']} decode, batch 1, CUDA graph (fp32)", f"{g['decode_ms_batch1_graph_fp32']:.3f} ms")
        table.add_row(f"{g['device']} decode, batch 256, CUDA graph (fp32)",
                      f"{g['frames_per_s_batch256_graph_fp32']:,.0f} frames/s")
    Console().print(table)
    Console().print(f"saved {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/train_autoencoder", help="a run directory of mode=train_autoencoder")
    parser.add_argument("--data", default=None, help="a cache of held-out frames (world seeds not trained on)")
    parser.add_argument("--frames", type=int, default=1000, help="held-out frames measured")
    parser.add_argument("--out", default="bench_results/autoencoder.json")
    args = parser.parse_args(argv)
    bench(args.checkpoint, args.data, args.frames, args.out)


if __name__ == "__main__":
    main()
