"""The batched Triton raycaster against the numba Renderer, under Triton's interpreter on CPU tensors.

The kernel works in float32 where the numba code works in float64, so a ray that grazes a voxel or texel
boundary may pick the neighbouring texel: frames must agree on average to well under one level and almost
every pixel within a few levels. Output buffers are poisoned before each launch, so a pixel the kernel
forgets to write cannot pass.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # also set in conftest.py, before anything imports triton

import math

import numpy as np
import pytest
import torch

from worldsim.engine import render_gpu
from worldsim.engine.blocks import AIR, BRICK, GLASS, GRASS, LEAVES, STONE, WATER
from worldsim.engine.render import Renderer, View
from worldsim.engine.render_gpu import BatchRenderer
from worldsim.engine.world import World
from worldsim.engine.worldgen import spawn_point

if not render_gpu.INTERPRET:
    pytest.skip("BatchRenderer tests run on CPU tensors and need TRITON_INTERPRET=1 before triton is imported",
                allow_module_level=True)

DEVICE = "cpu"
VIEW_DISTANCE = 16
FLOOR = 20
MEAN_LEVELS = 0.1      # mean |GPU - CPU| over every channel of a frame, in 0..255 levels (measured: <= 0.0001)
CLOSE_LEVELS = 2       # a pixel is close when no channel differs by more than this (measured: max 1)
CLOSE_FRACTION = 0.99  # at least this fraction of a frame's pixels are close (measured: >= 99.97% exact)


@pytest.fixture(autouse=True)
def poisoned_frames(monkeypatch):
    """Frames start as 0xA5 everywhere, so a pixel the kernel does not write differs from the CPU's."""
    def alloc(shape, dtype, device):
        return torch.full(shape, 0xA5, dtype=dtype, device=device)
    monkeypatch.setattr(render_gpu, "_alloc", alloc)


def terrain(seed: int) -> tuple[World, tuple[float, float, float]]:
    """A generated world loaded around its spawn, and the eye of a player standing there."""
    world = World(seed, view_distance=VIEW_DISTANCE)
    x, y, z = spawn_point(seed)
    world.ensure_loaded(x, z)
    return world, (x, y + 1.62, z)


def pool() -> World:
    """Air over a grass floor, with a pool of water three deep, a glass block and a leaf block by it."""
    world = World(seed=0, view_distance=VIEW_DISTANCE)
    world.ensure_loaded(0.5, 0.5)
    world.voxels[:] = AIR
    world.voxels[:, FLOOR, :] = GRASS
    for x in range(-6, 7):
        for z in range(3, 12):
            for y in range(FLOOR - 2, FLOOR + 1):
                world.voxels[x & world.mask, y, z & world.mask] = WATER
    world.voxels[2 & world.mask, FLOOR + 1, 2] = GLASS
    world.voxels[-2 & world.mask, FLOOR + 1, 2] = LEAVES
    return world


def scenes() -> dict[str, tuple[World, View]]:
    """Named (world, view) pairs covering terrain, two seeds, targets, water, glass, leaves, sky, sun and moon."""
    world0, eye0 = terrain(0)
    world1, eye1 = terrain(1)
    marked, eye_m = terrain(0)
    x, y, z = (math.floor(c) for c in eye_m)
    marked.set_block(x, y, z + 2, BRICK)
    water = pool()
    return {
        "terrain": (world0, View(eye=eye0, yaw=30.0, pitch=10.0)),
        "other seed": (world1, View(eye=eye1, yaw=200.0, pitch=0.0, selected_slot=3)),
        "target and cracks": (marked, View(eye=eye_m, yaw=0.0, pitch=5.0, target=(x, y, z + 2), crack_stage=6)),
        "into water": (water, View(eye=(0.5, FLOOR + 2.62, 0.5), yaw=10.0, pitch=35.0, time_of_day=0.3)),
        "underwater": (water, View(eye=(0.5, FLOOR - 0.5, 6.5), yaw=150.0, pitch=-10.0)),
        "sun": (water, View(eye=(0.5, FLOOR + 2.62, 0.5), yaw=0.0, pitch=-62.0)),
        "night and moon": (world0, View(eye=eye0, yaw=0.0, pitch=-40.0, time_of_day=0.75)),
        "dusk": (world1, View(eye=eye1, yaw=90.0, pitch=-5.0, time_of_day=0.48, selected_slot=8)),
    }


SCENES = ["terrain", "other seed", "target and cracks", "into water", "underwater", "sun", "night and moon", "dusk"]


def cpu_frames(width, height, pairs, hud=True) -> np.ndarray:
    renderer = Renderer(width, height, view_distance=VIEW_DISTANCE, hud=hud)
    return np.stack([renderer.render(world, view) for world, view in pairs])


def differences(got: torch.Tensor, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: mean |difference| in levels, and the fraction of pixels within CLOSE_LEVELS."""
    diff = np.abs(got.cpu().numpy().astype(int) - want.astype(int))
    return diff.mean(axis=(1, 2, 3)), (diff.max(axis=-1) <= CLOSE_LEVELS).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def batch_results():
    """All scenes rendered as one batch of 24×32 frames (two tiles down, the second partly outside) with HUD."""
    named = scenes()
    pairs = list(named.values())
    renderer = BatchRenderer(32, 24, view_distance=VIEW_DISTANCE, device=DEVICE)
    got = renderer.render([w for w, _ in pairs], [v for _, v in pairs])
    mean, close = differences(got, cpu_frames(32, 24, pairs))
    return {name: (mean[k], close[k]) for k, name in enumerate(named)}


@pytest.mark.parametrize("name", SCENES)
def test_matches_cpu_renderer(batch_results, name):
    mean, close = batch_results[name]
    assert mean < MEAN_LEVELS and close >= CLOSE_FRACTION, f"{name}: mean {mean:.3f} levels, {close:.2%} close"


def test_small_square_frames_without_hud_match():
    named = scenes()
    pairs = [named["target and cracks"], named["into water"], named["night and moon"]]
    got = BatchRenderer(16, 16, view_distance=VIEW_DISTANCE, hud=False, device=DEVICE).render(
        [w for w, _ in pairs], [v for _, v in pairs])
    assert got.shape == (3, 16, 16, 3) and got.dtype == torch.uint8
    mean, close = differences(got, cpu_frames(16, 16, pairs, hud=False))
    assert (mean < MEAN_LEVELS).all() and (close >= CLOSE_FRACTION).all(), (mean, close)


def test_every_pixel_is_written(monkeypatch):
    """Two launches into buffers poisoned with different values give the same frame."""
    world, eye = terrain(0)
    view = View(eye=eye, yaw=45.0, pitch=20.0)
    frames = []
    for poison in (0, 255):
        monkeypatch.setattr(render_gpu, "_alloc", lambda shape, dtype, device, p=poison: torch.full(
            shape, p, dtype=dtype, device=device))
        frames.append(BatchRenderer(20, 12, view_distance=VIEW_DISTANCE, device=DEVICE).render([world], [view]))
    assert torch.equal(frames[0], frames[1])


def test_edits_and_new_worlds_reach_the_device_copy():
    """set_block after a first frame changes the next one as on the CPU, above the old terrain top too."""
    world = pool()
    view = View(eye=(0.5, FLOOR + 2.62, 0.5), yaw=0.0, pitch=-70.0)
    renderer = BatchRenderer(16, 16, view_distance=VIEW_DISTANCE, device=DEVICE)
    before = renderer.render([world, world], [view, view])    # one World twice: both copies must follow it
    world.set_block(0, FLOOR + 9, 2, BRICK)                    # high above everything else, overhead
    world.set_block(1, FLOOR + 9, 2, STONE)
    after = renderer.render([world, world], [view, view])
    mean, close = differences(after, cpu_frames(16, 16, [(world, view)] * 2))
    assert not torch.equal(before[0], after[0])
    assert (mean < MEAN_LEVELS).all() and (close >= CLOSE_FRACTION).all()
    other, eye = terrain(1)                            # another World object in the same place of the batch
    view = View(eye=eye, yaw=0.0, pitch=0.0)
    mean, close = differences(renderer.render([other], [view]), cpu_frames(16, 16, [(other, view)]))
    assert mean[0] < MEAN_LEVELS and close[0] >= CLOSE_FRACTION


def test_batched_view_constants():
    """The per-view constants BatchRenderer packs: camera bases follow actions.look_direction and are
    orthonormal; lighting is full at noon, dimmest at midnight, tinted under water."""
    from worldsim.engine import actions, render
    yaw, pitch = np.array([0.0, 30.0, -100.0, 271.5]), np.array([0.0, -90.0, 45.0, 89.0])
    forward, right, up = render.camera_bases(yaw, pitch)
    for k in range(len(yaw)):
        np.testing.assert_allclose(forward[k], actions.look_direction(yaw[k], pitch[k]), atol=1e-12)
        basis = np.stack([forward[k], right[k], up[k]])
        np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
        assert up[k][1] >= -1e-12  # up never points below the horizon for |pitch| <= 90
    light = render.light_vectors(np.array([0.25, 0.75, 0.25]), np.array([False, False, True]))
    assert light[0, render.L_LIGHT] == pytest.approx(1.0)
    assert light[1, render.L_LIGHT] == pytest.approx(render.MIN_LIGHT)
    np.testing.assert_allclose(light[0, render.L_TINT:render.L_TINT + 3], 1.0)
    np.testing.assert_allclose(light[2, render.L_TINT:render.L_TINT + 3], render.UNDERWATER_TINT)
    assert light[0, render.L_SUN_DIR + 1] > 0.9 > -0.9 > light[1, render.L_SUN_DIR + 1]


def test_bad_input_is_rejected():
    world, eye = terrain(0)
    view = View(eye=eye, yaw=0.0, pitch=0.0)
    renderer = BatchRenderer(8, 8, view_distance=VIEW_DISTANCE, device=DEVICE)
    with pytest.raises(ValueError, match="one view per world"):
        renderer.render([world, world], [view])
    with pytest.raises(ValueError, match="at least one"):
        renderer.render([], [])
    with pytest.raises(ValueError, match="crack_stage"):
        renderer.render([world], [View(eye=eye, yaw=0.0, pitch=0.0, target=(0, 0, 0), crack_stage=10)])
    with pytest.raises(ValueError, match="eye"):
        renderer.render([world], [View(eye=(0.0, float("nan"), 0.0), yaw=0.0, pitch=0.0)])
    with pytest.raises(ValueError, match="same voxel shape"):
        renderer.render([world, World(0, view_distance=48)], [view, view])
    with pytest.raises(ValueError, match="width"):
        BatchRenderer(0, 8, device=DEVICE)
