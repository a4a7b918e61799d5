"""The block under the crosshair: an exact voxel walk (Amanatides & Woo) from the eye along the view."""
import math
from dataclasses import dataclass

from worldsim.engine.blocks import TARGETABLE

REACH = 4.5  # blocks from the eye, Minecraft's survival reach


@dataclass(frozen=True)
class Hit:
    block: tuple[int, int, int]   # the targeted cell
    normal: tuple[int, int, int]  # the face the ray entered through, pointing out of the block; (0, 0, 0) inside


def raycast(world, eye, direction, reach: float = REACH) -> Hit | None:
    """The first targetable block whose cell the ray enters within `reach`, or None (water is passed through)."""
    cell = [math.floor(c) for c in eye]
    if TARGETABLE[world.get_block(*cell)]:
        return Hit(tuple(cell), (0, 0, 0))
    step, t_next, t_delta = [0, 0, 0], [math.inf] * 3, [math.inf] * 3
    for a in range(3):
        if direction[a] > 0:
            step[a] = 1
            t_next[a] = (cell[a] + 1 - eye[a]) / direction[a]
        elif direction[a] < 0:
            step[a] = -1
            t_next[a] = (cell[a] - eye[a]) / direction[a]
        if direction[a] != 0:
            t_delta[a] = 1.0 / abs(direction[a])
    norm = math.sqrt(sum(d * d for d in direction))
    while True:
        a = min(range(3), key=t_next.__getitem__)  # ties go to x, then y, then z: deterministic
        if t_next[a] * norm > reach:
            return None
        cell[a] += step[a]
        t_next[a] += t_delta[a]
        if TARGETABLE[world.get_block(*cell)]:
            normal = [0, 0, 0]
            normal[a] = -step[a]
            return Hit(tuple(cell), tuple(normal))
