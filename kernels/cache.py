"""Chunk-against-KV-cache attention for inference, in Triton: split-KV (flash-decoding) plus a merge.

A new chunk's queries (B, H, Tq, D) attend to the valid slots of a ring-buffer cache (B, H, S_max, D) and
to the chunk's own keys (full attention inside the chunk). A chunk holds few queries, so one program per
query tile would leave most of the GPU idle at batch 1; the cache is instead cut into `splits` equal
ranges, one program each, and a second kernel merges the partial results by their log-sum-exp.

Graph-safe by construction: the valid length is read on the device (no host sync), the split count and
tile sizes depend only on shapes (no recompilation as the cache fills), there is no autotuning (which
would run benchmarks inside a capture), and the cache is read in place (no copy, no roll: a softmax over
a set of keys does not depend on their order, so ring order needs no undoing).
"""
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.block_causal import INTERPRET, LOG2E, LN2, MASKED_SCORE, _alloc, _last_dim_contiguous, _precision

# Fewest cache keys a split is given: one or two key tiles. Below this a program's fixed cost (loading
# Q, writing a D-float partial row per query for the merge to read back) outweighs its share of the cache;
# half of it where the GPU would otherwise hold one short program an SM (`default_splits`).
MIN_KEYS_PER_SPLIT = 128
# Partial-output floats one merge program holds: 8k is 64 registers a thread at 4 warps.
MERGE_TILE_FLOATS = 8192
# A split this short runs one or two key tiles, too few for a deep software pipeline to pay off.
SHORT_SPLIT_KEYS = 256


@triton.jit
def _cache_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, lo, hi, limit, qk_scale,
                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over keys [lo, hi); when MASKED, keys at or past `limit` are ignored."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            key_ok = offs_n < limit
            k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            qk = tl.where(key_ok[None, :], qk, MASKED_SCORE)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _cache_split_kernel(Q, KC, VC, LEN, KN, VN, O, LSE,
                        sqb, sqh, sqt, skcb, skch, skct, svcb, svch, svct,
                        sknb, sknh, sknt, svnb, svnh, svnt, sob, soh, sot,
                        H, Tq, S_max, split_len, qk_scale,
                        HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, DIRECT: tl.constexpr):
    """One (query tile, batch*head, split): cache slots [split*split_len, ...) below the row's valid
    length; the last split also takes the chunk's own keys. DIRECT (a single split) writes the final
    output; otherwise a normalised fp32 partial and its base-2 log-sum-exp go to (split, B, H, Tq, ...)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    split = tl.program_id(2)
    n_splits = tl.num_programs(2)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Tq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    # A length outside [0, S_max] cannot be reported without a host sync: clamp it so every load stays
    # in bounds and poison the row's output with NaN below, so the mistake is loud rather than silent.
    length = tl.load(LEN + b)
    bad_length = (length < 0) | (length > S_max)
    length = tl.minimum(tl.maximum(length, 0), S_max).to(tl.int32)
    lo = split * split_len
    hi = tl.maximum(tl.minimum(lo + split_len, length), lo)
    full_hi = lo + (hi - lo) // BLOCK_N * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    kc_base = KC + b * skcb + h * skch
    vc_base = VC + b * svcb + h * svch
    acc, l_i, m_i = _cache_inner(acc, l_i, m_i, q, kc_base, vc_base, skct, svct, lo, full_hi, hi, qk_scale,
                                 BLOCK_N, HEAD_DIM, False, PRECISION)
    acc, l_i, m_i = _cache_inner(acc, l_i, m_i, q, kc_base, vc_base, skct, svct, full_hi, hi, hi, qk_scale,
                                 BLOCK_N, HEAD_DIM, True, PRECISION)

    # The chunk's own keys: an empty range on every split but the last.
    own_hi = tl.where(split == n_splits - 1, Tq, 0)
    own_full = own_hi // BLOCK_N * BLOCK_N
    kn_base = KN + b * sknb + h * sknh
    vn_base = VN + b * svnb + h * svnh
    acc, l_i, m_i = _cache_inner(acc, l_i, m_i, q, kn_base, vn_base, sknt, svnt, 0, own_full, own_hi, qk_scale,
                                 BLOCK_N, HEAD_DIM, False, PRECISION)
    acc, l_i, m_i = _cache_inner(acc, l_i, m_i, q, kn_base, vn_base, sknt, svnt, own_full, own_hi, own_hi,
                                 qk_scale, BLOCK_N, HEAD_DIM, True, PRECISION)

    # A split with no keys (past the valid length) has l = 0: it writes o = 0 and lse = -inf, weight 0.
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    out = tl.where(bad_length, float("nan"), out)
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    row = bh.to(tl.int64) * Tq + offs_m
    if DIRECT:
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(LSE + row, lse2 * LN2, mask=row_ok)
    else:
        part = split.to(tl.int64) * tl.num_programs(1) * Tq + row  # (split, B*H, Tq) row index
        tl.store(O + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
        tl.store(LSE + part, lse2, mask=row_ok)


@triton.jit
def _cache_merge_kernel(OP, LSEP, O, LSE, sob, soh, sot, H, Tq, n_splits, n_rows,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, SPLITS: tl.constexpr):
    """out = sum_s exp(lse_s - lse) o_s over the splits' normalised partials. All splits are loaded as
    one (SPLITS, BLOCK_M, D) tile: a loop over splits would wait on one memory round trip per split."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Tq
    part = offs_s[:, None].to(tl.int64) * n_rows + bh.to(tl.int64) * Tq + offs_m[None, :]  # (SPLITS, BLOCK_M)
    ok = (offs_s[:, None] < n_splits) & row_ok[None, :]
    lse = tl.load(LSEP + part, mask=ok, other=float("-inf"))
    o = tl.load(OP + part[:, :, None] * HEAD_DIM + offs_d[None, None, :], mask=ok[:, :, None], other=0.0)
    # The last split holds the chunk's own keys, so m is finite on every real row; rows past Tq are
    # never stored, so give them m = 0 to keep -inf - -inf out of the arithmetic.
    m = tl.max(lse, 0)
    m = tl.where(row_ok, m, 0.0)
    w = tl.math.exp2(lse - m[None, :])  # (SPLITS, BLOCK_M)
    l = tl.where(row_ok, tl.sum(w, 0), 1.0)
    out = tl.sum(w[:, :, None] * o, 0) / l[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, (m + tl.math.log2(l)) * LN2, mask=row_ok)


@dataclass(frozen=True)
class CacheTiles:
    """Launch shape of the split kernel: query rows and keys per tile, warps, pipeline depth."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _block_m(Tq: int) -> int:
    """Query rows per tile: the chunk up to 64 rows (16 is the smallest tile tl.dot takes). On an H100,
    64 beat 128 at Tq = 256 (more programs to spread over the SMs) and beat 32 at Tq = 64."""
    return min(64, max(16, triton.next_power_of_2(Tq)))


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: split as an H100 would, so CPU tests take the same paths
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(B: int, H: int, Tq: int, S_max: int, device, block_m: int | None = None) -> int:
    """As many splits as fit one wave of programs on the GPU (every partial costs a write and a read of
    B*H*Tq*D floats, so more than one wave buys nothing), within what the cache length allows; two programs
    an SM where one wave would leave each split a key tile or two, so that its time is latency that a second
    program on the SM hides. The H100 sweep of 2026-11-26 at B=1 H=8 Tq=64 S=2048 D=64: 32 splits of 64 keys
    8.3 µs, 16 of 128 keys 8.7; at H=16 Tq=256 S=8192 D=128 (long splits) 2 splits 55 µs, 4 splits 58."""
    programs = B * H * triton.cdiv(Tq, block_m or _block_m(Tq))
    one_wave = max(1, min(_sm_count(device) // programs, triton.cdiv(S_max, MIN_KEYS_PER_SPLIT)))
    if one_wave > 1 and triton.cdiv(S_max, one_wave) <= MIN_KEYS_PER_SPLIT:
        return max(one_wave, min(2 * _sm_count(device) // programs, triton.cdiv(S_max, MIN_KEYS_PER_SPLIT // 2)))
    return one_wave


def default_tiles(Tq: int, keys_per_split: int) -> CacheTiles:
    """Chosen by the benchmark's --sweep on an H100 (bf16, D = 64 and 128): four warps throughout; a short
    split (one or two key tiles) wants 64-key tiles and a 2-deep pipeline, a long one 128-key tiles and 3."""
    if INTERPRET:
        return CacheTiles(_block_m(Tq), 64, 4, 1)
    if keys_per_split <= SHORT_SPLIT_KEYS:
        return CacheTiles(_block_m(Tq), 64, 4, 2)
    return CacheTiles(_block_m(Tq), 128, 4, 3)


def cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale: float | None = None,
                    num_splits: int | None = None, tiles: CacheTiles | None = None):
    """Triton chunk-vs-cache attention; returns (out, lse). Inputs are validated by the dispatch in
    `kernels`; `num_splits` and `tiles` override the heuristics (tests cover both paths with them, the
    benchmark's --sweep tunes them)."""
    q, k_cache, v_cache, k_new, v_new = (_last_dim_contiguous(x) for x in (q, k_cache, v_cache, k_new, v_new))
    B, H, Tq, D = q.shape
    S_max = k_cache.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if num_splits is None:
        num_splits = default_splits(B, H, Tq, S_max, q.device, tiles and tiles.block_m)
    tiles = tiles or default_tiles(Tq, triton.cdiv(S_max, num_splits))
    block_m, block_n = tiles.block_m, tiles.block_n
    # Split boundaries on whole key tiles; recount so that the last split is not empty by construction.
    split_len = triton.cdiv(triton.cdiv(max(S_max, 1), num_splits), block_n) * block_n
    splits = triton.cdiv(max(S_max, 1), split_len)

    out = _alloc((B, H, Tq, D), q.dtype, q.device)
    lse = _alloc((B, H, Tq), torch.float32, q.device)
    if splits == 1:
        part_o, part_lse = out, lse
    else:
        part_o = _alloc((splits, B, H, Tq, D), torch.float32, q.device)
        part_lse = _alloc((splits, B, H, Tq), torch.float32, q.device)
    grid = (triton.cdiv(Tq, block_m), B * H, splits)
    _cache_split_kernel[grid](
        q, k_cache, v_cache, valid_len, k_new, v_new, part_o, part_lse,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        *k_new.stride()[:3], *v_new.stride()[:3], *out.stride()[:3],
        H, Tq, S_max, split_len, scale * LOG2E,
        HEAD_DIM=D, PRECISION=_precision(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, DIRECT=splits == 1,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    if splits > 1:
        splits_p2 = triton.next_power_of_2(splits)
        merge_block = max(1, min(16, MERGE_TILE_FLOATS // (splits_p2 * D)))
        _cache_merge_kernel[(triton.cdiv(Tq, merge_block), B * H)](
            part_o, part_lse, out, lse, *out.stride()[:3], H, Tq, splits, B * H * Tq,
            HEAD_DIM=D, BLOCK_M=merge_block, SPLITS=splits_p2)
    return out, lse
