"""Normal noise with one counter-based stream per batch row: Philox4x32-10 (Salmon et al., SC 2011).

Row b's draw n is a pure function of (seed of row b, n). Element e of the draw is normal number e % 4 made
from the Philox block with counter (e // 4, n mod 2^32, n // 2^32, 0) and key (seed mod 2^32, seed // 2^32):
its four 32-bit words give two pairs of uniforms, and Box-Muller turns each pair into two normals. So a row's
noise depends neither on the batch it sits in, nor on what other rows drew; the same seed gives the same
noise on the CPU and on the GPU (to float rounding of log, cos and sin); and a batch of B rows is one launch
instead of B generator calls (a batch-256 rollout step made 512 of those, outside its CUDA graph).

`row_normal` picks the Triton kernel on CUDA and a numba loop on the CPU; `backend=` forces either (the
Triton one on CPU tensors under TRITON_INTERPRET=1, which is how the tests check it against numba). The
caller keeps the draw counters, an int64 tensor on the device, so that nothing is read back to the host.
"""
import math
import os

import numba
import numpy as np
import torch

BACKENDS = ("auto", "triton", "numba")
MASK32 = (1 << 32) - 1

# Philox4x32 round multipliers and Weyl key increments (Random123).
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_LOW, _SHIFT, _DROP = np.uint64(MASK32), np.uint64(32), np.uint64(9)
_HALF, _ULP = np.float32(0.5), np.float32(2.0 ** -23)
_MINUS_TWO, _TWO_PI = np.float32(-2.0), np.float32(2.0 * math.pi)

__all__ = ["row_normal", "seed_keys", "philox4x32", "BACKENDS"]


@numba.njit(cache=True)
def _philox(c0, c1, c2, c3, k0, k1):
    """Ten Philox4x32 rounds; every value a uint64 below 2^32 (numba turns a uint64 mixed with a signed
    int into a float, so every constant here is a uint64 too)."""
    for _ in range(10):
        p0 = _M0 * c0  # < 2^64: the full 32 x 32-bit product
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> _SHIFT) ^ c1 ^ k0, p1 & _LOW, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _LOW
        k0 = (k0 + _W0) & _LOW
        k1 = (k1 + _W1) & _LOW
    return c0, c1, c2, c3


@numba.njit(cache=True)
def _uniform(x):
    """A 32-bit word → float32 in (0, 1): its top 23 bits plus one half, times 2^-23; exact in float32."""
    return (np.float32(x >> _DROP) + _HALF) * _ULP


@numba.njit(cache=True)
def _box_muller(a, b):
    r = np.sqrt(_MINUS_TWO * np.log(_uniform(a)))
    theta = _TWO_PI * _uniform(b)
    return r * np.cos(theta), r * np.sin(theta)


@numba.njit(cache=True)
def _row_normal_numba(keys, draws, out):
    """out (B, N) float32 ← row b's draw draws[b] under key keys[b] (B, 2)."""
    B, N = out.shape
    for b in range(B):
        k0, k1 = np.uint64(keys[b, 0]), np.uint64(keys[b, 1])
        n = np.uint64(draws[b])
        n0, n1 = n & _LOW, n >> _SHIFT
        for g in range((N + 3) // 4):
            x0, x1, x2, x3 = _philox(np.uint64(g), n0, n1, np.uint64(0), k0, k1)
            z0, z1 = _box_muller(x0, x1)
            z2, z3 = _box_muller(x2, x3)
            e = 4 * g
            out[b, e] = z0
            if e + 1 < N:
                out[b, e + 1] = z1
            if e + 2 < N:
                out[b, e + 2] = z2
            if e + 3 < N:
                out[b, e + 3] = z3


def philox4x32(counter, key) -> tuple:
    """The Philox4x32-10 block of a counter (four ints below 2^32) and a key (two): for checks against the
    published answers."""
    c = [np.uint64(int(v) & MASK32) for v in counter]
    k = [np.uint64(int(v) & MASK32) for v in key]
    return tuple(int(v) for v in _philox(*c, *k))


def seed_keys(seeds, device=None) -> torch.Tensor:
    """Philox keys (B, 2) int64 of integer seeds taken modulo 2^64 (as torch.Generator.manual_seed takes them)."""
    keys = []
    for seed in seeds:
        if isinstance(seed, bool) or int(seed) != seed:
            raise TypeError(f"a noise seed must be an integer, got {seed!r}")
        s = int(seed) % (1 << 64)
        keys.append((s & MASK32, s >> 32))
    return torch.tensor(keys, dtype=torch.int64, device=device).reshape(-1, 2)


def _select(device: torch.device, backend: str | None) -> str:
    choice = backend or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"noise backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        import kernels
        return "triton" if device.type == "cuda" and kernels.triton_available() else "numba"
    if choice == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"the Triton noise kernel needs CUDA tensors (or TRITON_INTERPRET=1); got {device}")
    return choice


def row_normal(keys: torch.Tensor, draws: torch.Tensor, numel: int, dtype=torch.float32, *,
               backend: str | None = None) -> torch.Tensor:
    """(B, numel) standard normals of `dtype`: row b is draw draws[b] of the stream keyed by keys[b].

    keys (B, 2) int64 (from `seed_keys`) and draws (B,) int64 lie on the device the noise is made on; they are
    read there (no host sync on CUDA) and left unchanged: the caller counts its draws (`draws += 1`)."""
    if keys.dim() != 2 or keys.shape[1] != 2 or keys.dtype != torch.int64:
        raise ValueError(f"keys must be an int64 tensor (B, 2), got {keys.dtype} {tuple(keys.shape)}")
    B = keys.shape[0]
    if draws.shape != (B,) or draws.dtype != torch.int64 or draws.device != keys.device:
        raise ValueError(f"draws must be an int64 tensor ({B},) on {keys.device}, "
                         f"got {draws.dtype} {tuple(draws.shape)} on {draws.device}")
    if int(numel) != numel or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    if _select(keys.device, backend) == "triton":
        from kernels.philox import row_normal as triton_row_normal
        return triton_row_normal(keys, draws, int(numel), dtype)
    out = np.empty((B, int(numel)), np.float32)
    _row_normal_numba(keys.cpu().numpy(), draws.cpu().numpy(), out)
    return torch.from_numpy(out).to(keys.device, dtype)
