"""The dynamics transformer: past latent frames + actions + per-frame noise levels -> velocity of each frame.

Tokens are latent frames cut into patches (64 per frame for 16x16 latents and 2x2 patches). Attention is
block-causal over chunks of `chunk_frames` frames with a window of `context_frames` frames (its own chunk
included), through `kernels`: `kernels.attention` over a whole clip (training, prefill) and
`kernels.cache_attention` for one chunk against the ring-buffer KV cache (sampling, see worldsim/sampling.py),
except that on the CPU the sampler's caches read a chunk in place (`KVCache.attend`, the same result bit for bit).

Conventions, shared by the objective (worldsim/models/objective.py) and the sampler:
- Action timing: `a_i` is what the player does while seeing frame i; it produces frame i + 1. The model
  therefore conditions frame i on a_{i-1}: `forward` takes `actions[:, i]` = the action that *produced*
  frame i. `shift_actions` turns the data's a_i order into that order; a clip's first frame, whose producing
  action lies outside the clip, gets the zero vector (the no-op), in training and in the sampler's prompt.
- Flow matching (rectified flow): noise level t in [0, 1], t = 0 clean, t = 1 pure noise;
  x_t = (1 - t) x0 + t eps, and the model predicts the velocity v = eps - x0 (so dx_t/dt = v). Sampling
  integrates from t = 1 down to t = 0: x <- x + (t_next - t) v.
- Positions: 3-D rotary (time, row, column). Time positions are absolute frame indices (int64, growing
  without bound); the angles are computed in float64 and then cast, so rotated q.k depends on the frame
  difference alone to fp32 rounding at any play length, and cached keys never need rewriting.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from worldsim.models.camera import holds_button, turn_degrees, turn_previous
from worldsim.models.dynamics_config import DynamicsConfig

ACTION_DIM = 25  # worldsim.engine.actions.ACTION_DIM (not imported: the engine pulls in gymnasium)
# Rotary bases: time differences reach context_frames (tens), row/column ones latent_size / patch (about 8).
ROPE_BASE_TIME = 10_000.0
ROPE_BASE_SPACE = 100.0
# Noise levels are embedded as t * 1000, the scale sinusoidal timestep embeddings were designed for.
TIMESTEP_SCALE = 1000.0
TIMESTEP_FREQ_DIM = 256
SPREAD_GAIN = 2.0  # the most the spread floor scales a made frame's detail by


class LayerNorm(nn.Module):
    """LayerNorm without affine parameters: AdaLN supplies the per-frame scale and shift."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.layer_norm(x, (self.dim,), eps=1e-6)


class QKNorm(nn.Module):
    """RMSNorm of queries and keys together, each with its own gain: keeps attention logits bounded in bf16."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 1, head_dim))  # (q/k, head, hs), broadcast over heads

    def forward(self, qk):
        return F.rms_norm(qk, (qk.shape[-1],), eps=1e-6) * self.weight


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Rotary3D(nn.Module):
    """cos/sin tables of the 3-D rotary embedding: half the rotated pairs for time, a quarter each for row, column."""

    def __init__(self, head_dim: int, grid_h: int, grid_w: int):
        super().__init__()
        pairs = head_dim // 2
        self.n_time, n_space = pairs // 2, pairs // 4
        self.n_row, self.n_col = n_space, pairs - self.n_time - n_space
        inv_time = ROPE_BASE_TIME ** (-torch.arange(self.n_time, dtype=torch.float64) / self.n_time)
        self.register_buffer("inv_time", inv_time, persistent=False)  # float64; re-cast in forward
        rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w)  # (N,) row of each token
        cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h)
        angle_row = rows[:, None] * ROPE_BASE_SPACE ** (-torch.arange(self.n_row) / self.n_row)[None]
        angle_col = cols[:, None] * ROPE_BASE_SPACE ** (-torch.arange(self.n_col) / self.n_col)[None]
        space = torch.cat([angle_row, angle_col], dim=-1)  # (N, n_row + n_col)
        self.register_buffer("cos_space", space.cos().float(), persistent=False)
        self.register_buffer("sin_space", space.sin().float(), persistent=False)
        self.register_buffer("nsin_space", -self.sin_space, persistent=False)

    def forward(self, frame_pos):
        """frame_pos (F,) int64 absolute frame indices -> cos, sin of shape (F * N, 1, 1, head_dim): for the pairs
        (i, i + hs/2), cos twice and sin with its first half negated, as `apply_rotary` takes them."""
        angle = frame_pos.to(torch.float64)[:, None] * self.inv_time.to(torch.float64)[None]  # (F, n_time)
        N = self.cos_space.shape[0]
        space_shape = (len(frame_pos), N, self.cos_space.shape[-1])
        dtype = self.cos_space.dtype
        space = lambda part: part.expand(space_shape)  # noqa: E731  (F, N, n_row + n_col)
        cos = angle.cos().to(dtype)[:, None].expand(-1, N, -1)  # (F, N, n_time)
        sin = angle.sin().to(dtype)[:, None].expand(-1, N, -1)
        tables = (torch.cat([cos, space(self.cos_space), cos, space(self.cos_space)], dim=-1),   # (F, N, hs)
                  torch.cat([-sin, space(self.nsin_space), sin, space(self.sin_space)], dim=-1))
        return [table.flatten(0, 1)[:, None, None] for table in tables]  # (F*N, 1, 1, hs) each


def apply_rotary(x, cos, sin):
    """Rotate x (..., T, 2, nh, hs) by `Rotary3D`'s (T, 1, 1, hs) tables, pairing dimension i with i + hs/2:
    (x1 cos - x2 sin, x1 sin + x2 cos), bit for bit, in four ops instead of seven."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, x1], dim=-1) * sin


def attend_cache(cache, q, k, v):
    """A chunk's q, k, v (B, nh, T, hs) against a KV cache and the chunk's own keys: the cache's `attend` where
    it has one (worldsim.kv_cache.KVCache), else the kernels' dispatch on its k, v and valid_len."""
    if hasattr(cache, "attend"):
        return cache.attend(q, k, v)
    return kernels.cache_attention(q, cache.k, cache.v, cache.valid_len, k, v)


class Attention(nn.Module):
    """Multi-head attention with QK-norm and 3-D rotary; block-causal over chunks, or one chunk vs a KV cache."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.qk_norm = QKNorm(self.head_dim)
        self.chunk_tokens = config.chunk_frames * config.tokens_per_frame
        self.window_chunks = config.context_frames // config.chunk_frames

    def qkv(self, x, rope):
        """x (B, F, N, C) -> q, k, v (B, nh, F*N, hs), queries and keys normalised and rotated."""
        B, Fr, N, C = x.shape
        qkv = self.c_attn(x).view(B, Fr * N, 3, self.n_head, self.head_dim)
        # Under autocast the norm and rotary run in fp32; the kernels want q, k and v in one dtype.
        qk = apply_rotary(self.qk_norm(qkv[:, :, :2]), *rope).to(qkv.dtype)  # (B, T, 2, nh, hs)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    def forward(self, x, rope, cache=None, mode="train"):
        """x (B, F, N, C). mode: train (no cache) | read (chunk vs cache) | write (read, then store the chunk's
        keys) | prefill (block-causal over x, then store its keys) | commit_read (x is two chunks: the first
        as in write, then the second as in read, so it sees the first through the cache)."""
        B, Fr, N, C = x.shape
        q, k, v = self.qkv(x, rope)
        if mode in ("train", "prefill"):
            y = kernels.attention(q, k, v, self.chunk_tokens, self.window_chunks)
        elif mode == "commit_read":
            first, second = slice(0, self.chunk_tokens), slice(self.chunk_tokens, None)
            y1 = attend_cache(cache, q[:, :, first], k[:, :, first], v[:, :, first])
            cache.update(k[:, :, first], v[:, :, first])
            y2 = attend_cache(cache, q[:, :, second], k[:, :, second], v[:, :, second])
            y = torch.cat([y1, y2], dim=2)  # (B, nh, T, hs)
        else:
            y = attend_cache(cache, q, k, v)
        if mode in ("write", "prefill"):
            cache.update(k, v)
        y = y.transpose(1, 2).reshape(B, Fr, N, C)  # (B, F, N, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.c_fc = nn.Linear(config.n_embd, hidden)
        self.c_proj = nn.Linear(hidden, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block with AdaLN-zero: per-frame shift/scale/gate, gates zero at init (identity)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1, self.ln_2 = LayerNorm(config.n_embd), LayerNorm(config.n_embd)
        self.attn = Attention(config)
        self.mlp = MLP(config)
        self.adaln = nn.Linear(config.n_embd, 6 * config.n_embd)  # zero-initialised by DynamicsModel

    def forward(self, x, cond, rope, cache=None, mode="train"):
        """x (B, F, N, C); cond (B, F, C) after SiLU, one vector per frame, broadcast over its tokens."""
        mod = self.adaln(cond)[:, :, None]  # (B, F, 1, 6C)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.ln_1(x), shift1, scale1), rope, cache, mode)
        x = x + gate2 * self.mlp(modulate(self.ln_2(x), shift2, scale2))
        return x

    def store_keys(self, x, cond, rope, cache):
        """Only write this block's keys and values: for the last block of a cache-filling pass, whose output
        nothing reads."""
        shift1, scale1 = self.adaln(cond)[:, :, None].chunk(6, dim=-1)[:2]
        _, k, v = self.attn.qkv(modulate(self.ln_1(x), shift1, scale1), rope)
        cache.update(k, v)


class TimestepEmbedding(nn.Module):
    """Noise level t in [0, 1] -> sinusoidal features of t * 1000 -> MLP."""

    def __init__(self, dim: int):
        super().__init__()
        half = TIMESTEP_FREQ_DIM // 2
        self.register_buffer("freqs", torch.exp(-math.log(10_000.0) * torch.arange(half) / half), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(TIMESTEP_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        args = (t.float() * TIMESTEP_SCALE)[..., None] * self.freqs  # (B, F, half)
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))


@dataclass
class FrameInputs:
    """The parts of a pass that depend on the frame and its action but not on its noise level
    (`DynamicsModel.frame_inputs`): rotary tables, the action's embedding, and with prev_input the previous
    frame (turned and filled), its level, and their embeddings."""
    rope: list
    action_cond: torch.Tensor
    prev_tokens: torch.Tensor | None = None
    prev_cond: torch.Tensor | None = None
    prev: torch.Tensor | None = None
    prev_levels: torch.Tensor | None = None
    inside: torch.Tensor | None = None  # where prev's turn found the old view (`turn_previous`), where it was made


class DynamicsModel(nn.Module):
    """Velocity prediction for every frame of a clip, or for one chunk against per-layer KV caches."""

    def __init__(self, config: DynamicsConfig):
        super().__init__()
        self.config = config
        d = config.n_embd
        self.patch_embed = nn.Linear(config.patch_dim, d)
        self.time_embed = TimestepEmbedding(d)
        self.action_embed = nn.Sequential(nn.Linear(ACTION_DIM, d), nn.SiLU(), nn.Linear(d, d))
        if config.guard_range is not None:  # from the config, not the weights: the state dict is the same
            low, high = torch.tensor(config.guard_range).view(2, config.latent_channels, 1, 1)
            self.register_buffer("guard_low", low, persistent=False)
            self.register_buffer("guard_high", high, persistent=False)
        if config.spread_floor is not None:
            floor = torch.tensor(config.spread_floor).view(config.latent_channels, 1, 1)
            self.register_buffer("spread_low", floor, persistent=False)
        if config.prev_input:
            self.prev_embed = nn.Linear(config.patch_dim, d)
            self.prev_time_embed = TimestepEmbedding(d)
        self.rotary = Rotary3D(d // config.n_head, *config.grid)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(d)
        self.adaln_f = nn.Linear(d, 2 * d)
        self.head = nn.Linear(d, config.patch_dim)
        self.apply(self._init_weights)
        for module in (self.adaln_f, self.head, *(b.adaln for b in self.blocks)):
            nn.init.zeros_(module.weight)  # AdaLN-zero: blocks are identities and the output is 0 at init
            nn.init.zeros_(module.bias)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def patchify(self, latents):
        """(B, F, C, h, w) -> (B, F, N, C*p*p), tokens in row-major order of the patch grid."""
        B, Fr, C, h, w = latents.shape
        p, (gh, gw) = self.config.patch_size, self.config.grid
        x = latents.reshape(B, Fr, C, gh, p, gw, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, F, gh, gw, C, p, p)
        return x.reshape(B, Fr, gh * gw, C * p * p)

    def unpatchify(self, x):
        """(B, F, N, C*p*p) -> (B, F, C, h, w)."""
        B, Fr = x.shape[:2]
        c, p, (gh, gw) = self.config.latent_channels, self.config.patch_size, self.config.grid
        x = x.reshape(B, Fr, gh, gw, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, F, C, gh, p, gw, p)
        return x.reshape(B, Fr, c, gh * p, gw * p)

    def previous(self, latents, noise_levels, prev_frame=None):
        """Each frame's previous frame and its level, (B, F, C, h, w) and (B, F): the frames shifted by one, the
        first one's from `prev_frame` = (latents (B, 1, C, h, w), levels (B, 1)), or zeros at level 1 (unknown)
        at the start of a clip."""
        if prev_frame is None:
            first, first_level = torch.zeros_like(latents[:, :1]), noise_levels.new_ones(noise_levels.shape[0], 1)
        else:
            first, first_level = prev_frame
            check_latents(first, self.config)
            if first.shape[:2] != (latents.shape[0], 1) or tuple(first_level.shape) != (latents.shape[0], 1):
                raise ValueError(f"prev_frame must be latents (B, 1, C, h, w) and levels (B, 1) for B = "
                                 f"{latents.shape[0]}, got {tuple(first.shape)} and {tuple(first_level.shape)}")
        return (torch.cat([first.to(latents.dtype), latents[:, :-1]], dim=1),
                torch.cat([first_level.to(noise_levels.dtype), noise_levels[:, :-1]], dim=1))

    def frame_inputs(self, actions, frame_pos, prev_frame=None, fill=None, turned=None) -> FrameInputs:
        """What every pass over one frame (a chunk of K = 1) computes alike at any noise level: `forward` takes
        it as `inputs`, so that a frame's Euler steps and its commit compute it once. actions (B, 1, 25),
        frame_pos (1,), prev_frame and fill as `forward` takes them; turned: the previous frame turned and
        filled (`warp_previous`), where the caller has it already."""
        if self.config.chunk_frames != 1:
            raise ValueError("frame_inputs is for chunks of one frame (chunk_frames = 1)")
        c = self.config
        shape = (actions.shape[0], 1, c.latent_channels, c.latent_height, c.latent_width)
        # a one-frame chunk's previous frame is prev_frame's: its own latents and level only give their dtypes
        return self._inputs(torch.zeros(shape, device=actions.device, dtype=self.head.weight.dtype), actions,
                            torch.zeros(shape[:2], device=actions.device), frame_pos, prev_frame, fill, turned)

    def _inputs(self, latents, actions, noise_levels, frame_pos, prev_frame, fill, turned=None,
                prev_frames=None) -> FrameInputs:
        dtype = self.head.weight.dtype
        inputs = FrameInputs(self.rotary(frame_pos), self.action_embed(actions.to(dtype)))
        if self.config.prev_input:
            if prev_frames is not None:
                prev, prev_levels = prev_frames
                if prev.shape != latents.shape or prev_levels.shape != noise_levels.shape:
                    raise ValueError(f"prev_frames must be latents {tuple(latents.shape)} and levels "
                                     f"{tuple(noise_levels.shape)}, got {tuple(prev.shape)} and "
                                     f"{tuple(prev_levels.shape)}")
            else:
                prev, prev_levels = self.previous(latents, noise_levels, prev_frame)
            inside = None
            if self.config.camera_warp:
                if turned is None:
                    prev, inside = turn_previous(prev, actions, self.config.camera_warp, self.config.warp_keep_rows,
                                                 fill)
                else:
                    prev = turned
            elif fill is not None:
                raise ValueError("fill is what the camera warp reveals: the model needs camera_warp > 0")
            inputs.prev_tokens = self.prev_embed(self.patchify(prev).to(dtype))
            inputs.prev_cond = self.prev_time_embed(prev_levels)
            inputs.prev, inputs.prev_levels, inputs.inside = prev, prev_levels, inside
        return inputs

    def forward(self, latents, actions, noise_levels, frame_pos=None, caches=None, mode="train", prev_frame=None,
                fill=None, inputs=None, prev_frames=None):
        """latents (B, F, C, h, w) at their noise levels (B, F); actions (B, F, 25), row i = the action that
        produced frame i; frame_pos (F,) absolute frame indices (default 0..F-1). Returns velocity (B, F, C, h, w).
        prev_frame: (latents, levels) of the frame before the first, for `prev_input` (None: a clip's start).
        fill: (latents (B, F, C, h, w), valid (B, F, 1, h, w) bool): what each frame's view holds where its turn
        reveals what the previous frame did not (the sampler's view memory; `warp_previous`).
        prev_frames: (latents (B, F, C, h, w), levels (B, F)), each frame's previous frame where it is not the frame
        before it in `latents` (with `commit_last_step` the caches hold each frame as its last Euler step saw it,
        and the frame after it saw it finished): the sampler's reference in the tests recomputes that.

        mode: train (whole clip, block-causal) | prefill (whole prompt, writes `caches`) | read (one chunk
        against `caches`) | write (one chunk against `caches`, then stores its keys and values) | read_write (as
        write, and returns the velocity) | commit_read (two chunks: write the first, then read with the second,
        in one pass); prefill and write return None."""
        self.check_inputs(latents, actions, noise_levels)
        B, Fr = latents.shape[:2]
        if inputs is not None and Fr != 1:
            raise ValueError(f"inputs (frame_inputs) are one frame's: the chunk has {Fr} frames")
        if frame_pos is None:
            frame_pos = torch.arange(Fr, device=latents.device)
        if inputs is None:
            inputs = self._inputs(latents, actions, noise_levels, frame_pos, prev_frame, fill, prev_frames=prev_frames)
        dtype = self.head.weight.dtype
        cond = self.time_embed(noise_levels) + inputs.action_cond  # (B, F, C)
        x = self.patch_embed(self.patchify(latents).to(dtype))  # (B, F, N, C)
        if self.config.prev_input:
            prev, prev_levels = inputs.prev, inputs.prev_levels
            x = x + inputs.prev_tokens
            cond = cond + inputs.prev_cond
        rope = inputs.rope
        cond = F.silu(cond)
        block_mode = "write" if mode == "read_write" else mode
        for i, block in enumerate(self.blocks):
            if mode in ("prefill", "write") and i == len(self.blocks) - 1:
                block.store_keys(x, cond, rope, caches[i])
                return None  # the pass only fills the caches
            x = block(x, cond, rope, None if caches is None else caches[i], block_mode)
        shift, scale = self.adaln_f(cond)[:, :, None].chunk(2, dim=-1)  # (B, F, 1, C) each
        out = self.unpatchify(self.head(modulate(self.ln_f(x), shift, scale)))
        if not self.config.residual:
            return out
        return residual_velocity(out, latents, noise_levels, prev, prev_levels, self.config.change_var)

    def guard(self, latents):
        """Made frames (..., C, h, w) with each channel's spatial mean moved into guard_range (the frame's detail
        about the mean unchanged) and, with a spread_floor, that detail scaled up (by at most SPREAD_GAIN) until
        each channel's spatial std reaches the floor; the frames themselves without either."""
        c = self.config
        if c.guard_range is None and c.spread_floor is None:
            return latents
        mean = latents.mean(dim=(-2, -1), keepdim=True)
        inside = mean
        if c.guard_range is not None:
            inside = torch.minimum(torch.maximum(mean, self.guard_low.to(mean.dtype)), self.guard_high.to(mean.dtype))
        if c.spread_floor is None:
            return latents + (inside - mean)
        detail = latents - mean
        std = detail.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
        gain = (self.spread_low.to(std.dtype) / std.clamp(min=1e-6)).clamp(1.0, SPREAD_GAIN)
        return detail * gain + inside

    def check_inputs(self, latents, actions, noise_levels):
        """Raise ValueError naming the input whose shape or values do not fit this model."""
        check_latents(latents, self.config)
        check_actions(actions, latents.shape[:2], finite=False)  # values: checked where input enters (Sampler)
        if tuple(noise_levels.shape) != tuple(latents.shape[:2]):
            raise ValueError(f"noise_levels must be (B, F) = {tuple(latents.shape[:2])}, "
                             f"got {tuple(noise_levels.shape)}")


RESIDUAL_MIN_LEVEL = 0.05  # velocities divide by the level; below it (clean context frames only) by this


def residual_velocity(change, latents, levels, prev, prev_levels, change_var: float):
    """Velocity from a predicted correction to the best linear guess of a frame given its noisy input x_t and
    the previous frame, for unit-scale latents whose frame-to-frame change has variance `change_var`:
    p = g(s) * prev undoes the previous frame's level s (g = (1 - s) / ((1 - s)^2 + s^2): 1 clean, 0 noise);
    guess = p + k(t) * (x_t - (1 - t) p), k = (1 - t) var / ((1 - t)^2 var + t^2) (x_t at t = 0, p at t = 1);
    x_hat = guess + change, and v = (x_t - x_hat) / t lands on x_hat at t = 0."""
    f32 = lambda x: x.float()[:, :, None, None, None]
    s, t = f32(prev_levels), f32(levels)
    p = (1 - s) / ((1 - s) ** 2 + s ** 2) * prev.float()
    x_t = latents.float()
    k = (1 - t) * change_var / ((1 - t) ** 2 * change_var + t ** 2)
    x_hat = p + k * (x_t - (1 - t) * p) + change.float()
    return ((x_t - x_hat) / t.clamp(min=RESIDUAL_MIN_LEVEL)).to(change.dtype)


def check_latents(latents, config: DynamicsConfig):
    """Raise ValueError unless `latents` is (B, F, C, h, w) with this config's C, h, w."""
    want = (config.latent_channels, config.latent_height, config.latent_width)
    if not torch.is_tensor(latents) or latents.dim() != 5 or tuple(latents.shape[2:]) != want:
        shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
        raise ValueError(f"latents must be (B, F, {', '.join(map(str, want))}) for this model, got {shape} "
                         "(a prompt of another resolution, or from another autoencoder?)")


def check_actions(actions, batch_frames, finite: bool = True):
    """Raise ValueError when `actions` is not a (B, F, 25) tensor for (B, F) = batch_frames, or (with `finite`,
    which reads the values: a host sync on a GPU) holds NaN or infinity."""
    if not torch.is_tensor(actions) or actions.dim() != 3 or actions.shape[-1] != ACTION_DIM:
        shape = tuple(actions.shape) if torch.is_tensor(actions) else type(actions).__name__
        raise ValueError(f"actions must be (B, F, {ACTION_DIM}) action vectors, got {shape}")
    if tuple(actions.shape[:2]) != tuple(batch_frames):
        raise ValueError(f"actions have (B, F) = {tuple(actions.shape[:2])} but the latents {tuple(batch_frames)}")
    if finite and not bool(torch.isfinite(actions).all()):
        raise ValueError("actions contain NaN or infinite values")


def shift_actions(actions):
    """Data order (row i = a_i, taken at frame i) -> model order (row i = a_{i-1}, which produced frame i).

    The first frame's producing action lies before the clip; it gets the zero vector (the no-op)."""
    return torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)


def per_frame(level, dtype):
    """A level per frame, a float or (B, F), shaped to scale latents (B, F, C, h, w) of `dtype` (a float32 tensor
    would otherwise promote bf16 latents)."""
    return level[:, :, None, None, None].to(dtype) if torch.is_tensor(level) else level


def start_levels(config: DynamicsConfig, actions):
    """The level each frame's Euler steps start from, given the actions that make the frames (B, F, 25), model
    order: sample_start, or idle_start (a (B, F) float32 tensor then) for a frame whose action holds no button and
    turns the camera by at most idle_turn degrees each way. Computed on the actions' device (no host sync, so a
    CUDA graph can capture it). Without idle_start: the float sample_start."""
    if config.idle_start == 0.0:
        return config.sample_start
    idle = ~holds_button(actions) & (turn_degrees(actions) <= config.idle_turn)
    return torch.where(idle, config.idle_start, config.sample_start).float()


def grow_from(model: "DynamicsModel", directory, name: str = "model") -> "DynamicsModel":
    """Load the dynamics checkpoint in DIRECTORY into `model`, a deeper model whose other weights have the same
    shapes: its first blocks get the checkpoint's, the blocks after them keep their AdaLN-zero init (gates zero:
    identities), so the grown model computes what the checkpoint did (under the same config) and training adds
    depth from there. Fields that change no shape (the objective's, say) may differ, as with train.init_from."""
    from worldsim.training.checkpoint import CheckpointError
    shallow = load_dynamics(directory, name=name)
    saved, now = vars(shallow.config), vars(model.config)
    expected, found = model.state_dict(), shallow.state_dict()
    misfit = [f"tensor {k!r}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
              for k, v in found.items() if k in expected and expected[k].shape != v.shape]
    if shallow.config.n_layer > model.config.n_layer or misfit:
        differ = "".join(f"; {k}: checkpoint {saved[k]!r}, model {now[k]!r}" for k in now if saved[k] != now[k])
        raise CheckpointError(
            f"{directory}/{name}.json cannot grow into this model: it needs no more layers than the model and weights "
            f"of the same shapes ({'; '.join(misfit[:3]) or 'too many layers'}{differ})")
    missing, unexpected = model.load_state_dict(found, strict=False)
    added = {f"blocks.{i}." for i in range(shallow.config.n_layer, model.config.n_layer)}
    assert not unexpected and all(k[:k.index(".", 7) + 1] in added for k in missing), (missing, unexpected)
    with torch.no_grad():
        for block in model.blocks[shallow.config.n_layer:]:
            block.adaln.weight.zero_()
            block.adaln.bias.zero_()
    return model


def load_dynamics(directory, expect: DynamicsConfig | None = None, *, name: str = "model", device="cpu"):
    """The model saved in DIRECTORY (`name`: model | ema), weights loaded strictly. With `expect`, a checkpoint
    of another config is a CheckpointError naming each differing field."""
    from worldsim.training.checkpoint import CheckpointError, load_config, load_weights
    config = load_config(directory, name, DynamicsConfig)
    if expect is not None and expect != config:
        diff = [f"{k}: checkpoint {v!r}, expected {getattr(expect, k)!r}"
                for k, v in vars(config).items() if getattr(expect, k) != v]
        raise CheckpointError(f"{directory}/{name}.json is a dynamics model of another config ({'; '.join(diff)})")
    model = DynamicsModel(config)
    load_weights(model, f"{directory}/{name}.safetensors")
    return model.to(device)
