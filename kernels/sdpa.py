"""The CPU path when no log-sum-exp is asked for: torch's fused scaled_dot_product_attention with the same
semantics as `reference`, which stays the oracle (and the path that returns lse).

On the CPU reading valid_len costs no device sync, so a cache whose rows are equally full is sliced instead
of masked: the common case (every row of a batch advances together) never builds a mask or zeroes slots.
There, in fp32 and without a gradient, the cache and the chunk's own keys are attended to apart and the two
results merged by their log-sum-exp (flash-decoding's merge), so the cache is read in place instead of being
copied beside the chunk's keys. Measured on a 2-core CPU: alone, at batch 16 (4 heads, 64 queries, 1,024
cached keys, d=32), 4.1 ms a call against 9.6 with the copy, and the same 0.29 ms at batch 1; in rollouts of
the shipped world, 16 worlds, 113 / 117 → 118 / 121 frames/s; play (batch 1) unchanged.
"""
import torch
import torch.nn.functional as F

from kernels import reference

# torch's CPU flash attention, which also returns the log-sum-exp of the scaled scores (natural log); None where
# this torch lacks it (the merge below then falls back to one attention over a copy).
_FLASH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def block_causal_attention(q, k, v, chunk_size: int, window: int | None = None, scale=None):
    """Block-causal attention (B, H, T, D) → (B, H, T, D); see reference.block_causal_attention."""
    T = q.shape[-2]
    if chunk_size >= T and window is None:  # one chunk: every token sees every token
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    mask = reference.block_causal_mask(T, chunk_size, window, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale=None, lengths=None):
    """Chunk queries against cache slots [0, valid_len[b]) plus the chunk's own keys; see reference.cache_attention.
    lengths: valid_len as a list, where the caller has read it already."""
    lengths = valid_len.tolist() if lengths is None else lengths
    if all(n == lengths[0] for n in lengths):
        n = lengths[0]
        if n == 0:
            return F.scaled_dot_product_attention(q, k_new, v_new, scale=scale)
        inputs = (q, k_cache, v_cache, k_new, v_new)
        if _FLASH_LSE is not None and q.device.type == "cpu" and q.dtype == torch.float32 and not (
                torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):  # the lse carries no gradient
            out, lse = _FLASH_LSE(q, k_cache[:, :, :n], v_cache[:, :, :n], scale=scale)
            out_new, lse_new = _FLASH_LSE(q, k_new, v_new, scale=scale)
            total = torch.logaddexp(lse, lse_new)
            return out * (lse - total).exp_().unsqueeze(-1) + out_new * (lse_new - total).exp_().unsqueeze(-1)
        k = torch.cat([k_cache[:, :, :n], k_new], dim=-2)
        v = torch.cat([v_cache[:, :, :n], v_new], dim=-2)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return reference.cache_attention(q, k_cache, v_cache, valid_len, k_new, v_new, scale)[0]
