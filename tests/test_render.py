"""The raycaster and HUD: frame format, determinism, what pixels show, and bad input."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldsim.engine.blocks import AIR, BRICK, GLASS, GRASS, LEAVES, NUM_BLOCKS, STONE, WATER
from worldsim.engine.hud import hud_mask
from worldsim.engine.render import Renderer, View, light_vector, sky_colour
from worldsim.engine.textures import ATLAS, CRACKS, FACE_SIDE, FACE_TOP
from worldsim.engine.world import World

FLOOR = 20          # the synthetic worlds are air with a grass floor at this height


def flat_world(floor: int | None = FLOOR) -> World:
    """A loaded world around the origin, emptied to air (with an optional grass floor) whatever worldgen made."""
    world = World(seed=0, view_distance=16)
    world.ensure_loaded(0.5, 0.5)
    world.voxels[:] = AIR
    if floor is not None:
        world.voxels[:, floor, :] = GRASS
    return world


def eye_view(**kwargs) -> View:
    return View(eye=(0.5, FLOOR + 2.62, 0.5), yaw=0.0, pitch=0.0, **kwargs)   # looks along +z


def test_frame_format():
    frame = Renderer(48, 32).render(flat_world(), eye_view())
    assert frame.shape == (32, 48, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous


def test_deterministic_within_and_across_processes():
    world = flat_world()
    world.set_block(0, FLOOR + 2, 4, BRICK)
    view = eye_view(target=(0, FLOOR + 2, 4), crack_stage=3, time_of_day=0.1)
    a = Renderer(40, 30).render(world, view)
    b = Renderer(40, 30).render(world, view)
    assert np.array_equal(a, b) and a is not b
    code = (
        "import hashlib, numpy as np\n"
        "from tests.test_render import flat_world, eye_view, FLOOR\n"
        "from worldsim.engine.blocks import BRICK\n"
        "from worldsim.engine.render import Renderer\n"
        "w = flat_world(); w.set_block(0, FLOOR + 2, 4, BRICK)\n"
        "f = Renderer(40, 30).render(w, eye_view(target=(0, FLOOR + 2, 4), crack_stage=3, time_of_day=0.1))\n"
        "print(hashlib.sha256(f.tobytes()).hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == hashlib.sha256(a.tobytes()).hexdigest()


def test_block_in_front_changes_centre_pixel():
    world = flat_world()
    renderer = Renderer(33, 33, hud=False)
    before = renderer.render(world, eye_view())
    world.set_block(0, FLOOR + 2, 3, BRICK)
    after = renderer.render(world, eye_view())
    assert not np.array_equal(before[16, 16], after[16, 16])
    assert after[16, 16, 0] > after[16, 16, 2]       # brick is red


def test_straight_up_is_sky():
    view = View(eye=(0.5, FLOOR + 2.62, 0.5), yaw=0.0, pitch=-90.0)
    frame = Renderer(33, 33, hud=False).render(flat_world(), view)
    expected = np.rint(np.array(sky_colour(0.0, 1.0, 0.0, light_vector(0.25, False), True)) * 255)
    assert np.abs(frame[16, 16].astype(int) - expected).max() <= 1
    assert frame[16, 16, 2] > frame[16, 16, 0]        # a blue day sky


def _wall_pixel(distance: int) -> np.ndarray:
    world = flat_world()
    for x in range(-12, 13):
        for y in range(FLOOR + 1, FLOOR + 6):
            world.set_block(x, y, distance, STONE)
    return Renderer(33, 33, hud=False).render(world, eye_view())[16, 16].astype(int)


def test_fog_pulls_far_walls_towards_the_sky():
    sky = np.rint(np.array(sky_colour(0.0, 0.0, 1.0, light_vector(0.25, False), False)) * 255)
    near, far = _wall_pixel(3), _wall_pixel(13)
    assert np.abs(far - sky).sum() < np.abs(near - sky).sum()


def test_outline_and_cracks_touch_only_the_target():
    world = flat_world()
    target = (0, FLOOR + 2, 4)
    renderer = Renderer(64, 64, hud=False)
    empty = renderer.render(world, eye_view())
    world.set_block(*target, STONE)
    plain = renderer.render(world, eye_view())
    footprint = np.any(plain != empty, axis=-1)        # the pixels that show the target block
    outlined = renderer.render(world, eye_view(target=target))
    changed = np.any(outlined != plain, axis=-1)
    assert changed.any() and not (changed & ~footprint).any()
    counts = []
    for stage in (0, 9):
        cracked = renderer.render(world, eye_view(target=target, crack_stage=stage))
        changed = np.any(cracked != outlined, axis=-1)
        assert changed.any() and not (changed & ~footprint).any()
        counts.append(changed.sum())
    assert counts[1] > counts[0]


@pytest.mark.parametrize("size", [(128, 128), (640, 360), (20, 12)])
def test_hud_changes_only_hud_pixels(size):
    width, height = size
    world = flat_world()
    view = eye_view(selected_slot=4)
    with_hud = Renderer(width, height).render(world, view)
    without = Renderer(width, height, hud=False).render(world, view)
    changed = np.any(with_hud != without, axis=-1)
    mask = hud_mask(width, height)
    assert changed.any() and not (changed & ~mask).any()
    assert changed[height // 2, width // 2]                     # the crosshair
    assert changed[height - max(2, height // 8):].any()        # the hotbar at the bottom
    other = Renderer(width, height).render(world, eye_view(selected_slot=0))
    assert not np.array_equal(other, with_hud)


@pytest.mark.parametrize("kwargs", [dict(width=0, height=64), dict(width=64, height=0)])
def test_zero_resolution_is_rejected(kwargs):
    name = "width" if kwargs["width"] == 0 else "height"
    with pytest.raises(ValueError, match=name):
        Renderer(**kwargs)


@pytest.mark.parametrize("fov", [0.0, 180.0, -10.0])
def test_bad_fov_is_rejected(fov):
    with pytest.raises(ValueError, match="fov"):
        Renderer(64, 64, fov=fov)


def test_any_voxel_layout_renders():
    """Overhangs, floating blocks, a cave, see-through blocks, eyes inside blocks and outside the world."""
    world = flat_world()
    for x in range(-3, 4):
        for z in range(2, 6):
            world.set_block(x, FLOOR + 4, z, STONE)               # an overhang
    world.set_block(2, FLOOR + 9, 3, BRICK)                        # floating
    world.set_block(-2, FLOOR + 1, 3, GLASS)
    world.set_block(-1, FLOOR + 1, 3, LEAVES)
    world.set_block(1, FLOOR, 3, WATER)
    renderer = Renderer(32, 24)
    for eye, pitch in (((0.5, FLOOR + 2.6, 0.5), 0.0), ((0.5, FLOOR + 2.6, 3.5), -90.0), ((0.5, 300.0, 0.5), 90.0),
                       ((0.5, -5.0, 0.5), -90.0), ((2.5, FLOOR + 9.5, 3.5), 30.0), ((0.5, FLOOR + 0.5, 0.5), 0.0)):
        for yaw in (0.0, 135.0, -100.0):
            frame = renderer.render(world, View(eye=eye, yaw=yaw, pitch=pitch))
            assert frame.shape == (24, 32, 3)


def test_underwater_is_tinted_blue():
    world = flat_world()
    for x in range(-16, 17):
        for z in range(-16, 17):
            for y in range(FLOOR + 1, FLOOR + 4):
                world.voxels[x & world.mask, y, z & world.mask] = WATER
    frame = Renderer(32, 32, hud=False).render(world, eye_view())
    mean = frame.reshape(-1, 3).mean(axis=0)
    assert mean[2] > mean[0] + 40 and mean[2] > mean[1]


def test_night_is_darker_than_day():
    world = flat_world()
    renderer = Renderer(32, 32, hud=False)
    day = renderer.render(world, eye_view(time_of_day=0.25)).mean()
    night = renderer.render(world, eye_view(time_of_day=0.75)).mean()
    assert night < 0.5 * day


def test_textures():
    assert ATLAS.shape == (NUM_BLOCKS, 3, 16, 16, 4) and ATLAS.dtype == np.uint8 and ATLAS.flags.c_contiguous
    distinct = {ATLAS[b, f].tobytes() for b in range(1, NUM_BLOCKS) for f in range(3)}
    assert len(distinct) >= 12
    assert not np.array_equal(ATLAS[GRASS, FACE_TOP], ATLAS[GRASS, FACE_SIDE])
    assert (ATLAS[LEAVES, ..., 3] == 0).any() and (ATLAS[LEAVES, ..., 3] == 255).any()
    assert (ATLAS[GLASS, ..., 3] == 0).mean() > 0.5
    assert 0 < ATLAS[WATER, ..., 3].min() < 255
    assert all((CRACKS[i] <= CRACKS[i + 1]).all() for i in range(len(CRACKS) - 1))
