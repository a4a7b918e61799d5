"""Check the attention and noise kernels on the GPU, then time them against what torch offers for each.

    python -m kernels.bench [--quick] [--out kernels/bench_results.json]

First bf16 and fp16 correctness against a float64 reference (FlashAttention's 2x rule), including a
CUDA graph replayed while the cache length changes; then a table of µs, TFLOP/s, GB/s and the time ratio
to our kernel. Training kernels are timed with CUDA events (triton.testing.do_bench); the inference
kernels, which take microseconds, by CUDA-graph replay (do_bench_cudagraph) so Python's launch overhead
stays out. FLOPs count only the (query, key) pairs a method must compute: the causal triangle for SDPA
causal, the block-causal mask for the rest. GB/s counts each input read once and each output written once.
The row noise (kernels/noise.py) is checked against its numba loop, and timed against one torch generator
per batch row (what the rollouts' sampler did before it) with CUDA events around the Python call.
"""
import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import kernels
from kernels import reference

DATE = "2026-11-26"
DEVICE = "cuda"
TOKENS_PER_FRAME = 64


@dataclass
class Row:
    """One timed method on one shape."""
    case: str
    method: str
    us: float
    tflops: float
    gbps: float
    ratio: float = 1.0  # method time / our kernel's time on the same case: above 1, ours is faster


# ----------------------------------------------------------------------------------------------- checks

def _max_err(x, truth):
    return (x.double() - truth.double()).abs().max().item()


def _check(name, got, ref, truth, floor):
    err, ref_err = _max_err(got, truth), _max_err(ref, truth)
    ok = err == err and err <= 2 * ref_err + floor
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: error {err:.2e}, same-dtype torch {ref_err:.2e}")
    return ok


def check_training(dtype, T, C, window, D, B=1, H=2):
    """Forward, lse and gradients against float64; outputs poisoned with NaN first."""
    torch.manual_seed(T + C)
    leaves = [torch.randn(B, H, T, D, device=DEVICE, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    out64, lse64 = reference.block_causal_attention(*leaves, C, window)
    dout = torch.randn_like(out64)
    truth = (out64, lse64, *torch.autograd.grad(out64, leaves, dout))

    def run(fn):
        xs = [x.detach().to(dtype).requires_grad_(True) for x in leaves]
        out, lse = fn(*xs)
        return (out, lse, *torch.autograd.grad(out, xs, dout.to(dtype)))

    ref = run(lambda q, k, v: reference.block_causal_attention(q, k, v, C, window))
    got = run(lambda q, k, v: kernels.attention(q, k, v, C, window, return_lse=True, backend="triton"))
    floor = 1e-3 if dtype == torch.float16 else 4e-3
    label = f"train {str(dtype)[6:]} T={T} C={C} W={window} D={D}"
    return all(_check(f"{label} {n}", g, r, t, floor) for n, g, r, t in zip(("out", "lse", "dq", "dk", "dv"),
                                                                           got, ref, truth))


def check_cache_graph(dtype, Tq, S_max, D, B=3, H=4):
    """Capture one CUDA graph, then replay it as the valid lengths move through empty, one, partial,
    full; each replay against float64. Shows there is no host sync and nothing to recompile."""
    torch.manual_seed(S_max)
    q, k_new, v_new = (torch.randn(B, H, Tq, D, device=DEVICE, dtype=dtype) for _ in range(3))
    k_cache, v_cache = (torch.randn(B, H, S_max, D, device=DEVICE, dtype=dtype) for _ in range(2))
    valid_len = torch.zeros(B, device=DEVICE, dtype=torch.int32)
    call = lambda: kernels.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, backend="triton")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    ok = True
    for lengths in ([0, 1, S_max], [S_max // 3, S_max, 0], [S_max, S_max - 1, 5]):
        valid_len.copy_(torch.tensor(lengths))
        out.fill_(float("nan"))
        graph.replay()
        args = (q, k_cache, v_cache, valid_len, k_new, v_new)
        truth = reference.cache_attention(*(x.double() if x.is_floating_point() else x for x in args))[0]
        ref = reference.cache_attention(*args)[0]
        floor = 1e-3 if dtype == torch.float16 else 4e-3
        ok &= _check(f"cache graph {str(dtype)[6:]} Tq={Tq} S={S_max} D={D} lengths={lengths}", out, ref, truth,
                     floor)
    return ok


def run_checks(quick):
    """Every check on one dtype and head dim costs an autotuning run, so quick covers each dtype once and
    each of D = 64, 128 once."""
    print("correctness on", torch.cuda.get_device_name())
    training = [(torch.bfloat16, 777, 64, 3, 128), (torch.float16, 1000, 100, None, 64)]
    if not quick:
        training += [(torch.bfloat16, 2048, 256, 2, 64), (torch.float16, 259, 7, None, 32)]
    ok = True
    for dtype, T, C, window, D in training:
        ok &= check_training(dtype, T, C, window, D)
    for dtype in (torch.bfloat16, torch.float16):
        ok &= check_cache_graph(dtype, 64, 2048, 64)
        ok &= check_cache_graph(dtype, 17, 300, 128)
    ok &= check_noise()
    return ok


def check_noise(numel=4099):
    """The Triton row noise on the GPU against the numba loop on the CPU: the same stream to float rounding."""
    from kernels.noise import row_normal, seed_keys
    keys = seed_keys([0, 1, 7, 2 ** 40 + 3, 2 ** 64 - 1])
    draws = torch.tensor([0, 1, 5, 2 ** 33 + 1, 9])
    want = row_normal(keys, draws, numel)
    got = row_normal(keys.to(DEVICE), draws.to(DEVICE), numel).cpu()
    err = (got - want).abs().max().item()
    ok = err < 1e-4
    print(f"  {'ok ' if ok else 'BAD'} row noise B={len(keys)} numel={numel}: max |triton - numba| = {err:.2e}")
    return ok


# ----------------------------------------------------------------------------------------------- timing

def _visible_pairs(T, C, window):
    """Number of (query, key) pairs the block-causal mask keeps."""
    chunk = torch.arange(T) // C
    hi = torch.clamp((chunk + 1) * C, max=T)
    lo = torch.zeros_like(chunk) if window is None else torch.clamp((chunk - window + 1) * C, min=0)
    return int((hi - lo).sum())


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def _bench_events(fn, grad_to_none=None):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median") * 1e3


def _bench_graph(fn):
    import triton.testing
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def _flex(T, C, window):
    """Compiled FlexAttention with the block-causal mask, or None where this torch lacks it."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None

    def mask_mod(b, h, q_idx, kv_idx):
        q_chunk, k_chunk = q_idx // C, kv_idx // C
        visible = k_chunk <= q_chunk
        return visible if window is None else visible & (k_chunk > q_chunk - window)

    block_mask = create_block_mask(mask_mod, None, None, T, T, device=DEVICE)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def bench_training(B, H, T, D, C, window, with_flex=True):
    """Forward and forward+backward: ours, SDPA flash causal, SDPA with the dense mask, FlexAttention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    dout = torch.randn(B, H, T, D, device=DEVICE, dtype=dtype)
    mask = reference.block_causal_mask(T, C, window, device=DEVICE)
    pairs = {"block": _visible_pairs(T, C, window), "causal": T * (T + 1) // 2}
    methods = {"triton block-causal": ("block", lambda: kernels.attention(q, k, v, C, window, backend="triton"))}

    def sdpa_causal():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    methods["sdpa flash causal (speed ref)"] = ("causal", sdpa_causal)
    methods["sdpa dense block mask"] = ("block", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    flex = _flex(T, C, window) if with_flex else None
    if flex is not None:
        methods["flex block-causal"] = ("block", lambda: flex(q, k, v))

    case = f"B={B} H={H} T={T} D={D} C={C} W={window}"
    io_bytes = 4 * B * H * T * D * q.element_size()  # q, k, v in, o out
    rows = []
    for mode, flop_factor, byte_factor in (("fwd", 4, 1), ("fwd+bwd", 14, 2.5)):  # bwd: 5 matmuls, 2.5x fwd
        ours = None
        for name, (kind, fn) in methods.items():
            step = (lambda fn=fn: _no_grad(fn)) if mode == "fwd" else (lambda fn=fn: fn().backward(dout))
            try:
                us = _bench_events(step, grad_to_none=[q, k, v])
            except Exception as e:  # a baseline missing on this torch must not lose the other rows
                print(f"  {name} {mode} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            flops = flop_factor * B * H * D * pairs[kind]
            row = Row(f"train {mode} {case}", name, us, flops / us / 1e6, byte_factor * io_bytes / us / 1e3)
            ours = ours or us
            row.ratio = us / ours
            rows.append(row)
            _print_row(row)
    return rows


def bench_inference(B, H, Tq, S, D):
    """A chunk against a full cache: ours (graph replay) against SDPA over the cache and the chunk's keys."""
    from kernels.cache import default_splits

    dtype = torch.bfloat16
    q, k_new, v_new = (torch.randn(B, H, Tq, D, device=DEVICE, dtype=dtype) for _ in range(3))
    k_cache, v_cache = (torch.randn(B, H, S, D, device=DEVICE, dtype=dtype) for _ in range(2))
    valid_len = torch.full((B,), S, device=DEVICE, dtype=torch.int32)
    # SDPA gets the cache and the chunk already side by side: the most generous baseline (no copy timed).
    k_all, v_all = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    methods = {
        "triton split-kv": lambda: kernels.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new,
                                                           backend="triton"),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k_all, v_all),
    }
    splits = default_splits(B, H, Tq, S, q.device)
    case = f"infer B={B} H={H} Tq={Tq} S={S} D={D} splits={splits}"
    flops = 4 * B * H * Tq * (S + Tq) * D
    bytes_ = (2 * B * H * S * D + 4 * B * H * Tq * D) * q.element_size()
    rows, ours = [], None
    with torch.no_grad():
        for name, fn in methods.items():
            fn()  # compile outside the graph capture
            us = _bench_graph(fn)
            ours = ours or us
            row = Row(case, name, us, flops / us / 1e6, bytes_ / us / 1e3, us / ours)
            rows.append(row)
            _print_row(row)
    return rows


def sweep_inference(B, H, Tq, S, D):
    """Time the cache kernel over tile shapes and split counts; returns rows sorted fastest first."""
    from kernels.cache import CacheTiles, cache_attention, default_splits, default_tiles

    dtype = torch.bfloat16
    q, k_new, v_new = (torch.randn(B, H, Tq, D, device=DEVICE, dtype=dtype) for _ in range(3))
    k_cache, v_cache = (torch.randn(B, H, S, D, device=DEVICE, dtype=dtype) for _ in range(2))
    valid_len = torch.full((B,), S, device=DEVICE, dtype=torch.int32)
    default_n = default_splits(B, H, Tq, S, q.device)
    default = (default_tiles(Tq, math.ceil(S / default_n)), default_n)
    block_m = default[0].block_m
    candidates = {default}
    for bm in sorted({block_m, max(16, block_m // 2)}):
        for bn in (64, 128):
            for warps in (4, 8):
                for stages in (2, 3):
                    for n in sorted({default_n, 2 * default_n, max(1, default_n // 2)}) if B == 1 else [default_n]:
                        candidates.add((CacheTiles(bm, bn, warps, stages), n))
    results = []
    for tiles, n in candidates:
        fn = lambda: cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, num_splits=n, tiles=tiles)
        try:
            with torch.no_grad():
                fn()
                us = _bench_graph(fn)
        except Exception as e:  # e.g. out of shared memory
            print(f"  {tiles} splits={n}: {type(e).__name__}")
            continue
        results.append(dict(shape=f"B={B} H={H} Tq={Tq} S={S} D={D}", us=us, splits=n, **asdict(tiles),
                            default=(tiles, n) == default))
    return sorted(results, key=lambda r: r["us"])


def bench_noise(B, numel):
    """A batch's noise for one sampler step: one Triton launch against one torch generator per row (what
    the rollouts' sampler did before), both timed with CUDA events around the Python call."""
    from kernels.noise import row_normal, seed_keys
    keys, draws = seed_keys(range(B), DEVICE), torch.zeros(B, dtype=torch.int64, device=DEVICE)
    generators = [torch.Generator(DEVICE).manual_seed(i) for i in range(B)]
    methods = {
        "triton row_normal": lambda: row_normal(keys, draws, numel, torch.bfloat16),
        "torch.randn per row": lambda: torch.stack([torch.randn(numel, generator=g, device=DEVICE,
                                                                dtype=torch.bfloat16) for g in generators]),
    }
    case, bytes_ = f"noise B={B} numel={numel} bf16", B * numel * 2
    rows, ours = [], None
    for name, fn in methods.items():
        us = _bench_events(fn)
        ours = ours or us
        row = Row(case, name, us, 0.0, bytes_ / us / 1e3, us / ours)
        rows.append(row)
        _print_row(row)
    return rows


def _print_row(row):
    print(f"{row.case:<52} {row.method:<30} {row.us:>10.1f} {row.tflops:>8.1f} {row.gbps:>8.0f} {row.ratio:>6.2f}",
          flush=True)


def _save(path, rows, checks_ok, started):
    import triton
    meta = {"date": DATE, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(), "checks_ok": checks_ok,
            "seconds": round(time.time() - started, 1)}
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer checks and training shapes (about 3 minutes on an H100)")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes longest)")
    parser.add_argument("--sweep", action="store_true", help="also sweep the cache kernel's tiles and splits")
    parser.add_argument("--checks-only", action="store_true", help="only the GPU correctness checks (no timings)")
    parser.add_argument("--skip-checks", action="store_true", help="only the timings (the checks ran already)")
    parser.add_argument("--out", default="kernels/bench_results.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.checks_only and args.skip_checks:
        parser.error("--checks-only and --skip-checks leave nothing to run")
    if not torch.cuda.is_available():
        raise SystemExit("kernels.bench needs a CUDA GPU; the CPU path is covered by tests/test_kernels.py")
    started = time.time()
    checks_ok = None if args.skip_checks else run_checks(args.quick)
    print("checks", {None: "skipped", True: "passed", False: "FAILED"}[checks_ok])
    if args.checks_only:
        _save(args.out, [], checks_ok, started)
        print(f"saved {args.out} ({time.time() - started:.0f} s)")
        raise SystemExit(0 if checks_ok else 1)

    print(f"\n{'case':<52} {'method':<30} {'µs':>10} {'TFLOP/s':>8} {'GB/s':>8} {'ratio':>6}")
    rows = bench_noise(256, 4096) + bench_noise(1, 4096)
    inference = [(1, 8, 64, 2048, 64), (1, 16, 256, 8192, 128), (64, 8, 64, 2048, 64)]
    for shape in inference:
        rows += bench_inference(*shape)
        _save(args.out, rows, checks_ok, started)
    # Training: 16k tokens per step, model width 1024 (16 heads of 64 or 8 of 128), chunks of 4 frames.
    chunk = 4 * TOKENS_PER_FRAME
    training = [(4096, 64), (8192, 128)] if args.quick else [(4096, 64), (8192, 128), (8192, 64)]
    for T, D in training:
        rows += bench_training(16384 // T, 1024 // D, T, D, chunk, None, with_flex=not args.no_flex)
        _save(args.out, rows, checks_ok, started)
    if not args.quick:
        rows += bench_training(2, 16, 8192, 64, chunk, 8, with_flex=not args.no_flex)  # window of 8 chunks
        _save(args.out, rows, checks_ok, started)
    if args.sweep:
        sweep = []
        for shape in inference:
            sweep += sweep_inference(*shape)
            with open(args.out.replace(".json", "_sweep.json"), "w") as f:
                json.dump(sweep, f, indent=1)
        print("\ncache kernel sweep, fastest three per shape and the default:")
        for shape in inference:
            mine = [r for r in sweep if r["shape"].startswith(f"B={shape[0]} H={shape[1]} Tq={shape[2]}")]
            for r in mine[:3] + [r for r in mine if r["default"]]:
                print(f"  {r['shape']:<34} {r['us']:7.1f} us  splits={r['splits']:<3} m={r['block_m']} "
                      f"n={r['block_n']} warps={r['num_warps']} stages={r['num_stages']}{'  (default)' * r['default']}")
    print(f"\nsaved {args.out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
