"""Procedural terrain: biomes, heights, caves and trees, generated per 16×16 column from a seed.

Every value is a pure function of (seed, world x, y, z): integer hashing feeds gradient noise, so a column
is identical whichever order columns are made in, in any process. Biomes come from smooth climate fields
(temperature, moisture, continentalness, lakes); the terrain height is the biome heights blended by smooth
weights, so biome borders have no cliffs. Trees sit on a jittered grid decided by a hash of the tree's own
cell, and a column also draws the trees rooted in its neighbours, so canopies match across column borders.
"""
import math

import numpy as np
from numba import njit

from worldsim.engine.blocks import (
    AIR, BEDROCK, DIRT, GRASS, GRAVEL, LEAVES, LOG, SAND, SANDSTONE, SNOW, SOLID, STONE, WATER,
)

CHUNK = 16          # blocks per column side
WORLD_HEIGHT = 128  # blocks, y in [0, WORLD_HEIGHT)
SEA_LEVEL = 44      # water fills every air block at y <= SEA_LEVEL that lies above the terrain
MAX_TERRAIN = 104   # highest possible ground block (mountain peaks); trees add at most TREE_TOP above
_PEAK_KNEE = 88      # heights above this are compressed smoothly towards MAX_TERRAIN

# Biome ids: the four land biomes blend by weight; water and beach are where the blended ground lies.
PLAINS, FOREST, DESERT, SNOWY, WATER_BIOME, BEACH = range(6)
BIOME_NAMES = ("plains", "forest", "desert", "snowy_mountains", "water", "beach")

# Noise salts: one independent field per use.
_S_CONT, _S_TEMP, _S_MOIST, _S_LAKE, _S_HILL, _S_RIDGE, _S_DUNE, _S_DETAIL, _S_CAVE1, _S_CAVE2, _S_TREE, \
    _S_JITTER = range(12)

# Climate scales in blocks: a biome spans a few hundred blocks, so a short walk meets several.
_CONT_SCALE = 700.0
_CLIMATE_SCALE = 320.0
_LAKE_SCALE = 140.0
_BLEND_WIDTH = 0.06          # softness of biome weights in climate space: larger is wider transitions

# Trees: one candidate per TREE_CELL×TREE_CELL cell, offset inside the cell so that trunks never touch.
TREE_CELL = 5
TREE_RADIUS = 2              # canopy reach from the trunk, in blocks
TREE_TOP = 9                 # highest leaf above the ground block (a spruce: ground + 2 + 7-block trunk)
_TREE_CHANCE = (0.03, 0.75, 0.0, 0.12)   # per cell, for plains, forest, desert, snowy (low slopes only)

_CAVE_STEP = 4               # caves are sampled on a coarse lattice and interpolated in between
_CAVE_WIDTH = 0.055          # tunnels are where two 3-D noise fields are both within this of zero


# ------------------------------------------------------------------------------------------------- noise
@njit(cache=True, inline="always")
def _hash(seed, salt, ix, iy, iz):
    """A well-mixed 32-bit hash of integer lattice coordinates (every product stays below 2**63)."""
    h = (seed * 0x2545F491 + salt * 0x6C8E9CF5) & 0xFFFFFFFF
    h = (h ^ ((ix & 0xFFFFFFFF) * 0x27D4EB2D)) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    h = (h ^ ((iz & 0xFFFFFFFF) * 0x165667B1)) & 0xFFFFFFFF
    h = ((h ^ (h >> 12)) * 0x297A2D39) & 0xFFFFFFFF
    h = (h ^ ((iy & 0xFFFFFFFF) * 0x1B873593)) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    return h ^ (h >> 16)


@njit(cache=True, inline="always")
def _unit(h):
    """A hash as a float in [0, 1)."""
    return (h & 0xFFFFFF) / 16777216.0


@njit(cache=True, inline="always")
def _fade(t):
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@njit(cache=True, inline="always")
def _grad2(seed, salt, ix, iz, dx, dz):
    h = _hash(seed, salt, ix, 0, iz)
    a = (h & 0xFFFF) * (2.0 * math.pi / 65536.0)
    return math.cos(a) * dx + math.sin(a) * dz


@njit(cache=True)
def _noise2(seed, salt, x, z):
    """2-D gradient (Perlin) noise with random unit gradients; roughly in [-0.7, 0.7]."""
    x0 = math.floor(x)
    z0 = math.floor(z)
    fx = x - x0
    fz = z - z0
    ix = np.int64(x0)
    iz = np.int64(z0)
    u = _fade(fx)
    v = _fade(fz)
    n00 = _grad2(seed, salt, ix, iz, fx, fz)
    n10 = _grad2(seed, salt, ix + 1, iz, fx - 1.0, fz)
    n01 = _grad2(seed, salt, ix, iz + 1, fx, fz - 1.0)
    n11 = _grad2(seed, salt, ix + 1, iz + 1, fx - 1.0, fz - 1.0)
    a = n00 + u * (n10 - n00)
    b = n01 + u * (n11 - n01)
    return a + v * (b - a)


@njit(cache=True)
def _fbm2(seed, salt, x, z, octaves):
    """Fractal sum of `octaves` noise layers, each twice the frequency and half the amplitude; std ≈ 0.25."""
    total = 0.0
    amp = 1.0
    for o in range(octaves):
        total += amp * _noise2(seed, salt * 16 + o, x, z)
        x = x * 2.0 + 17.31
        z = z * 2.0 - 5.77
        amp *= 0.5
    return total


@njit(cache=True, inline="always")
def _grad3(seed, salt, ix, iy, iz, dx, dy, dz):
    # One of the 12 cube-edge directions, as in improved Perlin noise.
    h = _hash(seed, salt, ix, iy, iz) % 12
    if h < 4:
        return (dx if h & 1 else -dx) + (dy if h & 2 else -dy)
    if h < 8:
        return (dx if h & 1 else -dx) + (dz if h & 2 else -dz)
    return (dy if h & 1 else -dy) + (dz if h & 2 else -dz)


@njit(cache=True)
def _noise3(seed, salt, x, y, z):
    """3-D gradient noise, roughly in [-1, 1]."""
    x0 = math.floor(x)
    y0 = math.floor(y)
    z0 = math.floor(z)
    fx = x - x0
    fy = y - y0
    fz = z - z0
    ix = np.int64(x0)
    iy = np.int64(y0)
    iz = np.int64(z0)
    u = _fade(fx)
    v = _fade(fy)
    w = _fade(fz)
    c000 = _grad3(seed, salt, ix, iy, iz, fx, fy, fz)
    c100 = _grad3(seed, salt, ix + 1, iy, iz, fx - 1.0, fy, fz)
    c010 = _grad3(seed, salt, ix, iy + 1, iz, fx, fy - 1.0, fz)
    c110 = _grad3(seed, salt, ix + 1, iy + 1, iz, fx - 1.0, fy - 1.0, fz)
    c001 = _grad3(seed, salt, ix, iy, iz + 1, fx, fy, fz - 1.0)
    c101 = _grad3(seed, salt, ix + 1, iy, iz + 1, fx - 1.0, fy, fz - 1.0)
    c011 = _grad3(seed, salt, ix, iy + 1, iz + 1, fx, fy - 1.0, fz - 1.0)
    c111 = _grad3(seed, salt, ix + 1, iy + 1, iz + 1, fx - 1.0, fy - 1.0, fz - 1.0)
    a0 = c000 + u * (c100 - c000)
    a1 = c010 + u * (c110 - c010)
    a2 = c001 + u * (c101 - c001)
    a3 = c011 + u * (c111 - c011)
    b0 = a0 + v * (a1 - a0)
    b1 = a2 + v * (a3 - a2)
    return b0 + w * (b1 - b0)


@njit(cache=True, inline="always")
def _smoothstep(e0, e1, x):
    t = min(max((x - e0) / (e1 - e0), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---------------------------------------------------------------------------------------------- surface
# Biome centres in (temperature, moisture) climate space; weights fall off with squared distance.
_CENTRE_T = np.array([0.05, -0.05, 0.75, -0.75])
_CENTRE_M = np.array([-0.15, 0.65, -0.55, 0.0])
_JITTER_SIGN = np.array([1.0, -1.0, 0.5, 0.0])   # which way border jitter pushes each biome's score


@njit(cache=True, inline="always")
def _climate_weight(temp, moist, b):
    d2 = (temp - _CENTRE_T[b]) ** 2 + (moist - _CENTRE_M[b]) ** 2
    return math.exp(-d2 / _BLEND_WIDTH)


@njit(cache=True)
def _surface(seed, x, z):
    """Ground height (float) and dominant land biome at world block (x, z)."""
    fx = float(x)
    fz = float(z)
    cont = _fbm2(seed, _S_CONT, fx / _CONT_SCALE, fz / _CONT_SCALE, 4) * 2.6 + 0.4
    temp = _fbm2(seed, _S_TEMP, fx / _CLIMATE_SCALE, fz / _CLIMATE_SCALE, 3) * 2.4
    moist = _fbm2(seed, _S_MOIST, fx / _CLIMATE_SCALE + 91.7, fz / _CLIMATE_SCALE, 3) * 2.4

    # Soft biome weights in climate space; a little small-scale jitter frays the borders.
    jitter = _noise2(seed, _S_JITTER, fx / 14.0, fz / 14.0) * 0.12
    best = 0
    best_score = -1e9
    for b in range(4):
        d2 = (temp - _CENTRE_T[b]) ** 2 + (moist - _CENTRE_M[b]) ** 2
        score = -d2 + jitter * _JITTER_SIGN[b]
        if score > best_score:
            best_score = score
            best = b
    w_plains = _climate_weight(temp, moist, PLAINS)
    w_forest = _climate_weight(temp, moist, FOREST)
    w_desert = _climate_weight(temp, moist, DESERT)
    w_snowy = _climate_weight(temp, moist, SNOWY)
    total = max(w_plains + w_forest + w_desert + w_snowy, 1e-300)

    # Per-biome heights.
    hill = _fbm2(seed, _S_HILL, fx / 90.0, fz / 90.0, 3)
    detail = _fbm2(seed, _S_DETAIL, fx / 24.0, fz / 24.0, 2)
    h_plains = SEA_LEVEL + 6.0 + hill * 8.0 + detail * 1.5
    h_forest = SEA_LEVEL + 6.0 + hill * 16.0 + detail * 3.0
    dune = 1.0 - abs(_noise2(seed, _S_DUNE, fx / 22.0 + fz / 60.0, fz / 14.0 - fx / 70.0))
    h_desert = SEA_LEVEL + 5.0 + hill * 5.0 + dune * dune * 4.0
    ridge = 0.0
    amp = 1.0
    rx = fx / 130.0
    rz = fz / 130.0
    for o in range(4):
        r = 1.0 - abs(_noise2(seed, _S_RIDGE * 16 + o, rx, rz) * 1.4)
        ridge += amp * r * r
        rx = rx * 2.03 + 3.1
        rz = rz * 2.03 - 1.7
        amp *= 0.45
    h_snowy = SEA_LEVEL + 10.0 + ridge * 34.0 + hill * 10.0
    h_land = (w_plains * h_plains + w_forest * h_forest + w_desert * h_desert + w_snowy * h_snowy) / total

    # Water: seas where continentalness is low, lakes in temperate land.
    sea = _smoothstep(-0.05, -0.3, cont)
    depth = _smoothstep(-0.3, -0.8, cont)
    lake_field = _fbm2(seed, _S_LAKE, fx / _LAKE_SCALE, fz / _LAKE_SCALE, 2)
    lake = _smoothstep(0.28, 0.42, lake_field) * (1.0 - w_snowy / total) * (1.0 - w_desert / total)
    water = max(sea, lake)
    h_water = SEA_LEVEL - 5.0 - depth * 12.0 + detail * 2.0
    h = (1.0 - water) * h_land + water * h_water
    if h > _PEAK_KNEE:   # round the highest peaks off instead of flattening them at MAX_TERRAIN
        h = _PEAK_KNEE + (MAX_TERRAIN - _PEAK_KNEE) * math.tanh((h - _PEAK_KNEE) / (MAX_TERRAIN - _PEAK_KNEE))
    return h, best


@njit(cache=True)
def _ground(seed, x, z, height):
    """Integer ground height (top solid block) and dominant land biome at (x, z)."""
    h, biome = _surface(seed, x, z)
    top = min(int(math.floor(h)), height - TREE_TOP - 2)
    return max(top, 1), biome


@njit(cache=True)
def _surface_biome(ground, biome):
    """The biome a player standing there sees: water below sea level, sand shores just above it."""
    if ground < SEA_LEVEL:
        return WATER_BIOME
    if ground <= SEA_LEVEL + 1 and biome != SNOWY and biome != DESERT:
        return BEACH
    return biome


# ------------------------------------------------------------------------------------------------ trees
@njit(cache=True)
def _tree_at(seed, cell_x, cell_z, height):
    """The tree of a grid cell: (x, z, ground, trunk height, kind) or trunk height 0 when there is none."""
    h = _hash(seed, _S_TREE, cell_x, 0, cell_z)
    span = TREE_CELL - 1   # offsets 0..TREE_CELL-2 keep a gap of at least one block between trunks
    x = cell_x * TREE_CELL + (h & 0xFF) % span
    z = cell_z * TREE_CELL + ((h >> 8) & 0xFF) % span
    ground, biome = _ground(seed, x, z, height)
    kind = _surface_biome(ground, biome)
    if kind == WATER_BIOME or kind == BEACH or kind == DESERT:
        return x, z, ground, 0, kind
    if kind == SNOWY and ground > SEA_LEVEL + 26:
        return x, z, ground, 0, kind
    if _unit(_hash(seed, _S_TREE, cell_x, 1, cell_z)) >= _TREE_CHANCE[kind]:
        return x, z, ground, 0, kind
    trunk = 4 + (h >> 28) % 3
    if kind == SNOWY:
        trunk += 1
    return x, z, ground, trunk, kind


@njit(cache=True)
def _put_leaf(column, x0, z0, x, y, z):
    lx = x - x0
    lz = z - z0
    inside = 0 <= lx < column.shape[0] and 0 <= y < column.shape[1] and 0 <= lz < column.shape[2]
    if inside and column[lx, y, lz] == AIR:
        column[lx, y, lz] = LEAVES


@njit(cache=True)
def _draw_canopy(column, seed, x0, z0, tx, tz, base, trunk, kind):
    """Leaves of one tree into air blocks of the column (a rounded oak crown, or a spruce cone)."""
    top = base + trunk
    for y in range(top - 3, top + 2):
        layer = y - top
        for dx in range(-TREE_RADIUS, TREE_RADIUS + 1):
            for dz in range(-TREE_RADIUS, TREE_RADIUS + 1):
                corner = abs(dx) == abs(dz) and abs(dx) > 0
                if kind == SNOWY:
                    r = 2 if layer <= -2 else 1 if layer <= 0 else 0
                else:
                    r = 2 if layer <= -2 else 1
                if abs(dx) > r or abs(dz) > r:
                    continue
                if corner and abs(dx) == r:
                    # Crown corners come and go by a hash of the leaf's own position.
                    if layer >= 0 or _unit(_hash(seed, _S_TREE + 1, tx + dx, y, tz + dz)) < 0.5:
                        continue
                _put_leaf(column, x0, z0, tx + dx, y, tz + dz)


@njit(cache=True)
def _draw_trees(column, seed, x0, z0):
    """Every tree whose trunk or canopy reaches the region, leaves first and then trunks over them."""
    size_x, height, size_z = column.shape
    c_lo_x = (x0 - TREE_RADIUS) // TREE_CELL
    c_hi_x = (x0 + size_x - 1 + TREE_RADIUS) // TREE_CELL
    c_lo_z = (z0 - TREE_RADIUS) // TREE_CELL
    c_hi_z = (z0 + size_z - 1 + TREE_RADIUS) // TREE_CELL
    for pass_ in range(2):
        for gx in range(c_lo_x, c_hi_x + 1):
            for gz in range(c_lo_z, c_hi_z + 1):
                tx, tz, ground, trunk, kind = _tree_at(seed, gx, gz, height)
                if trunk == 0:
                    continue
                if pass_ == 0:
                    _draw_canopy(column, seed, x0, z0, tx, tz, ground + 1, trunk, kind)
                elif x0 <= tx < x0 + size_x and z0 <= tz < z0 + size_z:
                    for y in range(ground + 1, ground + 1 + trunk):
                        column[tx - x0, y, tz - z0] = LOG


# ------------------------------------------------------------------------------------------------ caves
@njit(cache=True)
def _cave_fields(seed, x0, z0, size_x, size_z, height):
    """Two 3-D noise fields on the coarse cave lattice covering the region (world-aligned, so seamless)."""
    nx = size_x // _CAVE_STEP + 1
    nz = size_z // _CAVE_STEP + 1
    ny = (height - 1) // _CAVE_STEP + 2
    fields = np.empty((2, nx, ny, nz))
    for i in range(nx):
        wx = (x0 + i * _CAVE_STEP) / 48.0
        for j in range(ny):
            wy = (j * _CAVE_STEP) / 24.0
            for k in range(nz):
                wz = (z0 + k * _CAVE_STEP) / 48.0
                fields[0, i, j, k] = _noise3(seed, _S_CAVE1, wx, wy, wz)
                fields[1, i, j, k] = _noise3(seed, _S_CAVE2, wx + 31.4, wy, wz)
    return fields


@njit(cache=True, inline="always")
def _lerp3(f, c, i, j, k, u, v, w):
    a0 = f[c, i, j, k] + u * (f[c, i + 1, j, k] - f[c, i, j, k])
    a1 = f[c, i, j + 1, k] + u * (f[c, i + 1, j + 1, k] - f[c, i, j + 1, k])
    a2 = f[c, i, j, k + 1] + u * (f[c, i + 1, j, k + 1] - f[c, i, j, k + 1])
    a3 = f[c, i, j + 1, k + 1] + u * (f[c, i + 1, j + 1, k + 1] - f[c, i, j + 1, k + 1])
    b0 = a0 + v * (a1 - a0)
    b1 = a2 + v * (a3 - a2)
    return b0 + w * (b1 - b0)


# ----------------------------------------------------------------------------------------------- column
@njit(cache=True)
def _generate(seed, x0, z0, size_x, size_z, height):
    """Blocks of the region [x0, x0 + size_x) × [z0, z0 + size_z), corners on the cave lattice."""
    column = np.zeros((size_x, height, size_z), dtype=np.uint8)
    # Heights with one block of margin so that slopes can be read at the region's edge.
    ground = np.empty((size_x + 2, size_z + 2), dtype=np.int64)
    biome = np.empty((size_x + 2, size_z + 2), dtype=np.int64)
    for i in range(size_x + 2):
        for k in range(size_z + 2):
            ground[i, k], biome[i, k] = _ground(seed, x0 + i - 1, z0 + k - 1, height)
    caves = _cave_fields(seed, x0, z0, size_x, size_z, height)
    sea = min(SEA_LEVEL, height - 1)

    for i in range(size_x):
        wx = x0 + i
        for k in range(size_z):
            wz = z0 + k
            g = ground[i + 1, k + 1]
            kind = _surface_biome(g, biome[i + 1, k + 1])
            slope = max(abs(ground[i, k + 1] - g), abs(ground[i + 2, k + 1] - g),
                        abs(ground[i + 1, k] - g), abs(ground[i + 1, k + 2] - g))
            soil_depth = 3 + _hash(seed, _S_DETAIL, wx, 1, wz) % 2
            # (top block, the soil under it, how deep the soil goes)
            if kind == WATER_BIOME:
                top = GRAVEL if g < SEA_LEVEL - 6 else SAND
                soil = top
            elif kind == BEACH:
                top = SAND
                soil = SAND
            elif kind == DESERT:
                top = SAND
                soil = SAND
                soil_depth += 1
            elif kind == SNOWY:
                top = STONE if slope >= 3 else SNOW
                soil = STONE
            else:
                top = STONE if slope >= 4 else GRASS
                soil = STONE if slope >= 4 else DIRT

            column[i, 0, k] = BEDROCK
            for y in range(1, g + 1):
                depth = g - y
                if depth == 0:
                    b = top
                elif depth <= soil_depth:
                    b = soil
                elif kind == DESERT and depth <= soil_depth + 4:
                    b = SANDSTONE
                else:
                    b = STONE
                column[i, y, k] = b
            for y in range(g + 1, sea + 1):
                column[i, y, k] = WATER

            # Tunnels under the ground, never within 5 blocks of the surface nor under water.
            roof = g - 5 if kind != WATER_BIOME else 0
            ci = i // _CAVE_STEP
            ck = k // _CAVE_STEP
            u = (i % _CAVE_STEP) / _CAVE_STEP
            w = (k % _CAVE_STEP) / _CAVE_STEP
            for y in range(3, roof):
                cj = y // _CAVE_STEP
                v = (y % _CAVE_STEP) / _CAVE_STEP
                a = _lerp3(caves, 0, ci, cj, ck, u, v, w)
                if abs(a) < _CAVE_WIDTH:
                    b2 = _lerp3(caves, 1, ci, cj, ck, u, v, w)
                    if abs(b2) < _CAVE_WIDTH:
                        column[i, y, k] = AIR

    _draw_trees(column, seed, x0, z0)
    return column


def _seed32(seed: int) -> int:
    """Fold any Python int seed into 32 bits, deterministically (no hash())."""
    seed = int(seed)
    return (seed ^ (seed >> 32) ^ (seed >> 64)) & 0xFFFFFFFF


def generate_column(seed: int, cx: int, cz: int, height: int = WORLD_HEIGHT) -> np.ndarray:
    """Blocks of column (cx, cz) as uint8 (16, height, 16) indexed (x, y, z), a pure function of its inputs."""
    return generate_region(seed, int(cx) * CHUNK, int(cz) * CHUNK, CHUNK, CHUNK, height)


def generate_region(seed: int, x0: int, z0: int, size_x: int, size_z: int,
                    height: int = WORLD_HEIGHT) -> np.ndarray:
    """Blocks of any column-aligned rectangle, uint8 (size_x, height, size_z): equal to its columns side by side."""
    if height < TREE_TOP + 4:
        raise ValueError(f"height must be at least {TREE_TOP + 4} blocks, got {height}")
    for name, value in (("x0", x0), ("z0", z0), ("size_x", size_x), ("size_z", size_z)):
        if int(value) % CHUNK:
            raise ValueError(f"{name}={value} must be a multiple of {CHUNK}")
    if size_x <= 0 or size_z <= 0:
        raise ValueError(f"region size must be positive, got {size_x}×{size_z}")
    return _generate(_seed32(seed), int(x0), int(z0), int(size_x), int(size_z), int(height))


def biome_at(seed: int, x: int, z: int, height: int = WORLD_HEIGHT) -> str:
    """The biome seen at world block (x, z): one of BIOME_NAMES."""
    ground, biome = _ground(_seed32(seed), int(x), int(z), int(height))
    return BIOME_NAMES[_surface_biome(ground, biome)]


def ground_height(seed: int, x: int, z: int, height: int = WORLD_HEIGHT) -> int:
    """The y of the top terrain block at world block (x, z), ignoring trees."""
    return int(_ground(_seed32(seed), int(x), int(z), int(height))[0])


def _spawn_candidates(column: np.ndarray) -> list[tuple[int, int, int]]:
    """(x, y, z) local feet positions on dry solid ground with two blocks of air above, no tree in the way."""
    found = []
    height = column.shape[1]
    for x in range(CHUNK):
        for z in range(CHUNK):
            solid = np.nonzero(column[x, :, z])[0]
            y = int(solid[-1])   # topmost non-air block
            block = column[x, y, z]
            if not SOLID[block] or block in (LOG, LEAVES) or y < SEA_LEVEL or y + 3 > height:
                continue
            if column[x, y + 1, z] == AIR and column[x, y + 2, z] == AIR:
                found.append((x, y + 1, z))
    return found


def spawn_point(seed: int, height: int = WORLD_HEIGHT) -> tuple[float, float, float]:
    """Feet position (x, y, z) of the player at the start of an episode: on dry ground near the origin.

    Columns are searched in rings of growing Chebyshev radius around column (0, 0); within the first ring
    that has dry ground, the candidate nearest the origin wins (ties broken by x, then z).
    """
    for radius in range(0, 256):
        best = None
        for cx in range(-radius, radius + 1):
            for cz in range(-radius, radius + 1):
                if max(abs(cx), abs(cz)) != radius:
                    continue
                column = generate_column(seed, cx, cz, height)
                for x, y, z in _spawn_candidates(column):
                    wx, wz = cx * CHUNK + x, cz * CHUNK + z
                    key = ((wx + 0.5) ** 2 + (wz + 0.5) ** 2, wx, wz)
                    if best is None or key < best[0]:
                        best = (key, wx, y, wz)
        if best is not None:
            _, wx, y, wz = best
            return wx + 0.5, float(y), wz + 0.5
    raise RuntimeError(f"no dry land within 4096 blocks of the origin for seed {seed}")
