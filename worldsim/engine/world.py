"""The voxel world around the player: loaded columns in a toroidal array, plus every edit ever made."""
import math

import numpy as np

from worldsim.engine.blocks import AIR, BEDROCK
from worldsim.engine.worldgen import CHUNK, WORLD_HEIGHT, generate_column

_UNLOADED = np.iinfo(np.int64).min


class World:
    """Columns within `view_distance` blocks of the player, generated from `seed` and kept with their edits.

    Storage is toroidal: block (x, y, z) lives at voxels[x & mask, y, z & mask], so moving the player only
    overwrites the slots of newly loaded columns and nothing is ever shifted. A ray that stays within
    `view_distance` (Chebyshev, in x and z) of the player only ever reads loaded columns.
    """

    def __init__(self, seed: int, view_distance: int = 48, height: int = WORLD_HEIGHT):
        if view_distance < 1:
            raise ValueError(f"view_distance must be at least 1 block, got {view_distance}")
        self.seed = int(seed)
        self.view_distance = int(view_distance)
        self.height = int(height)
        self.radius = math.ceil(view_distance / CHUNK)          # columns loaded on each side of the player's
        self.slots = 1 << (2 * self.radius + 1).bit_length()     # power of two > 2 * radius + 1
        self.size = self.slots * CHUNK
        self.mask = self.size - 1
        self.voxels = np.zeros((self.size, self.height, self.size), dtype=np.uint8)  # (x, y, z), toroidal in x, z
        self.slot_column = np.full((self.slots, self.slots, 2), _UNLOADED, dtype=np.int64)  # (cx, cz) per slot
        self.edits: dict[tuple[int, int], dict[tuple[int, int, int], int]] = {}  # (cx, cz) -> {(x, y, z): id}
        self.dirty_slots: set[tuple[int, int]] = set()  # slots changed since a device copy last drained this

    # ---------------------------------------------------------------------------------------------- loading
    def ensure_loaded(self, x: float, z: float) -> int:
        """Load every column within the view radius of (x, z); return how many were newly loaded."""
        pcx, pcz = math.floor(x) // CHUNK, math.floor(z) // CHUNK
        loaded = 0
        for cx in range(pcx - self.radius, pcx + self.radius + 1):
            for cz in range(pcz - self.radius, pcz + self.radius + 1):
                if not self.is_loaded(cx, cz):
                    self._load_column(cx, cz)
                    loaded += 1
        return loaded

    def is_loaded(self, cx: int, cz: int) -> bool:
        sx, sz = cx % self.slots, cz % self.slots
        return self.slot_column[sx, sz, 0] == cx and self.slot_column[sx, sz, 1] == cz

    def column_blocks(self, cx: int, cz: int) -> np.ndarray:
        """The (16, height, 16) blocks of column (cx, cz) with its edits applied, loaded or not."""
        if self.is_loaded(cx, cz):
            sx, sz = (cx % self.slots) * CHUNK, (cz % self.slots) * CHUNK
            return self.voxels[sx:sx + CHUNK, :, sz:sz + CHUNK].copy()
        column = generate_column(self.seed, cx, cz, self.height)
        for (x, y, z), block in self.edits.get((cx, cz), {}).items():
            column[x - cx * CHUNK, y, z - cz * CHUNK] = block
        return column

    def _load_column(self, cx: int, cz: int) -> None:
        sx, sz = cx % self.slots, cz % self.slots
        self.slot_column[sx, sz] = (_UNLOADED, _UNLOADED)  # no column is valid while its slot is half written
        column = generate_column(self.seed, cx, cz, self.height)
        for (x, y, z), block in self.edits.get((cx, cz), {}).items():
            column[x - cx * CHUNK, y, z - cz * CHUNK] = block
        self.voxels[sx * CHUNK:(sx + 1) * CHUNK, :, sz * CHUNK:(sz + 1) * CHUNK] = column
        self.slot_column[sx, sz] = (cx, cz)
        self.dirty_slots.add((sx, sz))

    # ------------------------------------------------------------------------------------------- blocks
    def get_block(self, x: int, y: int, z: int) -> int:
        """The block at integer coordinates; bedrock below the world, air above it."""
        if y < 0:
            return BEDROCK
        if y >= self.height:
            return AIR
        cx, cz = x // CHUNK, z // CHUNK
        if self.is_loaded(cx, cz):
            return int(self.voxels[x & self.mask, y, z & self.mask])
        return int(self.column_blocks(cx, cz)[x - cx * CHUNK, y, z - cz * CHUNK])

    def set_block(self, x: int, y: int, z: int, block: int) -> None:
        """Change one block; the edit is kept when its column unloads and is generated again."""
        if not 0 <= y < self.height:
            raise ValueError(f"y={y} is outside the world (0..{self.height - 1})")
        cx, cz = x // CHUNK, z // CHUNK
        self.edits.setdefault((cx, cz), {})[(x, y, z)] = int(block)
        if self.is_loaded(cx, cz):
            self.voxels[x & self.mask, y, z & self.mask] = block
            self.dirty_slots.add((cx % self.slots, cz % self.slots))

    def drain_dirty_slots(self) -> list[tuple[int, int]]:
        """The slots (sx, sz) whose blocks changed since the last call, for keeping a device copy in sync."""
        slots, self.dirty_slots = sorted(self.dirty_slots), set()
        return slots

    # -------------------------------------------------------------------------------------------- state
    def get_edits(self) -> list[tuple[int, int, int, int]]:
        """Every edit as (x, y, z, block), in the order they were first made."""
        return [(x, y, z, b) for column in self.edits.values() for (x, y, z), b in column.items()]

    def set_edits(self, edits) -> None:
        """Replace all edits and reload the loaded columns so the array shows exactly them."""
        self.edits = {}
        for x, y, z, block in edits:
            self.edits.setdefault((x // CHUNK, z // CHUNK), {})[(int(x), int(y), int(z))] = int(block)
        for sx in range(self.slots):
            for sz in range(self.slots):
                cx, cz = self.slot_column[sx, sz]
                if cx != _UNLOADED:
                    self._load_column(int(cx), int(cz))
