"""What one sampler step of a world asks of a GPU, counted on the CPU: the bytes each op reads and writes, its
FLOPs, and from them a floor on the step's time on a GPU of a given bandwidth and throughput.

    python -m worldsim.models.step_traffic --checkpoint assets/world --batch 1 256 --out step_traffic.json

It runs the graphed sampler's buffered step (commit + Euler steps: the ops a CUDA graph replays) once at each
batch size, in the world's precision (bf16: the weights, the caches and the sampling, as rollouts run), under a
dispatch mode that sees every aten op. Bytes count each distinct input once and each output once; an in-place
write counts what it writes (index_copy_: the rows copied). Views move nothing, nor does an op that hands back
its input (a `.to` to the dtype a tensor already has). The floor sums, op by op, the larger of bytes over
bandwidth and FLOPs over throughput: what a step costs with every op at the hardware's limit and no launch gaps.
A measured step far above it is waiting on something else (launches, a poorly shaped kernel, the host).
"""
import argparse
import collections
import json
import linecache
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from worldsim.envs.imagination import RowSeededSampler
from worldsim.envs.world_model import PRECISIONS, load_world
from worldsim.models.dynamics import ACTION_DIM

VIEWS = {"view", "_unsafe_view", "as_strided", "slice", "select", "expand", "unsqueeze", "squeeze", "transpose", "t",
         "permute", "alias", "detach", "narrow", "unbind", "split", "chunk", "reshape", "view_as", "lift_fresh",
         "_reshape_alias", "split_with_sizes", "diagonal", "movedim", "flatten", "unflatten", "_to_copy_view"}


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def flops(name: str, args) -> int:
    """Multiply-adds of the matrix ops, counted as 2 FLOPs each; 0 for the rest (bandwidth-bound)."""
    if name in ("linear", "addmm", "mm", "matmul", "bmm", "baddbmm"):
        a, b = (args[0], args[1]) if name != "addmm" and name != "baddbmm" else (args[1], args[2])
        k = a.shape[-1]
        n = b.shape[0] if name == "linear" else b.shape[-1]
        return 2 * (a.numel() // k) * k * n
    if name.startswith("scaled_dot_product") or name == "cache_attention":
        q, k = args[0], args[1]
        return 4 * q.numel() * k.shape[-2]
    return 0


HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]  # the project: its own lines are what an op is attributed to


def calling_line() -> str:
    """The innermost line of the project's code (not this file, not the tests) on the stack: 'path:line code'."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path != HERE and ROOT in path.parents and "tests" not in path.relative_to(ROOT).parts:
            return f"{path.relative_to(ROOT)}:{frame.f_lineno} {linecache.getline(str(path), frame.f_lineno).strip()}"
        frame = frame.f_back
    return "?"


class Traffic(TorchDispatchMode):
    def __init__(self, lines: bool = False):
        super().__init__()
        self.ops = []
        self.lines = lines  # also record the project's line each op comes from (slower)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.__name__.split(".")[0]
        if name in VIEWS or (not name.endswith("_") and args and out is args[0]):  # a view, or its input back
            return out
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [a for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor)]
        seen, read = set(), 0
        for a in ins:
            key = (a.data_ptr(), tuple(a.shape), a.stride())
            if key not in seen:
                seen.add(key)
                read += nbytes(a)
        written = sum(nbytes(a) for a in outs)
        if name == "index_copy_":  # reads and writes the rows it copies, not the whole destination
            read, written = read - nbytes(ins[0]) + nbytes(ins[2]), nbytes(ins[2])
        elif name == "copy_":  # reads the source, writes the destination
            read, written = nbytes(ins[1]), nbytes(ins[0])
        elif name.endswith("_"):  # in place: the destination is read and written once
            written = nbytes(ins[0])
        self.ops.append({"op": name, "read": read, "written": written, "flops": flops(name, args),
                         "shapes": [list(a.shape) for a in ins[:3]]})
        if self.lines:
            self.ops[-1]["line"] = calling_line()
        return out


def step_ops(dynamics, batch: int, steps: int | None = None, warm: int | None = None, lines: bool = False) -> list[dict]:
    """Every op of one buffered step at `batch` that moves data, after `warm` steps, in the model's dtype; with
    `lines`, each with the project's source line it comes from."""
    c = dynamics.config
    warm = c.cache_frames if warm is None else warm
    sampler = RowSeededSampler(dynamics, batch, steps, graphs=True, compile=False)
    sampler.seed_rows(list(range(batch)))
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        dtype = dynamics.head.weight.dtype  # as `Imagination` hands them over
        sampler.reset(torch.randn(batch, 2, c.latent_channels, c.latent_height, c.latent_width, generator=g).to(dtype),
                      torch.rand(batch, 1, ACTION_DIM, generator=g).to(dtype))
        moving = lambda: (torch.rand(batch, c.chunk_frames, ACTION_DIM, generator=g) > 0.5).to(dtype)  # noqa: E731
        for _ in range(warm):  # the ring full, as in a long play
            sampler.step(moving())
        mode, actions = Traffic(lines), moving()  # the actions drawn outside: not the step's ops
        with mode:
            sampler.step(actions)
    return mode.ops


def summarize(ops: list[dict], bandwidth: float, throughput: float) -> dict:
    groups = collections.defaultdict(lambda: {"count": 0, "read": 0, "written": 0, "flops": 0, "floor_ms": 0.0})
    for o in ops:
        g = groups[o["op"]]
        g["count"] += 1
        g["read"] += o["read"]
        g["written"] += o["written"]
        g["flops"] += o["flops"]
        g["floor_ms"] += 1e3 * max((o["read"] + o["written"]) / bandwidth, o["flops"] / throughput)
    total = {k: sum(g[k] for g in groups.values()) for k in ("count", "read", "written", "flops", "floor_ms")}
    return {"total": total, "ops": dict(sorted(groups.items(), key=lambda kv: -kv[1]["floor_ms"]))}


def by_line(ops: list[dict]) -> list[dict]:
    """Ops grouped by the source line they come from (`step_ops(lines=True)`), the most ops first."""
    groups = {}
    for o in ops:
        g = groups.setdefault(o["line"], {"line": o["line"], "count": 0, "bytes": 0, "ops": collections.Counter()})
        g["count"] += 1
        g["bytes"] += o["read"] + o["written"]
        g["ops"][o["op"]] += 1
    return sorted(groups.values(), key=lambda g: (-g["count"], -g["bytes"]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="assets/world")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the world's)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16",
                   help="the world's weights, caches and sampling (world.precision; rollouts on a GPU: bf16)")
    p.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s (H100 SXM HBM3: about 3e12 reached)")
    p.add_argument("--throughput", type=float, default=6.0e14, help="FLOP/s of the matrix ops (H100 bf16 dense)")
    p.add_argument("--warm", type=int, default=None, help="steps before the counted one (default: the cache's "
                   "frames, so that the ring is full, as in a long play)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--lines", type=int, default=0, metavar="N",
                   help="also list the N source lines that make the most ops (where to cut)")
    p.add_argument("--out", default=None, help="JSON of every batch's summary")
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batch):
        p.error(f"--batch sizes must be positive, got {args.batch}")
    try:
        dynamics, _ = load_world(args.checkpoint, None, "cpu")
    except (OSError, ValueError) as e:  # a missing or corrupt world: one line naming it
        p.error(str(e))
    dynamics = dynamics.to(PRECISIONS[args.precision]).eval()
    results = {}
    for batch in args.batch:
        start = time.time()
        ops = step_ops(dynamics, batch, args.steps, args.warm, lines=args.lines > 0)
        summary = summarize(ops, args.bandwidth, args.throughput)
        t = summary["total"]
        print(f"\nbatch {batch}: {t['count']} ops, {(t['read'] + t['written']) / 2**20:.0f} MiB moved, "
              f"{t['flops'] / 1e9:.1f} GFLOP; floor {t['floor_ms']:.3f} ms a step "
              f"({batch / t['floor_ms'] * 1e3:,.0f} frames/s), counted in {time.time() - start:.0f} s")
        print(f"{'op':32s} {'count':>5s} {'MiB read':>10s} {'MiB written':>12s} {'GFLOP':>8s} {'floor ms':>9s}")
        for name, g in list(summary["ops"].items())[:args.top]:
            print(f"{name:32s} {g['count']:5d} {g['read'] / 2**20:10.1f} {g['written'] / 2**20:12.1f} "
                  f"{g['flops'] / 1e9:8.2f} {g['floor_ms']:9.3f}")
        if args.lines:
            lines = by_line(ops)
            print(f"\n{'ops':>4s} {'MiB':>8s}  source line (the ops it makes)")
            for g in lines[:args.lines]:
                made = ", ".join(f"{n} {op}" for op, n in g["ops"].most_common(4))
                print(f"{g['count']:4d} {g['bytes'] / 2**20:8.1f}  {g['line'][:90]}  ({made})")
            summary["lines"] = [{**g, "ops": dict(g["ops"])} for g in lines]
        results[batch] = summary
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "batches": results}, indent=1))
        print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
