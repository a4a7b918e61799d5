"""The dynamics model's training objective: flow matching with an independent noise level per frame.

`flow_matching_loss` draws each clip's levels (`sample_noise_levels`: diffusion forcing, with context noise
augmentation) and, as the config asks, makes its context the way the sampler will meet it: the model's own
estimates (`self_context`) or rollouts (`rollout_context`), worn like a long rollout (`context_wear`), target frames
on the sampler's own path from the turned last frame (`start_bridge`), the view memory's fill (`view_memory`).
The conventions (levels, velocity, action order) are those of worldsim/models/dynamics.py.
"""
import torch
import torch.nn.functional as F

from worldsim.models.camera import warp_previous
from worldsim.models.dynamics import per_frame, shift_actions, start_levels
from worldsim.models.dynamics_config import DynamicsConfig, sample_levels, step_levels
from worldsim.view_memory import ViewMemory


def sample_noise_levels(config: DynamicsConfig, batch: int, frames: int, generator=None, device=None,
                        with_context: bool = False):
    """Diffusion forcing: an independent noise level per frame (B, F), from `noise_schedule`, or with chance
    `sampler_levels` one of the levels the sampler's Euler steps start from. With probability `context_prob` a clip
    instead gets context at small levels U[0, context_noise_max] (context noise augmentation), the situation
    the sampler meets (nearly clean past, then a noisy chunk): with target_prob = 0 a random-length prefix,
    then independent levels; with target_prob > 0 each chunk is a target (independent level) with that
    chance and context otherwise, the last chunk always a target. with_context: also return the (B, F) mask
    of context frames."""
    kw = dict(generator=generator, device=device)
    if config.noise_schedule == "logit_normal":
        t = torch.sigmoid(torch.randn(batch, frames, **kw))
    else:
        t = torch.rand(batch, frames, **kw)
    if config.sampler_levels > 0:  # drawn only when asked for: at 0 the levels are those of earlier runs
        levels = torch.tensor(step_levels(config)[:-1], device=device)
        asked = levels[torch.randint(len(levels), (batch, frames), **kw)]
        t = torch.where(torch.rand(batch, frames, **kw) < config.sampler_levels, asked, t)
    if frames > 1:
        has_context = torch.rand(batch, 1, **kw) < config.context_prob
        if config.target_prob > 0:
            K = config.chunk_frames
            chunks = -(-frames // K)
            target = torch.rand(batch, chunks, **kw) < config.target_prob
            target[:, -1] = True
            in_context = has_context & ~target.repeat_interleave(K, dim=1)[:, :frames]
        else:
            n_context = torch.randint(1, frames, (batch, 1), **kw)
            in_context = has_context & (torch.arange(frames, device=device)[None] < n_context)
        t = torch.where(in_context, torch.rand(batch, frames, **kw) * config.context_noise_max, t)
    else:
        in_context = torch.zeros(batch, frames, dtype=torch.bool, device=device)
    return (t, in_context) if with_context else t


@torch.no_grad()
def own_estimates(model, config: DynamicsConfig, latents, actions, generator=None):
    """The model's one-step estimates of a clip's clean latents from level s = self_context_level: every frame
    noised to s, then x_s - s v (the sampler's last Euler step)."""
    s = config.self_context_level
    eps = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    x_s = (1 - s) * latents + s * eps
    levels = torch.full(latents.shape[:2], s, device=latents.device)
    return (x_s - s * model(x_s, shift_actions(actions), levels)).to(latents.dtype)


@torch.no_grad()
def own_rollout(model, config: DynamicsConfig, latents, actions, starts, generator=None):
    """The clip (B, T, C, h, w) with frames starts .. starts + rollout_frames - 1 of each row (starts (B,), >= 1)
    replaced by the model's own samples, one frame after another as the sampler makes them: each from noise in
    `sample_steps` Euler steps, seeing the frames before it (the clean ones, then its own) at the sampler's
    context level `context_noise`. Frames after the rollout are the clip's own."""
    B = latents.shape[0]
    T = min(latents.shape[1], int(starts.max()) + config.rollout_frames)  # the causal mask: later frames unseen
    x, acts, s = latents[:, :T].clone(), shift_actions(actions[:, :T]), config.context_noise
    rows, ts = torch.arange(B, device=latents.device), sample_levels(config.sample_steps, config.sample_shift)
    randn = lambda shape: torch.randn(shape, generator=generator, device=latents.device, dtype=latents.dtype)
    for j in range(config.rollout_frames):
        frame = (starts + j).clamp(max=T - 1)
        context = (1 - s) * x + s * randn(x.shape)
        z = randn(x[:, 0].shape)
        for t, t_next in zip(ts[:-1], ts[1:]):
            inputs, levels = context.clone(), torch.full((B, T), s, device=latents.device)
            inputs[rows, frame], levels[rows, frame] = z, t
            z = z + (t_next - t) * model(inputs, acts, levels)[rows, frame].to(z.dtype)
        x[rows, frame] = z
    return torch.cat([x, latents[:, T:]], dim=1)


def worn(latents, strength: float, generator=None, shift: float | None = None):
    """Clips of latents (B, T, C, h, w) worn the way the model's own long rollouts wear its frames (measured on
    the shipped world: the latents' spatial spread falls by up to a half within 50 frames, the channel means
    wander, the detail blurs). Per clip, drawn once for all its frames, with a = strength: a contrast
    c ~ U[1 - a, 1] about each frame's channel means, a blend b ~ U[0, a] towards a 3x3 binomial blur, and a
    shift of each channel's mean ~ N(0, (shift * that channel's spatial spread in the clip)^2), shift = a/2
    unless given."""
    B, T, C, h, w = latents.shape
    kw = dict(generator=generator, device=latents.device)
    contrast = 1 - strength * torch.rand(B, **kw)
    blend = strength * torch.rand(B, **kw)
    shift = torch.randn(B, C, **kw) * (0.5 * strength if shift is None else shift)
    x = latents.float()
    mean = x.mean(dim=(3, 4), keepdim=True)  # (B, T, C, 1, 1)
    spread = x.std(dim=(3, 4)).mean(dim=1)  # (B, C)
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device) / 4
    kernel = (k[:, None] * k[None]).expand(C, 1, 3, 3)
    flat = F.pad(x.reshape(B * T, C, h, w), (1, 1, 1, 1), mode="replicate")
    blurred = F.conv2d(flat, kernel, groups=C).reshape(B, T, C, h, w)
    b = blend[:, None, None, None, None]
    x = (1 - b) * x + b * blurred
    x = mean + contrast[:, None, None, None, None] * (x - mean) + (shift * spread)[:, None, :, None, None]
    return x.to(latents.dtype)


@torch.no_grad()
def clip_view_fill(config: DynamicsConfig, x_t, levels, actions):
    """The view memory's fill of each frame of a training clip (x_t (B, T, ...) at levels (B, T), actions in
    model order), as the sampler would make it: a panorama from the clip's first frame's view on, painted
    with the frames at context levels (<= context_noise_max: those the sampler paints are finished frames)."""
    memory = ViewMemory(config, x_t.shape[0], x_t.device, x_t.dtype)
    return memory.fill_clip(x_t, actions, paint=levels <= config.context_noise_max)


def bridged(config: DynamicsConfig, x_t, target, inputs, latents, eps, t, in_context, own, actions, generator=None):
    """`start_bridge`: x_t and the velocity target with the chosen frames on the sampler's own path. A target frame
    i >= 1 at a level t <= s, its start (`start_levels`: sample_start, or idle_start for a frame its action leaves
    still), is chosen with chance start_bridge; its start x_s is what `start_point` makes of the frame before it as
    the sampler would have cached it (the clip's input at its level, at most context_noise_max), turned by frame
    i's camera move: x_s = (1 - s) warp(prev) + s eps. The path runs straight from x_s at s to the frame at 0:
    x_t = (1 - t/s) x + (t/s) x_s, velocity (x_s - x) / s, which the sampler's Euler steps follow from s down."""
    B, T = t.shape
    s = start_levels(config, shift_actions(actions))  # a float, or per frame (B, T)
    kw = dict(generator=generator, device=latents.device)
    chosen = (torch.rand(B, T, **kw) < config.start_bridge) & ~in_context & ~own & (t <= s) & (t > 0)
    chosen[:, 0] = False  # a clip's first frame has no frame before it
    c = t[:, :-1].clamp(max=config.context_noise_max)[:, :, None, None, None].to(latents.dtype)
    prev = (1 - c) * inputs[:, :-1] + c * eps[:, :-1]  # as the sampler caches a finished frame
    acts = shift_actions(actions)[:, 1:]
    guess = warp_previous(prev, acts, config.camera_warp, config.warp_keep_rows) if config.camera_warp else prev
    s_next = s[:, 1:] if torch.is_tensor(s) else s  # the starts of frames 1 ..
    sv = per_frame(s_next, latents.dtype)
    x_s = (1 - sv) * guess + sv * torch.randn(guess.shape, dtype=guess.dtype, **kw)
    r = (t[:, 1:] / s_next)[:, :, None, None, None].to(latents.dtype)
    on_path = (1 - r) * latents[:, 1:] + r * x_s
    pick = chosen[:, 1:, None, None, None]
    x_t = torch.cat([x_t[:, :1], torch.where(pick, on_path, x_t[:, 1:])], dim=1)
    target = torch.cat([target[:, :1], torch.where(pick, (x_s - latents[:, 1:]) / sv, target[:, 1:])], dim=1)
    return x_t, target


def check_trainable(config: DynamicsConfig) -> None:
    """Raise ValueError for settings a model may sample with but not train with."""
    if config.start_bridge > 0 and config.view_memory:
        raise ValueError("start_bridge does not build the view memory's fill of the turned frame: train with "
                         "view_memory=false (a model trained so may still sample with it)")


def flow_matching_loss(model, config: DynamicsConfig, latents, actions, generator=None):
    """Rectified-flow loss on a clip: latents (B, T, C, h, w) clean, actions (B, T, 25) in the data's order
    (row i taken at frame i). `model` is only called (it may be wrapped in DDP). Returns (loss, metrics)."""
    check_trainable(config)
    B, T = latents.shape[:2]
    t, in_context = sample_noise_levels(config, B, T, generator, latents.device, with_context=True)  # (B, T)
    eps = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    inputs, own = latents, torch.zeros_like(in_context)
    if config.self_context > 0 and T > 1:
        own = in_context & (torch.rand(B, 1, generator=generator, device=latents.device) < config.self_context)
        # the first pass runs on the clips that use it only (a quarter of them at the defaults): one host sync
        # costs less than a forward pass over the whole batch
        rows = own.any(dim=1).nonzero().squeeze(1)
        if len(rows):
            inputs = latents.clone()
            estimates = own_estimates(model, config, latents[rows], actions[rows], generator)
            inputs[rows] = torch.where(own[rows, :, None, None, None], estimates, latents[rows])
    if config.rollout_context > 0 and T > 2:
        # the last rollout_frames frames of the clean prefix, after at least one clean frame
        n = in_context.sum(dim=1, keepdim=True)  # (B, 1); 0 for clips without context
        starts = (n - config.rollout_frames).clamp(min=1)
        frame = torch.arange(T, device=latents.device)[None]
        chosen = torch.rand(B, 1, generator=generator, device=latents.device) < config.rollout_context
        own = chosen & in_context & (frame >= starts)
        rows = own.any(dim=1).nonzero().squeeze(1)  # one host sync, as above
        if len(rows):
            inputs = latents.clone()
            made = own_rollout(model, config, latents[rows], actions[rows], starts[rows, 0], generator)
            inputs[rows] = torch.where(own[rows, :, None, None, None], made, latents[rows])
    if config.context_wear > 0 and T > 1:
        wear = in_context & (torch.rand(B, 1, generator=generator, device=latents.device) < config.context_wear)
        wearing = worn(inputs, config.wear_strength, generator, config.wear_shift)
        inputs = torch.where(wear[:, :, None, None, None], wearing, inputs)
        own = own | wear
    tb = t[:, :, None, None, None].to(latents.dtype)
    x_t = (1 - tb) * inputs + tb * eps
    target = eps - latents
    if config.start_bridge > 0 and T > 1:
        x_t, target = bridged(config, x_t, target, inputs, latents, eps, t, in_context, own, actions, generator)
    if config.view_memory:
        v = model(x_t, shift_actions(actions), t, fill=clip_view_fill(config, x_t, t, shift_actions(actions)))
    else:
        v = model(x_t, shift_actions(actions), t)
    err = (v.float() - target.float()).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    weight = torch.where(in_context, config.context_loss, 1.0)  # the last frame is never context: sum > 0
    weight = torch.where(own, 0.0, weight)
    loss = (err * weight).sum() / weight.sum()
    noisy = t > 0.5
    metrics = {"loss": loss.detach(),
               "loss_noisy": (err * noisy).sum().detach() / noisy.sum().clamp(min=1),
               "loss_clean": (err * ~noisy).sum().detach() / (~noisy).sum().clamp(min=1)}
    return loss, metrics
