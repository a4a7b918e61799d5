"""Attention for WorldSim: the model calls `attention` (training, block-causal) and `cache_attention`
(inference, a chunk against the ring-buffer KV cache). Each picks the Triton kernels on CUDA and the torch
reference elsewhere (torch's fused SDPA with the reference's semantics when no lse is asked for: kernels/sdpa.py);
`backend=` or the WORLDSIM_ATTENTION env var (auto | triton | torch) forces either.

Triton is imported only when the Triton backend runs, so CPU-only installs without Triton still work; on CUDA
without Triton (torch's Windows wheels, for one) auto takes the torch path, with a warning.
"""
import functools
import importlib
import os
import warnings

import torch

from kernels import reference, sdpa

BACKEND_ENV = "WORLDSIM_ATTENTION"
BACKENDS = ("auto", "triton", "torch")
HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["attention", "cache_attention", "select_backend", "triton_available", "BACKEND_ENV", "HEAD_DIMS",
           "DTYPES"]


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports here (not installed, or an install that cannot load: the kernels cannot run)."""
    try:
        importlib.import_module("triton")
    except Exception:
        return False
    return True


def select_backend(device: torch.device, backend: str | None = None) -> str:
    """'triton' or 'torch' for tensors on `device`: the argument, else $WORLDSIM_ATTENTION, else auto."""
    choice = backend or os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {choice!r} (argument or ${BACKEND_ENV})")
    if choice == "auto":
        if device.type != "cuda":
            return "torch"
        if not triton_available():
            warnings.warn("Triton does not import here: attention on CUDA takes the torch path (slower); install "
                          "triton for the kernels", RuntimeWarning, stacklevel=3)
            return "torch"
        return "triton"
    if choice == "triton" and not triton_available():
        raise RuntimeError(f"the Triton attention backend was asked for (argument or ${BACKEND_ENV}) but triton does "
                           "not import here")
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton attention backend needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU, "
                           f"set before triton is imported); got tensors on {device}")
    return choice


def _check_same(name_ref: str, ref: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {name_ref} has {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {name_ref} is on {ref.device}")


def _check_heads(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, H, T, D), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} must be one of {DTYPES}, got {x.dtype}")
    if x.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head dim D={x.shape[-1]} is not supported; use one of {HEAD_DIMS}")


def attention(q, k, v, chunk_size: int, window: int | None = None, *, scale: float | None = None,
              return_lse: bool = False, backend: str | None = None):
    """Block-causal self-attention over chunks of `chunk_size` tokens.

    q, k, v: (B, H, T, D), one dtype of fp16/bf16/fp32, D in HEAD_DIMS; any strides. Query token i
    (chunk i // chunk_size) sees key j iff chunk(j) <= chunk(i) and, when `window` (in chunks, >= 1) is
    given, chunk(j) > chunk(i) - window: its own chunk and the window - 1 chunks before it. `scale`
    defaults to 1/sqrt(D). Returns out (B, H, T, D), or (out, lse) with the natural-log log-sum-exp of
    the scaled scores, (B, H, T) fp32 on the Triton path. Differentiable in q, k, v; lse carries no
    gradient on the Triton path.
    """
    _check_heads("q", q)
    for name, x in (("k", k), ("v", v)):
        _check_heads(name, x)
        if x.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but q has {tuple(q.shape)}")
    _check_same("q", q, k=k, v=v)
    if q.shape[2] < 1:
        raise ValueError("attention needs at least one token (T >= 1)")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or a positive int (chunks), got {window!r}")

    if select_backend(q.device, backend) == "triton":
        from kernels.block_causal import block_causal_attention
        out, lse = block_causal_attention(q, k, v, chunk_size, window, scale)
    elif return_lse:
        out, lse = reference.block_causal_attention(q, k, v, chunk_size, window, scale)
    else:
        return sdpa.block_causal_attention(q, k, v, chunk_size, window, scale)
    return (out, lse) if return_lse else out


def cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, *, scale: float | None = None,
                    return_lse: bool = False, backend: str | None = None):
    """A new chunk's queries against a ring-buffer KV cache plus the chunk's own keys (inference only).

    q, k_new, v_new: (B, H, Tq, D); k_cache, v_cache: (B, H, S_max, D); one dtype, one device.
    Ring buffer: the key of absolute token position p lives in slot p % S_max, so after n tokens were
    written the valid slots are exactly [0, min(n, S_max)). valid_len (B,) is that count per batch row,
    an integer tensor on the same device (read on the device: no host sync, CUDA-graph capturable).
    Every query sees every valid slot and every key of its own chunk; softmax over a set of keys does not
    depend on their order, so a wrapped cache needs no roll. Positions (rotary) are applied before keys
    enter the cache, so none are needed here. Returns out (B, H, Tq, D), or (out, lse).

    The Triton kernel is inference-only: with the backend left to auto, a call whose inputs need a gradient
    takes the (differentiable) torch path; forcing triton there is an error.

    A valid_len outside [0, S_max] raises on the CPU; on CUDA checking it would need a host sync, so the
    kernel writes NaN to that row's output instead.
    """
    _check_heads("q", q)
    B, H, Tq, D = q.shape
    for name, x in (("k_new", k_new), ("v_new", v_new)):
        _check_heads(name, x)
        if x.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but q has {tuple(q.shape)}")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check_heads(name, x)
        if x.shape[:2] != (B, H) or x.shape[3] != D or x.shape != k_cache.shape:
            raise ValueError(f"{name} must be (B, H, S_max, D) = ({B}, {H}, S_max, {D}) and match k_cache, "
                             f"got {tuple(x.shape)}")
    _check_same("q", q, k_cache=k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new)
    if Tq < 1:
        raise ValueError("cache_attention needs at least one query (Tq >= 1)")
    if valid_len.shape != (B,) or valid_len.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"valid_len must be an int32/int64 tensor of shape ({B},), "
                         f"got {valid_len.dtype} {tuple(valid_len.shape)}")
    if valid_len.device != q.device:
        raise ValueError(f"valid_len is on {valid_len.device} but q is on {q.device}")
    if torch.compiler.is_compiling() and not return_lse:  # traced: one opaque op (the kernels are not traced)
        return torch.ops.worldsim.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale, backend)
    lengths = None
    if valid_len.device.type == "cpu":  # read at no cost here: checked, and handed to the SDPA path
        S_max, lengths = k_cache.shape[2], valid_len.tolist()
        if any(n < 0 or n > S_max for n in lengths):
            raise ValueError(f"valid_len must lie in [0, S_max={S_max}], got {lengths}")

    chosen = select_backend(q.device, backend)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k_cache, v_cache, k_new, v_new))
    if chosen == "triton" and needs_grad and (backend or os.environ.get(BACKEND_ENV, "auto")) == "auto":
        chosen = "torch"  # auto: the differentiable torch path for a call that needs a gradient
    if chosen == "triton":
        if needs_grad:
            raise RuntimeError("the Triton cache_attention is inference-only; call it under torch.no_grad()")
        from kernels.cache import cache_attention as triton_cache_attention
        out, lse = triton_cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale)
    elif return_lse:
        out, lse = reference.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale)
    else:
        return sdpa.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale, lengths)
    return (out, lse) if return_lse else out


@torch.library.custom_op("worldsim::cache_attention", mutates_args=())
def _cache_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, valid_len: torch.Tensor,
                        k_new: torch.Tensor, v_new: torch.Tensor, scale: float | None,
                        backend: str | None) -> torch.Tensor:
    """`cache_attention` as one op that torch.compile keeps whole: traced, the call is this op, and at run time it
    is the eager call (the Triton kernel on CUDA, the SDPA path on the CPU)."""
    return cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale=scale, backend=backend)


@_cache_attention_op.register_fake
def _(q, k_cache, v_cache, valid_len, k_new, v_new, scale, backend):
    return torch.empty_like(q)
