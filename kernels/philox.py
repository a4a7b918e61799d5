"""Per-row Philox normals in Triton: the CUDA side of kernels/noise.py (see there for the stream's definition).

One program makes BLOCK Philox blocks (4·BLOCK normals) of one row: it loads the row's key and draw counter
(device tensors: no host sync, and a launch whose shapes do not change replays in a CUDA graph), runs
`tl.philox` (Philox4x32-10 with the key as seed) and Box-Muller on 23-bit uniforms exactly as the numba loop.
"""
import math

import torch
import triton
import triton.language as tl

BLOCK = 256  # Philox blocks a program makes: 1,024 normals


@triton.jit
def _uniform(x):
    """uint32 → float32 in (0, 1): the top 23 bits plus one half, times 2^-23 (exact, as in the numba loop)."""
    return ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def _box_muller(a, b, TWO_PI: tl.constexpr):
    r = tl.sqrt(-2.0 * tl.log(_uniform(a)))
    theta = TWO_PI * _uniform(b)
    return r * tl.cos(theta), r * tl.sin(theta)


@triton.jit
def _row_normal_kernel(keys_ptr, draws_ptr, out_ptr, numel, stride_row, BLOCK: tl.constexpr, TWO_PI: tl.constexpr):
    row = tl.program_id(0)
    g = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # Philox block index within the row's draw
    seed = tl.load(keys_ptr + 2 * row).to(tl.uint64) | (tl.load(keys_ptr + 2 * row + 1).to(tl.uint64) << 32)
    n = tl.load(draws_ptr + row).to(tl.uint64)
    c0 = g.to(tl.uint32)
    zero = tl.zeros_like(c0)
    c1 = zero + (n & 0xFFFFFFFF).to(tl.uint32)
    c2 = zero + (n >> 32).to(tl.uint32)
    x0, x1, x2, x3 = tl.philox(seed, c0, c1, c2, zero)
    z0, z1 = _box_muller(x0, x1, TWO_PI)
    z2, z3 = _box_muller(x2, x3, TWO_PI)
    base = out_ptr + row.to(tl.int64) * stride_row + 4 * g
    ty = out_ptr.dtype.element_ty
    tl.store(base, z0.to(ty), mask=4 * g < numel)
    tl.store(base + 1, z1.to(ty), mask=4 * g + 1 < numel)
    tl.store(base + 2, z2.to(ty), mask=4 * g + 2 < numel)
    tl.store(base + 3, z3.to(ty), mask=4 * g + 3 < numel)


def row_normal(keys: torch.Tensor, draws: torch.Tensor, numel: int, dtype=torch.float32, out=None) -> torch.Tensor:
    """(B, numel) normals: row b is draw draws[b] under keys[b]; shapes checked by kernels.noise.row_normal.
    `out`, if given, is written instead: (B, numel) of `dtype` with unit stride along a row."""
    B = keys.shape[0]
    if out is None:
        out = torch.empty(B, numel, device=keys.device, dtype=dtype)
    elif out.shape != (B, numel) or out.dtype != dtype or (numel > 1 and out.stride(1) != 1):
        raise ValueError(f"out must be ({B}, {numel}) {dtype} with rows of unit stride, "
                         f"got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    if B and numel:
        grid = (B, triton.cdiv(triton.cdiv(numel, 4), BLOCK))
        _row_normal_kernel[grid](keys, draws, out, numel, out.stride(0), BLOCK=BLOCK, TWO_PI=2.0 * math.pi)
    return out
