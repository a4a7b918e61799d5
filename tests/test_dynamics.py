"""The dynamics transformer: configs, AdaLN-zero init, attention through kernels against a hand-built mask,
rotary positions, the flow-matching objective, and bad input."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import kernels
from worldsim.models import camera, dynamics, objective
from worldsim.models.dynamics import ACTION_DIM, DynamicsConfig, DynamicsModel, load_dynamics, shift_actions
from worldsim.models.objective import flow_matching_loss, sample_noise_levels

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dynamics"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small ops on a shared 2-core machine: one thread avoids OpenMP spinning against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**changes) -> DynamicsConfig:
    return dataclasses.replace(DynamicsConfig(**yaml.safe_load((CONFIGS / "tiny.yaml").read_text())), **changes)


def randomized(model: DynamicsModel, seed: int = 0) -> DynamicsModel:
    """Perturb every parameter: AdaLN-zero makes a fresh model output 0, which would pass any comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def inputs(config, B=2, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(B, T, config.latent_channels, config.latent_height, config.latent_width, generator=g)
    return latents, torch.rand(B, T, ACTION_DIM, generator=g), torch.rand(B, T, generator=g)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_files_are_exactly_the_dataclass_fields(path):
    values = yaml.safe_load(path.read_text())
    assert set(values) == {f.name for f in dataclasses.fields(DynamicsConfig)}
    config = DynamicsConfig(**values)
    assert config.n_embd // config.n_head in kernels.HEAD_DIMS


def test_adaln_zero_blocks_are_identity_at_init():
    torch.manual_seed(0)
    config = tiny_config()
    model = DynamicsModel(config)
    latents, actions, t = inputs(config)
    x = model.patch_embed(model.patchify(latents))  # (B, F, N, C)
    cond = torch.nn.functional.silu(model.time_embed(t) + model.action_embed(actions))
    rope = model.rotary(torch.arange(latents.shape[1]))
    for block in model.blocks:
        assert torch.equal(block(x, cond, rope), x)
    velocity = DynamicsModel(dataclasses.replace(config, residual=False))
    assert torch.equal(velocity(latents, actions, t), torch.zeros_like(latents))
    # the residual model's velocity is then that of its linear guess alone, from the turned previous frame
    prev, prev_t = model.previous(latents, t)
    prev = camera.warp_previous(prev, actions, config.camera_warp, config.warp_keep_rows)
    expected = dynamics.residual_velocity(torch.zeros_like(latents), latents, t, prev, prev_t, config.change_var)
    torch.testing.assert_close(model(latents, actions, t), expected, rtol=0, atol=0)


def hand_mask(frames, tokens_per_frame, chunk_frames, context_frames):
    """Token i of frame f sees token j of frame g iff g's chunk is f's or one of the W/K - 1 chunks before it."""
    T = frames * tokens_per_frame
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            ci, cj = i // tokens_per_frame // chunk_frames, j // tokens_per_frame // chunk_frames
            mask[i, j] = ci - context_frames // chunk_frames < cj <= ci
    return mask


@pytest.mark.parametrize("chunk_frames,context_frames", [(1, 3), (2, 4)])
def test_training_forward_equals_plain_attention_with_explicit_mask(monkeypatch, chunk_frames, context_frames):
    torch.manual_seed(0)
    config = tiny_config(chunk_frames=chunk_frames, context_frames=context_frames, latent_height=8, latent_width=8)
    model = randomized(DynamicsModel(config))
    latents, actions, t = inputs(config, T=6)
    monkeypatch.setenv(kernels.BACKEND_ENV, "torch")
    out = model(latents, actions, t)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    mask = hand_mask(6, config.tokens_per_frame, chunk_frames, context_frames)
    calls = []

    def plain(q, k, v, chunk_size, window=None):
        calls.append((chunk_size, window))
        scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5  # (B, nh, T, T)
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v

    monkeypatch.setattr(dynamics.kernels, "attention", plain)
    expected = model(latents, actions, t)
    expected.square().sum().backward()
    assert calls == [(chunk_frames * config.tokens_per_frame, context_frames // chunk_frames)] * config.n_layer
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        assert float((grads[name] - p.grad).norm()) <= 1e-5 * float(p.grad.norm()) + 1e-6, name


def test_rotary_depends_on_frame_difference_only_at_any_play_length():
    torch.manual_seed(0)
    config = tiny_config(latent_height=8, latent_width=8, context_frames=4)
    model = randomized(DynamicsModel(config))
    latents, actions, t = inputs(config, T=6)
    near = model(latents, actions, t, frame_pos=torch.arange(6))
    far = model(latents, actions, t, frame_pos=torch.arange(6) + 10_000_000)
    torch.testing.assert_close(far, near, rtol=1e-5, atol=1e-5)


def test_rotary_splits_head_dim_into_time_row_and_column():
    rotary = dynamics.Rotary3D(head_dim=32, grid_h=2, grid_w=3)
    assert (rotary.n_time, rotary.n_row, rotary.n_col) == (8, 4, 4)
    cos, sin = rotary(torch.tensor([0, 5]))
    assert cos.shape == sin.shape == (2 * 6, 1, 1, 32)
    assert torch.equal(cos[..., :16], cos[..., 16:]) and torch.equal(sin[..., :16], -sin[..., 16:])
    cos = cos[:, 0, 0, :16].reshape(2, 2, 3, 16)  # (frame, row, col, pair)
    assert torch.equal(cos[0, :, :, :8], torch.ones(2, 3, 8))  # frame 0: no time rotation
    assert not torch.equal(cos[1, 0, 0, :8], cos[0, 0, 0, :8])
    assert torch.equal(cos[:, :, 0, 8:12], cos[:, :, 2, 8:12])  # row part ignores the column
    assert torch.equal(cos[:, 0, :, 12:], cos[:, 1, :, 12:])  # column part ignores the row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_rotary_is_the_pairwise_rotation_bit_for_bit(dtype):
    """The four-op rotary equals rotating each pair (i, i + hs/2) by its angle, written out, in every dtype."""
    rotary = dynamics.Rotary3D(head_dim=32, grid_h=2, grid_w=3).to(dtype)
    cos, sin = rotary(torch.tensor([3, 1_000_007]))
    x = torch.randn(1, 12, 2, 4, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[..., 16:], sin[..., 16:]
    assert torch.equal(dynamics.apply_rotary(x, cos, sin), torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1))


def test_shift_actions_conditions_each_frame_on_the_action_that_produced_it():
    a = torch.arange(2 * 3 * ACTION_DIM, dtype=torch.float32).reshape(2, 3, ACTION_DIM)
    shifted = shift_actions(a)
    assert torch.equal(shifted[:, 0], torch.zeros(2, ACTION_DIM))
    assert torch.equal(shifted[:, 1:], a[:, :-1])


def test_noise_levels_and_context_prefix():
    config = tiny_config(context_prob=1.0, context_noise_max=0.1)
    t = sample_noise_levels(config, 64, 8, torch.Generator().manual_seed(0))
    assert t.shape == (64, 8) and bool(((t >= 0) & (t <= 1)).all())
    assert bool((t[:, 0] <= 0.1).all())  # every clip has a context prefix of at least one frame
    assert float(t[:, -1].mean()) > 0.3  # the last frame is never context
    uniform = sample_noise_levels(dataclasses.replace(config, noise_schedule="uniform", context_prob=0.0), 4096, 1)
    assert abs(float(uniform.mean()) - 0.5) < 0.03


def test_sampler_levels_train_where_the_sampler_steps_from():
    """sampler_levels = p: a target frame's level is, with chance p, one the sampler's Euler steps start from
    (1 and 0.5 for 2 steps; shifted with sample_shift); context frames keep their small levels; at 0 the draws
    are those of a config without the field."""
    config = tiny_config(context_prob=0.5, context_noise_max=0.1, sample_steps=2, sampler_levels=0.6)
    t, context = sample_noise_levels(config, 4096, 8, torch.Generator().manual_seed(0), with_context=True)
    targets = t[~context]
    asked = (targets == 1.0) | (targets == 0.5)
    assert abs(float(asked.float().mean()) - 0.6) < 0.02  # a logit-normal draw hits 1 or 0.5 exactly never
    assert abs(float((targets == 1.0).float().mean()) - 0.3) < 0.02
    assert bool((t[context] <= 0.1).all()) and bool(context.any())
    shifted = sample_noise_levels(dataclasses.replace(config, sample_shift=3.0, sampler_levels=1.0, context_prob=0.0),
                                  256, 8, torch.Generator().manual_seed(0))
    assert set(shifted.unique().tolist()) == {1.0, 0.75}
    started = sample_noise_levels(dataclasses.replace(config, sample_start=0.6, sampler_levels=1.0, context_prob=0.0),
                                  256, 8, torch.Generator().manual_seed(0))
    assert started.unique().tolist() == pytest.approx([0.3, 0.6])  # the levels a start at 0.6 steps from
    # the schedule is drawn first, the same as without the field; only the asked frames change
    free = dataclasses.replace(config, context_prob=0.0)
    mixed = sample_noise_levels(free, 64, 8, torch.Generator().manual_seed(1))
    plain = sample_noise_levels(dataclasses.replace(free, sampler_levels=0.0), 64, 8, torch.Generator().manual_seed(1))
    kept = (mixed != 1.0) & (mixed != 0.5)
    assert torch.equal(mixed[kept], plain[kept]) and 0.3 < float(kept.float().mean()) < 0.5
    with pytest.raises(ValueError, match="sampler_levels"):
        tiny_config(sampler_levels=1.5)


def test_sparse_targets_are_whole_chunks_among_context():
    config = tiny_config(context_prob=1.0, context_noise_max=0.01, target_prob=0.3, chunk_frames=2, context_frames=8)
    t = sample_noise_levels(config, 4096, 8, torch.Generator().manual_seed(0))
    context = t <= 0.01  # logit-normal levels fall below 0.01 with a chance of about 2e-6
    assert torch.equal(context[:, 0::2], context[:, 1::2])  # a chunk is all target or all context
    assert not bool(context[:, -1].any())  # the last chunk is always a target
    assert abs(float(context[:, :6].float().mean()) - 0.7) < 0.03
    mixed = sample_noise_levels(dataclasses.replace(config, context_prob=0.0), 4096, 8, torch.Generator())
    assert float((mixed <= 0.01).float().mean()) < 0.001  # no context clips: independent levels


@pytest.mark.parametrize("target_prob", [0.0, 0.3], ids=["prefix", "sparse"])
def test_context_loss_weighs_context_frames(target_prob):
    """context_loss = 0: the loss is the mean over target frames only, context outputs get no gradient; the
    context mask returned is the frames drawn at context levels."""
    config = tiny_config(latent_height=8, latent_width=8, context_prob=1.0, context_noise_max=0.01,
                         target_prob=target_prob)
    latents, actions, _ = inputs(config, B=6, T=8)
    t, context = sample_noise_levels(config, 6, 8, torch.Generator().manual_seed(3), with_context=True)
    assert bool(context.any()) and bool((~context).any()) and not bool(context[:, -1].any())
    assert torch.equal(context, t <= 0.01)  # logit-normal target levels fall below 0.01 with a chance of 2e-6
    out = torch.randn(latents.shape, requires_grad=True)
    errors = {}
    for weight in (0.0, 1.0):
        loss, _ = flow_matching_loss(lambda x, a, lv: out, dataclasses.replace(config, context_loss=weight),
                                     latents, actions, torch.Generator().manual_seed(3))
        grad, = torch.autograd.grad(loss, out)
        per_frame = grad.abs().sum(dim=(2, 3, 4))
        assert bool((per_frame[~context] > 0).all())
        assert bool((per_frame[context] == 0).all()) == (weight == 0.0)
        errors[weight] = float(loss.detach())
    g = torch.Generator().manual_seed(3)  # the loss's own draws: levels, then the noise
    sample_noise_levels(config, 6, 8, g)
    eps = torch.randn(latents.shape, generator=g)
    err = (out.detach() - (eps - latents)).pow(2).mean(dim=(2, 3, 4))
    assert errors[0.0] == pytest.approx(float(err[~context].mean()), rel=1e-5)
    assert errors[1.0] == pytest.approx(float(err.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="context_loss"):
        tiny_config(context_loss=-1.0)


def test_rollout_context_is_the_samplers_own_rollout():
    """own_rollout makes, frame after frame, exactly what the KV-cache sampler makes from the same clean past,
    actions and noise; frames before and after it stay the clip's own."""
    from worldsim.kv_cache import make_caches
    from worldsim.sampling import commit_chunk, denoise_chunk, last_frame, prefill
    config = tiny_config(latent_height=8, latent_width=8, context_frames=8, context_noise=0.0, sample_steps=2,
                         rollout_context=1.0, rollout_frames=2)
    model = randomized(DynamicsModel(config), seed=2).eval()
    latents, actions, _ = inputs(config, B=2, T=8, seed=3)
    starts = torch.tensor([3, 5])
    made = objective.own_rollout(model, config, latents, actions, starts, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # own_rollout's draws: per frame, the context noise and the frame's
    noise = []
    for _ in range(2):
        torch.randn((2, 7, *latents.shape[2:]), generator=g)  # context noise (level 0 here: unused)
        noise.append(torch.randn((2, *latents.shape[2:]), generator=g))
    acts = shift_actions(actions)
    for b, start in enumerate(starts.tolist()):
        row, row_acts = latents[b:b + 1], acts[b:b + 1]
        caches = make_caches(model, 1)
        prefill(model, caches, row[:, :start], row_acts[:, :start], torch.zeros_like(row[:, :start]))
        zero = torch.zeros_like(row[:, :1])
        first = denoise_chunk(model, caches, row_acts[:, start:start + 1], start, noise[0][b][None, None], 2,
                              prev_frame=last_frame(model, row[:, :start], zero))
        commit_chunk(model, caches, first, row_acts[:, start:start + 1], start, zero,
                     prev_frame=last_frame(model, row[:, :start], zero))
        second = denoise_chunk(model, caches, row_acts[:, start + 1:start + 2], start + 1, noise[1][b][None, None],
                               2, prev_frame=last_frame(model, first, zero))
        torch.testing.assert_close(made[b, start:start + 2], torch.cat([first, second], dim=1)[0],
                                   rtol=1e-4, atol=1e-4)
        assert float((made[b, start] - latents[b, start]).abs().max()) > 0.1  # a sample, not the data
        keep = [f for f in range(8) if not start <= f < start + 2]
        assert torch.equal(made[b, keep], latents[b, keep])


def test_rollout_context_feeds_the_loss_and_gets_none():
    """rollout_context = 1: every context clip's last rollout_frames context frames are the model's samples
    (no gradient), noised to their context levels; they get no loss, the frames after them do."""
    config = tiny_config(latent_height=8, latent_width=8, context_frames=8, context_prob=1.0, context_noise=0.0,
                         sample_steps=2, rollout_context=1.0, rollout_frames=2)
    net = randomized(DynamicsModel(config), seed=1)
    calls = []

    def model(x, a, levels):
        calls.append((x.detach().clone(), levels.clone(), torch.is_grad_enabled()))
        return net(x, a, levels)

    latents, actions, _ = inputs(config, B=6, T=8, seed=5)
    loss, _ = flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(6))
    assert len(calls) == 2 * 2 + 1 and not any(grad for _, _, grad in calls[:-1]) and calls[-1][2]
    g = torch.Generator().manual_seed(6)  # the loss's draws, then the rollout's
    t, context = sample_noise_levels(config, 6, 8, g, with_context=True)
    eps = torch.randn(latents.shape, generator=g)
    torch.rand(6, 1, generator=g)  # which clips use a rollout: all of them here
    n = context.sum(dim=1)
    starts = (n - 2).clamp(min=1)
    own = context & (torch.arange(8)[None] >= starts[:, None])
    rows = own.any(dim=1).nonzero().squeeze(1)
    assert 0 < len(rows) and bool((n[rows] >= 2).all())
    made = objective.own_rollout(net, config, latents[rows], actions[rows], starts[rows], g)
    clean = latents.clone()
    clean[rows] = torch.where(own[rows, :, None, None, None], made, latents[rows])
    tb = t[:, :, None, None, None]
    x_t, levels, _ = calls[-1]
    torch.testing.assert_close(levels, t)
    torch.testing.assert_close(x_t, (1 - tb) * clean + tb * eps, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        err = (net(x_t, shift_actions(actions), t) - (eps - latents)).pow(2).mean(dim=(2, 3, 4))
    assert float(loss.detach()) == pytest.approx(float(err[~own].mean()), rel=1e-5)  # the samples' frames weigh nothing
    with pytest.raises(ValueError, match="rollout_frames"):
        tiny_config(rollout_frames=16)
    with pytest.raises(ValueError, match="set one of them to 0"):
        tiny_config(self_context=0.5, rollout_context=0.5)


def test_self_context_continues_from_the_models_own_estimates():
    """self_context = 1: a first pass (no gradient) at level self_context_level gives the model's estimates
    x_s - s v; the context frames are then noised from those instead of the data, and get no loss."""
    config = tiny_config(latent_height=8, latent_width=8, context_prob=1.0, context_noise_max=0.1,
                         self_context=1.0, self_context_level=0.4)
    latents, actions, _ = inputs(config, B=6, T=8)
    first_v = torch.randn(latents.shape)
    out = torch.randn(latents.shape, requires_grad=True)
    calls = []

    def model(x, a, levels):
        calls.append((x.detach().clone(), levels.clone(), torch.is_grad_enabled()))
        return first_v if len(calls) == 1 else out

    loss, _ = flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(5))
    (x_s, s_levels, s_grad), (x_t, t, _) = calls
    assert not s_grad and bool((s_levels == 0.4).all())
    g = torch.Generator().manual_seed(5)  # the loss's own draws: levels, the noise, the clips that use estimates
    _, context = sample_noise_levels(config, 6, 8, g, with_context=True)
    eps = torch.randn(latents.shape, generator=g)
    own = x_s - 0.4 * first_v
    tb = t[:, :, None, None, None]
    expected = torch.where(context[:, :, None, None, None], (1 - tb) * own + tb * eps, (1 - tb) * latents + tb * eps)
    torch.testing.assert_close(x_t, expected, rtol=1e-5, atol=1e-6)
    grad, = torch.autograd.grad(loss, out)
    per_frame = grad.abs().sum(dim=(2, 3, 4))
    assert bool((per_frame[context] == 0).all()) and bool((per_frame[~context] > 0).all())
    # self_context = 0.5: the first pass sees only the clips drawn to use it; the others keep the data
    half = dataclasses.replace(config, self_context=0.5)
    calls.clear()
    flow_matching_loss(lambda x, a, levels: model(x, a, levels)[:len(x)], half, latents, actions,
                       torch.Generator().manual_seed(3))
    (x_s, _, _), (x_t, t, _) = calls
    g = torch.Generator().manual_seed(3)
    _, context = sample_noise_levels(half, 6, 8, g, with_context=True)
    eps = torch.randn(latents.shape, generator=g)
    rows = (torch.rand(6, 1, generator=g) < 0.5).squeeze(1).nonzero().squeeze(1)
    assert 0 < len(rows) < 6 and len(x_s) == len(rows)
    clean = latents.clone()
    clean[rows] = torch.where(context[rows, :, None, None, None], x_s - 0.4 * first_v[:len(rows)], latents[rows])
    tb = t[:, :, None, None, None]
    torch.testing.assert_close(x_t, (1 - tb) * clean + tb * eps, rtol=1e-5, atol=1e-6)
    calls.clear()
    flow_matching_loss(model, dataclasses.replace(config, self_context=0.0), latents, actions)
    assert len(calls) == 1  # off: one pass, as before
    with pytest.raises(ValueError, match="self_context_level"):
        tiny_config(self_context_level=1.0)


def test_worn_clips_are_flatter_blurred_and_shifted_within_strength():
    """`worn` keeps shapes and dtype, draws once per clip (every frame of a clip worn alike), is the identity
    at strength 0 (to rounding) and reproducible from a generator; at strength a the spatial spread about each
    frame's channel means falls to no less than (1 - a) of its blurred self and no more than the original, and
    the channel means move by the drawn shift alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 4, 8, 8, generator=g) * 2 + 1
    torch.testing.assert_close(objective.worn(x, 0.0, torch.Generator().manual_seed(1)), x, rtol=0, atol=1e-5)
    a = 0.6
    y = objective.worn(x, a, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, objective.worn(x, a, torch.Generator().manual_seed(1)))
    assert not torch.equal(y, objective.worn(x, a, torch.Generator().manual_seed(2)))
    ratio = y.std(dim=(3, 4)) / x.std(dim=(3, 4))  # (B, T, C)
    assert bool((ratio <= 1 + 1e-5).all())
    assert float(ratio.min()) > (1 - a) * 0.3  # a 3x3 blend keeps well over 0.3 of white noise's spread
    assert float(ratio.mean()) < 0.85  # it does wear: the mean draw loses a fair part
    per_clip = ratio / ratio.mean(dim=(1, 2), keepdim=True)
    assert float((per_clip - 1).abs().max()) < 0.2  # one draw per clip: frames and channels alike
    shift = y.mean(dim=(3, 4)) - x.mean(dim=(3, 4))  # (B, T, C): one shift per clip and channel
    assert float((shift - shift[:, :1]).abs().max()) < 1e-4
    spread = x.std(dim=(3, 4)).mean(dim=1)
    assert abs(float((shift[:, 0] / spread).std()) - a / 2) < 0.06  # N(0, (a/2 spread)^2)
    half = objective.worn(x.half(), a, torch.Generator().manual_seed(1))
    assert half.dtype == torch.float16
    still = objective.worn(x, a, torch.Generator().manual_seed(1), shift=0.0)  # the colours stay
    torch.testing.assert_close(still.mean(dim=(3, 4)), x.mean(dim=(3, 4)), rtol=0, atol=1e-4)


def recording(out):
    """A stand-in for the model that returns `out` and keeps each call's (inputs, levels): what the loss fed it."""
    calls = []

    def model(x, a, levels):
        calls.append((x.detach().clone(), levels.clone()))
        return out
    return model, calls


def test_context_wear_feeds_the_loss_worn_context_and_gets_no_loss_there():
    """context_wear = 1: every context clip's context frames are the worn data, noised to their levels; they
    get no loss, the targets (the data, never worn) do; 0 leaves the loss exactly as it was."""
    config = tiny_config(latent_height=8, latent_width=8, context_prob=1.0, context_wear=1.0, wear_strength=0.5,
                         wear_shift=0.1)
    latents, actions, _ = inputs(config, B=6, T=8, seed=4)
    out = torch.randn(latents.shape, requires_grad=True)
    model, calls = recording(out)
    loss, _ = flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(7))
    assert len(calls) == 1
    g = torch.Generator().manual_seed(7)  # the loss's draws: levels, noise, which clips wear, then the wear
    t, context = sample_noise_levels(config, 6, 8, g, with_context=True)
    eps = torch.randn(latents.shape, generator=g)
    torch.rand(6, 1, generator=g)
    clean = torch.where(context[:, :, None, None, None], objective.worn(latents, 0.5, g, shift=0.1), latents)
    tb = t[:, :, None, None, None]
    x_t, levels = calls[0]
    torch.testing.assert_close(levels, t)
    torch.testing.assert_close(x_t, (1 - tb) * clean + tb * eps, rtol=1e-5, atol=1e-6)
    assert float((clean - latents)[context].abs().max()) > 0.05  # the context was worn
    grad, = torch.autograd.grad(loss, out)
    per_frame = grad.abs().sum(dim=(2, 3, 4))
    assert bool((per_frame[context] == 0).all()) and bool((per_frame[~context] > 0).all())
    err = (out.detach() - (eps - latents)).pow(2).mean(dim=(2, 3, 4))
    assert float(loss.detach()) == pytest.approx(float(err[~context].mean()), rel=1e-5)
    off, _ = flow_matching_loss(model, dataclasses.replace(config, context_wear=0.0), latents, actions,
                                torch.Generator().manual_seed(7))
    x_t, _ = calls[-1]
    torch.testing.assert_close(x_t, (1 - tb) * latents + tb * eps, rtol=1e-5, atol=1e-6)
    assert float(off.detach()) == pytest.approx(float(err.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="context_wear"):
        tiny_config(context_wear=1.5)
    with pytest.raises(ValueError, match="wear_strength"):
        tiny_config(wear_strength=-0.1)
    with pytest.raises(ValueError, match="wear_shift"):
        tiny_config(wear_shift=-0.1)


def test_start_bridge_trains_the_path_the_sampler_takes_from_the_last_frame():
    """start_bridge = 1 with sample_start s: each target frame after the first, at a level t <= s, is on the
    straight path from x_s = (1 - s) warp(previous frame as cached) + s noise at s to the frame at 0, and its
    velocity target is the path's, so Euler's steps from x_s land on the frame; the first frame, frames above s
    and context frames keep the path from noise; 0 changes nothing."""
    s = 0.6
    config = tiny_config(latent_height=8, latent_width=8, chunk_frames=1, context_prob=0.0, sampler_levels=0.75,
                         sample_start=s, start_bridge=1.0, camera_warp=70.0, warp_keep_rows=2)
    latents, actions, _ = inputs(config, B=6, T=6, seed=5)
    out = torch.randn(latents.shape, requires_grad=True)
    model, calls = recording(out)
    loss, _ = flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the loss's draws: levels, noise, which frames bridge, the start's noise
    t = sample_noise_levels(config, 6, 6, g)
    eps = torch.randn(latents.shape, generator=g)
    chosen = (torch.rand(6, 6, generator=g) < 1.0) & (t <= s)
    chosen[:, 0] = False
    noise = torch.randn(6, 5, *latents.shape[2:], generator=g)
    assert bool(chosen.any()) and bool((~chosen[:, 1:]).any())  # both kinds among the frames after the first
    x_t, levels = calls[0]
    torch.testing.assert_close(levels, t)
    tb = t[:, :, None, None, None]
    cached = (1 - tb.clamp(max=0.1)) * latents + tb.clamp(max=0.1) * eps  # a frame as the sampler caches it
    turned = camera.warp_previous(cached[:, :-1], shift_actions(actions)[:, 1:], 70.0, 2)
    x_s = (1 - s) * turned + s * noise
    pick = chosen[:, 1:]
    r = (t[:, 1:] / s)[:, :, None, None, None]
    torch.testing.assert_close(x_t[:, 1:][pick], ((1 - r) * latents[:, 1:] + r * x_s)[pick], rtol=1e-5, atol=1e-6)
    plain = (1 - tb) * latents + tb * eps
    torch.testing.assert_close(x_t[:, :1], plain[:, :1])
    torch.testing.assert_close(x_t[:, 1:][~pick], plain[:, 1:][~pick])
    target = torch.cat([eps[:, :1] - latents[:, :1],
                        torch.where(pick[..., None, None, None], (x_s - latents[:, 1:]) / s, eps[:, 1:] - latents[:, 1:])],
                       dim=1)
    # the Euler steps of the sampler, given the true velocity, go from x_s through x_t to the frame
    step = (x_t - tb * target)[:, 1:][pick]
    torch.testing.assert_close(step, latents[:, 1:][pick], rtol=1e-4, atol=1e-5)
    assert float(turned.sub(cached[:, :-1]).abs().max()) > 0.1  # the camera moved: the start is the turned frame
    err = (out.detach() - target).pow(2).mean(dim=(2, 3, 4))
    assert float(loss.detach()) == pytest.approx(float(err.mean()), rel=1e-5)
    off, _ = flow_matching_loss(model, dataclasses.replace(config, start_bridge=0.0), latents, actions,
                                torch.Generator().manual_seed(3))
    torch.testing.assert_close(calls[-1][0], plain, rtol=1e-5, atol=1e-6)
    # context frames never bridge
    context_config = dataclasses.replace(config, context_prob=1.0, context_noise_max=0.3)
    flow_matching_loss(model, context_config, latents, actions, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    t, context = sample_noise_levels(context_config, 6, 6, g, with_context=True)
    eps = torch.randn(latents.shape, generator=g)
    tb = t[:, :, None, None, None]
    torch.testing.assert_close(calls[-1][0][context], ((1 - tb) * latents + tb * eps)[context], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="start_bridge must lie"):
        tiny_config(start_bridge=1.5)
    with pytest.raises(ValueError, match="needs sample_start < 1"):
        tiny_config(chunk_frames=1, start_bridge=0.5)
    # a bridged model may sample with the view memory, but not train with it
    remembering = tiny_config(chunk_frames=1, sample_start=0.6, start_bridge=0.5, view_memory=True, camera_warp=70.0)
    with pytest.raises(ValueError, match="view_memory=false"):
        flow_matching_loss(model, remembering, latents, actions)


def test_start_bridge_starts_idle_frames_at_idle_start():
    """With idle_start, a frame whose producing action holds no button and turns the camera by at most idle_turn
    bridges from its own start: x_s = (1 - s_i) warp(prev) + s_i noise with s_i = idle_start, only at levels
    t <= s_i; frames their actions move keep sample_start."""
    s, idle = 0.6, 0.2
    config = tiny_config(latent_height=8, latent_width=8, chunk_frames=1, context_prob=0.0, noise_schedule="uniform",
                         sample_start=s, start_bridge=1.0, camera_warp=70.0, warp_keep_rows=2, idle_start=idle)
    latents, actions, _ = inputs(config, B=8, T=6, seed=5)
    actions[:, ::2] = 0.0  # data order: the actions taken at frames 0, 2, 4 do nothing ...
    actions[:4, ::2, 16] = 0.05  # ... or turn by half a degree (the vector's 1.0 is 10 degrees)
    out = torch.randn(latents.shape, requires_grad=True)
    model, calls = recording(out)
    flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = sample_noise_levels(config, 8, 6, g)
    eps = torch.randn(latents.shape, generator=g)
    still = torch.zeros(8, 6, dtype=torch.bool)
    still[:, 1::2] = True  # model order: frames 1, 3, 5 are made by those actions
    starts = torch.where(still, idle, s)
    chosen = (torch.rand(8, 6, generator=g) < 1.0) & (t <= starts)
    chosen[:, 0] = False
    noise = torch.randn(8, 5, *latents.shape[2:], generator=g)
    pick = chosen[:, 1:]
    assert bool((pick & still[:, 1:]).any()) and bool((pick & ~still[:, 1:]).any())
    assert bool((still & (t > idle) & (t <= s))[:, 1:].any())  # idle frames a start of s would have bridged
    tb = t[:, :, None, None, None]
    cached = (1 - tb.clamp(max=0.1)) * latents + tb.clamp(max=0.1) * eps
    turned = camera.warp_previous(cached[:, :-1], shift_actions(actions)[:, 1:], 70.0, 2)
    sv = starts[:, 1:, None, None, None]
    x_s = (1 - sv) * turned + sv * noise
    r = t[:, 1:, None, None, None] / sv
    x_t = calls[0][0]
    torch.testing.assert_close(x_t[:, 1:][pick], ((1 - r) * latents[:, 1:] + r * x_s)[pick], rtol=1e-5, atol=1e-6)
    plain = (1 - tb) * latents + tb * eps
    torch.testing.assert_close(x_t[:, 1:][~pick], plain[:, 1:][~pick])
    # the velocity target lands on the frame from x_t in a straight line
    target = torch.where(pick[..., None, None, None], (x_s - latents[:, 1:]) / sv, eps[:, 1:] - latents[:, 1:])
    err = (out.detach()[:, 1:] - target).pow(2).mean(dim=(2, 3, 4))
    first = (out.detach()[:, :1] - (eps[:, :1] - latents[:, :1])).pow(2).mean(dim=(2, 3, 4))
    loss, _ = flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(3))
    assert float(loss.detach()) == pytest.approx(float(torch.cat([first, err], 1).mean()), rel=1e-5)


def test_start_levels_follow_the_action():
    """idle_start for actions that hold no button and turn by at most idle_turn degrees; sample_start otherwise;
    the float sample_start without idle_start; bad values are refused."""
    config = tiny_config(chunk_frames=1, sample_start=0.6, idle_start=0.1, idle_turn=1.0)
    acts = torch.zeros(1, 6, ACTION_DIM)
    acts[0, 1, 16] = 0.1   # 1 degree of yaw: still idle
    acts[0, 2, 15] = -0.15  # 1.5 degrees of pitch: a turn
    acts[0, 3, 11] = 1.0   # forward
    acts[0, 4, 19] = 1.0   # sprint alone: a button held
    acts[0, 5, 2] = 1.0    # a hotbar key (the HUD changes)
    assert dynamics.start_levels(config, acts)[0].tolist() == pytest.approx([0.1, 0.1, 0.6, 0.6, 0.6, 0.6])
    assert dynamics.start_levels(dataclasses.replace(config, idle_start=0.0), acts) == 0.6
    for bad, match in ((dict(idle_start=1.0), "idle_start must lie"), (dict(idle_start=-0.1), "idle_start must lie"),
                       (dict(idle_turn=-1.0), "idle_turn"), (dict(chunk_frames=2, context_frames=4), "chunk_frames=1"),
                       (dict(sample_start=1.0, rollout_context=0.5), "rollout_context")):
        with pytest.raises(ValueError, match=match):
            tiny_config(**{"chunk_frames": 1, "idle_start": 0.1, **bad})


def test_autocast_bf16_forward_and_backward():
    config = tiny_config(latent_height=8, latent_width=8, n_layer=2)
    model = randomized(DynamicsModel(config))
    latents, actions, _ = inputs(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = flow_matching_loss(model, config, latents, actions)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("residual", [False, True], ids=["velocity", "residual"])
def test_flow_matching_loss_trains(residual):
    torch.manual_seed(0)
    config = tiny_config(latent_height=8, latent_width=8, n_layer=2, residual=residual)
    model = DynamicsModel(config)
    latents, actions, _ = inputs(config, B=4, T=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, metrics = flow_matching_loss(model, config, latents, actions, torch.Generator().manual_seed(step % 3))
        assert set(metrics) == {"loss", "loss_noisy", "loss_clean"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_untrained_residual_model_continues_from_the_last_frame():
    """With the head at zero (AdaLN-zero init) and a tiny change variance, the guess is the previous frame with
    its context noise undone by the gain g(s); Euler's last step lands exactly on it, whatever the steps."""
    from worldsim.sampling import Sampler
    torch.manual_seed(0)
    config = tiny_config(latent_height=8, latent_width=8, context_frames=4, change_var=1e-9, context_noise=0.05,
                         camera_warp=0.0)  # the turned last frame: test_camera_warp_model_starts_from_the_turned_last_frame
    model = DynamicsModel(config).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(2, 3, config.latent_channels, 8, 8, generator=g)
    s = config.context_noise
    gain = (1 - s) / ((1 - s) ** 2 + s ** 2)
    for steps in (1, 4):
        sampler = Sampler(model, batch_size=2, steps=steps, seed=1)
        sampler.reset(prompt, torch.rand(2, 2, ACTION_DIM, generator=g))
        last = sampler.last[0]
        frame = sampler.step(torch.rand(2, ACTION_DIM, generator=g))
        torch.testing.assert_close(frame, gain * last, rtol=1e-5, atol=1e-5)
        assert float((frame[:, 0] - prompt[:, -1]).pow(2).mean()) < 0.01  # the last frame, up to its noise
    # a velocity model starts from zero velocity instead: its output is the noise it started from
    velocity = DynamicsModel(dataclasses.replace(config, residual=False)).eval()
    sampler = Sampler(velocity, batch_size=2, steps=4, seed=1)
    sampler.reset(prompt, torch.rand(2, 2, ACTION_DIM, generator=g))
    assert float((sampler.step(torch.rand(2, ACTION_DIM, generator=g))[:, 0] - prompt[:, -1]).pow(2).mean()) > 1


def test_camera_vector_entries_are_the_action_schemas():
    from worldsim.engine import actions
    assert dynamics.ACTION_DIM == actions.ACTION_DIM and camera.CAMERA_MAX_DEGREES == actions.CAMERA_MAX_DEGREES
    assert actions.VECTOR_ORDER[camera._CAMERA_PITCH] == "camera_pitch"
    assert actions.VECTOR_ORDER[camera._CAMERA_YAW] == "camera_yaw"


def test_warp_previous_turns_the_view_as_the_engine_does():
    """A pure turn of the engine's camera: the last frame warped by the turn's action is the new view (up to
    resampling), far closer than the last frame itself and than a warp by the wrong sign or half the angle;
    the HUD rows kept are the old frame's, and no turn changes nothing."""
    from worldsim.engine import actions
    from worldsim.engine.env import EngineConfig, VoxelEnv
    from worldsim.eval.metrics import psnr
    env = VoxelEnv(EngineConfig())
    old, _ = env.reset(seed=3)
    inner = (slice(16, -24), slice(16, -16))  # away from the revealed edges and the hotbar
    for move in ([0.0, 6.0], [0.0, -9.0], [5.0, 0.0], [-7.0, 4.0]):
        action = {**actions.noop(), "camera": np.array(move, np.float32)}
        new, *_ = env.step(action)
        vector = torch.from_numpy(actions.to_vector(action))[None, None]
        frame = torch.from_numpy(old).permute(2, 0, 1)[None, None].float()

        def warped(scale):
            out = camera.warp_previous(frame, vector * scale, env.config.fov, keep_rows=16)
            return out[0, 0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()

        score = lambda image: float(psnr(image[None][:, inner[0], inner[1]], new[None][:, inner[0], inner[1]])[0])
        turned = warped(1.0)
        assert score(turned) > score(old) + 3, move
        assert score(turned) > max(score(warped(-1.0)), score(warped(0.5))) + 1.5, move
        assert np.array_equal(turned[-16:], old[-16:])
        assert np.abs(warped(0.0).astype(int) - old).max() <= 1
        old = new


def test_camera_warp_model_starts_from_the_turned_last_frame():
    """Untrained (head at zero) with a tiny change variance, the residual model's frame is its guess: the last
    frame turned by the action's camera move; with camera_warp 0 it is the last frame."""
    from worldsim.sampling import Sampler
    torch.manual_seed(0)
    config = tiny_config(latent_height=8, latent_width=8, context_frames=4, change_var=1e-9, context_noise=0.0,
                         camera_warp=70.0, warp_keep_rows=1)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(2, 3, config.latent_channels, 8, 8, generator=g)
    action = torch.zeros(2, ACTION_DIM)
    action[:, camera._CAMERA_YAW], action[:, camera._CAMERA_PITCH] = torch.tensor([0.4, -0.8]), 0.3
    for warp in (70.0, 0.0):
        sampler = Sampler(DynamicsModel(dataclasses.replace(config, camera_warp=warp)).eval(), batch_size=2, steps=2)
        sampler.reset(prompt, torch.zeros(2, 2, ACTION_DIM))
        frame = sampler.step(action)
        want = camera.warp_previous(prompt[:, -1:], action[:, None], 70.0, 1) if warp else prompt[:, -1:]
        torch.testing.assert_close(frame, want, rtol=1e-4, atol=1e-4)
        assert (float((want - prompt[:, -1:]).abs().mean()) > 0.1) == bool(warp)  # the turn moved it


@pytest.mark.parametrize("variant", [dict(prev_input=False, residual=False, camera_warp=0.0),
                                     dict(prev_input=True, residual=True, camera_warp=0.0),
                                     dict(prev_input=True, residual=True, camera_warp=70.0, warp_keep_rows=1)])
def test_frame_inputs_computed_once_give_every_pass_what_it_computes_itself(variant):
    """A frame's Euler steps and its commit share `frame_inputs`: passes given them return exactly what passes
    that compute everything return, at any level, with and without a previous frame and a view-memory fill."""
    config = tiny_config(latent_height=8, latent_width=8, context_frames=4, **variant)
    model = randomized(DynamicsModel(config).eval())
    latents, actions, levels = inputs(config, B=2, T=1)
    g = torch.Generator().manual_seed(1)
    prev = (torch.randn(2, 1, config.latent_channels, 8, 8, generator=g), torch.rand(2, 1, generator=g))
    fill = None
    if config.camera_warp:
        fill = (torch.randn(2, 1, config.latent_channels, 8, 8, generator=g), torch.rand(2, 1, 1, 8, 8, generator=g) > 0.5)
    pos = torch.tensor([7])
    with torch.no_grad():
        for prev_frame in (prev, None):
            shared = model.frame_inputs(actions, pos, prev_frame, fill)
            for level in (levels, torch.full((2, 1), 0.3)):
                want = model(latents, actions, level, pos, prev_frame=prev_frame, fill=fill)
                assert torch.equal(model(latents, actions, level, pos, prev_frame=prev_frame, fill=fill,
                                         inputs=shared), want)
        with pytest.raises(ValueError, match="one frame's"):
            model(*inputs(config, B=2, T=2), inputs=shared)
    with pytest.raises(ValueError, match="chunks of one frame"):
        DynamicsModel(tiny_config(chunk_frames=2, context_frames=4)).frame_inputs(actions, pos)


def test_bad_input_names_the_problem():
    config = tiny_config(latent_height=8, latent_width=8)
    model = DynamicsModel(config)
    latents, actions, t = inputs(config)
    with pytest.raises(ValueError, match=r"actions must be \(B, F, 25\)"):
        model(latents, actions[..., :24], t)
    with pytest.raises(ValueError, match="latents must be"):
        model(latents[..., :4, :4], actions, t)
    with pytest.raises(ValueError, match="noise_levels"):
        model(latents, actions, t[:, :2])
    with pytest.raises(ValueError, match="head dim"):
        DynamicsConfig(n_embd=96, n_head=4)
    with pytest.raises(ValueError, match="context_frames"):
        DynamicsConfig(chunk_frames=2, context_frames=5)
    with pytest.raises(ValueError, match="residual needs prev_input"):
        DynamicsConfig(prev_input=False, residual=True)
    with pytest.raises(ValueError, match="change_var"):
        DynamicsConfig(residual=True, change_var=0.0)
    with pytest.raises(ValueError, match="camera_warp"):
        DynamicsConfig(camera_warp=200.0)
    with pytest.raises(ValueError, match="camera_warp turns the previous frame"):
        DynamicsConfig(prev_input=False, camera_warp=70.0)
    with pytest.raises(ValueError, match="warp_keep_rows"):
        DynamicsConfig(warp_keep_rows=17)


def test_checkpoint_from_another_config_is_a_clear_error(tmp_path):
    from worldsim.training.checkpoint import CheckpointError, save_checkpoint
    config = tiny_config(latent_height=8, latent_width=8, n_layer=2)
    model = randomized(DynamicsModel(config))
    save_checkpoint(tmp_path, model, config)
    loaded = load_dynamics(tmp_path)
    latents, actions, t = inputs(config)
    torch.testing.assert_close(loaded(latents, actions, t), model(latents, actions, t))
    with pytest.raises(CheckpointError, match="n_layer"):
        load_dynamics(tmp_path, expect=dataclasses.replace(config, n_layer=3))
    other = tiny_config(latent_height=8, latent_width=8, n_layer=2, n_embd=256)
    save_checkpoint(tmp_path / "other", DynamicsModel(other), config)  # weights of another size, config lies
    with pytest.raises(CheckpointError,
                       match=r"tensor 'action_embed.0.bias': checkpoint has shape \(256,\), model has \(128,\)"):
        load_dynamics(tmp_path / "other")


def test_a_shallower_checkpoint_grows_into_a_deeper_model_that_computes_the_same(tmp_path):
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    from worldsim.training.checkpoint import CheckpointError, save_checkpoint
    config = tiny_config(latent_channels=4, latent_height=8, latent_width=8, n_layer=2, context_frames=6)
    shallow = randomized(DynamicsModel(config))
    save_checkpoint(tmp_path / "shallow", shallow, config)
    deeper = randomized(DynamicsModel(dataclasses.replace(config, n_layer=4)), seed=1)  # adaln not zero before
    dynamics.grow_from(deeper, tmp_path / "shallow")
    latents, actions, t = inputs(config)
    torch.testing.assert_close(deeper(latents, actions, t), shallow(latents, actions, t), rtol=0, atol=0)
    loss, _ = flow_matching_loss(deeper, deeper.config, latents, actions)
    loss.backward()
    assert deeper.blocks[3].adaln.weight.grad.abs().sum() > 0  # the new layers learn from the first step
    with pytest.raises(CheckpointError, match=r"too many layers; n_layer: checkpoint 2, model 1"):
        dynamics.grow_from(DynamicsModel(dataclasses.replace(config, n_layer=1)), tmp_path / "shallow")
    # a field that changes no shape may differ (the objective's), as with init_from
    other = DynamicsModel(dataclasses.replace(config, n_layer=3, context_noise_max=0.3))
    torch.testing.assert_close(dynamics.grow_from(other, tmp_path / "shallow")(latents, actions, t),
                               shallow(latents, actions, t), rtol=0, atol=0)
    with pytest.raises(CheckpointError,
                       match=r"checkpoint \(128,\), model \(64,\).*n_embd: checkpoint 128, model 64"):
        dynamics.grow_from(DynamicsModel(dataclasses.replace(config, n_layer=3, n_embd=64, n_head=2)), tmp_path / "shallow")
    # through the trainer: train.init_grow starts the deeper run there; without it the load is strict
    cache = moving_pattern_cache(tmp_path / "cache")
    grown = dataclasses.replace(config, n_layer=3)
    run = TrainConfig(out_dir=str(tmp_path / "run"), data=str(cache), steps=1, batch_size=2, lr=1e-12,
                      warmup_steps=1, ckpt_every=0, sample_every=0, init_from=str(tmp_path / "shallow"),
                      init_grow=True)
    train_dynamics(grown, run, progress=False)
    torch.testing.assert_close(load_dynamics(tmp_path / "run")(latents, actions, t), shallow(latents, actions, t))
    with pytest.raises(CheckpointError, match="missing tensor 'blocks.2"):
        train_dynamics(grown, dataclasses.replace(run, out_dir=str(tmp_path / "strict"), init_grow=False),
                       progress=False)


def moving_pattern_cache(path, episodes=3, frames=24, channels=4, size=8):
    """A cache whose latents are a smooth pattern that the camera_yaw action shifts by one cell per frame."""
    import numpy as np
    from worldsim.data.cache import CacheWriter, write_latents
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    latents, writer = [], CacheWriter(path, width=16, height=16)
    for e in range(episodes):
        actions = np.zeros((frames, ACTION_DIM), np.float32)
        actions[:, 15] = rng.integers(0, 2, frames)  # camera_yaw: turn or not
        shift = np.concatenate([[0], np.cumsum(actions[:-1, 15])])  # frame i moved by a_0 .. a_{i-1}
        phase = rng.uniform(0, 2 * np.pi, channels)
        for i in range(frames):
            p = phase[:, None, None]
            grid = np.sin(2 * np.pi * (xx + shift[i]) / size + p) + 0.5 * np.cos(yy + p)
            latents.append(grid.astype(np.float32))
        writer.add_episode(np.zeros((frames, 16, 16, 3), np.uint8), actions)
    writer.close()
    write_latents(path, [np.stack(latents)], (channels, size, size))
    return path


def test_training_end_to_end_lowers_the_loss_and_saves_samples(tmp_path):
    import csv
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    cache = moving_pattern_cache(tmp_path / "cache")
    config = tiny_config(latent_channels=4, latent_height=8, latent_width=8, n_layer=2, context_frames=6)
    out = tmp_path / "run"
    train_config = TrainConfig(out_dir=str(out), data=str(cache), steps=60, batch_size=8, lr=2e-3, warmup_steps=5,
                               ckpt_every=0, log_every=5, sample_every=0, seed=0)
    train_dynamics(config, train_config, progress=False)
    rows = list(csv.DictReader(open(out / "curves.csv")))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.7 * first, (first, last)
    assert list((out / "samples").glob("*.png"))
    model = load_dynamics(out, expect=config)
    assert isinstance(model, DynamicsModel)
    with pytest.raises(ValueError, match=r"latents are \(C, h, w\) = \(4, 8, 8\)"):
        train_dynamics(tiny_config(), train_config)


def test_training_with_latent_guard_saves_the_data_range_and_the_state_dict_is_unchanged(tmp_path):
    """latent_guard = p: the run's saved config carries guard_range, the data's per-channel frame-mean percentiles
    p and 100 - p, and spread_guard = q its spread_floor, the per-channel spatial-std percentile q; the weights
    are those of a model without them (they live in the config)."""
    from worldsim.data.cache import Cache
    from worldsim.models.train_dynamics import train_dynamics
    from worldsim.training import TrainConfig
    cache = moving_pattern_cache(tmp_path / "cache")
    config = tiny_config(latent_channels=4, latent_height=8, latent_width=8, n_layer=2, context_frames=6,
                         latent_guard=5.0, spread_guard=10.0)
    train_config = TrainConfig(out_dir=str(tmp_path / "run"), data=str(cache), steps=1, batch_size=2,
                               warmup_steps=1, ckpt_every=0, sample_every=0)
    train_dynamics(config, train_config, progress=False)
    model = load_dynamics(tmp_path / "run")
    means = np.asarray(Cache(cache).latents, dtype=np.float32).mean(axis=(2, 3))
    expected = np.percentile(means, [5.0, 95.0], axis=0).flatten()
    assert model.config.guard_range == pytest.approx(expected.tolist(), abs=1e-5)
    stds = np.asarray(Cache(cache).latents, dtype=np.float32).std(axis=(2, 3))
    assert model.config.spread_floor == pytest.approx(np.percentile(stds, 10.0, axis=0).tolist(), abs=1e-5)
    assert set(model.state_dict()) == set(DynamicsModel(config).state_dict())
    frames = torch.full((1, 1, 4, 8, 8), 100.0)
    torch.testing.assert_close(model.guard(frames).mean(dim=(3, 4)).flatten(), torch.tensor(expected[4:]).float())


def test_guards_are_set_on_a_finished_run_from_a_cache_with_the_weights_unchanged(tmp_path):
    """python -m worldsim.models.guards: a copy of the run (model and EMA) whose config carries the cache's
    guard_range and spread_floor, the weights byte for byte the run's; a used OUT, a cache of other latents and
    a bad percentile are errors naming them, and the run is left as it was."""
    from worldsim.data.cache import Cache
    from worldsim.models.guards import main
    from worldsim.training.checkpoint import save_checkpoint
    cache = moving_pattern_cache(tmp_path / "cache")
    config = tiny_config(latent_channels=4, latent_height=8, latent_width=8, n_layer=2)
    model = randomized(DynamicsModel(config))
    for name in ("model", "ema"):
        save_checkpoint(tmp_path / "run", model, config, name=name, extra={"step": 7})
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    main([str(tmp_path / "run"), "--data", str(cache), "--out", str(tmp_path / "out"),
          "--latent-guard", "5", "--spread-guard", "10"])
    latents = np.asarray(Cache(cache).latents, dtype=np.float32)
    for name in ("model", "ema"):
        guarded = load_dynamics(tmp_path / "out", name=name)
        assert guarded.config.guard_range == pytest.approx(
            np.percentile(latents.mean(axis=(2, 3)), [5.0, 95.0], axis=0).flatten().tolist(), abs=1e-5)
        assert guarded.config.spread_floor == pytest.approx(
            np.percentile(latents.std(axis=(2, 3)), 10.0, axis=0).tolist(), abs=1e-5)
        assert (tmp_path / "out" / f"{name}.safetensors").read_bytes() == before[f"{name}.safetensors"]
    main([str(tmp_path / "out"), "--data", str(cache), "--out", str(tmp_path / "off"), "--spread-guard", "0"])
    off = load_dynamics(tmp_path / "off")
    assert off.config.spread_floor is None and off.config.guard_range is not None  # the one left out is kept
    with pytest.raises(SystemExit, match="exists and is not empty"):
        main([str(tmp_path / "run"), "--data", str(cache), "--out", str(tmp_path / "out"), "--spread-guard", "5"])
    with pytest.raises(SystemExit, match="spread_guard is a percentile"):
        main([str(tmp_path / "run"), "--data", str(cache), "--out", str(tmp_path / "bad"), "--spread-guard", "60"])
    other = moving_pattern_cache(tmp_path / "other", channels=3)
    with pytest.raises(SystemExit, match=r"latents are \(C, h, w\) = \(3, 8, 8\)"):
        main([str(tmp_path / "run"), "--data", str(other), "--out", str(tmp_path / "bad2"), "--spread-guard", "5"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    (tmp_path / "run" / "ema.safetensors").unlink()
    with pytest.raises(SystemExit, match="ema.safetensors missing"):
        main([str(tmp_path / "run"), "--data", str(cache), "--out", str(tmp_path / "bad3"), "--spread-guard", "5"])
    assert not (tmp_path / "bad3").exists()


def test_checkpoints_saved_before_later_fields_load_with_their_defaults(tmp_path):
    import json

    from worldsim.models.dynamics import load_dynamics
    from worldsim.training.checkpoint import CheckpointError, save_checkpoint
    defaults = {f.name: f.default for f in dataclasses.fields(DynamicsConfig) if f.name in DynamicsConfig.LATER_FIELDS}
    config = tiny_config(**defaults)  # what an older checkpoint's missing fields stand for
    save_checkpoint(tmp_path, DynamicsModel(config), config)
    meta = json.loads((tmp_path / "model.json").read_text())
    for name in DynamicsConfig.LATER_FIELDS:
        del meta["config"][name]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert load_dynamics(tmp_path, expect=config).config == config
    del meta["config"]["n_layer"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing fields \['n_layer'\]"):
        load_dynamics(tmp_path)


def test_clip_loss_is_paired_across_checkpoints_and_names_empty_episode_ranges(tmp_path):
    from worldsim.eval.loss import clip_loss, main
    from worldsim.training.checkpoint import save_checkpoint
    cache = moving_pattern_cache(tmp_path / "cache")  # 3 episodes of 24 frames
    config = tiny_config(latent_channels=4, latent_height=8, latent_width=8, n_layer=2, context_frames=6)
    model = randomized(DynamicsModel(config))
    first = clip_loss(model, cache, stride=3, clips=8, batch=4)
    assert first == clip_loss(model, cache, stride=3, clips=8, batch=4)  # the same clips, levels and noise
    assert first["clips"] == 8 and first["episodes"] == [0, 3] and first["standard_error"] > 0
    # the loss is the objective's own: by hand on the same draw of clips and noise
    one = clip_loss(model, cache, stride=3, clips=4, batch=4, repeats=1, episodes=(1, 2))
    from worldsim.data.cache import ClipDataset
    dataset = ClipDataset(cache, 6, stride=3, latents=True)
    chosen = np.sort(np.random.default_rng(0).choice(np.flatnonzero(dataset.clip_episodes == 1), 4, replace=False))
    items = [dataset[int(i)] for i in chosen]
    by_hand = flow_matching_loss(model, config, torch.stack([i["latents"] for i in items]),
                                 torch.stack([i["actions"] for i in items]), torch.Generator().manual_seed(0))[0]
    assert one["loss"] == pytest.approx(by_hand.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"episodes 5..6"):
        clip_loss(model, cache, stride=3, episodes=(5, 7))
    save_checkpoint(tmp_path / "run", model, config)
    result = main(["--checkpoint", str(tmp_path / "run"), "--data", str(cache), "--clips", "8", "--stride", "3",
                   "--out", str(tmp_path / "loss.json")])
    assert result["loss"] == pytest.approx(clip_loss(model, cache, stride=3, clips=8)["loss"], rel=1e-6)
    assert (tmp_path / "loss.json").exists() and result["weights"] == "model"


def _shipped_training_config() -> DynamicsConfig:
    """The shipped world's config as its last runs trained it (the view memory and keep_view are sampling's)."""
    from worldsim.envs.world_model import load_world
    config = load_world(Path(__file__).parents[1] / "assets" / "world")[0].config
    return dataclasses.replace(config, view_memory=False, keep_view=False)


@pytest.mark.parametrize("name,changes", [("tiny", {}), ("small", {}), ("shipped", {}),
                                          ("shipped", {"sampler_levels": 0.8, "target_prob": 0.3}),
                                          ("shipped", {"context_wear": 1.0})],
                         ids=["tiny", "small", "shipped", "shipped-levels-targets", "shipped-wear"])
def test_training_step_reads_nothing_on_the_host(name, changes):
    """A training step (flow_matching_loss and its backward) of the recipe's configs runs on the meta device, which
    keeps shapes and no values, without a host read: on a GPU none waits for the device, and torch.compile has no
    graph break from one. (self_context and rollout_context pick their rows with one nonzero, a sync, by design.)"""
    from host_reads import HostReads
    config = _shipped_training_config() if name == "shipped" else \
        DynamicsConfig(**yaml.safe_load((Path(__file__).parents[1] / "configs" / "dynamics" / f"{name}.yaml").read_text()))
    config = dataclasses.replace(config, **changes)
    model = DynamicsModel(config).to("meta")
    T = config.context_frames
    latents = torch.zeros(2, T, config.latent_channels, config.latent_height, config.latent_width, device="meta")
    reads = HostReads()
    with reads:
        loss, _ = flow_matching_loss(model, config, latents, torch.zeros(2, T, ACTION_DIM, device="meta"))
        loss.backward()
    assert reads.seen == []
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters() if p.requires_grad)
