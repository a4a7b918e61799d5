"""Toroidal world storage: loading, edits that survive unloading, and agreement with the generator."""
import numpy as np
import pytest

from worldsim.engine.blocks import AIR, BEDROCK, BRICK, GLASS
from worldsim.engine.world import CHUNK, World
from worldsim.engine.worldgen import generate_column


def test_loaded_region_matches_the_generator():
    world = World(seed=3, view_distance=16)
    world.ensure_loaded(0.5, 0.5)
    for cx, cz in [(-1, -1), (0, 0), (1, -1)]:
        column = generate_column(3, cx, cz, world.height)
        for x, y, z in [(0, 10, 0), (5, 40, 9), (15, 60, 15)]:
            assert world.get_block(cx * CHUNK + x, y, cz * CHUNK + z) == column[x, y, z]


def test_edits_survive_unload_and_reload():
    world = World(seed=1, view_distance=16)
    world.ensure_loaded(0.5, 0.5)
    world.set_block(3, 70, -4, BRICK)
    world.set_block(-20, 71, 5, GLASS)
    world.ensure_loaded(10_000.5, 0.5)  # far away: the slots now hold other columns
    assert not world.is_loaded(0, -1)
    assert world.get_block(3, 70, -4) == BRICK  # read from the generator plus the edit
    world.ensure_loaded(0.5, 0.5)
    assert world.is_loaded(0, -1)
    assert world.voxels[3 & world.mask, 70, -4 & world.mask] == BRICK
    assert world.get_block(-20, 71, 5) == GLASS


def test_set_edits_replaces_every_edit():
    world = World(seed=1, view_distance=16)
    world.ensure_loaded(0.5, 0.5)
    before = world.get_block(2, 75, 2)
    world.set_block(2, 75, 2, BRICK)
    world.set_edits([(1, 76, 1, GLASS)])
    assert world.get_block(2, 75, 2) == before
    assert world.get_block(1, 76, 1) == GLASS
    assert world.get_edits() == [(1, 76, 1, GLASS)]


def test_outside_the_height_range():
    world = World(seed=0, view_distance=16)
    assert world.get_block(0, -1, 0) == BEDROCK
    assert world.get_block(0, world.height, 0) == AIR
    with pytest.raises(ValueError, match="outside the world"):
        world.set_block(0, world.height, 0, BRICK)
    with pytest.raises(ValueError, match="view_distance"):
        World(seed=0, view_distance=0)


def test_storage_covers_the_view_distance():
    for view in (16, 48, 64):
        world = World(seed=0, view_distance=view)
        assert world.size >= 2 * view + 2 * CHUNK  # a ray of length view never wraps onto stale columns
        assert np.log2(world.size).is_integer()


def test_dirty_slots_name_every_change():
    world = World(seed=0, view_distance=16)
    world.ensure_loaded(0.5, 0.5)
    assert len(world.drain_dirty_slots()) == 9
    assert world.drain_dirty_slots() == []
    world.set_block(-3, 80, 20, BRICK)
    assert world.drain_dirty_slots() == [((-1) % world.slots, 1)]
