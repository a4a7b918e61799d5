"""Block types as data: ids, names and the properties physics, rendering and breaking read."""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockType:
    name: str
    solid: bool          # collides with the player
    opaque: bool         # stops rays and hides the faces behind it
    break_ticks: int     # ticks of holding attack to break it; -1 means unbreakable
    targetable: bool = True  # the crosshair can pick it (water cannot)


# The id is the index. Order is part of the on-disk format of saved edits: append, never reorder.
BLOCKS = (
    BlockType("air", solid=False, opaque=False, break_ticks=-1, targetable=False),
    BlockType("stone", True, True, 30),
    BlockType("dirt", True, True, 10),
    BlockType("grass", True, True, 12),
    BlockType("sand", True, True, 10),
    BlockType("water", solid=False, opaque=False, break_ticks=-1, targetable=False),
    BlockType("log", True, True, 20),
    BlockType("leaves", True, False, 4),
    BlockType("planks", True, True, 20),
    BlockType("cobblestone", True, True, 30),
    BlockType("snow", True, True, 8),
    BlockType("glass", True, False, 6),
    BlockType("brick", True, True, 30),
    BlockType("gravel", True, True, 12),
    BlockType("bedrock", True, True, -1),
    BlockType("sandstone", True, True, 24),
)

BLOCK_IDS = {b.name: i for i, b in enumerate(BLOCKS)}
AIR, STONE, DIRT, GRASS, SAND, WATER, LOG, LEAVES, PLANKS, COBBLESTONE, SNOW, GLASS, BRICK, GRAVEL, BEDROCK, \
    SANDSTONE = range(len(BLOCKS))
NUM_BLOCKS = len(BLOCKS)

# Per-id property arrays for the numba and Triton code paths, which cannot read the dataclasses.
SOLID = np.array([b.solid for b in BLOCKS], dtype=np.bool_)
OPAQUE = np.array([b.opaque for b in BLOCKS], dtype=np.bool_)
BREAK_TICKS = np.array([b.break_ticks for b in BLOCKS], dtype=np.int32)
TARGETABLE = np.array([b.targetable for b in BLOCKS], dtype=np.bool_)

# The creative hotbar: slot i (hotbar.(i+1)) places this block.
DEFAULT_HOTBAR = (GRASS, DIRT, STONE, COBBLESTONE, PLANKS, LOG, GLASS, BRICK, SAND)
