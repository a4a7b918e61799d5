"""Procedural terrain (placeholder: flat grass; replaced by the biome generator)."""
import numpy as np

from worldsim.engine.blocks import BEDROCK, DIRT, GRASS, STONE

CHUNK = 16          # blocks per column side
WORLD_HEIGHT = 128  # blocks, y in [0, WORLD_HEIGHT)
SEA_LEVEL = 40


def generate_column(seed: int, cx: int, cz: int, height: int = WORLD_HEIGHT) -> np.ndarray:
    """Blocks of column (cx, cz) as uint8 (16, height, 16) indexed (x, y, z), a pure function of its inputs."""
    column = np.zeros((CHUNK, height, CHUNK), dtype=np.uint8)
    column[:, 0] = BEDROCK
    column[:, 1:SEA_LEVEL - 3] = STONE
    column[:, SEA_LEVEL - 3:SEA_LEVEL] = DIRT
    column[:, SEA_LEVEL] = GRASS
    return column


def spawn_point(seed: int, height: int = WORLD_HEIGHT) -> tuple[float, float, float]:
    """Feet position (x, y, z) of the player at the start of an episode: on dry ground near the origin."""
    column = generate_column(seed, 0, 0, height)
    solid = np.nonzero(column[8, :, 8])[0]
    return 8.5, float(solid[-1] + 1), 8.5
