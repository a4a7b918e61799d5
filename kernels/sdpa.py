"""The CPU path when no log-sum-exp is asked for: torch's fused scaled_dot_product_attention with the same
semantics as `reference`, which stays the oracle (and the path that returns lse).

On the CPU reading valid_len costs no device sync, so a cache whose rows are equally full is sliced instead
of masked: the common case (every row of a batch advances together) never builds a mask or zeroes slots.
"""
import torch
import torch.nn.functional as F

from kernels import reference


def block_causal_attention(q, k, v, chunk_size: int, window: int | None = None, scale=None):
    """Block-causal attention (B, H, T, D) → (B, H, T, D); see reference.block_causal_attention."""
    T = q.shape[-2]
    if chunk_size >= T and window is None:  # one chunk: every token sees every token
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    mask = reference.block_causal_mask(T, chunk_size, window, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale=None, lengths=None):
    """Chunk queries against cache slots [0, valid_len[b]) plus the chunk's own keys; see reference.cache_attention.
    lengths: valid_len as a list, where the caller has read it already (on the CPU). Without it, valid_len is not
    read on the host (that would be a device sync, and no CUDA graph could hold the call): the masked reference."""
    if lengths is None:
        return reference.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale)[0]
    if all(n == lengths[0] for n in lengths):
        n = lengths[0]
        k = torch.cat([k_cache[:, :, :n], k_new], dim=-2)
        v = torch.cat([v_cache[:, :, :n], v_new], dim=-2)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return reference.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale)[0]
