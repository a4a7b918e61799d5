"""The view memory: its panorama renders the engine's view after turns, fills what the camera warp reveals,
and brings back the view a player turned away from."""
import dataclasses

import numpy as np
import pytest
import torch

from worldsim.models import camera as warp
from worldsim.models import dynamics, objective
from worldsim.models.dynamics import ACTION_DIM, DynamicsConfig, DynamicsModel
from worldsim.view_memory import ViewMemory

from test_dynamics import one_thread, tiny_config  # noqa: F401  (one_thread: autouse fixture)


def camera(pitch: float, yaw: float, batch: int = 1):
    """Model-order action vectors (B, 1, 25) of a pure camera move in degrees."""
    a = torch.zeros(batch, 1, ACTION_DIM)
    a[..., warp._CAMERA_PITCH] = pitch / warp.CAMERA_MAX_DEGREES
    a[..., warp._CAMERA_YAW] = yaw / warp.CAMERA_MAX_DEGREES
    return a


def test_panorama_renders_the_engines_view_after_turns():
    """The engine's first frame painted into the panorama, then the camera turned (yaw, pitch, both, and back)
    without painting again: where the panorama holds the new view, it is the engine's new frame up to
    resampling, far closer than the panorama seen from a view turned the wrong way."""
    from worldsim.engine import actions
    from worldsim.engine.env import EngineConfig, VoxelEnv
    env = VoxelEnv(EngineConfig())
    first, _ = env.reset(seed=3)
    hud = 16
    config = DynamicsConfig(latent_channels=3, latent_height=128, latent_width=128, camera_warp=env.config.fov,
                            warp_keep_rows=hud, view_memory=True, view_memory_frames=1000)
    memory = ViewMemory(config, 1)
    rgb = lambda frame: torch.from_numpy(frame).permute(2, 0, 1)[None, None].float()
    memory.write(rgb(first), memory.views(camera(0, 0)))

    def score(views, frame):
        fill, valid = memory.render(views)
        valid = valid[0, 0, 0].numpy().copy()
        valid[-hud:] = False
        err = fill[0, 0].permute(1, 2, 0).numpy() - frame.astype(np.float32)
        return 10 * np.log10(255.0 ** 2 / (err[valid] ** 2).mean()), valid.mean()

    moves = [(0, 10)] * 3 + [(8, 0)] * 3 + [(0, -10)] * 5 + [(-10, 5)] * 3
    for pitch, yaw in moves:
        new, *_ = env.step({**actions.noop(), "camera": np.array([pitch, yaw], np.float32)})
        views = memory.views(camera(pitch, yaw))
        right, covered = score(views, new)
        wrong, _ = score(-views, new)  # turned the other way in both
        assert covered > 0.2 and right > 21 and right > wrong + 3, (pitch, yaw, right, wrong, covered)
        memory.view.copy_(views[:, -1])  # turn without painting: the panorama holds the first frame alone
    assert abs(float(memory.view[0, 0]) - np.radians(-6.0)) < 1e-5  # pitch 24° down, then 30° up
    assert abs(float(memory.view[0, 1]) - np.radians(-5.0)) < 1e-5


def test_warp_fills_only_what_the_turn_reveals():
    g = torch.Generator().manual_seed(0)
    prev = torch.randn(2, 1, 3, 8, 8, generator=g)
    fill = torch.randn(2, 1, 3, 8, 8, generator=g)
    turn = camera(0, 20, batch=2)
    plain = warp.warp_previous(prev, turn, 70.0, keep_rows=1)
    none = torch.zeros(2, 1, 1, 8, 8, dtype=torch.bool)
    assert torch.equal(warp.warp_previous(prev, turn, 70.0, 1, (fill, none)), plain)
    filled = warp.warp_previous(prev, turn, 70.0, 1, (fill, ~none))
    changed = (filled != plain).any(2)[:, 0]  # (B, h, w)
    # a turn right reveals the right-hand columns; the HUD row stays the old frame's
    assert changed[:, :-1, -1].all() and not changed[:, :, :4].any() and not changed[:, -1].any()
    torch.testing.assert_close(filled[..., :-1, -1], fill[..., :-1, -1])
    with pytest.raises(ValueError, match="fill"):
        warp.warp_previous(prev, turn, 70.0, 1, (fill[:, :, :2], ~none))
    model = DynamicsModel(tiny_config(latent_height=8, latent_width=8, camera_warp=0.0))
    with pytest.raises(ValueError, match="camera_warp"):
        model(torch.zeros(2, 1, 16, 8, 8), turn, torch.ones(2, 1), fill=(torch.zeros(2, 1, 16, 8, 8), ~none))
    with pytest.raises(ValueError, match="view_memory"):
        tiny_config(camera_warp=0.0, view_memory=True)
    with pytest.raises(ValueError, match="view_memory_frames"):
        tiny_config(camera_warp=70.0, view_memory=True, view_memory_frames=0)


def smooth_latents(shape, generator):
    """Random latents without the pixel-level noise that resampling cannot keep: bilinear upsampled 4x."""
    B, P, C, h, w = shape
    coarse = torch.randn(B * P, C, h // 4, w // 4, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return fine.reshape(shape)


@pytest.mark.parametrize("graphs", [False, True], ids=["plain", "graphed"])
def test_turning_away_and_back_returns_to_the_view(graphs):
    """Untrained (head at zero) with a tiny change variance, the residual model's frame is its guess. Turned
    40° right and back, the sampler with the view memory returns to the view it left; without it, the columns
    the turn pushed out of view come back as the repeated edge."""
    from worldsim.sampling import Sampler
    torch.manual_seed(0)
    config = tiny_config(context_frames=4, change_var=1e-9, context_noise=0.0, camera_warp=70.0, warp_keep_rows=2,
                         view_memory=True)
    g = torch.Generator().manual_seed(0)
    prompt = smooth_latents((1, 2, config.latent_channels, 16, 16), g)
    errors = {}
    for memory in (True, False):
        model = DynamicsModel(dataclasses.replace(config, view_memory=memory)).eval()
        sampler = Sampler(model, steps=2, graphs=graphs)
        sampler.reset(prompt, torch.zeros(1, 1, ACTION_DIM))
        for yaw in [10.0] * 4 + [-10.0] * 4:
            frame = sampler.step(camera(0, yaw)[:, 0])
        errors[memory] = float((frame - prompt[:, -1:]).abs().mean())
    scale = float(prompt.abs().mean())
    assert errors[True] < 0.2 * scale and errors[False] > 3 * errors[True], (errors, scale)  # measured: 0.13, 3.9x


def test_training_clips_paint_only_their_context_frames():
    """In training the panorama is painted with the frames at context levels, the kind the sampler paints:
    a clip turned away and back gets its first view back in its fill where that frame was clean context, and
    not where it was a noisy target."""
    config = tiny_config(camera_warp=70.0, warp_keep_rows=2, view_memory=True, context_noise_max=0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, config.latent_channels, 16, 16, generator=g)
    moves = torch.cat([camera(0, 0, 2)] + [camera(0, 20, 2)] * 3 + [camera(0, -20, 2)] * 3, dim=1)  # (2, 7, 25)
    levels = torch.full((2, 7), 0.1)
    levels[1, 0] = 0.9  # the second clip's first frame is a target
    fill, valid = objective.clip_view_fill(config, x, levels, moves)
    assert fill.shape == x.shape and valid.shape == (2, 7, 1, 16, 16)
    left = valid[:, -1, 0, 1:-3, 1:4]  # the last frame, back at the first view: its left columns only frame 0 saw
    assert left[0].all() and not left[1].any()
    model = DynamicsModel(config)
    loss, _ = objective.flow_matching_loss(model, config, x, torch.rand(2, 7, ACTION_DIM, generator=g), g)
    loss.backward()
    assert torch.isfinite(loss) and model.prev_embed.weight.grad is not None


def test_frames_that_kept_their_view_paint_only_what_was_new():
    """only_new (keep_view's frames): a frame paints the cells the panorama did not hold in its last
    view_memory_frames frames, and leaves the rest (and their age) as they were; other frames paint all."""
    config = tiny_config(camera_warp=70.0, warp_keep_rows=0, view_memory=True, view_memory_frames=5)
    memory = ViewMemory(config, 1)
    first = torch.ones(1, 1, config.latent_channels, 16, 16)
    second = 2 * first
    yes = torch.ones(1, 1, dtype=torch.bool)
    memory.write(first, memory.views(camera(0, 0)))
    held = memory.age <= memory.max_age
    memory.write(second, memory.views(camera(0, 0)), only_new=yes)  # the same view: nothing new
    values = lambda cells: memory.panorama[cells.expand_as(memory.panorama)]
    assert (values(held) - 1).abs().max() < 1e-5 and (memory.age[held] == 1).all()
    memory.write(second, memory.views(camera(0, 30)), only_new=yes)  # 30° right: new cells on the right
    painted = memory.age == 0
    assert painted.any() and not (painted & held).any()
    assert (values(painted) - 2).abs().max() < 1e-5
    memory.write(second, memory.views(camera(0, -30)), only_new=~yes)  # back, painting all it sees
    assert (values(held) - 2).abs().max() < 1e-5


def test_frames_keep_their_view_standing_or_turning_fast():
    """keeps_view: no button held and no camera move, or a turn faster than idle_turn; not a slow turn (it takes
    the idle start) nor anything that holds a button."""
    c = tiny_config(camera_warp=70.0, keep_view=True, idle_turn=2.0)
    actions = torch.zeros(1, 6, dynamics.ACTION_DIM)
    actions[0, 1, 16] = 0.1    # 1° right: slow
    actions[0, 2, 15] = -0.2   # 2° up: slow, at the limit
    actions[0, 3, 16] = 1.0    # 10° right: fast
    actions[0, 4, 11] = 1.0    # walking
    actions[0, 5, 15:17] = torch.tensor([0.1, 0.5])  # 5° right and 1° down: fast
    assert warp.keeps_view(c, actions).tolist() == [[True, False, False, True, False, True]]


def test_known_view_is_what_a_turn_keeps():
    """known_view: standing, the previous frame itself; turning, the previous frame turned where it holds the
    pixel (the revealed columns unknown), or the view memory's fill where valid; holding a button, nothing."""
    g = torch.Generator().manual_seed(0)
    prev = torch.randn(2, 1, 3, 8, 8, generator=g)
    fill = torch.randn(2, 1, 3, 8, 8, generator=g)
    valid = torch.zeros(2, 1, 1, 8, 8, dtype=torch.bool)
    valid[..., :, -4:] = True  # the memory holds the right half
    view, known = warp.known_view(prev, camera(0, 0, 2), 70.0, 1)
    torch.testing.assert_close(view, prev)
    assert known.all()
    view, known = warp.known_view(prev, camera(0, 0, 2), 70.0, 1, (fill, valid))
    torch.testing.assert_close(view, prev)  # standing: the frame as it is, not the panorama's resampling
    assert known.all()
    turn = camera(0, 20, 2)
    view, known = warp.known_view(prev, turn, 70.0, 1)
    torch.testing.assert_close(view, warp.warp_previous(prev, turn, 70.0, 1))
    assert not known[..., :-1, -1].any() and known[..., :, :4].all() and known[..., -1, :].all()  # HUD row kept
    view, known = warp.known_view(prev, turn, 70.0, 1, (fill, valid))
    assert known.all() and torch.equal(view[..., :-1, -4:], fill[..., :-1, -4:])
    torch.testing.assert_close(view[..., -1, :], prev[..., -1, :])  # the HUD row is the frame's, not the memory's
    walk = turn.clone()
    walk[..., 11] = 1.0
    assert not warp.known_view(prev, walk, 70.0, 1, (fill, valid))[1].any()
    slow = torch.zeros(2, 1, dtype=torch.bool)  # keeps_view says which frames keep
    assert not warp.known_view(prev, turn, 70.0, 1, (fill, valid), keep=slow)[1].any()
    with pytest.raises(ValueError, match="keep_view"):
        tiny_config(camera_warp=0.0, keep_view=True)
    with pytest.raises(ValueError, match="keep_view"):
        tiny_config(camera_warp=70.0, keep_view=True, chunk_frames=2)
