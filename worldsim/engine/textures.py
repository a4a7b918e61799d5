"""Procedural 16×16 block textures and crack overlays, made deterministically with numpy at import.

ATLAS is one contiguous uint8 array (NUM_BLOCKS, 3 face kinds, 16, 16, RGBA) that the raycasters index as
atlas[block, face, row, column]; row 0 is the top of a side face. Alpha 255 is opaque, 0 is a hole (leaves,
glass), anything between is see-through (water). CRACKS (10, 16, 16) marks the cracked texels per stage.
"""
import numpy as np

from worldsim.engine.blocks import (BEDROCK, BRICK, COBBLESTONE, DIRT, GLASS, GRASS, GRAVEL, LEAVES, LOG,
                                    NUM_BLOCKS, PLANKS, SAND, SANDSTONE, SNOW, STONE, WATER)

TEX = 16                                   # texels per block side
FACE_TOP, FACE_SIDE, FACE_BOTTOM = 0, 1, 2
NUM_FACE_KINDS = 3
CRACK_STAGES = 10
WATER_ALPHA = 120                          # surface opacity of water: the bottom shows through, tinted


def _rng(name: str) -> np.random.Generator:
    """A generator seeded by the texture's name, so each texture is fixed whatever order they are built in."""
    return np.random.default_rng(int.from_bytes(name.encode(), "little") % (2 ** 63))


def _noisy(rng, base, spread, size=TEX) -> np.ndarray:
    """A float RGB (16, 16, 3) texture: `base` colour with per-texel brightness noise of ±spread."""
    shade = 1.0 + rng.uniform(-spread, spread, (size, size, 1))
    return np.asarray(base, np.float64) * shade


def _speckle(rng, tex, colour, fraction) -> np.ndarray:
    """Replace a random `fraction` of texels with `colour` (times a little noise)."""
    spots = rng.random(tex.shape[:2]) < fraction
    tex[spots] = np.asarray(colour, np.float64) * rng.uniform(0.9, 1.1, (spots.sum(), 1))
    return tex


def _rgba(rgb, alpha=255) -> np.ndarray:
    out = np.empty((TEX, TEX, 4), np.uint8)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = alpha
    return out


def _stone(name="stone", base=(125, 125, 125)):
    rng = _rng(name)
    tex = _noisy(rng, base, 0.08)
    tex = _speckle(rng, tex, np.asarray(base) * 0.78, 0.10)
    return _speckle(rng, tex, np.asarray(base) * 1.12, 0.06)


def _dirt():
    rng = _rng("dirt")
    tex = _noisy(rng, (134, 96, 67), 0.10)
    tex = _speckle(rng, tex, (101, 72, 50), 0.12)
    return _speckle(rng, tex, (160, 120, 90), 0.05)


def _grass_top():
    rng = _rng("grass_top")
    tex = _noisy(rng, (95, 159, 53), 0.12)
    return _speckle(rng, tex, (76, 130, 42), 0.15)


def _grass_side():
    rng = _rng("grass_side")
    tex = _dirt().copy()
    top = _grass_top()
    fringe = 3 + (rng.random(TEX) < 0.5) + (rng.random(TEX) < 0.25)   # green reaching 3 to 5 texels down
    rows = np.arange(TEX)[:, None]
    green = rows < fringe[None, :]
    tex[green] = top[green]
    return tex


def _sand(name="sand", base=(219, 207, 163)):
    rng = _rng(name)
    tex = _noisy(rng, base, 0.05)
    return _speckle(rng, tex, np.asarray(base) * 0.9, 0.10)


def _water():
    rng = _rng("water")
    tex = _noisy(rng, (47, 84, 200), 0.06)
    rows, cols = np.mgrid[0:TEX, 0:TEX]
    ripple = np.sin((cols + 2.0 * np.sin(rows * 0.8)) * 0.9) > 0.75         # light streaks
    tex[ripple] = (80, 120, 225)
    return _rgba(tex, WATER_ALPHA)


def _log_side():
    rng = _rng("log_side")
    stripes = rng.uniform(0.75, 1.1, TEX)                        # vertical bark grooves
    tex = np.asarray((102, 81, 51), np.float64) * stripes[None, :, None]
    return tex * (1.0 + rng.uniform(-0.06, 0.06, (TEX, TEX, 1)))


def _log_top():
    rng = _rng("log_top")
    rows, cols = np.mgrid[0:TEX, 0:TEX]
    radius = np.hypot(rows - 7.5, cols - 7.5)
    rings = 0.85 + 0.15 * np.cos(radius * 2.2)
    tex = np.asarray((176, 141, 87), np.float64) * rings[..., None]
    bark = np.maximum(abs(rows - 7.5), abs(cols - 7.5)) > 6.5
    tex[bark] = _log_side()[bark]
    return tex * (1.0 + rng.uniform(-0.04, 0.04, (TEX, TEX, 1)))


def _leaves():
    rng = _rng("leaves")
    tex = _noisy(rng, (56, 118, 38), 0.18)
    tex = _speckle(rng, tex, (40, 90, 28), 0.2)
    out = _rgba(tex)
    out[rng.random((TEX, TEX)) < 0.28, 3] = 0                     # holes: rays pass through them
    return out


def _planks():
    rng = _rng("planks")
    tex = _noisy(rng, (162, 130, 78), 0.05)
    grain = rng.uniform(0.93, 1.05, (TEX // 4, TEX))             # grain runs along each board
    tex *= np.repeat(grain, 4, axis=0)[..., None]
    tex[3::4, :] = (110, 86, 50)                                  # gaps between boards
    for board in range(TEX // 4):
        seam = (board * 7 + 3) % TEX                              # end joints, staggered per board
        tex[board * 4:board * 4 + 3, seam] = (120, 95, 57)
    return tex


def _cobblestone():
    rng = _rng("cobblestone")
    centres = rng.uniform(0, TEX, (11, 2))
    rows, cols = np.mgrid[0:TEX, 0:TEX] + 0.5
    # distances to every stone centre on a wrapping tile, so the texture repeats seamlessly
    dr = np.abs(rows[..., None] - centres[:, 0]); dr = np.minimum(dr, TEX - dr)
    dc = np.abs(cols[..., None] - centres[:, 1]); dc = np.minimum(dc, TEX - dc)
    dist = np.sort(np.hypot(dr, dc), axis=-1)
    owner = np.argmin(np.hypot(dr, dc), axis=-1)
    stone_grey = rng.uniform(100, 150, len(centres))
    tex = np.repeat(stone_grey[owner][..., None], 3, axis=-1) * (1 + rng.uniform(-0.06, 0.06, (TEX, TEX, 1)))
    mortar = dist[..., 1] - dist[..., 0] < 1.1
    tex[mortar] = (72, 72, 72)
    highlight = (dist[..., 0] < 1.5) & ~mortar
    tex[highlight] *= 1.15
    return tex


def _snow():
    rng = _rng("snow")
    tex = _noisy(rng, (240, 248, 250), 0.03)
    return _speckle(rng, tex, (222, 232, 240), 0.08)


def _glass():
    out = np.zeros((TEX, TEX, 4), np.uint8)
    out[..., :3] = (205, 232, 240)
    out[0, :, 3] = out[-1, :, 3] = out[:, 0, 3] = out[:, -1, 3] = 255   # frame
    out[0, :, :3] = out[:, 0, :3] = (230, 245, 250)
    out[-1, :, :3] = out[:, -1, :3] = (150, 180, 190)
    for k in range(3, 7):                                             # a few glints
        out[k, 9 - k, 3] = out[k + 1, 9 - k, 3] = 200
    out[11, 12, 3] = out[12, 11, 3] = 200
    return out


def _brick():
    rng = _rng("brick")
    tex = _noisy(rng, (150, 72, 56), 0.08)
    tex *= rng.uniform(0.88, 1.08, (TEX // 4, 1, 1)).repeat(4, axis=0)
    tex[3::4, :] = (176, 168, 158)                                    # mortar rows
    for course in range(TEX // 4):
        offset = 0 if course % 2 == 0 else 4
        tex[course * 4:course * 4 + 3, offset::8] = (176, 168, 158)  # head joints, staggered
    return tex


def _gravel():
    rng = _rng("gravel")
    greys = rng.choice([96, 118, 134, 150, 80], (TEX, TEX)).astype(np.float64)
    tex = np.stack([greys * 1.02, greys, greys * 0.96], axis=-1)
    return _speckle(rng, tex, (130, 110, 95), 0.12)


def _bedrock():
    rng = _rng("bedrock")
    greys = rng.choice([35, 60, 85, 110, 140], (TEX, TEX), p=[0.25, 0.25, 0.2, 0.2, 0.1]).astype(np.float64)
    return np.repeat(greys[..., None], 3, axis=-1)


def _sandstone_side():
    tex = _sand("sandstone_side", (216, 203, 155))
    tex[:3] *= 1.05
    tex[3] *= 0.85
    tex[12:] *= 0.9
    tex[13::2] *= 0.93
    return tex


def _build_atlas() -> np.ndarray:
    atlas = np.zeros((NUM_BLOCKS, NUM_FACE_KINDS, TEX, TEX, 4), np.uint8)   # air stays all zero

    def same(block, rgba):
        atlas[block, :] = rgba

    same(STONE, _rgba(_stone()))
    same(DIRT, _rgba(_dirt()))
    atlas[GRASS] = [_rgba(_grass_top()), _rgba(_grass_side()), _rgba(_dirt())]
    same(SAND, _rgba(_sand()))
    same(WATER, _water())
    atlas[LOG] = [_rgba(_log_top()), _rgba(_log_side()), _rgba(_log_top())]
    same(LEAVES, _leaves())
    same(PLANKS, _rgba(_planks()))
    same(COBBLESTONE, _rgba(_cobblestone()))
    same(SNOW, _rgba(_snow()))
    same(GLASS, _glass())
    same(BRICK, _rgba(_brick()))
    same(GRAVEL, _rgba(_gravel()))
    same(BEDROCK, _rgba(_bedrock()))
    atlas[SANDSTONE] = [_rgba(_sand("sandstone_top", (220, 207, 160))), _rgba(_sandstone_side()),
                        _rgba(_sand("sandstone_bottom", (205, 190, 145)))]
    return np.ascontiguousarray(atlas)


def _build_cracks() -> np.ndarray:
    """(10, 16, 16) uint8 masks; each stage keeps the cracks of the one before and adds more."""
    rng = _rng("cracks")
    cracks = np.zeros((CRACK_STAGES, TEX, TEX), np.uint8)
    current = np.zeros((TEX, TEX), np.uint8)
    directions = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
    for stage in range(CRACK_STAGES):
        for _ in range(2):                                           # two new crack walks per stage
            r, c = rng.integers(4, 12, 2)
            heading = directions[rng.integers(8)]
            for _ in range(3 + stage // 2):
                current[r, c] = 1
                if rng.random() < 0.35:
                    heading = directions[rng.integers(8)]
                r, c = np.clip((r, c) + heading, 0, TEX - 1)
        cracks[stage] = current
    return cracks


ATLAS = _build_atlas()
CRACKS = _build_cracks()
