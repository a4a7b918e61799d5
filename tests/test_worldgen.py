"""Terrain generation: determinism, seamless columns, biomes and their blocks, water, spawn."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldsim.engine import worldgen as wg
from worldsim.engine.blocks import (
    AIR, BEDROCK, GRASS, GRAVEL, LEAVES, LOG, SAND, SANDSTONE, SNOW, SOLID, STONE, WATER,
)

SEEDS = (0, 1, 2, 3)
_COLUMNS = ((0, 0), (-3, 5), (7, -2), (-40, -41))


def _digest(seed: int) -> str:
    columns = [wg.generate_column(seed, cx, cz) for cx, cz in _COLUMNS]
    return hashlib.sha256(b"".join(c.tobytes() for c in columns)).hexdigest()


def _tops(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, block) of the topmost non-air block of every (x, z)."""
    y = region.shape[1] - 1 - np.argmax(region[:, ::-1, :] != AIR, axis=1)
    return y, np.take_along_axis(region, y[:, None, :], 1)[:, 0, :]


@pytest.fixture(scope="module")
def biome_samples():
    """For each seed, a coarse sample of biome names within ±300 blocks of the origin."""
    return {seed: {(x, z): wg.biome_at(seed, x, z) for x in range(-300, 301, 12) for z in range(-300, 301, 12)}
            for seed in SEEDS}


def test_column_shape_dtype_and_bedrock():
    column = wg.generate_column(0, 2, -3)
    assert column.shape == (wg.CHUNK, wg.WORLD_HEIGHT, wg.CHUNK) and column.dtype == np.uint8
    assert (column[:, 0, :] == BEDROCK).all()
    assert (column[:, 1:, :] != BEDROCK).all()
    small = wg.generate_column(0, 2, -3, height=64)
    assert small.shape == (16, 64, 16) and (small[:, 0, :] == BEDROCK).all()


def test_same_seed_is_identical_in_process_and_subprocess():
    assert np.array_equal(wg.generate_column(5, -1, 2), wg.generate_column(5, -1, 2))
    repo = Path(wg.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    code = ("import hashlib; from worldsim.engine.worldgen import generate_column; print(hashlib.sha256(b''.join("
            f"generate_column(11, cx, cz).tobytes() for cx, cz in {_COLUMNS})).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo, env=env)
    assert out.stdout.strip() == _digest(11)


def test_different_seeds_differ():
    assert _digest(0) != _digest(1) and _digest(0) != _digest(2)


def test_columns_are_seamless_with_a_larger_region():
    # A region generated in one piece equals its columns generated one by one, trees and caves included.
    for seed, (x0, z0) in ((0, (-48, -48)), (3, (160, -320)), (1, (-304, 208))):
        region = wg.generate_region(seed, x0, z0, 48, 48)
        for a in range(3):
            for b in range(3):
                column = wg.generate_column(seed, x0 // 16 + a, z0 // 16 + b)
                assert np.array_equal(region[16 * a:16 * a + 16, :, 16 * b:16 * b + 16], column)


def test_canopies_cross_column_borders_identically():
    # Find trunks within the canopy radius of a column border and check that their leaves reach across it.
    seed, x0, z0 = 3, 160, -320   # a forest
    region = wg.generate_region(seed, x0, z0, 48, 48)
    crossing = 0
    for x, z in zip(*np.nonzero((region == LOG).any(axis=1))):
        local_x = (x0 + x) % wg.CHUNK
        if local_x < wg.TREE_RADIUS and x >= wg.CHUNK:   # trunk within canopy reach right of a column border
            border = x - local_x   # first x of the trunk's column; x = border - 1 lies in the column to its left
            if (region[border - 1, :, max(z - 2, 0):z + 3] == LEAVES).any():
                crossing += 1
    assert crossing >= 3


def test_region_rejects_unaligned_corners():
    with pytest.raises(ValueError):
        wg.generate_region(0, 3, 0, 16, 16)


def test_every_biome_appears_near_the_origin(biome_samples):
    wanted = {"plains", "forest", "desert", "snowy_mountains", "water"}
    for seed, samples in biome_samples.items():
        found = set(samples.values())
        assert len(wanted & found) >= 4, (seed, found)
    assert wanted <= set().union(*(set(s.values()) for s in biome_samples.values()))


@pytest.mark.parametrize("biome", ["plains", "forest", "desert", "snowy_mountains", "water", "beach"])
def test_biomes_have_their_surface_blocks(biome_samples, biome):
    seed = next(s for s in SEEDS if biome in biome_samples[s].values())
    found = 0
    for (x, z), name in biome_samples[seed].items():
        if name != biome:
            continue
        ground = wg.ground_height(seed, x, z)
        column = wg.generate_column(seed, x // 16, z // 16)
        stack = column[x % 16, :, z % 16]
        top = stack[ground]
        if biome in ("plains", "forest"):
            assert top in (GRASS, STONE), (x, z, top)   # stone only on steep slopes
        elif biome == "desert":
            assert top == SAND and SANDSTONE in stack[ground - 9:ground]
        elif biome == "snowy_mountains":
            assert top in (SNOW, STONE) and stack[ground - 1] == STONE
        elif biome == "water":
            assert top in (SAND, GRAVEL) and (stack[ground + 1:wg.SEA_LEVEL + 1] == WATER).all()
            assert stack[wg.SEA_LEVEL + 1] == AIR
        elif biome == "beach":
            assert top == SAND
        found += 1
        if found == 25:
            break
    assert found > 0


def test_forests_have_trees_plains_few_deserts_none():
    def trees_per_column(seed, name):
        counts = []
        for seed_ in SEEDS:
            for cx in range(-20, 20, 3):
                for cz in range(-20, 20, 3):
                    x, z = cx * 16 + 8, cz * 16 + 8
                    if all(wg.biome_at(seed_, x + dx, z + dz) == name for dx in (-8, 7) for dz in (-8, 7)):
                        column = wg.generate_column(seed_, cx, cz)
                        counts.append(((column == LOG).any(axis=1)).sum())
        return np.mean(counts) if counts else None

    forest, plains, desert = (trees_per_column(0, b) for b in ("forest", "plains", "desert"))
    assert forest is not None and forest >= 4
    assert plains is not None and plains < 1.5
    assert desert is not None and desert == 0


def test_water_fills_to_sea_level_with_sand_shores():
    for seed in (0, 2):
        region = wg.generate_region(seed, -256, -256, 512, 512)
        y, top = _tops(region)
        water = top == WATER
        assert water.any() and (y[water] == wg.SEA_LEVEL).all()
        assert not (region[:, wg.SEA_LEVEL + 1:, :] == WATER).any()
        # Below every water surface there is only water down to the floor.
        xs, zs = np.nonzero(water)
        for x, z in zip(xs[::97], zs[::97]):
            stack = region[x, :, z]
            floor = np.nonzero(stack[:wg.SEA_LEVEL + 1] != WATER)[0].max()
            assert (stack[floor + 1:wg.SEA_LEVEL + 1] == WATER).all() and SOLID[stack[floor]]
        # Dry ground next to water is sand, except on snowy mountains and under canopies.
        next_to_water = np.zeros_like(water)
        next_to_water[1:] |= water[:-1]
        next_to_water[:-1] |= water[1:]
        next_to_water[:, 1:] |= water[:, :-1]
        next_to_water[:, :-1] |= water[:, 1:]
        shore = next_to_water & ~water & ~np.isin(top, (SNOW, STONE, LEAVES, LOG))
        assert shore.sum() > 100
        assert (top[shore] == SAND).mean() > 0.95


def test_mountains_are_tall_and_terrain_stays_in_bounds():
    heights = [wg.ground_height(0, x, z) for x in range(-320, 321, 8) for z in range(-320, 321, 8)]
    assert max(heights) >= 85
    assert max(heights) <= wg.MAX_TERRAIN
    assert min(heights) >= 1


@pytest.mark.parametrize("seed", SEEDS)
def test_spawn_is_on_dry_solid_ground_with_air_above(seed):
    x, y, z = wg.spawn_point(seed)
    assert x % 1 == 0.5 and z % 1 == 0.5 and y == int(y)
    assert abs(x) < 128 and abs(z) < 128
    bx, by, bz = int(np.floor(x)), int(y), int(np.floor(z))
    column = wg.generate_column(seed, bx // 16, bz // 16)
    below = column[bx % 16, by - 1, bz % 16]
    assert SOLID[below] and below not in (LOG, LEAVES, WATER)
    assert by - 1 >= wg.SEA_LEVEL
    assert column[bx % 16, by, bz % 16] == AIR and column[bx % 16, by + 1, bz % 16] == AIR
    assert wg.spawn_point(seed) == (x, y, z)
