"""The sampler: cached sampling equals recomputing everything, before and after the ring wraps; the ring
buffer's slots; batch rows; snapshot/restore; 2,000 frames in flat memory; bad input."""
import dataclasses
import os
import sys

import pytest
import torch

from worldsim.kv_cache import KVCache, make_caches
from worldsim.models.camera import known_view, warp_previous
from worldsim.models.dynamics import ACTION_DIM, DynamicsModel
from worldsim.models.dynamics_config import sample_levels, step_levels
from worldsim.sampling import Sampler, commit_chunk, denoise_chunk, last_step_commits, prefill
from worldsim.view_memory import ViewMemory

from host_reads import HostReads
from test_dynamics import one_thread, randomized, tiny_config  # noqa: F401  (one_thread: autouse fixture)


def small_model(**changes):
    torch.manual_seed(0)
    changes = {"context_noise": 0.05, "sample_shift": 3.0, **changes}  # cache noise and shifted levels: their
    # plumbing is tested
    config = tiny_config(latent_height=8, latent_width=8, **changes)
    return randomized(DynamicsModel(config)).eval()


def latent_shape(config, B, F):
    return (B, F, config.latent_channels, config.latent_height, config.latent_width)


def uncached_rollout(model, prompt, prompt_actions, step_actions, steps, seed, view_memory=None):
    """The reference: every Euler step runs the whole sequence so far through the training-mode forward
    (block-causal with the window), drawing the same noise in the same order as `Sampler`. With view_memory,
    its own panorama paints every frame as it is made and fills each new frame's view (none for the prompt).
    With keep_view, a frame whose action holds no button and stands or turns faster than idle_turn has its known
    view put back at every level, and paints only the cells its panorama did not hold. With commit_last_step (and
    `last_step_commits`), a made chunk stays in the context as its last Euler step saw it, at that step's levels,
    while the frame after it takes it finished (at the context level) as its previous frame and start; a chunk
    whose whole view is known enters finished."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    B, P = prompt.shape[:2]
    s = c.context_noise
    context = (1 - s) * prompt + s * torch.randn(prompt.shape, generator=g)
    actions = torch.cat([torch.zeros(B, 1, ACTION_DIM), prompt_actions], dim=1)  # model order
    levels = torch.full((B, P), s)
    # each context frame's previous frame and level (for the prompt, the frame before it), and the last frame
    # finished: the next chunk's previous frame and start
    prevs = torch.cat([torch.zeros_like(context[:, :1]), context[:, :-1]], 1)
    prev_levels = torch.cat([torch.ones(B, 1), levels[:, :-1]], 1)
    last = context[:, -1:]
    from_last_step = last_step_commits(c, steps)
    base = [1 - i / steps for i in range(steps + 1)]
    base = [c.sample_shift * t / (1 + (c.sample_shift - 1) * t) for t in base]
    out, memory, fills = [], None, None
    if c.view_memory if view_memory is None else view_memory:
        memory = ViewMemory(c, B)
        fills = memory.fill_clip(context, actions)
    with torch.no_grad():
        for a in step_actions:  # (B, K, 25)
            K = a.shape[1]
            x = torch.randn(latent_shape(c, B, K), generator=g)
            if memory is not None:
                views = memory.views(a)
                fills = tuple(torch.cat(pair, 1) for pair in zip(fills, memory.render(views)))
            whole = False
            start = torch.full((B, K), c.sample_start)  # each frame's start: idle_start where its action does nothing
            if c.idle_start > 0:
                held = (a[..., :15] != 0).any(-1) | (a[..., 17:] != 0).any(-1)
                idle = ~held & (a[..., 15:17].abs() <= c.idle_turn / 10).all(-1)
                start = torch.where(idle, c.idle_start, start)
            new_fill = None if fills is None else tuple(f[:, -K:] for f in fills)
            noise, keep = x, lambda x, t: x
            held = (a[..., :15] != 0).any(-1) | (a[..., 17:] != 0).any(-1)
            turn = a[..., 15:17].abs().amax(-1)
            kept = ~held & ((turn == 0) | (turn > c.idle_turn / 10))  # standing, or turning faster than idle
            if c.keep_view:  # the view it knows, noised to each level alike
                view, where = known_view(last, a, c.camera_warp, c.warp_keep_rows, new_fill, keep=kept)
                keep = lambda x, t: torch.where(where, (1 - t[..., None, None, None]) * view
                                                + t[..., None, None, None] * noise, x)
                whole = bool(where.all())
            if bool((start < 1).any()):  # from the last frame finished, turned as the model turns it, noised
                turned = warp_previous(last, a, c.camera_warp, c.warp_keep_rows, new_fill) if c.camera_warp else last
                x = (1 - start[..., None, None, None]) * turned + start[..., None, None, None] * x
            x = keep(x, start * base[0])
            for b, b_next in zip(base[:-1], base[1:]):
                t, t_next = start * b, start * b_next
                x_prevs = torch.cat([prevs, last, x[:, :-1]], 1)
                x_prev_levels = torch.cat([prev_levels, torch.full((B, 1), s), t[:, :-1]], 1)
                v = model(torch.cat([context, x], 1), torch.cat([actions, a], 1), torch.cat([levels, t], 1),
                          fill=fills, prev_frames=(x_prevs, x_prev_levels))[:, -K:]
                seen, seen_levels = x, t  # the chunk as its last step saw it
                x = keep(x + (t_next - t)[..., None, None, None] * v, t_next)
            if c.guard_range is not None:  # each channel's mean moved into its range, the detail kept
                low, high = torch.tensor(c.guard_range).view(2, 1, 1, -1, 1, 1)
                mean = x.mean(dim=(3, 4), keepdim=True)
                x = x - mean + torch.maximum(torch.minimum(mean, high), low)
            if c.spread_floor is not None:  # each channel's detail scaled up to the floor's std, by at most 2
                floor = torch.tensor(c.spread_floor).view(1, 1, -1, 1, 1)
                mean = x.mean(dim=(3, 4), keepdim=True)
                std = (x - mean).pow(2).mean(dim=(3, 4), keepdim=True).sqrt()
                x = mean + (x - mean) * (floor / std.clamp(min=1e-6)).clamp(1.0, 2.0)
            out.append(x)
            x = (1 - s) * x + s * torch.randn(x.shape, generator=g)
            if memory is not None:
                memory.write(x, views, only_new=kept if c.keep_view else None)
            entry, entry_levels = (seen, seen_levels) if from_last_step and not whole else (x, torch.full((B, K), s))
            prevs = torch.cat([prevs, last, entry[:, :-1]], 1)
            prev_levels = torch.cat([prev_levels, torch.full((B, 1), s), entry_levels[:, :-1]], 1)
            context, last = torch.cat([context, entry], 1), x[:, -1:]
            actions, levels = torch.cat([actions, a], 1), torch.cat([levels, entry_levels], 1)
    return torch.cat(out, 1)


def scripted_actions(frames: int, script) -> list:
    """`frames` model-order actions (2, 1, 25) for a batch of 2, each zeros then set by script(action, i)."""
    out = []
    for i in range(frames):
        a = torch.zeros(2, 1, ACTION_DIM)
        script(a, i)
        out.append(a)
    return out


def two_frame_prompt(config, seed: int = 1):
    """A random prompt of 2 frames for a batch of 2, the action between them, and the generator that drew them."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(latent_shape(config, 2, 2), generator=g)
    return prompt, torch.rand(2, 1, ACTION_DIM, generator=g), g


def sampled_as_recomputed(model, prompt, prompt_actions, step_actions, steps, seed, fuse_commit, graphs):
    """The sampler's frames, batch = the prompt's, on the given path, checked against `uncached_rollout`."""
    sampler = Sampler(model, batch_size=prompt.shape[0], steps=steps, seed=seed, fuse_commit=fuse_commit,
                      graphs=graphs)
    sampler.reset(prompt, prompt_actions)
    cached = torch.cat([sampler.step(a) for a in step_actions], 1)
    torch.testing.assert_close(cached, uncached_rollout(model, prompt, prompt_actions, step_actions, steps, seed),
                               rtol=1e-5, atol=1e-5)
    return cached


def test_shifted_levels():
    assert sample_levels(2) == [1.0, 0.5, 0.0]
    assert sample_levels(2, 3.0) == pytest.approx([1.0, 0.75, 0.0])
    levels = sample_levels(5, 6.0)
    assert levels[0] == 1.0 and levels[-1] == 0.0 and all(a > b for a, b in zip(levels, levels[1:]))
    with pytest.raises(ValueError, match="sample_shift"):
        tiny_config(sample_shift=0.0)


VARIANTS = [dict(prev_input=False, residual=False, camera_warp=0.0), dict(prev_input=True, residual=False, camera_warp=0.0),
            dict(prev_input=True, residual=True, camera_warp=0.0),
            dict(prev_input=True, residual=True, camera_warp=70.0, warp_keep_rows=2),
            dict(prev_input=True, residual=True, camera_warp=70.0, warp_keep_rows=2, view_memory=True),
            dict(prev_input=True, residual=True, camera_warp=70.0, warp_keep_rows=2, view_memory=True,
                 commit_last_step=True, context_noise_max=0.9)]  # its last step's level is within 0.9 at 2 and 3 steps
VARIANT_IDS = ["", "prev-input", "residual", "camera-warp", "view-memory", "commit-last-step"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
@pytest.mark.parametrize("chunk_frames,context_frames,prompt_frames,chunks",
                         [(1, 4, 2, 8), (2, 6, 4, 5), (1, 3, 5, 4)],
                         ids=["K1-wraps", "K2-wraps", "prompt-longer-than-cache"])
def test_cached_sampling_equals_recomputing_everything(chunk_frames, context_frames, prompt_frames, chunks,
                                                       fuse_commit, graphs, variant):
    model = small_model(chunk_frames=chunk_frames, context_frames=context_frames, **variant)
    c = model.config
    g = torch.Generator().manual_seed(1)
    B = 2
    prompt = torch.randn(latent_shape(c, B, prompt_frames), generator=g)
    prompt_actions = torch.rand(B, prompt_frames - 1, ACTION_DIM, generator=g)
    step_actions = [torch.rand(B, chunk_frames, ACTION_DIM, generator=g) for _ in range(chunks)]
    for a in step_actions:
        a[..., 15:17] = a[..., 15:17] * 2 - 1  # the camera turns both ways: the view memory sees the way back
    # The ring must wrap during the rollout for this test to cover it.
    assert prompt_frames + chunks * chunk_frames > 2 * c.cache_frames

    sampler = Sampler(model, batch_size=B, steps=3, seed=7, fuse_commit=fuse_commit, graphs=graphs)
    sampler.reset(prompt, prompt_actions)
    cached = torch.cat([sampler.step(a) for a in step_actions], 1)
    expected = uncached_rollout(model, prompt, prompt_actions, step_actions, steps=3, seed=7)
    assert float(expected.std()) > 0.1  # a model that does something
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)  # measured: about 1e-6
    assert sampler.frame == prompt_frames + chunks * chunk_frames
    if c.view_memory:  # the panorama filled some of what the turns revealed
        forgetful = uncached_rollout(model, prompt, prompt_actions, step_actions, steps=3, seed=7,
                                     view_memory=False)
        assert float((forgetful - expected).abs().max()) > 1e-2


@pytest.mark.parametrize("chunk_frames,context_frames,prompt_frames,chunks", [(1, 4, 2, 9), (2, 6, 4, 6)],
                         ids=["K1-wraps", "K2-wraps"])
def test_committing_before_the_actions_come_equals_recomputing_everything(chunk_frames, context_frames,
                                                                           prompt_frames, chunks):
    """`Sampler.commit` (what play runs while a frame is shown) after some steps and not others: the frames of
    recomputing everything, and snapshots taken after a commit and before one replay them exactly. The buffered
    (graphed) step commits the same way, from its first chunk on, which the plain path makes."""
    from_last = dict(sample_start=0.6, keep_view=True, idle_start=0.2) if chunk_frames == 1 else {}  # needs K = 1
    model = small_model(chunk_frames=chunk_frames, context_frames=context_frames, **from_last,
                        **VARIANTS[VARIANT_IDS.index("view-memory")])
    c = model.config
    g = torch.Generator().manual_seed(1)
    prompt = torch.randn(latent_shape(c, 2, prompt_frames), generator=g)
    prompt_actions = torch.rand(2, prompt_frames - 1, ACTION_DIM, generator=g)
    step_actions = [torch.rand(2, chunk_frames, ACTION_DIM, generator=g) for _ in range(chunks)]
    for i, a in enumerate(step_actions):
        a[..., 15:17] = a[..., 15:17] * 2 - 1
        if i % 2:  # standing still: the frame keeps its view, and starts at idle_start
            a.zero_()
    committed = lambda i: i % 3 != 1  # noqa: E731
    sampler = Sampler(model, batch_size=2, steps=3, seed=7)
    sampler.reset(prompt, prompt_actions)
    assert not sampler.commit()  # the prompt is in the caches: nothing to commit
    out, states = [], {}
    for i, a in enumerate(step_actions):
        out.append(sampler.step(a))
        if committed(i):
            assert sampler.commit() and not sampler.commit()
        if i in (3, 4):  # after a commit, and before one (the chunk not yet in the caches or the panorama)
            states[i + 1] = sampler.snapshot()
    torch.testing.assert_close(torch.cat(out, 1), uncached_rollout(model, prompt, prompt_actions, step_actions, 3, 7),
                               rtol=1e-5, atol=1e-5)
    for mark, state in states.items():
        sampler.restore(state)
        for i in range(mark, chunks):
            assert torch.equal(sampler.step(step_actions[i]), out[i])
            if committed(i):
                sampler.commit()
    graphed = Sampler(model, batch_size=2, steps=3, seed=7, graphs=True)
    graphed.reset(prompt, prompt_actions)
    assert not graphed.commit()
    made = []
    for i, a in enumerate(step_actions):
        made.append(graphed.step(a))
        if committed(i):  # the first chunk too, which the plain path made: it moves into the buffered step's buffers
            assert graphed.commit() and not graphed.commit()
    torch.testing.assert_close(torch.cat(made, 1), torch.cat(out, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[2:], ids=VARIANT_IDS[2:])
@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
def test_sampling_from_the_last_frame_equals_recomputing_everything(fuse_commit, graphs, variant):
    """sample_start < 1: each frame's steps start from the frame before it (turned, filled, noised), in every
    path of the sampler as in the reference; and not where sampling from noise goes."""
    model = small_model(chunk_frames=1, context_frames=4, sample_start=0.6, **variant)
    c = model.config
    assert step_levels(c, 3) == pytest.approx([0.6 * t for t in sample_levels(3, c.sample_shift)])
    B = 2
    prompt, prompt_actions, g = two_frame_prompt(c)
    step_actions = [torch.rand(B, 1, ACTION_DIM, generator=g) for _ in range(8)]
    for a in step_actions:
        a[..., 15:17] = a[..., 15:17] * 2 - 1
    expected = sampled_as_recomputed(model, prompt, prompt_actions, step_actions, 3, 7, fuse_commit, graphs)
    model.config = dataclasses.replace(c, sample_start=1.0)
    from_noise = uncached_rollout(model, prompt, prompt_actions, step_actions, steps=3, seed=7)
    assert float((from_noise - expected).abs().max()) > 1e-2


@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
def test_idle_start_sampling_equals_recomputing_everything(fuse_commit, graphs):
    """idle_start: a frame whose action does nothing (no button, the camera within idle_turn) starts from the
    frame before it at idle_start, the others at sample_start, rows of one batch apart, in every path of the
    sampler as in the reference; and not where every frame starts at sample_start."""
    model = small_model(chunk_frames=1, context_frames=4, sample_start=0.6, idle_start=0.1, idle_turn=1.0,
                        camera_warp=70.0, warp_keep_rows=2)
    c = model.config
    prompt, prompt_actions, _ = two_frame_prompt(c)

    def script(a, i):
        a[0, 0, 16] = 0.05 * (i % 3)  # row 0 stands still, turning by at most a degree
        if i % 2:
            a[1, 0, 11] = 1.0  # row 1 walks every other frame

    step_actions = scripted_actions(8, script)
    expected = sampled_as_recomputed(model, prompt, prompt_actions, step_actions, 3, 7, fuse_commit, graphs)
    model.config = dataclasses.replace(c, idle_start=0.0)
    everywhere = uncached_rollout(model, prompt, prompt_actions, step_actions, steps=3, seed=7)
    assert float((everywhere - expected).abs().max()) > 1e-2  # idle_start bites


@pytest.mark.parametrize("memory", [False, True], ids=["warp", "view-memory"])
@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
def test_keep_view_sampling_equals_recomputing_everything(fuse_commit, graphs, memory):
    """keep_view: a frame whose action holds no button and stands or turns fast (row 0) keeps its known view at
    every level and paints only what its panorama lacked; a slow turn (row 0, every fourth frame) starts low as an
    idle frame and keeps nothing; a frame that walks (row 1) is made as before; in every path of the sampler as
    in the reference."""
    model = small_model(chunk_frames=1, context_frames=4, sample_start=0.6, idle_start=0.1, camera_warp=70.0,
                        warp_keep_rows=2, view_memory=memory, keep_view=True)
    c = model.config
    prompt, prompt_actions, _ = two_frame_prompt(c)

    def script(a, i):
        a[0, 0, 16] = [0.0, 1.5, -1.5, 0.05][i % 4]  # row 0 stands, turns right, back, or slowly (0.5°)
        a[1, 0, 16], a[1, 0, 11] = 0.5, 1.0  # row 1 walks and turns

    step_actions = scripted_actions(8, script)
    expected = sampled_as_recomputed(model, prompt, prompt_actions, step_actions, 3, 7, fuse_commit, graphs)
    model.config = dataclasses.replace(c, keep_view=False)
    made = uncached_rollout(model, prompt, prompt_actions, step_actions, steps=3, seed=7)
    assert float((made[0] - expected[0]).abs().max()) > 1e-2  # keeping bites where nothing is held
    torch.testing.assert_close(made[1], expected[1], rtol=1e-5, atol=1e-5)  # and not while walking


def test_keep_view_holds_a_still_view_and_brings_a_full_turn_back():
    """With keep_view, standing still gives back the last frame exactly (the model only makes what a turn
    reveals), and 36 turns of 10 degrees with the view memory come back to the view they left (the panorama's,
    resampled: a smooth frame keeps), where the model alone, untrained, does not."""
    torch.manual_seed(0)
    c = tiny_config(chunk_frames=1, context_frames=4, sample_start=0.6, camera_warp=70.0, warp_keep_rows=0,
                    view_memory=True, keep_view=True, context_noise=0.0)
    model = randomized(DynamicsModel(c)).eval()
    g = torch.Generator().manual_seed(3)
    coarse = torch.randn(1, 2 * c.latent_channels, 4, 4, generator=g)
    prompt = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    prompt = prompt.view(1, 2, c.latent_channels, 16, 16)  # two smooth frames
    sampler = Sampler(model, batch_size=1, steps=2, seed=0)
    sampler.reset(prompt, torch.zeros(1, 1, ACTION_DIM))
    still = [sampler.step(torch.zeros(1, ACTION_DIM)) for _ in range(3)]
    for frame in still:
        torch.testing.assert_close(frame[:, 0], prompt[:, -1], rtol=0, atol=1e-5)
    turn = torch.zeros(1, ACTION_DIM)
    turn[0, 16] = 1.0  # 10 degrees right
    corr = lambda a, b: float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
    for keep in (True, False):
        model.config = dataclasses.replace(c, keep_view=keep)
        sampler = Sampler(model, batch_size=1, steps=2, seed=0)
        sampler.reset(prompt, torch.zeros(1, 1, ACTION_DIM))
        frames = [sampler.step(turn)[..., 4:12, 4:12] for _ in range(36)]  # the view's middle: the prompt's
        back = corr(frames[-1], prompt[:, -1, :, 4:12, 4:12])  # (the model fills the edges the prompt never saw)
        if keep:
            assert back > 0.95 and abs(corr(frames[17], prompt[:, -1, :, 4:12, 4:12])) < 0.5  # back, not before
        else:
            assert back < 0.5


@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
def test_a_view_known_everywhere_skips_the_steps_and_equals_recomputing_everything(fuse_commit, graphs):
    """With keep_view, a frame where every row stands knows its whole view: the sampler makes it without the Euler
    steps' read passes (each would put the known view back), and its frames equal the reference's, which takes
    them; once a row walks, they are taken again."""
    model = small_model(chunk_frames=1, context_frames=4, sample_start=0.6, idle_start=0.1, camera_warp=70.0,
                        warp_keep_rows=2, view_memory=True, keep_view=True)
    c = model.config
    prompt, prompt_actions, _ = two_frame_prompt(c)

    def script(a, i):
        if i >= 4:  # from the fifth frame on, row 1 walks
            a[1, 0, 11] = 1.0

    step_actions = scripted_actions(8, script)
    modes = []
    forward = type(model).forward

    def counting(self, *args, **kwargs):
        modes.append(kwargs.get("mode", "train"))
        return forward(self, *args, **kwargs)

    sampler = Sampler(model, batch_size=2, steps=3, seed=7, fuse_commit=fuse_commit, graphs=graphs)
    sampler.reset(prompt, prompt_actions)
    made, reads = [], []
    type(model).forward = counting
    try:
        for a in step_actions:
            modes.clear()
            made.append(sampler.step(a))
            reads.append(modes.count("read") + modes.count("commit_read"))
    finally:
        type(model).forward = forward
    assert reads[:4] == [0, 0, 0, 0] and all(n >= 2 for n in reads[4:])
    torch.testing.assert_close(torch.cat(made, 1), uncached_rollout(model, prompt, prompt_actions, step_actions, 3, 7),
                               rtol=1e-5, atol=1e-5)


def guarded_rollout(model, seed: int, fuse_commit: bool, graphs: bool, prompt_scale: float = 1.0):
    """6 frames of batch 2 from a random 3-frame prompt, sampled with the sampler's path and checked against
    recomputing everything; returns (prompt, prompt_actions, step_actions, the sampled frames)."""
    c, g = model.config, torch.Generator().manual_seed(seed)
    B, P = 2, 3
    prompt = prompt_scale * torch.randn(latent_shape(c, B, P), generator=g)
    prompt_actions = torch.rand(B, P - 1, ACTION_DIM, generator=g)
    step_actions = [torch.rand(B, 1, ACTION_DIM, generator=g) for _ in range(6)]
    cached = sampled_as_recomputed(model, prompt, prompt_actions, step_actions, 2, seed + 1, fuse_commit, graphs)
    return prompt, prompt_actions, step_actions, cached


@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
def test_guarded_sampling_equals_recomputing_everything(fuse_commit, graphs):
    """guard_range: every made frame's channel means lie in it, in every path of the sampler as in the reference
    (where the frames, cached, feed the next ones); the guard moves frames whose means leave it, only by their
    means."""
    C = 16
    low = [-0.05 * (1 + i % 3) for i in range(C)]
    guard = tuple(low + [0.02 * (1 + i % 4) for i in range(C)])
    model = small_model(guard_range=guard, camera_warp=70.0, warp_keep_rows=2)
    c = model.config
    prompt, prompt_actions, step_actions, cached = guarded_rollout(model, 2, fuse_commit, graphs)
    means = cached.mean(dim=(3, 4))  # (B, F, C)
    bounds = torch.tensor(guard).view(2, 1, 1, C)
    assert bool(((means >= bounds[0] - 1e-5) & (means <= bounds[1] + 1e-5)).all())
    model.config = dataclasses.replace(c, guard_range=None)
    free = uncached_rollout(model, prompt, prompt_actions, step_actions, 2, seed=3)
    assert bool(((free.mean(dim=(3, 4)) < bounds[0]) | (free.mean(dim=(3, 4)) > bounds[1])).any())  # it bites
    first = free[:, :1]  # the first frame sees the same past: guarded, it differs from it only by channel means
    detail = lambda x: x - x.mean(dim=(3, 4), keepdim=True)
    torch.testing.assert_close(detail(cached[:, :1]), detail(first), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fuse_commit,graphs", [(True, False), (False, False), (True, True)],
                         ids=["fused-commit", "separate-commit", "graphed"])
def test_spread_floor_sampling_equals_recomputing_everything(fuse_commit, graphs):
    """spread_floor (with guard_range): every path of the sampler equals the reference; each made frame's
    channel std reaches the floor unless the gain is at its cap of 2, and channels already above it keep
    their detail; without the floor some channel falls below it (the floor bites)."""
    C = 16
    floor = tuple(0.5 + 0.2 * (i % 4) for i in range(C))  # 0.5 .. 1.1
    guard = tuple([-0.5] * C + [0.5] * C)
    model = small_model(guard_range=guard, spread_floor=floor, camera_warp=70.0, warp_keep_rows=2)
    c = model.config
    prompt, prompt_actions, step_actions, cached = guarded_rollout(model, 4, fuse_commit, graphs, prompt_scale=0.5)
    stds = cached.std(dim=(3, 4), unbiased=False)  # (B, F, C)
    assert bool((stds >= torch.tensor(floor) - 1e-4).all()), stds.min()
    model.config = dataclasses.replace(c, spread_floor=None)
    free = uncached_rollout(model, prompt, prompt_actions, step_actions, 2, seed=5)
    free_stds = free.std(dim=(3, 4), unbiased=False)
    assert bool((free_stds < torch.tensor(floor)).any())  # it bites
    first_gain = stds[:, 0] / free_stds[:, 0]  # the first frame sees the same past: only its detail is scaled
    expected = (torch.tensor(floor) / free_stds[:, 0]).clamp(1.0, 2.0)
    torch.testing.assert_close(first_gain, expected, rtol=1e-4, atol=1e-4)


def test_spread_floor_is_the_data_floor_and_is_checked():
    from worldsim.models.guards import frame_spread_floor
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(1000, 4, 3, 3, generator=g) * torch.arange(1.0, 5.0).view(1, 4, 1, 1)  # channel c: std c+1
    floor = frame_spread_floor(frames.numpy(), 10.0)
    stds = frames.std(dim=(2, 3), unbiased=False)
    assert floor == pytest.approx(torch.quantile(stds, 0.10, dim=0).tolist(), abs=1e-3)
    model = DynamicsModel(tiny_config(latent_channels=4, latent_height=3, latent_width=3, patch_size=1,
                                      spread_floor=list(floor)))  # a list, as JSON gives it
    assert model.config.spread_floor == tuple(floor)
    flat = 0.01 * frames[:5, None]
    lifted = model.guard(flat)  # very flat frames: at most twice their detail, their means unchanged
    torch.testing.assert_close(lifted - lifted.mean(dim=(3, 4), keepdim=True),
                               2 * (flat - flat.mean(dim=(3, 4), keepdim=True)))
    torch.testing.assert_close(lifted.mean(dim=(3, 4)), flat.mean(dim=(3, 4)))
    lively = 10 * frames[:5, None]  # frames above the floor pass unchanged
    torch.testing.assert_close(model.guard(lively), lively)
    with pytest.raises(ValueError, match="spread_floor must be 4 finite numbers >= 0"):
        tiny_config(latent_channels=4, spread_floor=(1.0,) * 3)
    with pytest.raises(ValueError, match="spread_floor must be 4"):
        tiny_config(latent_channels=4, spread_floor=(1.0, -1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spread_guard is a percentile"):
        tiny_config(spread_guard=-1.0)
    with pytest.raises(ValueError, match="at least one frame"):
        frame_spread_floor(frames.numpy()[:0], 1.0)


def test_guard_range_is_the_data_range_and_is_checked():
    from worldsim.models.guards import frame_mean_range
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(1000, 4, 2, 2, generator=g) + torch.arange(4.0).view(1, 4, 1, 1)  # channel c about c
    bounds = frame_mean_range(frames.numpy(), 5.0)
    means = frames.mean(dim=(2, 3))
    assert bounds == pytest.approx(torch.quantile(means, torch.tensor([0.05, 0.95]), dim=0).flatten().tolist(),
                                   abs=1e-3)
    config = tiny_config(latent_channels=4, guard_range=[float(v) for v in bounds])  # a list, as JSON gives it
    assert config.guard_range == tuple(bounds)
    with pytest.raises(ValueError, match="guard_range must be 8 finite numbers"):
        tiny_config(latent_channels=4, guard_range=(0.0,) * 7)
    with pytest.raises(ValueError, match="low <= high"):
        tiny_config(latent_channels=4, guard_range=(1.0,) * 4 + (0.0,) * 4)
    with pytest.raises(ValueError, match="guard_range must be"):
        tiny_config(latent_channels=4, guard_range=(0.0,) * 3 + (float("nan"),) + (1.0,) * 4)
    with pytest.raises(ValueError, match="latent_guard is a percentile"):
        tiny_config(latent_guard=50.0)
    with pytest.raises(ValueError, match="at least one frame"):
        frame_mean_range(frames.numpy()[:0], 1.0)


def test_sample_start_is_checked():
    with pytest.raises(ValueError, match="sample_start must lie in"):
        tiny_config(sample_start=0.0)
    with pytest.raises(ValueError, match="sample_start must lie in"):
        tiny_config(sample_start=1.5)
    with pytest.raises(ValueError, match="chunk_frames=1"):
        tiny_config(sample_start=0.5, chunk_frames=2)
    with pytest.raises(ValueError, match="rollout_context"):
        tiny_config(sample_start=0.5, rollout_context=0.5)


def test_kv_cache_is_a_ring_buffer():
    cache = KVCache(batch=1, n_head=1, max_tokens=4, head_dim=1)
    tokens = torch.arange(1.0, 11.0).view(1, 1, 10, 1)
    cache.update(tokens[:, :, :3], -tokens[:, :, :3])
    assert cache.valid_len.tolist() == [3] and cache.k[0, 0, :3, 0].tolist() == [1, 2, 3]
    cache.update(tokens[:, :, 3:6], -tokens[:, :, 3:6])  # positions 3, 4, 5 -> slots 3, 0, 1
    assert cache.valid_len.tolist() == [4] and cache.k[0, 0, :, 0].tolist() == [5, 6, 3, 4]
    cache.update(tokens[:, :, 4:10], -tokens[:, :, 4:10])  # longer than the ring: the last 4 survive
    assert int(cache.pos) == 12  # positions 6..11; the last four, 8..11, land in slots 0..3
    assert cache.k[0, 0, :, 0].tolist() == [7, 8, 9, 10] and cache.v[0, 0, :, 0].tolist() == [-7, -8, -9, -10]
    cache.reset()
    assert cache.valid_len.tolist() == [0] and int(cache.pos) == 0


@pytest.mark.parametrize("chunk_frames, fuse_commit", [(1, True), (1, False), (2, True)])
def test_spare_slots_read_the_cache_in_place_and_change_no_bit(monkeypatch, chunk_frames, fuse_commit):
    """On the CPU the caches keep a chunk's worth of spare slots and `KVCache.attend` reads the cache and the
    chunk's keys in place (no call of the kernels' dispatch, which copies them together); the frames are those of
    caches without spare slots bit for bit, through the ring's wrap, in the fused and the separate commit."""
    import kernels
    model = small_model(context_frames=4 * chunk_frames, chunk_frames=chunk_frames)
    c = model.config
    g = torch.Generator().manual_seed(7)
    prompt = torch.randn(latent_shape(c, 2, 2 * chunk_frames), generator=g)
    prompt_actions = torch.rand(2, 2 * chunk_frames - 1, ACTION_DIM, generator=g)
    step_actions = [torch.rand(2, chunk_frames, ACTION_DIM, generator=g) for _ in range(6)]

    def run(spare):
        sampler = Sampler(model, batch_size=2, steps=2, seed=3, fuse_commit=fuse_commit)
        if spare is not None:
            sampler.caches = make_caches(model, 2, spare=spare)
        sampler.reset(prompt, prompt_actions)
        return torch.cat([sampler.step(a) for a in step_actions], 1)

    assert make_caches(model, 1)[0].spare == c.chunk_frames * c.tokens_per_frame  # the CPU default
    copied = run(spare=0)
    dispatch = kernels.cache_attention
    calls = []
    monkeypatch.setattr(kernels, "cache_attention", lambda *a, **k: calls.append(1) or dispatch(*a, **k))
    in_place = run(spare=None)
    assert not calls, "a read went through the dispatch's copy"
    assert torch.equal(in_place, copied)
    run(spare=0)
    assert calls  # the counter counts: without spare slots every read goes through the dispatch


def test_batch_rows_are_independent():
    model = small_model(context_frames=4)
    c = model.config
    g = torch.Generator().manual_seed(3)
    prompt = torch.randn(latent_shape(c, 3, 2), generator=g)
    actions = torch.cat([torch.zeros(3, 1, ACTION_DIM), torch.rand(3, 1, ACTION_DIM, generator=g)], 1)
    noises = [torch.randn(latent_shape(c, 3, 1), generator=g) for _ in range(7)]
    step_actions = [torch.rand(3, 1, ACTION_DIM, generator=g) for _ in range(3)]

    def run(rows):
        caches = make_caches(model, len(rows))
        prefill(model, caches, prompt[rows], actions[rows], torch.cat([noises[0], noises[0]], 1)[rows])
        out = []
        for i, a in enumerate(step_actions):
            x = denoise_chunk(model, caches, a[rows], 2 + i, noises[1 + 2 * i][rows], steps=2)
            commit_chunk(model, caches, x, a[rows], 2 + i, noises[2 + 2 * i][rows])
            out.append(x)
        return torch.cat(out, 1)

    together = run([0, 1, 2])
    for row in range(3):
        torch.testing.assert_close(run([row]), together[row:row + 1], rtol=1e-5, atol=1e-5)


def test_action_conditions_the_next_frame():
    model = small_model(context_frames=4)
    c = model.config
    prompt = torch.randn(latent_shape(c, 1, 2))
    sampler = Sampler(model, steps=2)
    sampler.reset(prompt, torch.zeros(1, 1, ACTION_DIM))
    state = sampler.snapshot()
    still = sampler.step(torch.zeros(1, ACTION_DIM))
    sampler.restore(state)
    turning = torch.zeros(1, ACTION_DIM)
    turning[0, 15] = 1.0  # camera_yaw
    assert not torch.allclose(sampler.step(turning), still)


@pytest.mark.parametrize("graphs", [False, True], ids=["plain", "graphed"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_snapshot_restore_replays_identically_and_branches(variant, graphs):
    model = small_model(context_frames=4, **variant)
    c = model.config
    g = torch.Generator().manual_seed(5)
    actions = [torch.rand(2, ACTION_DIM, generator=g) for _ in range(6)]
    sampler = Sampler(model, batch_size=2, steps=2, seed=11, graphs=graphs)
    sampler.reset(torch.randn(latent_shape(c, 2, 3), generator=g), torch.rand(2, 2, ACTION_DIM, generator=g))
    for a in actions[:2]:
        sampler.step(a)
    state = sampler.snapshot()
    first = [sampler.step(a) for a in actions[2:]]  # runs far enough for the ring to wrap after the snapshot
    sampler.steps = 1
    branch = sampler.step(actions[0])  # a different branch, with another step count
    sampler.restore(state)
    assert sampler.steps == 2 and sampler.frame == 5
    replay = [sampler.step(a) for a in actions[2:]]
    for x, y in zip(first, replay):
        assert torch.equal(x, y)
    assert not torch.equal(branch, first[0])


def test_graphed_steps_equal_plain_steps_as_the_step_count_changes():
    model = small_model(context_frames=4, prev_input=True, residual=True)
    g = torch.Generator().manual_seed(2)
    prompt = torch.randn(latent_shape(model.config, 1, 2), generator=g)
    actions = [torch.rand(1, ACTION_DIM, generator=g) for _ in range(7)]
    steps = [2, 2, 1, 3, 1, 2, 2]
    outputs = []
    for graphs in (False, True):
        sampler = Sampler(model, steps=2, seed=4, graphs=graphs)
        sampler.reset(prompt, torch.rand(1, 1, ACTION_DIM, generator=torch.Generator().manual_seed(9)))
        outputs.append([sampler.step(a, steps=s) for a, s in zip(actions, steps)])
        sampler.reset(prompt, torch.zeros(1, 1, ACTION_DIM))  # a new prompt after graphed steps starts clean
        outputs[-1].append(sampler.step(actions[0]))
        outputs[-1].append(sampler.step(actions[1]))
    for plain, graphed in zip(*outputs):
        torch.testing.assert_close(graphed, plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="fuse_commit"):
        Sampler(model, graphs=True, fuse_commit=False)


COMPILED = {"commit-last-step": dict(chunk_frames=1, context_frames=4, **VARIANTS[5]),
            "keep-view": dict(chunk_frames=1, context_frames=4, sample_start=0.6, idle_start=0.1, camera_warp=70.0,
                              warp_keep_rows=2, view_memory=True, keep_view=True),
            "K2": dict(chunk_frames=2, context_frames=6, prev_input=True, residual=True)}
COMPILED = {name: dict(n_layer=2, **changes) for name, changes in COMPILED.items()}  # two layers: half the tracing


def compiled_and_eager(model, compile, prompt_frames=2, chunks=6, steps=(2, 2, 2)):
    """Frames of the graphed sampler stepped through ring wraps, a commit ahead, a snapshot and its restore (and
    `steps` after the snapshot), eagerly and under `compile` (Sampler(compile=...))."""
    c = model.config
    g = torch.Generator().manual_seed(3)
    prompt = torch.randn(latent_shape(c, 2, prompt_frames), generator=g)
    prompt_actions = torch.rand(2, prompt_frames - 1, ACTION_DIM, generator=g)
    actions = [torch.rand(2, c.chunk_frames, ACTION_DIM, generator=g) for _ in range(chunks)]
    actions[1][:, :, :] = 0  # a standing chunk: keep_view keeps its whole view
    outputs = []
    for compiled in (False, compile):
        sampler = Sampler(model, batch_size=2, steps=2, seed=5, graphs=True, compile=compiled)
        sampler.reset(prompt, prompt_actions)
        frames = [sampler.step(a) for a in actions[:3]]
        sampler.commit()  # the commit body now, the denoise body at the next step (play's order)
        state = sampler.snapshot()
        frames += [sampler.step(a, steps=s) for a, s in zip(actions[3:], steps)]
        sampler.restore(state)
        frames += [sampler.step(a) for a in actions[3:]]
        outputs.append(torch.cat(frames, 1))
    return outputs


@pytest.mark.parametrize("variant", list(COMPILED), ids=list(COMPILED))
def test_compiled_step_equals_the_eager_one(variant):
    """The buffered step under torch.compile traces as one graph (fullgraph: a break would raise), the attention as
    one opaque op, and gives the eager step's frames bit for bit, through ring wraps, a second step count (a second
    graph), a snapshot and its restore. aot_eager traces what inductor compiles, in a fraction of the time (inductor
    itself runs in tests/test_world_model_env.py, world.compile=true).
    With keep_view equal to rounding: a standing chunk's steps, which the eager step skips on the CPU (they end where
    they start), run in the graph, as on CUDA."""
    steps = (1, 2, 2) if variant == "K2" else (2, 2, 2)  # steps=1: a second graph
    eager, compiled = compiled_and_eager(small_model(**COMPILED[variant]), "aot_eager", steps=steps)
    if variant == "keep-view":
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(compiled, eager)


@pytest.mark.parametrize("variant", ["camera-warp", "view-memory", "keep-view", "K2"])
def test_graphed_commit_ahead_equals_the_plain_sampler(variant):
    """`commit` between buffered steps (play: the commit body while a frame is shown, the denoise body after the
    input, one CUDA graph each) gives the plain sampler's frames with the same commits, through ring wraps; a
    snapshot taken after a commit replays exactly, and a commit with none pending is refused."""
    changes = {"camera-warp": dict(chunk_frames=1, context_frames=4, **VARIANTS[3]),
               "view-memory": dict(chunk_frames=1, context_frames=4, **VARIANTS[4]), **COMPILED}[variant]
    model = small_model(**changes)
    c = model.config
    g = torch.Generator().manual_seed(8)
    prompt = torch.randn(latent_shape(c, 2, 2), generator=g)
    prompt_actions = torch.rand(2, 1, ACTION_DIM, generator=g)
    actions = [torch.rand(2, c.chunk_frames, ACTION_DIM, generator=g) for _ in range(7)]
    outputs = []
    for graphs in (False, True):
        sampler = Sampler(model, batch_size=2, steps=2, seed=5, graphs=graphs)
        sampler.reset(prompt, prompt_actions)
        def run(first):
            made, done = [], []
            for i, a in enumerate(actions[first:], first):
                made.append(sampler.step(a))
                if i % 3 != 1:  # mostly ahead, sometimes fused into the next step
                    done.append(sampler.commit())
                if i == 3 and first == 0:
                    states.append(sampler.snapshot())
            return made, done

        states = []
        frames, commits = run(0)
        assert sampler.commit() is False  # the last step's chunk was committed just now
        sampler.restore(states[0])
        for x, y in zip(run(4)[0], frames[4:]):
            assert torch.equal(x, y)
        outputs.append((torch.cat(frames, 1), commits))
    (plain, plain_commits), (graphed, graphed_commits) = outputs
    assert graphed_commits == plain_commits and all(graphed_commits[1:])
    torch.testing.assert_close(graphed, plain, rtol=1e-5, atol=1e-5)


def test_compile_needs_the_buffered_step():
    model = small_model(context_frames=4)
    with pytest.raises(ValueError, match="needs graphs=True"):
        Sampler(model, compile=True)
    with pytest.raises(ValueError, match="backend's name"):
        Sampler(model, graphs=True, compile=1)


def test_steps_change_between_chunks():
    model = small_model(context_frames=4)
    sampler = Sampler(model, steps=4)
    sampler.reset(torch.randn(latent_shape(model.config, 1, 1)), torch.zeros(1, 0, ACTION_DIM))
    state = sampler.snapshot()
    four = sampler.step(torch.zeros(1, ACTION_DIM))
    sampler.restore(state)
    one = sampler.step(torch.zeros(1, ACTION_DIM), steps=1)
    assert one.shape == four.shape and not torch.equal(one, four)


def test_last_step_commits_where_training_saw_the_level():
    """commit_last_step writes a frame from its last Euler step only where that step's level, for every frame
    (idle starts included), is one training gave context frames; the shipped world's 2 steps from 0.6 are."""
    shipped = dict(sample_start=0.6, sample_shift=1.0, context_noise_max=0.3, commit_last_step=True)
    assert last_step_commits(tiny_config(**shipped), 2)          # 0.6, 0.3, 0: written at 0.3
    assert last_step_commits(tiny_config(**shipped), 3)          # 0.6, 0.4, 0.2, 0
    assert not last_step_commits(tiny_config(**shipped), 1)      # its one step is at 0.6
    assert not last_step_commits(tiny_config(**{**shipped, "sample_start": 1.0}), 2)  # at 0.5
    assert not last_step_commits(tiny_config(**{**shipped, "commit_last_step": False}), 2)
    assert last_step_commits(tiny_config(**{**shipped, "idle_start": 0.1}), 2)  # idle frames: lower still


@pytest.mark.parametrize("graphs", [False, True], ids=["plain", "graphed"])
def test_commit_last_step_makes_a_frame_in_its_euler_steps_alone(graphs):
    """With commit_last_step a frame costs its S Euler passes and no commit pass (the point of it), where the last
    step's level allows; a step count whose last level does not (1 step from noise) commits as before."""
    model = small_model(context_frames=4, commit_last_step=True, context_noise_max=0.9, camera_warp=70.0,
                        warp_keep_rows=2)
    passes = []
    model.register_forward_hook(lambda module, args, kwargs, out: passes.append(kwargs.get("mode")),
                                with_kwargs=True)
    sampler = Sampler(model, batch_size=2, steps=2, seed=3, graphs=graphs)
    g = torch.Generator().manual_seed(2)
    sampler.reset(torch.randn(latent_shape(model.config, 2, 2), generator=g), torch.zeros(2, 1, ACTION_DIM))
    for steps, expected in ((2, ["read", "read_write"]), (3, ["read", "read", "read_write"]), (1, ["read", "write"])):
        sampler.steps = steps
        for _ in range(3):  # through the ring's wrap
            passes.clear()
            sampler.step(torch.rand(2, ACTION_DIM, generator=g))
            sampler.commit()  # what play does while the frame is shown: nothing is left to commit
            assert passes == expected
            assert sampler.pending is None


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc")
def test_two_thousand_frames_keep_memory_flat():
    model = small_model(n_layer=2)  # tiny's width and 16-frame window; two layers keep the test short
    c = model.config
    sampler = Sampler(model, steps=1)
    sampler.reset(torch.randn(latent_shape(c, 1, 2)), torch.zeros(1, 1, ACTION_DIM))
    buffers = [(name, buf.data_ptr(), buf.shape) for cache in sampler.caches for name, buf in cache.named_buffers()]
    action = torch.zeros(1, ACTION_DIM)
    for _ in range(200):  # warm-up: the ring wraps after 15 frames
        sampler.step(action)
    rss_before, blocks_before = resident_bytes(), sys.getallocatedblocks()
    for _ in range(1800):
        x = sampler.step(action)
    blocks_grown = sys.getallocatedblocks() - blocks_before  # Python objects kept (tracemalloc would slow it)
    rss_grown = resident_bytes() - rss_before
    assert sampler.frame == 2002
    assert [(name, buf.data_ptr(), buf.shape) for cache in sampler.caches
            for name, buf in cache.named_buffers()] == buffers  # updated in place, never re-allocated
    assert all(int(cache.valid_len[0]) == c.cache_frames * c.tokens_per_frame for cache in sampler.caches)
    assert blocks_grown < 1000, f"{blocks_grown} more Python memory blocks after 1,800 frames"
    # Tensors live outside the Python heap: keeping every frame's keys and values would add about 58 MB here.
    assert rss_grown < 16 * 2**20, f"resident memory grew by {rss_grown / 2**20:.1f} MiB over 1,800 frames"
    assert bool(torch.isfinite(x).all())


def test_bad_input_names_the_problem():
    model = small_model(context_frames=4, chunk_frames=2)
    c = model.config
    sampler = Sampler(model, batch_size=2)
    prompt = torch.randn(latent_shape(c, 2, 2))
    with pytest.raises(RuntimeError, match="before reset"):
        sampler.step(torch.zeros(2, 2, ACTION_DIM))
    with pytest.raises(ValueError, match="latents must be"):
        sampler.reset(torch.randn(2, 2, c.latent_channels, 16, 16), torch.zeros(2, 1, ACTION_DIM))
    with pytest.raises(ValueError, match="P - 1 = 1"):
        sampler.reset(prompt, torch.zeros(2, 2, ACTION_DIM))
    with pytest.raises(ValueError, match="multiple of chunk_frames"):
        sampler.reset(prompt[:, :1], torch.zeros(2, 0, ACTION_DIM))
    with pytest.raises(ValueError, match="batch_size 2"):
        sampler.reset(prompt[:1], torch.zeros(1, 1, ACTION_DIM))
    sampler.reset(prompt, torch.zeros(2, 1, ACTION_DIM))
    with pytest.raises(ValueError, match=r"actions must be \(B, F, 25\)"):
        sampler.step(torch.zeros(2, 2, 24))
    with pytest.raises(ValueError, match="NaN"):
        sampler.step(torch.full((2, 2, ACTION_DIM), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, F\) = \(2, 1\)"):
        sampler.step(torch.zeros(2, 1, ACTION_DIM))
    assert sampler.step(torch.zeros(2, 2, ACTION_DIM)).shape == latent_shape(c, 2, 2)


# -- the graphed step holds no host read: on CUDA it is captured as one graph ---------------------------------

def on_meta(sampler: Sampler) -> Sampler:
    """The sampler's model, caches, graph buffers and view memory moved to the meta device, which keeps shapes and
    no values: reading a value there raises. Off the CPU the sampler takes the paths it takes on CUDA."""
    meta = torch.device("meta")
    sampler.model.to(meta)
    for cache in sampler.caches:
        cache.to(meta)
    sampler._buffers = {name: buf.to(meta) for name, buf in sampler._buffers.items()}
    if sampler.memory is not None:
        for name, value in vars(sampler.memory).items():
            if torch.is_tensor(value):
                setattr(sampler.memory, name, value.to(meta))
    sampler.device = meta
    return sampler


def test_host_reads_catches_a_host_read_on_meta():
    """The checks below can fail: a value read raises on meta, and HostReads names what reads or copies from the
    host."""
    x = torch.zeros(3, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(x.all())
    reads = HostReads()
    with reads:
        torch.zeros(4)[torch.zeros(4) > 0]
        torch.zeros(2).nonzero()
        torch.ones(2).to("meta")
    assert reads.seen == ["index", "nonzero", "_to_copy host to device"]


SHIPPED = os.path.join(os.path.dirname(__file__), "..", "assets", "world")


@pytest.mark.parametrize("variant", [*VARIANTS, "keep-view", "shipped"], ids=[*VARIANT_IDS, "keep-view", "shipped"])
def test_graphed_step_reads_nothing_on_the_host(variant):
    """The fused step that CUDA replays as one graph (`_graph_body`: commit, Euler steps, view memory, keep_view,
    guards) runs off the CPU without reading a value on the host, for every sampler variant and the shipped world:
    a read would be a sync each step, and would make the graph's capture fail on the GPU."""
    if variant == "shipped":
        from worldsim.envs.world_model import load_world
        model = load_world(SHIPPED)[0].float()
    elif variant == "keep-view":
        model = small_model(chunk_frames=1, context_frames=4, sample_start=0.6, idle_start=0.1, camera_warp=70.0,
                            warp_keep_rows=2, view_memory=True, keep_view=True)
    else:
        model = small_model(chunk_frames=1, context_frames=4, **variant)
    c = model.config
    prompt, prompt_actions, _ = two_frame_prompt(c)
    sampler = Sampler(model, batch_size=2, steps=2, seed=7, graphs=True)
    sampler.reset(prompt, prompt_actions)
    walk, stand = torch.zeros(2, 1, ACTION_DIM), torch.zeros(2, 1, ACTION_DIM)
    walk[:, 0, 11], walk[1, 0, 16] = 1.0, 0.5
    for a in (walk, stand):  # the first puts the state in the graph's buffers (on the CPU the body runs eagerly)
        sampler.step(a)
    on_meta(sampler)
    for a in (walk, stand):
        sampler._buffers["actions"].copy_(a.to("meta"))
        reads = HostReads()
        with torch.inference_mode(), reads:
            sampler._graph_body(2)
        assert reads.seen == []
        assert sampler._buffers["out"].shape == (2, 1, *prompt.shape[2:])


@pytest.mark.parametrize("decode_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-channels-last"])
def test_graphed_decode_reads_nothing_on_the_host(decode_dtype):
    """The shipped decoder and the uint8 conversion, what CUDA replays as the decode's graph (`GraphedDecode`),
    read no value on the host either: a GPU step's one read is then the frames' copy to the host."""
    from worldsim.envs.world_model import load_world
    from worldsim.models.autoencoder import ChannelsLastDecode, to_uint8
    autoencoder = load_world(SHIPPED)[1].to("meta")
    decode = autoencoder.decode if decode_dtype == torch.float32 else ChannelsLastDecode(autoencoder, decode_dtype)
    c = autoencoder.config
    reads = HostReads()
    with torch.inference_mode(), reads:
        frames = to_uint8(decode(torch.zeros(3, c.latent_channels, c.height // c.downsample, c.width // c.downsample,
                                             device="meta")))
    assert reads.seen == []
    assert frames.shape == (3, c.height, c.width, 3) and frames.dtype == torch.uint8
