"""Attention kernels against a float64 reference, under Triton's CPU interpreter.

Tolerance is FlashAttention's rule: the kernel's error against float64 may be at most twice that of plain
torch in the same dtype, plus a small floor. Every output buffer the kernels allocate is filled with NaN
first, so an element the kernel forgets to write fails the comparison.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # also set in conftest.py, before anything imports triton

import pytest
import torch

import kernels
from kernels import reference

pytest.importorskip("triton")
from kernels import block_causal, cache  # noqa: E402  (after the interpreter switch)

if not block_causal.INTERPRET:
    pytest.skip("kernel tests run on CPU tensors and need TRITON_INTERPRET=1 before triton is imported",
                allow_module_level=True)

import numpy as np  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _count_steps(X, start):
    n = 0.0
    for _ in range(start * 2, 8, 2):  # a bound computed in the kernel, as every kernel here has
        n += 1.0
    tl.store(X, n)


def _interpreter_runs_computed_loops() -> bool:
    """Whether this Triton's interpreter runs a loop whose bounds are computed in the kernel. Before triton 3.7
    it holds them as 1-element arrays, and numpy 2.4 and newer refuse int() of those."""
    x = torch.zeros(1)
    try:
        _count_steps[(1,)](x, 1)
    except Exception as error:  # triton.runtime.errors.InterpreterError, wrapping numpy's TypeError
        if "0-dimensional" not in repr(error):
            raise
        return False
    return True


runs_kernels = pytest.mark.skipif(
    not _interpreter_runs_computed_loops(),
    reason=f"triton {triton.__version__}'s interpreter cannot run a loop with computed bounds under numpy "
           f"{np.__version__} (triton < 3.7 with numpy >= 2.4): install triton>=3.7 or numpy<2.4")

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3}  # absolute slack under which errors are rounding noise


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Kernel outputs and scratch start as NaN, so unwritten elements cannot pass."""
    def alloc(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(block_causal, "_alloc", alloc)
    monkeypatch.setattr(cache, "_alloc", alloc)


def assert_close_as_reference(name, got, ref_same_dtype, truth):
    """|got - truth| <= 2 |ref - truth| + floor, elementwise maxima, NaN failing."""
    truth = truth.double()
    err = (got.double() - truth).abs().max().item()
    ref_err = (ref_same_dtype.double() - truth).abs().max().item()
    bound = 2 * ref_err + FLOOR[ref_same_dtype.dtype]
    assert err == err and err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (reference error {ref_err:.3g})"


def make_inputs(shape, dtype, transposed=False):
    """float64 leaves and their dtype copies; transposed gives (B, T, H, D) memory seen as (B, H, T, D)."""
    B, H, T, D = shape
    out = []
    for _ in range(3):
        x = torch.randn(B, T, H, D, dtype=torch.float64).transpose(1, 2) if transposed else \
            torch.randn(B, H, T, D, dtype=torch.float64)
        out.append(x)
    return out


# (T, C, window, dtype, D, B, H): every pair of the T and C, the window on for half of them, the
# dtypes and head dims alternating, small B and H (the interpreter is slow).
TRAINING_CASES = [
    (T, C, (None, 2, None, 1)[(i + i // 4) % 4], (torch.float32, torch.float16)[(i // 2) % 2], (32, 64, 32, 128)[i % 4],
     1 + (i % 3 == 0), 1 + (i % 5 == 0))
    for i, (T, C) in enumerate((T, C) for T in (1, 17, 113, 259) for C in (1, 7, 64, 100))
]


@runs_kernels
@pytest.mark.parametrize("T,C,window,dtype,D,B,H", TRAINING_CASES)
def test_block_causal_forward_backward(T, C, window, dtype, D, B, H):
    torch.manual_seed(T * 1000 + C)
    leaves = make_inputs((B, H, T, D), torch.float64, transposed=(T == 17))
    for x in leaves:
        x.requires_grad_(True)
    out64, lse64 = reference.block_causal_attention(*leaves, C, window)
    dout = torch.randn_like(out64)
    grads64 = torch.autograd.grad(out64, leaves, dout)

    def run(fn):
        xs = [x.detach().to(dtype).requires_grad_(True) for x in leaves]
        out, lse = fn(*xs)
        return (out, lse, *torch.autograd.grad(out, xs, dout.to(dtype)))

    ref = run(lambda q, k, v: reference.block_causal_attention(q, k, v, C, window))
    got = run(lambda q, k, v: kernels.attention(q, k, v, C, window, return_lse=True, backend="triton"))
    for name, g, r, t in zip(("out", "lse", "dq", "dk", "dv"), got, ref, (out64, lse64, *grads64)):
        assert g.shape == t.shape
        assert_close_as_reference(name, g, r, t)


def ring_cache(histories, S_max, D, dtype):
    """Write each row's key history into a ring buffer (slot p % S_max); unused slots hold NaN."""
    B, H = len(histories), histories[0].shape[0]
    buf = torch.full((B, H, S_max, D), float("nan"), dtype=dtype)
    for b, hist in enumerate(histories):
        for p in range(hist.shape[1]):
            buf[b, :, p % S_max] = hist[:, p].to(dtype)
    return buf


# (written tokens per batch row, S_max, Tq, D, dtype, splits): lengths 0, 1, partial, full and wrapped.
CACHE_CASES = [
    ((0, 1, 40, 100, 237), 100, 17, 32, torch.float32, None),
    ((0, 1, 40, 100, 237), 100, 17, 32, torch.float16, 3),
    ((5, 64, 150), 64, 1, 64, torch.float32, 1),
    ((0, 300, 129), 130, 64, 128, torch.float16, None),
    ((77,), 200, 7, 64, torch.float32, 4),
]


@runs_kernels
@pytest.mark.parametrize("written,S_max,Tq,D,dtype,splits", CACHE_CASES)
def test_cache_attention(written, S_max, Tq, D, dtype, splits):
    torch.manual_seed(S_max + Tq)
    H, B = 2, len(written)
    k_hist = [torch.randn(H, n, D, dtype=torch.float64) for n in written]
    v_hist = [torch.randn(H, n, D, dtype=torch.float64) for n in written]
    q, k_new, v_new = (torch.randn(B, H, Tq, D, dtype=torch.float64) for _ in range(3))
    valid_len = torch.tensor([min(n, S_max) for n in written], dtype=torch.int32)

    # Truth without any ring buffer: each row attends to its last S_max keys in time order, then its own.
    truth_out, truth_lse = [], []
    for b in range(B):
        keep = int(valid_len[b])
        k = torch.cat([k_hist[b][:, k_hist[b].shape[1] - keep:], k_new[b]], dim=1)
        v = torch.cat([v_hist[b][:, v_hist[b].shape[1] - keep:], v_new[b]], dim=1)
        o, lse = reference.masked_attention(q[b], k, v, torch.ones((), dtype=torch.bool))
        truth_out.append(o)
        truth_lse.append(lse)
    truth_out, truth_lse = torch.stack(truth_out), torch.stack(truth_lse)

    k_cache, v_cache = ring_cache(k_hist, S_max, D, dtype), ring_cache(v_hist, S_max, D, dtype)
    args = (q.to(dtype), k_cache, v_cache, valid_len, k_new.to(dtype), v_new.to(dtype))
    ref = kernels.cache_attention(*args, return_lse=True, backend="torch")
    if splits is None:
        got = kernels.cache_attention(*args, return_lse=True, backend="triton")
    else:
        got = cache.cache_attention(*args, num_splits=splits)
    for name, g, r, t in zip(("out", "lse"), got, ref, (truth_out, truth_lse)):
        assert g.shape == t.shape
        assert_close_as_reference(name, g, r, t)


@runs_kernels
def test_cache_attention_bad_length_poisons_rows_on_device_path():
    """On the Triton path an out-of-range length cannot raise without a host sync: its row becomes NaN."""
    q = torch.randn(3, 1, 4, 32)
    k_cache, v_cache = torch.randn(3, 1, 16, 32), torch.randn(3, 1, 16, 32)
    valid_len = torch.tensor([-1, 16, 17])
    for splits in (1, 2):
        out, _ = cache.cache_attention(q, k_cache, v_cache, valid_len, q, q, num_splits=splits)
        assert out[0].isnan().all() and out[2].isnan().all() and not out[1].isnan().any()


def test_ring_buffer_needs_no_roll():
    """A wrapped cache read in slot order equals attention over the same keys in time order."""
    torch.manual_seed(0)
    S_max, n, D = 8, 13, 32
    hist = torch.randn(1, 1, n, D, dtype=torch.float64)
    k_cache = torch.empty(1, 1, S_max, D, dtype=torch.float64)
    for p in range(n):
        k_cache[:, :, p % S_max] = hist[:, :, p]
    q, k_new = torch.randn(1, 1, 3, D, dtype=torch.float64), torch.randn(1, 1, 3, D, dtype=torch.float64)
    got = reference.cache_attention(q, k_cache, k_cache, torch.tensor([S_max]), k_new, k_new)[0]
    keys = torch.cat([hist[:, :, n - S_max:], k_new], dim=2)
    want = reference.masked_attention(q, keys, keys, torch.ones((), dtype=torch.bool))[0]
    torch.testing.assert_close(got, want)


def test_block_causal_mask_semantics():
    mask = reference.block_causal_mask(6, 2, window=2)
    want = torch.tensor([[1, 1, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1, 1],
                         [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, want)
    assert torch.equal(reference.block_causal_mask(5, 1), torch.ones(5, 5, dtype=torch.bool).tril())


def test_backend_selection(monkeypatch):
    x = torch.randn(1, 1, 3, 32)
    assert kernels.select_backend(x.device) == "torch"
    monkeypatch.setenv(kernels.BACKEND_ENV, "triton")
    assert kernels.select_backend(x.device) == "triton"
    assert kernels.select_backend(x.device, "torch") == "torch"
    monkeypatch.setenv(kernels.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="backend"):
        kernels.attention(x, x, x, 1)
    monkeypatch.setenv(kernels.BACKEND_ENV, "torch")
    assert kernels.attention(x, x, x, 1).shape == x.shape


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        kernels.select_backend(torch.device("cpu"), "triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_rejects_bad_input(backend):
    x = torch.randn(1, 2, 5, 32)
    bad = {
        "k shape": lambda: kernels.attention(x, torch.randn(1, 2, 6, 32), x, 2, backend=backend),
        "3-d": lambda: kernels.attention(x[0], x[0], x[0], 2, backend=backend),
        "dtype": lambda: kernels.attention(x, x.half(), x, 2, backend=backend),
        "int dtype": lambda: kernels.attention(x.long(), x.long(), x.long(), 2, backend=backend),
        "device": lambda: kernels.attention(x, x.to("meta"), x, 2, backend=backend),
        "head dim": lambda: kernels.attention(*(torch.randn(1, 2, 5, 48) for _ in range(3)), 2, backend=backend),
        "chunk": lambda: kernels.attention(x, x, x, 0, backend=backend),
        "window": lambda: kernels.attention(x, x, x, 2, window=0, backend=backend),
        "empty": lambda: kernels.attention(*(torch.randn(1, 2, 0, 32) for _ in range(3)), 2, backend=backend),
    }
    for what, call in bad.items():
        with pytest.raises((ValueError, TypeError)):
            call()
            pytest.fail(f"no error for bad {what}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cache_attention_rejects_bad_input(backend):
    q = torch.randn(2, 2, 4, 32)
    kc = torch.randn(2, 2, 16, 32)
    ok_len = torch.tensor([3, 16])
    bad = {
        "negative length": lambda: kernels.cache_attention(q, kc, kc, torch.tensor([-1, 3]), q, q, backend=backend),
        "too long": lambda: kernels.cache_attention(q, kc, kc, torch.tensor([17, 3]), q, q, backend=backend),
        "length shape": lambda: kernels.cache_attention(q, kc, kc, torch.tensor([3]), q, q, backend=backend),
        "length dtype": lambda: kernels.cache_attention(q, kc, kc, ok_len.float(), q, q, backend=backend),
        "cache heads": lambda: kernels.cache_attention(q, kc[:, :1], kc[:, :1], ok_len, q, q, backend=backend),
        "v_cache size": lambda: kernels.cache_attention(q, kc, kc[:, :, :8], ok_len, q, q, backend=backend),
        "new shape": lambda: kernels.cache_attention(q, kc, kc, ok_len, q[:, :, :3], q, backend=backend),
        "dtype": lambda: kernels.cache_attention(q, kc.half(), kc.half(), ok_len, q, q, backend=backend),
        "head dim": lambda: kernels.cache_attention(q[..., :16], kc[..., :16], kc[..., :16], ok_len,
                                                    q[..., :16], q[..., :16], backend=backend),
    }
    for what, call in bad.items():
        with pytest.raises((ValueError, TypeError)):
            call()
            pytest.fail(f"no error for bad {what}")


@runs_kernels
def test_triton_cache_attention_is_inference_only():
    q = torch.randn(1, 1, 4, 32, requires_grad=True)
    kc = torch.randn(1, 1, 8, 32)
    with pytest.raises(RuntimeError, match="no_grad"):
        kernels.cache_attention(q, kc, kc, torch.tensor([3]), q, q, backend="triton")
    with torch.no_grad():
        assert kernels.cache_attention(q, kc, kc, torch.tensor([3]), q, q, backend="triton").shape == q.shape


def test_auto_backend_takes_the_torch_path_where_a_gradient_is_needed(monkeypatch):
    """Where auto would pick Triton (CUDA), a call that needs a gradient gets the differentiable torch path."""
    q = torch.randn(1, 1, 4, 32, requires_grad=True)
    kc = torch.randn(1, 1, 8, 32)
    want = kernels.cache_attention(q, kc, kc, torch.tensor([3]), q, q, backend="torch")
    monkeypatch.setattr(kernels, "select_backend", lambda device, backend=None: "triton")
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    got = kernels.cache_attention(q, kc, kc, torch.tensor([3]), q, q)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert q.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no_grad"):
        kernels.cache_attention(q, kc, kc, torch.tensor([3]), q, q, backend="triton")


def test_default_splits_fill_the_device_and_respect_short_caches():
    cpu = torch.device("cpu")
    assert cache.default_splits(1, 8, 64, 2048, cpu) > 1
    assert cache.default_splits(1, 8, 64, 100, cpu) == 1
    assert cache.default_splits(64, 8, 64, 2048, cpu) == 1
    # the interpreter splits as an H100 (132 SMs) would: short splits run two programs an SM, long ones one
    assert cache.default_splits(1, 8, 64, 2048, cpu) == 32         # 8 programs: 32 splits of 64 keys, not 16 of 128
    assert cache.default_splits(1, 16, 256, 8192, cpu, 64) == 2     # 64 programs: splits of 4,096 keys stay one wave
    assert cache.default_splits(1, 16, 64, 2048, cpu) == 8          # 16 programs: splits of 256 keys stay one wave


@pytest.mark.parametrize("T, C, window", [(17, 7, None), (113, 64, 1), (64, 100, None), (259, 7, 3)])
def test_cpu_sdpa_path_matches_float64(T, C, window):
    """The dispatch's default CPU path (torch SDPA, no lse) keeps the reference's semantics and gradients."""
    q64, k64, v64 = (x.requires_grad_() for x in make_inputs((2, 2, T, 32), torch.float64))
    truth, _ = reference.block_causal_attention(q64, k64, v64, C, window)
    truth.sum().backward()
    q, k, v = (x.detach().float().requires_grad_() for x in (q64, k64, v64))
    out = kernels.attention(q, k, v, C, window, backend="torch")
    out.sum().backward()
    torch.testing.assert_close(out.double(), truth, rtol=0, atol=1e-5)
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("lengths", [(0, 0), (5, 5), (40, 40), (3, 40)])
def test_cpu_sdpa_cache_path_matches_float64(lengths):
    """Equal lengths are sliced, unequal ones masked; unused slots hold NaN and must not leak."""
    B, H, S_max, Tq, D = 2, 2, 40, 9, 32
    q, k_new, v_new = (torch.randn(B, H, Tq, D, dtype=torch.float64) for _ in range(3))
    k_cache, v_cache = (torch.randn(B, H, S_max, D, dtype=torch.float64) for _ in range(2))
    valid_len = torch.tensor(lengths)
    for b, n in enumerate(lengths):
        k_cache[b, :, n:] = float("nan")
        v_cache[b, :, n:] = float("nan")
    truth, _ = reference.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new)
    got = kernels.cache_attention(*(x.float() for x in (q, k_cache, v_cache)), valid_len,
                                  k_new.float(), v_new.float(), backend="torch")
    torch.testing.assert_close(got.double(), truth, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=runs_kernels)])
def test_compiled_cache_attention_is_one_opaque_op(backend):
    """Under torch.compile, cache_attention traces as one op (worldsim::cache_attention) that runs the eager call:
    the Triton kernel or the SDPA path, neither traced; rows of unequal lengths, unused slots NaN, as in the ring."""
    B, H, S_max, Tq, D = 2, 2, 40, 9, 32
    q, k_new, v_new = (torch.randn(B, H, Tq, D) for _ in range(3))
    k_cache, v_cache = torch.randn(B, H, S_max, D), torch.randn(B, H, S_max, D)
    valid_len = torch.tensor([3, 40])
    k_cache[0, :, 3:] = v_cache[0, :, 3:] = float("nan")
    ops = []

    def recording(graph, inputs):
        ops.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return graph.forward

    def step(*args):
        return 2 * kernels.cache_attention(*args, backend=backend) + 1

    args = (q, k_cache, v_cache, valid_len, k_new, v_new)
    with torch.no_grad():
        got = torch.compile(step, fullgraph=True, backend=recording)(*args)
        want = step(*args)
    assert ops.count("worldsim.cache_attention") == 1 and not any("softmax" in op for op in ops)
    assert torch.equal(got, want)
    truth, _ = reference.cache_attention(*(x.double() if x.is_floating_point() else x for x in args))
    torch.testing.assert_close(((got - 1) / 2).double(), truth, rtol=0, atol=1e-4)


def test_cuda_without_triton_takes_the_torch_path(monkeypatch):
    """Where Triton does not import (torch's Windows wheels), auto picks the torch attention and the numba noise on
    CUDA too, saying so; asking for Triton there is a clear error."""
    from kernels.noise import _select
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="Triton does not import"):
        assert kernels.select_backend(cuda) == "torch"
    with pytest.raises(RuntimeError, match="does not import"):
        kernels.select_backend(cuda, "triton")
    assert _select(cuda, None) == "numba"
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert kernels.select_backend(cuda) == "triton" and _select(cuda, None) == "triton"


def test_engine_renders_on_the_cpu_where_triton_does_not_import(monkeypatch):
    """render_device auto: the GPU renderer is a Triton kernel, so a GPU without Triton renders on the CPU."""
    from worldsim.engine.env import _resolve_render_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert _resolve_render_device("auto") == "cuda"
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert _resolve_render_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert _resolve_render_device("auto") == "cpu"
    assert _resolve_render_device("cuda:0") == "cuda:0"
