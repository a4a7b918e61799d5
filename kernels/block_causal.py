"""Block-causal flash attention for training, in Triton: forward, backward and their autograd.Function.

Query token i (chunk i // C) sees key j iff chunk(j) <= chunk(i) and, with a window of W chunks,
chunk(j) > chunk(i) - W. Structure after Triton's tutorial 06: one program keeps a query tile (forward,
dq) or a key tile (dk, dv) in registers and streams the other side through on-chip memory, so the (T, T)
score matrix never reaches device memory. Each program splits its loop into a masked head, an unmasked
middle and a masked tail, so only tiles that straddle a chunk boundary, the window edge or the end of the
sequence pay for the mask. Plain pointer arithmetic throughout: `tl.make_block_ptr` raises in triton 3.9.
"""
import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634  # scores are kept in base 2 so the inner loop uses exp2, the native instruction
LOG2E_K: tl.constexpr = tl.constexpr(LOG2E)  # the same, readable inside kernels
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
# A masked score. Finite, so a tile row with every key masked gives exp2(0) instead of NaN from
# (-inf) - (-inf); the row's first real key then rescales that garbage by exp2(-1e6 - m) = 0.
MASKED_SCORE: tl.constexpr = tl.constexpr(-1.0e6)


def _alloc(shape, dtype, device):
    """Every output and scratch buffer comes from here, so tests can poison them (fill with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _configs(gpu: list[tuple[int, int, int, int]], interpret: tuple[int, int]):
    """Autotune list: (BLOCK_M, BLOCK_N, num_stages, num_warps) on a GPU; one config in the interpreter,
    where autotuning over several fails. The interpreter tiles are deliberately unequal and smaller than
    the tests' chunks so that boundaries fall inside tiles."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": interpret[0], "BLOCK_N": interpret[1]}, num_stages=1, num_warps=4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w) for m, n, s, w in gpu]


@triton.jit
def _split_range(lo, full_lo, full_hi, hi, BLOCK: tl.constexpr):
    """Cut [lo, hi) into [a, b) masked, [b, c) unmasked, [c, hi) masked with tile-aligned a, b, c;
    [full_lo, full_hi) is where no element of the program's tile needs a mask."""
    a = lo // BLOCK * BLOCK
    b = tl.minimum(tl.maximum(tl.cdiv(full_lo, BLOCK) * BLOCK, a), hi)
    c = tl.minimum(tl.maximum(full_hi // BLOCK * BLOCK, b), hi)
    return a, b, c


@triton.jit
def _visible(q_chunk, k_chunk, W):
    """(len(q_chunk), len(k_chunk)) block-causal mask with a window of W chunks."""
    return (k_chunk[None, :] <= q_chunk[:, None]) & (k_chunk[None, :] > q_chunk[:, None] - W)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, q_chunk, k_base, v_base, stride_kt, stride_vt, lo, hi, T, C, W, qk_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            key_ok = offs_n < T
            k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASKED:
            ok = _visible(q_chunk, offs_n // C, W) & key_ok[None, :]
            qk = tl.where(ok, qk, MASKED_SCORE)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=_configs([(128, 64, 3, 4), (128, 128, 3, 8), (128, 64, 4, 8), (128, 128, 2, 8), (64, 64, 4, 4)],
                     interpret=(32, 16)),
    key=["HEAD_DIM", "SHAPE_BUCKET"],
)
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                H, T, C, W, qk_scale, SHAPE_BUCKET,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Late query tiles see the most keys: launch them first so that the short ones fill the tail.
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    q_chunk = offs_m // C

    # Keys any row of this tile sees, and the sub-range that every row sees (no mask needed there).
    c_lo = start_m // C
    c_hi = (tl.minimum(start_m + BLOCK_M, T) - 1) // C
    key_lo = tl.maximum(c_lo - W + 1, 0) * C
    key_hi = tl.minimum((c_hi + 1) * C, T)
    full_lo = tl.maximum(c_hi - W + 1, 0) * C
    full_hi = tl.minimum((c_lo + 1) * C, T)
    a, bb, cc = _split_range(key_lo, full_lo, full_hi, key_hi, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, q_chunk, k_base, v_base, skt, svt, a, bb, T, C, W, qk_scale,
                               BLOCK_N, HEAD_DIM, True, PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, q_chunk, k_base, v_base, skt, svt, bb, cc, T, C, W, qk_scale,
                               BLOCK_N, HEAD_DIM, False, PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, q_chunk, k_base, v_base, skt, svt, cc, key_hi, T, C, W,
                               qk_scale, BLOCK_N, HEAD_DIM, True, PRECISION)

    out = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=row_ok)


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, sob, soh, sot, sdb, sdh, sdt, H, T,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d o_i * do_i, the softmax-backward term shared by every key of row i."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, k_chunk, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                    lo, hi, T, C, W, qk_scale,
                    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_ptrs = q_base + offs_m[:, None] * stride_qt + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * stride_dot + offs_d[None, :]
        if MASKED:
            row_ok = offs_m < T
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), base 2
        p_t = tl.math.exp2(qk_t - lse[None, :] * LOG2E_K)
        if MASKED:
            ok = tl.trans(_visible(offs_m // C, k_chunk, W)) & row_ok[None, :]
            p_t = tl.where(ok, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.autotune(
    configs=_configs([(32, 128, 3, 4), (64, 128, 3, 8), (32, 64, 4, 4), (64, 64, 3, 4), (64, 128, 2, 8)],
                     interpret=(16, 32)),
    key=["HEAD_DIM", "SHAPE_BUCKET"],
)
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                     H, T, C, W, qk_scale, sm_scale, SHAPE_BUCKET,
                     HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < T
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skt + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svt + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    k_chunk = offs_n // C

    # Queries that see any key of this tile, and the sub-range that sees all of them. Keys past T are
    # never stored, so only query rows past T need the mask.
    c_lo = start_n // C
    c_hi = (tl.minimum(start_n + BLOCK_N, T) - 1) // C
    q_lo = c_lo * C
    q_hi = tl.minimum((c_hi + W) * C, T)
    full_lo = c_hi * C
    full_hi = tl.minimum((c_lo + W) * C, T)
    a, bb, cc = _split_range(q_lo, full_lo, full_hi, q_hi, BLOCK_M)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdb + h * sdh
    lse_base = LSE + bh.to(tl.int64) * T
    delta_base = DELTA + bh.to(tl.int64) * T
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, k_chunk, q_base, do_base, lse_base, delta_base, sqt, sdt,
                             a, bb, T, C, W, qk_scale, BLOCK_M, HEAD_DIM, True, PRECISION)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, k_chunk, q_base, do_base, lse_base, delta_base, sqt, sdt,
                             bb, cc, T, C, W, qk_scale, BLOCK_M, HEAD_DIM, False, PRECISION)
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, k_chunk, q_base, do_base, lse_base, delta_base, sqt, sdt,
                             cc, q_hi, T, C, W, qk_scale, BLOCK_M, HEAD_DIM, True, PRECISION)

    # dK and dV are allocated contiguous (B, H, T, D).
    out_offs = bh.to(tl.int64) * T * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, q_chunk, k_base, v_base, stride_kt, stride_vt, lo, hi, T, C, W, qk_scale,
                  BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            key_ok = offs_n < T
            k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        if MASKED:
            p = tl.where(_visible(q_chunk, offs_n // C, W) & key_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.autotune(
    configs=_configs([(128, 32, 3, 4), (128, 64, 3, 8), (64, 64, 4, 4), (64, 128, 3, 8), (128, 64, 2, 8)],
                     interpret=(32, 16)),
    key=["HEAD_DIM", "SHAPE_BUCKET"],
)
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                   H, T, C, W, qk_scale, sm_scale, SHAPE_BUCKET,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # longest tiles first, as in forward
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0) * LOG2E_K
    delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    q_chunk = offs_m // C

    # Same key ranges as the forward pass.
    c_lo = start_m // C
    c_hi = (tl.minimum(start_m + BLOCK_M, T) - 1) // C
    key_lo = tl.maximum(c_lo - W + 1, 0) * C
    key_hi = tl.minimum((c_hi + 1) * C, T)
    full_lo = tl.maximum(c_hi - W + 1, 0) * C
    full_hi = tl.minimum((c_lo + 1) * C, T)
    a, bb, cc = _split_range(key_lo, full_lo, full_hi, key_hi, BLOCK_N)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq = _bwd_dq_inner(dq, q, do, lse, delta, q_chunk, k_base, v_base, skt, svt, a, bb, T, C, W, qk_scale,
                       BLOCK_N, HEAD_DIM, True, PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, q_chunk, k_base, v_base, skt, svt, bb, cc, T, C, W, qk_scale,
                       BLOCK_N, HEAD_DIM, False, PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, q_chunk, k_base, v_base, skt, svt, cc, key_hi, T, C, W, qk_scale,
                       BLOCK_N, HEAD_DIM, True, PRECISION)
    out_offs = bh.to(tl.int64) * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DQ + out_offs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _precision(dtype) -> str:
    """fp32 inputs get full-precision dots: Triton's default for fp32 is tf32, about 1e-3 relative error."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _window_chunks(T: int, chunk_size: int, window: int | None) -> int:
    """No window is a window as long as the sequence."""
    return triton.cdiv(T, chunk_size) if window is None else window


def _shape_bucket(B: int, H: int, T: int) -> int:
    """Autotuning key: the best tiles depend on how many programs there are, so tune again when the
    power-of-two size of B*H or T changes, not for every T."""
    return triton.next_power_of_2(B * H) * 1_000_000 + triton.next_power_of_2(T)


def _forward(q, k, v, chunk_size, window, scale):
    B, H, T, D = q.shape
    o = _alloc((B, H, T, D), q.dtype, q.device)
    lse = _alloc((B, H, T), torch.float32, q.device)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _fwd_kernel[grid](q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                      H, T, chunk_size, _window_chunks(T, chunk_size, window), scale * LOG2E,
                      _shape_bucket(B, H, T), HEAD_DIM=D, PRECISION=_precision(q.dtype))
    return o, lse


def _backward(do, q, k, v, o, lse, chunk_size, window, scale):
    B, H, T, D = q.shape
    W = _window_chunks(T, chunk_size, window)
    delta = _alloc((B, H, T), torch.float32, q.device)
    delta_block = 64
    _bwd_delta_kernel[(triton.cdiv(T, delta_block), B * H)](o, do, delta, *o.stride()[:3], *do.stride()[:3], H, T,
                                                            HEAD_DIM=D, BLOCK_M=delta_block)
    dq = _alloc((B, H, T, D), q.dtype, q.device)
    dk = _alloc((B, H, T, D), k.dtype, q.device)
    dv = _alloc((B, H, T, D), v.dtype, q.device)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    common = dict(HEAD_DIM=D, PRECISION=_precision(q.dtype))
    bucket = _shape_bucket(B, H, T)
    _bwd_dkdv_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, dk, dv, *strides, H, T, chunk_size, W, scale * LOG2E, scale, bucket, **common)
    _bwd_dq_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq, *strides, H, T, chunk_size, W, scale * LOG2E, scale, bucket, **common)
    return dq, dk, dv


class BlockCausalAttention(torch.autograd.Function):
    """(out, lse) = block-causal attention; lse is returned for inspection and merging, not differentiated."""

    @staticmethod
    def forward(ctx, q, k, v, chunk_size: int, window: int | None, scale: float):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        o, lse = _forward(q, k, v, chunk_size, window, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (chunk_size, window, scale)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(_last_dim_contiguous(do), q, k, v, o, lse, *ctx.args)
        return dq, dk, dv, None, None, None


@torch.compiler.disable
def block_causal_attention(q, k, v, chunk_size: int, window: int | None = None, scale: float | None = None):
    """Triton block-causal attention over (B, H, T, D); returns (out, lse). Inputs are validated by the
    dispatch in `kernels`. Under torch.compile (train.compile=true) this is a graph break: the kernels run as
    they are rather than being traced into Inductor, whose tracing of them failed on an H100 (torch 2.11,
    triton 3.6: a Python float argument became fp64 inside the kernel)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return BlockCausalAttention.apply(q, k, v, chunk_size, window, scale)
