"""The HUD drawn into a rendered frame: an inverting crosshair and the 9-slot hotbar with isometric block icons.

Sizes follow the frame's height and width, so it stays readable from 128×128 up. Everything static (layout,
icons, slot frames) is built once per (size, hotbar, selection) and cached; a frame only blends it in.
"""
from functools import lru_cache

import numpy as np

from worldsim.engine.textures import ATLAS, FACE_SIDE, FACE_TOP, TEX

HOTBAR_SLOTS = 9
ICON_SUPERSAMPLE = 4                 # icon pixels average 4×4 samples of the texture, so small icons stay clean
SLOT_FILL = (0, 0, 0, 110)           # RGBA: translucent dark slot background
SLOT_BORDER = (30, 30, 30, 220)
SELECTED_BORDER = (240, 240, 240, 255)
ICON_SHADE_TOP, ICON_SHADE_LEFT, ICON_SHADE_RIGHT = 1.0, 0.8, 0.6


def _layout(width: int, height: int) -> tuple[int, int, int, int]:
    """(slot size, border, icon size, bottom margin) in pixels for a frame size."""
    slot = max(7, int(min(width * 0.9 / HOTBAR_SLOTS, height * 0.12)))
    border = max(1, round(slot / 16))
    icon = slot - 2 * border - 2 * (slot // 12)
    return slot, border, icon, max(1, slot // 10)


def hotbar_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the hotbar area, the selection frame included, clipped to the frame."""
    slot, border, _, margin = _layout(width, height)
    rows, cols = slot + 2 * border, HOTBAR_SLOTS * (slot - border) + 3 * border
    top, left = height - margin - rows, (width - cols) // 2
    return top, left, rows, cols


@lru_cache(maxsize=None)
def block_icon(block: int, size: int) -> np.ndarray:
    """An isometric RGBA uint8 (size, size, 4) icon of a block: top face and two shaded sides."""
    n = size * ICON_SUPERSAMPLE
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n
    rgba = np.zeros((n, n, 4), np.float64)
    # Each face is a parallelogram of the hexagon; (u, v) are the texture coordinates inside it.
    faces = (
        (x - 2 * (y - 0.25), x + 2 * (y - 0.25), FACE_TOP, ICON_SHADE_TOP),           # top rhombus
        (2 * x, 2 * (y - 0.25 - 0.5 * x), FACE_SIDE, ICON_SHADE_LEFT),                # left side
        (2 * (x - 0.5), 2 * (y - 0.5 + 0.5 * (x - 0.5)), FACE_SIDE, ICON_SHADE_RIGHT),  # right side
    )
    for u, v, face, shade in faces:
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1) & (rgba[..., 3] == 0)
        tu = np.clip((u * TEX).astype(int), 0, TEX - 1)[inside]
        tv = np.clip((v * TEX).astype(int), 0, TEX - 1)[inside]
        texel = ATLAS[block, face, tv, tu].astype(np.float64)
        texel[:, :3] *= shade
        rgba[inside] = texel
    rgba = rgba.reshape(size, ICON_SUPERSAMPLE, size, ICON_SUPERSAMPLE, 4)
    alpha = rgba[..., 3].mean(axis=(1, 3))
    colour = (rgba[..., :3] * rgba[..., 3:]).sum(axis=(1, 3)) / np.maximum(rgba[..., 3:].sum(axis=(1, 3)), 1e-9)
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3] = np.clip(np.rint(colour), 0, 255)
    out[..., 3] = np.clip(np.rint(alpha), 0, 255)
    return out


@lru_cache(maxsize=64)
def hotbar_overlay(width: int, height: int, hotbar: tuple[int, ...], selected: int) -> np.ndarray:
    """RGBA (rows, cols, 4) of the hotbar box: slot backgrounds, borders, icons and the selection frame."""
    slot, border, icon, _ = _layout(width, height)
    _, _, rows, cols = hotbar_box(width, height)
    overlay = np.zeros((rows, cols, 4), np.uint8)
    step = slot - border                                     # neighbouring slots share a border
    for i, block in enumerate(hotbar):
        top, left = border, border + i * step
        overlay[top:top + slot, left:left + slot] = SLOT_BORDER
        overlay[top + border:top + slot - border, left + border:left + slot - border] = SLOT_FILL
        if block:
            pad = (slot - icon) // 2
            cell = overlay[top + pad:top + pad + icon, left + pad:left + pad + icon]
            ico = block_icon(int(block), icon).astype(np.uint16)
            a = ico[..., 3:]
            blended = (cell.astype(np.uint16) * (255 - a) + ico * a + 127) // 255
            blended[..., 3] = np.maximum(cell[..., 3], ico[..., 3])
            cell[...] = blended
    # The selected slot gets a bright frame one border wider than the slot on every side.
    top, left = 0, selected * step
    frame = (slice(top, top + slot + 2 * border), slice(left, left + slot + 2 * border))
    inner = np.zeros((slot + 2 * border, slot + 2 * border), bool)
    inner[2 * border:-2 * border, 2 * border:-2 * border] = True
    region = overlay[frame]
    region[~inner] = SELECTED_BORDER
    return overlay


@lru_cache(maxsize=16)
def crosshair_mask(width: int, height: int) -> np.ndarray:
    """Bool (height, width): a plus sign at the centre pixel (height // 2, width // 2)."""
    arm = max(3, round(height / 36))
    thick = max(1, round(height / 180))
    cy, cx = height // 2, width // 2
    mask = np.zeros((height, width), bool)
    t0 = -(thick // 2)
    mask[max(0, cy + t0):cy + t0 + thick, max(0, cx - arm):cx + arm + 1] = True
    mask[max(0, cy - arm):cy + arm + 1, max(0, cx + t0):cx + t0 + thick] = True
    return mask


def hud_mask(width: int, height: int) -> np.ndarray:
    """Bool (height, width): every pixel the HUD may change."""
    mask = crosshair_mask(width, height).copy()
    top, left, rows, cols = hotbar_box(width, height)
    mask[max(0, top):top + rows, max(0, left):left + cols] = True
    return mask


def draw_hud(frame: np.ndarray, hotbar: tuple[int, ...], selected_slot: int) -> None:
    """Draw the crosshair (inverting what is under it) and the hotbar into `frame` (H, W, 3) uint8, in place."""
    if len(hotbar) != HOTBAR_SLOTS:
        raise ValueError(f"hotbar must list {HOTBAR_SLOTS} block ids, got {len(hotbar)}")
    if not 0 <= selected_slot < HOTBAR_SLOTS:
        raise ValueError(f"selected_slot must be within 0..{HOTBAR_SLOTS - 1}, got {selected_slot}")
    height, width = frame.shape[:2]
    cross = crosshair_mask(width, height)
    frame[cross] = 255 - frame[cross]
    overlay = hotbar_overlay(width, height, tuple(int(b) for b in hotbar), int(selected_slot))
    top, left, rows, cols = hotbar_box(width, height)
    # Clip the box to the frame (tiny frames): the matching part of the overlay is drawn.
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + rows), min(width, left + cols)
    if y1 <= y0 or x1 <= x0:
        return
    part = overlay[y0 - top:y1 - top, x0 - left:x1 - left].astype(np.uint16)
    region = frame[y0:y1, x0:x1]
    a = part[..., 3:]
    region[...] = (region * (255 - a) + part[..., :3] * a + 127) // 255
