"""Plain-torch attention: the CPU path and the oracle the Triton kernels are tested against.

Both functions compute in the dtype of their inputs, so the same code gives the float64 "truth" and the
same-dtype reference whose own error sets the tolerance (FlashAttention's rule: a kernel may be at most
twice as far from float64 as plain torch in the same dtype).
"""
import math

import torch


def block_causal_mask(T: int, chunk_size: int, window: int | None = None, device=None) -> torch.Tensor:
    """(T, T) bool mask: query i sees key j iff chunk(j) <= chunk(i) and chunk(j) > chunk(i) - window."""
    chunk = torch.arange(T, device=device) // chunk_size
    q_chunk, k_chunk = chunk[:, None], chunk[None, :]
    mask = k_chunk <= q_chunk
    if window is not None:
        mask &= k_chunk > q_chunk - window
    return mask


def masked_attention(q, k, v, mask, scale=None):
    """Softmax attention with a boolean mask broadcast against (B, H, Tq, Tk); returns (out, lse)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    # Log-sum-exp in at least fp32 so the returned lse is as good as the kernel's, whatever the dtype.
    lse = torch.logsumexp(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
    out = torch.softmax(scores, dim=-1) @ v
    return out, lse


def block_causal_attention(q, k, v, chunk_size: int, window: int | None = None, scale=None):
    """Block-causal attention over (B, H, T, D) inputs; returns (out, lse) with lse of shape (B, H, T)."""
    mask = block_causal_mask(q.shape[-2], chunk_size, window, device=q.device)
    return masked_attention(q, k, v, mask, scale)


def cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale=None):
    """Chunk queries against cache slots [0, valid_len[b]) plus the chunk's own keys; returns (out, lse)."""
    S_max = k_cache.shape[-2]
    Tq = k_new.shape[-2]
    slot_valid = torch.arange(S_max, device=q.device)[None, :] < valid_len.to(q.device)[:, None]  # (B, S_max)
    own = torch.ones(slot_valid.shape[0], Tq, dtype=torch.bool, device=q.device)
    mask = torch.cat([slot_valid, own], dim=1)[:, None, None, :]  # (B, 1, 1, S_max + Tq)
    k = torch.cat([k_cache, k_new], dim=-2)
    # Zero the unused slots' values: a masked score gives weight 0, but 0 * NaN from garbage is still NaN.
    v = torch.cat([v_cache.masked_fill(~slot_valid[:, None, :, None], 0), v_new], dim=-2)
    return masked_attention(q, k, v, mask, scale)
