"""Batched first-person voxel raycaster in Triton: many worlds rendered at once on a GPU.

The kernel is `render.trace_ray` ported line by line, in float32 and vectorised over a tile of pixels:
one program traces a TILE_H × TILE_W tile of one view; every lane follows its own ray through the same DDA
loop, and a lane that would `break` or `continue` in the scalar code is masked instead. The loop runs until
every ray of the tile has finished (or the step bound that no ray within max_t can exceed).

What stays where:
- every world's voxels live on the device as one (B, S, height, S) uint8 tensor, the toroidal layout of
  `World.voxels`; a world seen for the first time is uploaded whole, afterwards only the 16×height×16 slots
  that `World.drain_dirty_slots()` names. Each slot's top (one above its highest block) is kept beside it,
  so the terrain ceiling of `render.terrain_ceiling` is a max over slots, never a scan of the world.
- per-view constants (eye, camera basis, lighting, target, crack stage, HUD) are one int32 row per view,
  float fields stored by bit pattern, built with numpy and copied once per call.
- the texture atlas is packed as one int32 RGBA word per texel, so a texel costs one gather; block flags
  (opaque, culled against itself, back faces shown) are bit masks passed as integers, so they cost none.
- the eye is split into an integer voxel origin and a fractional part, so float32 keeps the hit points
  exact to ~1e-7 blocks however far the player walks.
- the HUD (inverting crosshair, hotbar) is composited in the kernel from hud.py's own layers, with its
  integer blend, so pixels equal `draw_hud`'s.

Run `python -m worldsim.engine.render_gpu [--out PATH]` on a CUDA machine for the batched benchmark.
"""
import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import triton
import triton.language as tl

from worldsim.engine import render as cpu
from worldsim.engine.blocks import AIR, BRICK, NUM_BLOCKS, OPAQUE, WATER
from worldsim.engine.hud import HOTBAR_SLOTS, crosshair_mask, hotbar_box, hotbar_overlay
from worldsim.engine.render import View
from worldsim.engine.textures import ATLAS, CRACKS, FACE_BOTTOM, FACE_SIDE, FACE_TOP, TEX
from worldsim.engine.world import World
from worldsim.engine.worldgen import CHUNK

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Layout of one view's int32 parameter row; float fields hold float32 bit patterns.
P_EYE = tl.constexpr(0)            # 3 floats: the eye minus its voxel origin, in [0, 1)
P_FORWARD = tl.constexpr(3)        # 3 floats each: the camera basis
P_RIGHT = tl.constexpr(6)
P_UP = tl.constexpr(9)
P_MAX_T = tl.constexpr(12)         # float: how far a ray goes, in blocks
P_LIGHT = tl.constexpr(13)         # render.LIGHT_SIZE floats: render.light_vector
P_ORIGIN = tl.constexpr(13 + cpu.LIGHT_SIZE)   # 3 ints: floor of the eye
P_TARGET = tl.constexpr(P_ORIGIN + 3)          # 3 ints: the targeted block, or far below the world
P_CRACK = tl.constexpr(P_TARGET + 3)           # int: crack stage, -1 none
P_HUD = tl.constexpr(P_CRACK + 1)              # int: which HUD layer (hotbar and selection) to composite
NUM_PARAMS = tl.constexpr(P_HUD + 1)
NO_TARGET_Y = -(1 << 30)                       # a target no voxel index can equal
EYE_FRAC_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))   # float32 rounding must not reach 1

# render.py's constants, readable inside the kernel.
SHADE_TOP, SHADE_Z, SHADE_X, SHADE_BOTTOM = (tl.constexpr(c) for c in (
    cpu.SHADE_TOP, cpu.SHADE_Z, cpu.SHADE_X, cpu.SHADE_BOTTOM))
FOG_START, OUTLINE_PIXELS, OUTLINE_MIN_WIDTH, OUTLINE_ALPHA, CRACK_DARKEN, WATER_ABSORPTION = (
    tl.constexpr(c) for c in (cpu.FOG_START, cpu.OUTLINE_PIXELS, cpu.OUTLINE_MIN_WIDTH, cpu.OUTLINE_ALPHA,
                              cpu.CRACK_DARKEN, cpu.WATER_ABSORPTION))
SUN_COS, MOON_COS, TRANSMITTANCE_EPS, INV_255 = (
    tl.constexpr(c) for c in (cpu.SUN_COS, cpu.MOON_COS, cpu.TRANSMITTANCE_EPS, cpu.INV_255))
MOON_R, MOON_G, MOON_B = (tl.constexpr(c) for c in cpu.MOON_COLOUR)
L_ZENITH, L_HORIZON, L_TWILIGHT_RGB, L_SUN_DIR, L_SUN_RGB, L_WATER_FOG, L_TINT, L_TWILIGHT, L_LIGHT = (
    tl.constexpr(P_LIGHT + c) for c in (cpu.L_ZENITH, cpu.L_HORIZON, cpu.L_TWILIGHT_RGB, cpu.L_SUN_DIR,
                                        cpu.L_SUN_RGB, cpu.L_WATER_FOG, cpu.L_TINT, cpu.L_TWILIGHT, cpu.L_LIGHT))
K_AIR, K_WATER = tl.constexpr(AIR), tl.constexpr(WATER)
K_TOP, K_SIDE, K_BOTTOM = tl.constexpr(FACE_TOP), tl.constexpr(FACE_SIDE), tl.constexpr(FACE_BOTTOM)
K_TEX = tl.constexpr(TEX)
FAR = tl.constexpr(1.0e30)    # t_max along an axis the ray does not move on (the scalar code's inf)


def _bits(flags) -> int:
    """A per-block bool array as an int whose bit b is block b's flag (the kernel tests it with a shift)."""
    return int(sum(1 << b for b in range(NUM_BLOCKS) if flags[b]))


OPAQUE_BITS, CULL_SAME_BITS, BACK_FACE_BITS = _bits(OPAQUE), _bits(cpu.CULL_SAME), _bits(cpu.BACK_FACE)
assert NUM_BLOCKS <= 31, "block flags are packed into int32 bit masks"


def _alloc(shape, dtype, device):
    """Every output buffer comes from here, so tests can poison it."""
    return torch.empty(shape, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------------ kernel
@triton.jit
def _param(row, index):
    return tl.load(row + index).to(tl.float32, bitcast=True)


@triton.jit
def _texel(atlas, block, face, u, v, mask):
    """Packed RGBA word and texel indices of `block`'s `face` at (u, v), as render._face_texel."""
    tu = tl.minimum(K_TEX - 1, tl.maximum(0, (u * K_TEX).to(tl.int32)))
    tv = tl.minimum(K_TEX - 1, tl.maximum(0, (v * K_TEX).to(tl.int32)))
    word = tl.load(atlas + ((block * 3 + face) * K_TEX + tv) * K_TEX + tu, mask=mask, other=0)
    return word, tu, tv


@triton.jit
def _channel(word, shift):
    return ((word >> shift) & 255).to(tl.float32) * INV_255


@triton.jit
def _fog_amount(t, max_t):
    f = tl.minimum(1.0, tl.maximum(0.0, (t / max_t - FOG_START) / (1.0 - FOG_START)))
    return f * f * (3.0 - 2.0 * f)


@triton.jit
def _sky_colour(dx, dy, dz, row, with_sun: tl.constexpr):
    """render.sky_colour for a vector of directions; the glow term is exactly zero when twilight is."""
    up = tl.sqrt(tl.minimum(1.0, tl.maximum(0.0, dy)))
    r = _param(row, L_HORIZON) + (
        _param(row, L_ZENITH) - _param(row, L_HORIZON)) * up
    g = _param(row, L_HORIZON + 1) + (
        _param(row, L_ZENITH + 1) - _param(row, L_HORIZON + 1)) * up
    b = _param(row, L_HORIZON + 2) + (
        _param(row, L_ZENITH + 2) - _param(row, L_HORIZON + 2)) * up
    sx = _param(row, L_SUN_DIR)
    sy = _param(row, L_SUN_DIR + 1)
    sz = _param(row, L_SUN_DIR + 2)
    toward_sun = 0.5 + 0.5 * (dx * sx + dz * sz) / tl.sqrt(sx * sx + sz * sz + 1e-12)
    low = 1.0 - tl.minimum(1.0, tl.abs(dy))
    glow = _param(row, L_TWILIGHT) * toward_sun * toward_sun * low * low * low * low * 0.8
    r += (_param(row, L_TWILIGHT_RGB) - r) * glow
    g += (_param(row, L_TWILIGHT_RGB + 1) - g) * glow
    b += (_param(row, L_TWILIGHT_RGB + 2) - b) * glow
    if with_sun:
        facing = dx * sx + dy * sy + dz * sz
        sun = (dy > -0.02) & (facing > SUN_COS)
        moon = (dy > -0.02) & ~sun & (-facing > MOON_COS)     # the moon stands opposite the sun
        r = tl.where(sun, _param(row, L_SUN_RGB), tl.where(moon, MOON_R, r))
        g = tl.where(sun, _param(row, L_SUN_RGB + 1), tl.where(moon, MOON_G, g))
        b = tl.where(sun, _param(row, L_SUN_RGB + 2), tl.where(moon, MOON_B, b))
    return r, g, b


@triton.jit
def _render_kernel(voxels, ceilings, view_rows, atlas, cracks, cross, hud_layers, out,
                   H, W, tan_half, aspect, max_steps, mask, height, world_stride,
                   opaque_bits, cull_same_bits, back_face_bits,
                   TILE_H: tl.constexpr, TILE_W: tl.constexpr, HUD: tl.constexpr):
    """One program: a TILE_H × TILE_W tile of view `program_id(1)`; one lane per pixel, one ray per lane.

    (No parameter may be called `params`: triton 3.6's generated argument binder uses that name itself.)"""
    b = tl.program_id(1)
    tiles_x = tl.cdiv(W, TILE_W)
    p = tl.arange(0, TILE_H * TILE_W)
    i = (tl.program_id(0) // tiles_x) * TILE_H + p // TILE_W
    j = (tl.program_id(0) % tiles_x) * TILE_W + p % TILE_W
    in_frame = (i < H) & (j < W)
    row = view_rows + b * NUM_PARAMS
    world = voxels + b.to(tl.int64) * world_stride

    # 1. The ray through the pixel centre.
    sy = (1.0 - 2.0 * (i.to(tl.float32) + 0.5) / H) * tan_half
    sx = (2.0 * (j.to(tl.float32) + 0.5) / W - 1.0) * tan_half * aspect
    dx = _param(row, P_FORWARD) + sx * _param(row, P_RIGHT) + sy * _param(row, P_UP)
    dy = _param(row, P_FORWARD + 1) + sx * _param(row, P_RIGHT + 1) + sy * _param(row, P_UP + 1)
    dz = _param(row, P_FORWARD + 2) + sx * _param(row, P_RIGHT + 2) + sy * _param(row, P_UP + 2)
    norm = tl.sqrt(dx * dx + dy * dy + dz * dz)
    dx, dy, dz = dx / norm, dy / norm, dz / norm
    fx, fy, fz = _param(row, P_EYE), _param(row, P_EYE + 1), _param(row, P_EYE + 2)
    ox, oy, oz = tl.load(row + P_ORIGIN), tl.load(row + P_ORIGIN + 1), tl.load(row + P_ORIGIN + 2)
    tx, ty, tz = tl.load(row + P_TARGET), tl.load(row + P_TARGET + 1), tl.load(row + P_TARGET + 2)
    crack_stage = tl.load(row + P_CRACK)
    max_t = _param(row, P_MAX_T)
    ceiling = tl.load(ceilings + b)
    pixel_angle = 2.0 * tan_half / H     # a pixel's size in blocks per block of distance, at the centre
    lum = _param(row, L_LIGHT)
    water_r = _param(row, L_WATER_FOG)
    water_g = _param(row, L_WATER_FOG + 1)
    water_b = _param(row, L_WATER_FOG + 2)

    # 2. DDA set-up; a zero direction component keeps its t_max at FAR (the scalar code's inf).
    zero_i = tl.zeros([TILE_H * TILE_W], tl.int32)
    step_x = tl.where(dx > 0.0, 1, tl.where(dx < 0.0, -1, 0)) + zero_i
    step_y = tl.where(dy > 0.0, 1, tl.where(dy < 0.0, -1, 0)) + zero_i
    step_z = tl.where(dz > 0.0, 1, tl.where(dz < 0.0, -1, 0)) + zero_i
    safe_dx = tl.where(dx == 0.0, 1.0, dx)
    safe_dy = tl.where(dy == 0.0, 1.0, dy)
    safe_dz = tl.where(dz == 0.0, 1.0, dz)
    t_max_x = tl.where(dx > 0.0, (1.0 - fx) / safe_dx, tl.where(dx < 0.0, -fx / safe_dx, FAR))
    t_max_y = tl.where(dy > 0.0, (1.0 - fy) / safe_dy, tl.where(dy < 0.0, -fy / safe_dy, FAR))
    t_max_z = tl.where(dz > 0.0, (1.0 - fz) / safe_dz, tl.where(dz < 0.0, -fz / safe_dz, FAR))
    t_delta_x = tl.where(dx == 0.0, FAR, tl.abs(1.0 / safe_dx))
    t_delta_y = tl.where(dy == 0.0, FAR, tl.abs(1.0 / safe_dy))
    t_delta_z = tl.where(dz == 0.0, FAR, tl.abs(1.0 / safe_dz))
    ix, iy, iz = zero_i + ox, zero_i + oy, zero_i + oz

    fog_r, fog_g, fog_b = _sky_colour(dx, dy, dz, row, False)
    # The eye's own block: inside water or glass the ray starts in it; inside an opaque block we see out.
    eye_inside = (oy >= 0) & (oy < height)
    eye_block = tl.load(world + ((ox & mask) * height + oy) * (mask + 1) + (oz & mask), mask=eye_inside,
                        other=0).to(tl.int32)
    eye_block = tl.where(((opaque_bits >> eye_block) & 1) != 0, K_AIR, eye_block)
    prev = zero_i + eye_block
    water_t0 = tl.zeros([TILE_H * TILE_W], tl.float32)
    t = tl.zeros([TILE_H * TILE_W], tl.float32)
    r = tl.zeros([TILE_H * TILE_W], tl.float32)
    g = tl.zeros([TILE_H * TILE_W], tl.float32)
    bl = tl.zeros([TILE_H * TILE_W], tl.float32)
    trans = tl.zeros([TILE_H * TILE_W], tl.float32) + 1.0
    active = in_frame
    steps = 0
    while (steps < max_steps) & (tl.max(active.to(tl.int32), axis=0) > 0):
        # Step into the next voxel across the nearest boundary; axis 0/1/2 = x/y/z.
        on_x = (t_max_x < t_max_y) & (t_max_x < t_max_z)
        on_y = ~on_x & (t_max_y < t_max_z)
        on_z = ~on_x & ~on_y
        t = tl.where(active, tl.where(on_x, t_max_x, tl.where(on_y, t_max_y, t_max_z)), t)
        ix = tl.where(active & on_x, ix + step_x, ix)
        iy = tl.where(active & on_y, iy + step_y, iy)
        iz = tl.where(active & on_z, iz + step_z, iz)
        t_max_x = tl.where(active & on_x, t_max_x + t_delta_x, t_max_x)
        t_max_y = tl.where(active & on_y, t_max_y + t_delta_y, t_max_y)
        t_max_z = tl.where(active & on_z, t_max_z + t_delta_z, t_max_z)
        beyond = active & (t > max_t)
        t = tl.where(beyond, max_t, t)
        active = active & ~beyond
        # Leaving the world's y range moving away from it; above `ceiling` every block is air (see _sync).
        active = active & ~(((iy >= ceiling) & (step_y >= 0)) | ((iy < 0) & (step_y <= 0)))
        inside = active & (iy >= 0) & (iy < height)
        block = tl.load(world + ((ix & mask) * height + iy) * (mask + 1) + (iz & mask), mask=inside,
                        other=0).to(tl.int32)
        surface = active & ~((block == prev) & (((cull_same_bits >> block) & 1) != 0))

        # 3. A surface between `prev` and `block` at distance t: the hit point's coordinates within the face.
        px = fx + t * dx - (ix - ox).to(tl.float32)     # hit point relative to the voxel (ix, iy, iz)
        py = fy + t * dy - (iy - oy).to(tl.float32)
        pz = fz + t * dz - (iz - oz).to(tl.float32)
        u = tl.where(on_x, pz, px)
        v = tl.where(on_y, pz, 1.0 - py)
        face = tl.where(on_y, tl.where(step_y < 0, K_TOP, K_BOTTOM), K_SIDE)
        shade = tl.where(on_x, SHADE_X, tl.where(on_y, tl.where(step_y < 0, SHADE_TOP, SHADE_BOTTOM), SHADE_Z))
        fog = _fog_amount(t, max_t)
        k = shade * lum * (1.0 - fog)

        # Light absorbed along the way through the water, as a layer of water fog.
        in_water = surface & (prev == K_WATER)
        absorbed = 1.0 - tl.exp((water_t0 - t) * WATER_ABSORPTION)
        w = tl.where(in_water, trans * absorbed, 0.0)
        r += w * (water_r * lum * (1.0 - fog) + fog_r * fog)
        g += w * (water_g * lum * (1.0 - fog) + fog_g * fog)
        bl += w * (water_b * lum * (1.0 - fog) + fog_b * fog)
        trans = tl.where(in_water, trans * (1.0 - absorbed), trans)

        # Leaving glass or water: its face seen from inside (top and bottom swap).
        leaving = surface & (((back_face_bits >> prev) & 1) != 0)
        back = tl.where(on_y, tl.where(face == K_TOP, K_BOTTOM, K_TOP), face)
        word, tu, tv = _texel(atlas, prev, back, u, v, leaving)
        ca = _channel(word, 24)
        w = tl.where(leaving, trans * ca, 0.0)
        r += w * (_channel(word, 0) * k + fog_r * fog)
        g += w * (_channel(word, 8) * k + fog_g * fog)
        bl += w * (_channel(word, 16) * k + fog_b * fog)
        trans = tl.where(leaving, trans * (1.0 - ca), trans)

        # 4. Entering a block: its texel, with the target's cracks and outline.
        hit = surface & (block != K_AIR)
        word, tu, tv = _texel(atlas, block, face, u, v, hit)
        cr, cg, cb, ca = _channel(word, 0), _channel(word, 8), _channel(word, 16), _channel(word, 24)
        on_target = hit & (ix == tx) & (iy == ty) & (iz == tz)
        crack_row = tl.load(cracks + crack_stage * K_TEX + tv, mask=on_target & (zero_i + crack_stage >= 0), other=0)
        cracked = on_target & (ca > 0.0) & (((crack_row >> tu) & 1) != 0)
        darken = tl.where(cracked, CRACK_DARKEN, 1.0)
        cr, cg, cb = cr * darken, cg * darken, cb * darken
        band = tl.maximum(OUTLINE_MIN_WIDTH, t * (pixel_angle * OUTLINE_PIXELS))
        edge = on_target & (tl.minimum(tl.minimum(u, 1.0 - u), tl.minimum(v, 1.0 - v)) < band)
        outline = tl.where(edge, 1.0 - OUTLINE_ALPHA, 1.0)
        cr, cg, cb = cr * outline, cg * outline, cb * outline
        ca = tl.where(edge, tl.maximum(ca, OUTLINE_ALPHA), ca)
        ca = tl.where(((opaque_bits >> block) & 1) != 0, 1.0, ca)
        w = tl.where(hit, trans * ca, 0.0)
        r += w * (cr * k + fog_r * fog)
        g += w * (cg * k + fog_g * fog)
        bl += w * (cb * k + fog_b * fog)
        trans = tl.where(hit, trans * (1.0 - ca), trans)
        water_t0 = tl.where(surface & (block == K_WATER) & (prev != K_WATER), t, water_t0)
        prev = tl.where(surface, block, prev)
        active = active & ~(surface & (trans < TRANSMITTANCE_EPS))
        steps += 1

    # 5. Whatever transmittance is left: water absorbed up to where the ray ends, then the sky with the sun
    # (which shows beyond the fogged edge).
    lit = trans >= TRANSMITTANCE_EPS
    fog = _fog_amount(t, max_t)
    absorbed = 1.0 - tl.exp((water_t0 - t) * WATER_ABSORPTION)
    w = tl.where(lit & (prev == K_WATER), trans * absorbed, 0.0)
    r += w * (water_r * lum * (1.0 - fog) + fog_r * fog)
    g += w * (water_g * lum * (1.0 - fog) + fog_g * fog)
    bl += w * (water_b * lum * (1.0 - fog) + fog_b * fog)
    trans = tl.where(lit & (prev == K_WATER), trans * (1.0 - absorbed), trans)
    sky_r, sky_g, sky_b = _sky_colour(dx, dy, dz, row, True)
    w = tl.where(lit, trans, 0.0)
    r += w * sky_r
    g += w * sky_g
    bl += w * sky_b
    r *= _param(row, L_TINT)
    g *= _param(row, L_TINT + 1)
    bl *= _param(row, L_TINT + 2)

    red = tl.minimum(255.0, tl.maximum(0.0, r * 255.0 + 0.5)).to(tl.int32)
    green = tl.minimum(255.0, tl.maximum(0.0, g * 255.0 + 0.5)).to(tl.int32)
    blue = tl.minimum(255.0, tl.maximum(0.0, bl * 255.0 + 0.5)).to(tl.int32)
    if HUD:   # hud.draw_hud: invert under the crosshair, then blend the hotbar layer with its integer rounding
        pixel = i * W + j
        crossed = tl.load(cross + pixel, mask=in_frame, other=0) != 0
        red = tl.where(crossed, 255 - red, red)
        green = tl.where(crossed, 255 - green, green)
        blue = tl.where(crossed, 255 - blue, blue)
        layer = tl.load(row + P_HUD)
        over = tl.load(hud_layers + layer * H * W + pixel, mask=in_frame, other=0)
        alpha = (over >> 24) & 255
        red = (red * (255 - alpha) + (over & 255) * alpha + 127) // 255
        green = (green * (255 - alpha) + ((over >> 8) & 255) * alpha + 127) // 255
        blue = (blue * (255 - alpha) + ((over >> 16) & 255) * alpha + 127) // 255
    dst = out + ((b.to(tl.int64) * H + i) * W + j) * 3
    tl.store(dst, red.to(tl.uint8), mask=in_frame)
    tl.store(dst + 1, green.to(tl.uint8), mask=in_frame)
    tl.store(dst + 2, blue.to(tl.uint8), mask=in_frame)


# -------------------------------------------------------------------------------------------- host side
def _pack_rgba(rgba: np.ndarray) -> np.ndarray:
    """uint8 (..., 4) RGBA as int32 words r | g << 8 | b << 16 | a << 24."""
    words = rgba[..., 0].astype(np.uint32) | rgba[..., 1].astype(np.uint32) << 8 | \
        rgba[..., 2].astype(np.uint32) << 16 | rgba[..., 3].astype(np.uint32) << 24
    return words.view(np.int32)


class BatchRenderer:
    """Renders B worlds at once on a torch device with a Triton raycaster; frames equal Renderer's up to rounding.

    Worlds are mirrored on the device: whole on first sight (or when the batch's worlds change), then only
    the slots `World.drain_dirty_slots()` returns, so edits go through `World.set_block` or column loading.
    This renderer drains those slots: give each World to one BatchRenderer only.
    """

    # Interpreter: few, long numpy vectors (and the tests' 24-row frames straddle two tiles); GPU: 4 warps of rays.
    TILE_H, TILE_W = (16, 32) if INTERPRET else (8, 16)

    def __init__(self, width: int, height: int, fov: float = 70.0, view_distance: int = 48, hud: bool = True,
                 device="cuda"):
        cpu.Renderer(width, height, fov, view_distance, hud)     # the same argument checks
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("BatchRenderer was asked for CUDA but torch sees no CUDA device; on the CPU pass "
                               "device='cpu' with TRITON_INTERPRET=1 set before triton is imported")
        if self.device.type != "cuda" and not INTERPRET:
            raise RuntimeError("BatchRenderer needs a CUDA device, or TRITON_INTERPRET=1 set before triton is "
                               f"imported to run on {self.device}")
        self.width, self.height = int(width), int(height)
        self.fov, self.view_distance, self.hud = float(fov), int(view_distance), bool(hud)
        self._tan_half = math.tan(math.radians(self.fov) / 2.0)
        self._atlas = torch.from_numpy(_pack_rgba(ATLAS).reshape(-1)).to(self.device)
        crack_rows = (CRACKS.astype(np.int32) << np.arange(TEX, dtype=np.int32)).sum(-1, dtype=np.int32)
        self._cracks = torch.from_numpy(crack_rows.reshape(-1)).to(self.device)     # (stage, row) bit masks
        cross = crosshair_mask(self.width, self.height).astype(np.uint8)
        self._cross = torch.from_numpy(cross.reshape(-1)).to(self.device)
        self._hud_index: dict[tuple[tuple[int, ...], int], int] = {}
        self._hud_layers = torch.zeros((1, self.height * self.width), dtype=torch.int32, device=self.device)
        self._worlds: list[World] = []
        self._voxels = torch.zeros((0, 1, 1, 1), dtype=torch.uint8, device=self.device)   # (B, S, height, S)
        self._slot_tops = torch.zeros((0, 1, 1), dtype=torch.int32, device=self.device)   # (B, slots, slots)
        self._ceilings = torch.zeros(0, dtype=torch.int32, device=self.device)

    # ------------------------------------------------------------------------------------ world mirror
    def _sync(self, worlds: list[World]) -> None:
        """Bring the device copy of every world up to date with its host voxels."""
        shape = worlds[0].voxels.shape
        for world in worlds:
            if world.voxels.shape != shape:
                raise ValueError(f"all worlds of a batch need the same voxel shape, got {world.voxels.shape} "
                                 f"and {shape} (same view_distance and height)")
        if len(worlds) != len(self._worlds) or tuple(self._voxels.shape[1:]) != shape:
            self._voxels = torch.empty((len(worlds),) + shape, dtype=torch.uint8, device=self.device)
            slots = shape[0] // CHUNK
            self._slot_tops = torch.zeros((len(worlds), slots, slots), dtype=torch.int32, device=self.device)
            self._worlds = [None] * len(worlds)
        unique = {id(world): world for world in worlds}
        dirty = {key: world.drain_dirty_slots() for key, world in unique.items()}   # once per World, wherever it sits
        changed = False
        for b, world in enumerate(worlds):
            if self._worlds[b] is not world:
                self._upload_world(b, world)
                self._worlds[b] = world
                changed = True
            elif dirty[id(world)]:
                self._upload_slots(b, world, dirty[id(world)])
                changed = True
        if changed:
            # A ray may stop once it climbs past the first all-air layer above the highest block: it has
            # already met its last surface (into that layer) and ends in the sky as a ray leaving the world.
            height = shape[1]
            self._ceilings = torch.clamp(self._slot_tops.flatten(1).amax(1) + 1, max=height).to(torch.int32)

    def _upload_world(self, b: int, world: World) -> None:
        dst = self._voxels[b]
        dst.copy_(torch.from_numpy(world.voxels))
        size, height, _ = dst.shape
        slots = size // CHUNK
        occupied = (dst.view(slots, CHUNK, height, slots, CHUNK) != AIR).any(dim=4).any(dim=1)  # (sx, y, sz)
        ys = torch.arange(1, height + 1, dtype=torch.int32, device=self.device)
        self._slot_tops[b] = (occupied.to(torch.int32) * ys[None, :, None]).amax(dim=1)

    def _upload_slots(self, b: int, world: World, slots: list[tuple[int, int]]) -> None:
        sx = np.array([s[0] for s in slots])
        sz = np.array([s[1] for s in slots])
        size, height = world.voxels.shape[:2]
        host = world.voxels.reshape(size // CHUNK, CHUNK, height, size // CHUNK, CHUNK)[sx, :, :, sz, :]
        columns = torch.from_numpy(np.ascontiguousarray(host)).to(self.device)   # (n, 16, height, 16)
        sx_t, sz_t = torch.from_numpy(sx).to(self.device), torch.from_numpy(sz).to(self.device)
        self._voxels[b].view(size // CHUNK, CHUNK, height, size // CHUNK, CHUNK)[sx_t, :, :, sz_t, :] = columns
        occupied = (columns != AIR).any(dim=3).any(dim=1)                                # (n, y)
        ys = torch.arange(1, height + 1, dtype=torch.int32, device=self.device)
        self._slot_tops[b, sx_t, sz_t] = (occupied.to(torch.int32) * ys).amax(dim=1)

    # ------------------------------------------------------------------------------------------- views
    def _hud_layer(self, hotbar: tuple[int, ...], selected: int) -> int:
        """Index of the full-frame RGBA layer of hud.py's hotbar for this hotbar and selection (made once)."""
        key = (tuple(int(block) for block in hotbar), int(selected))
        if key not in self._hud_index:
            layer = np.zeros((self.height, self.width, 4), np.uint8)     # alpha 0 leaves a pixel as it is
            overlay = hotbar_overlay(self.width, self.height, key[0], key[1])
            top, left, rows, cols = hotbar_box(self.width, self.height)
            y0, x0 = max(0, top), max(0, left)
            y1, x1 = min(self.height, top + rows), min(self.width, left + cols)
            if y1 > y0 and x1 > x0:
                layer[y0:y1, x0:x1] = overlay[y0 - top:y1 - top, x0 - left:x1 - left]
            words = torch.from_numpy(_pack_rgba(layer).reshape(1, -1)).to(self.device)
            self._hud_layers = words if not self._hud_index else torch.cat([self._hud_layers, words])
            self._hud_index[key] = len(self._hud_index)
        return self._hud_index[key]

    def _params(self, worlds: list[World], views: list[View]) -> np.ndarray:
        """(B, NUM_PARAMS) int32 rows of per-view constants, float fields as float32 bit patterns."""
        eye = np.array([view.eye for view in views], np.float64)
        origin = np.floor(eye)
        yaw = np.array([view.yaw for view in views], np.float64)
        pitch = np.array([view.pitch for view in views], np.float64)
        times = np.array([view.time_of_day for view in views], np.float64) % 1.0
        underwater = np.zeros(len(views), bool)
        target = np.zeros((len(views), 3), np.int64)
        target[:, 1] = NO_TARGET_Y
        crack = np.full(len(views), -1, np.int64)
        hud = np.zeros(len(views), np.int64)
        for b, (world, view) in enumerate(zip(worlds, views)):
            x, y, z = (int(c) for c in origin[b])
            underwater[b] = 0 <= y < world.height and world.voxels[x & world.mask, y, z & world.mask] == WATER
            if view.target is not None:
                target[b] = view.target
                crack[b] = view.crack_stage
            if self.hud:
                hud[b] = self._hud_layer(view.hotbar, view.selected_slot)
        forward, right, up = cpu.camera_bases(yaw, pitch)
        floats = np.zeros((len(views), P_ORIGIN), np.float32)
        floats[:, P_EYE:P_EYE + 3] = np.minimum(eye - origin, EYE_FRAC_MAX)
        floats[:, P_FORWARD:P_FORWARD + 3] = forward
        floats[:, P_RIGHT:P_RIGHT + 3] = right
        floats[:, P_UP:P_UP + 3] = up
        floats[:, P_MAX_T] = [min(self.view_distance, world.view_distance) for world in worlds]
        floats[:, P_LIGHT:P_LIGHT + cpu.LIGHT_SIZE] = cpu.light_vectors(times, underwater)
        params = np.empty((len(views), NUM_PARAMS), np.int32)
        params[:, :P_ORIGIN] = floats.view(np.int32)
        params[:, P_ORIGIN:P_ORIGIN + 3] = origin
        params[:, P_TARGET:P_TARGET + 3] = target
        params[:, P_CRACK] = crack
        params[:, P_HUD] = hud
        return params

    # ------------------------------------------------------------------------------------------ render
    def render(self, worlds: list[World], views: list[View]) -> torch.Tensor:
        """uint8 (B, height, width, 3) frames on the device, frame b being worlds[b] seen from views[b]."""
        worlds, views = list(worlds), list(views)
        if len(worlds) != len(views):
            raise ValueError(f"render needs one view per world, got {len(worlds)} worlds and {len(views)} views")
        if not worlds:
            raise ValueError("render needs at least one world and view")
        for view in views:
            cpu.check_view(view)
        params = torch.from_numpy(self._params(worlds, views))
        if self.device.type == "cuda":
            params = params.pin_memory()
        params = params.to(self.device, non_blocking=True)
        self._sync(worlds)
        max_t = max(min(self.view_distance, world.view_distance) for world in worlds)
        frames = _alloc((len(worlds), self.height, self.width, 3), torch.uint8, self.device)
        self._launch(params, max_t, frames)
        return frames

    def _launch(self, params: torch.Tensor, max_t: float, frames: torch.Tensor) -> None:
        size, height = self._voxels.shape[1], self._voxels.shape[2]
        # A ray of length L crosses at most sqrt(3) L + 3 cell boundaries; one step more goes past max_t.
        max_steps = math.ceil(math.sqrt(3.0) * max_t) + 5
        grid = (triton.cdiv(self.height, self.TILE_H) * triton.cdiv(self.width, self.TILE_W), len(frames))
        _render_kernel[grid](
            self._voxels, self._ceilings, params, self._atlas, self._cracks, self._cross, self._hud_layers, frames,
            self.height, self.width, self._tan_half, self.width / self.height, max_steps, size - 1, height,
            size * height * size, OPAQUE_BITS, CULL_SAME_BITS, BACK_FACE_BITS,
            TILE_H=self.TILE_H, TILE_W=self.TILE_W, HUD=self.hud, num_warps=4)


# ------------------------------------------------------------------------------------------- benchmark
def _spawn_world(view_distance: int) -> tuple[World, tuple[float, float, float]]:
    """The default terrain (seed 0) loaded around the spawn, and the eye of a player standing there."""
    from worldsim.engine.worldgen import spawn_point
    world = World(seed=0, view_distance=view_distance)
    x, y, z = spawn_point(0)
    world.ensure_loaded(x, z)
    return world, (x, y + 1.62, z)


def check(width: int = 128, height: int = 128, view_distance: int = 48, device: str = "cuda") -> list[dict]:
    """Per view of the spawn: max and mean |difference| from the numba Renderer, and the fraction within 2 levels."""
    world, eye = _spawn_world(view_distance)
    x, y, z = (math.floor(c) for c in eye)
    world.set_block(x, y, z + 3, BRICK)
    views = [View(eye=eye, yaw=30.0, pitch=10.0), View(eye=eye, yaw=200.0, pitch=-5.0, time_of_day=0.48),
             View(eye=eye, yaw=0.0, pitch=0.0, target=(x, y, z + 3), crack_stage=7, selected_slot=5),
             View(eye=eye, yaw=0.0, pitch=-40.0, time_of_day=0.75), View(eye=eye, yaw=90.0, pitch=60.0)]
    got = BatchRenderer(width, height, view_distance=view_distance, device=device).render(
        [world] * len(views), views).cpu().numpy().astype(int)
    reference = cpu.Renderer(width, height, view_distance=view_distance)
    stats = []
    for k, view in enumerate(views):
        diff = np.abs(got[k] - reference.render(world, view).astype(int))
        stats.append({"max": int(diff.max()), "mean": float(diff.mean()),
                      "within_2": float((diff.max(axis=-1) <= 2).mean())})
        print(f"check view {k}: max |diff| {diff.max():3d}  mean {diff.mean():.4f}  "
              f"within 2 levels {stats[-1]['within_2']:.2%}", flush=True)
    return stats


def benchmark(batch_sizes=(1, 64, 256, 1024), width: int = 128, height: int = 128, seconds: float = 2.0,
              device: str = "cuda") -> dict:
    """Frames/s of BatchRenderer with HUD at width × height for each batch size, on the default terrain.

    The B worlds share one generated world's voxels (each still gets its own device copy); views differ in
    yaw, pitch, time of day and hotbar selection. A figure times whole `render` calls (host-side view
    packing included), with the device synchronised before and after the timed loop.
    """
    base, (x, y, z) = _spawn_world(48)
    base.drain_dirty_slots()
    renderer = BatchRenderer(width, height, device=device)
    results = {"device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else str(device),
               "resolution": f"{width}x{height}", "hud": True, "view_distance": 48,
               "timing": "whole render calls, synchronised around the loop", "frames_per_s": {}}
    for batch in batch_sizes:
        worlds = []
        for _ in range(batch):
            world = copy.copy(base)         # shares the voxel array; the renderer still uploads one copy each
            world.dirty_slots = set()
            worlds.append(world)
        views = [View(eye=(x, y, z), yaw=(360.0 * k / batch + 17.0) % 360.0,
                      pitch=-20.0 + 50.0 * ((k * 7) % 11) / 10.0, time_of_day=0.1 + 0.3 * (k % 5) / 4.0,
                      selected_slot=k % HOTBAR_SLOTS) for k in range(batch)]
        renderer.render(worlds, views)        # compile, upload the worlds
        _synchronize(device)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 3:
            renderer.render(worlds, views)
            calls += 1
        _synchronize(device)
        elapsed = time.perf_counter() - start
        results["frames_per_s"][str(batch)] = batch * calls / elapsed
        print(f"B={batch:5d}  {batch * calls / elapsed:10.1f} frames/s  ({1e3 * elapsed / calls:7.2f} ms/call)",
              flush=True)
    return results


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_results/render_gpu.json", help="where to save the JSON results")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256, 1024])
    parser.add_argument("--size", type=int, default=128, help="frame width and height")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-check", action="store_true", help="skip comparing a few frames with the numba renderer")
    args = parser.parse_args(argv)
    results = {}
    if not args.no_check:
        results["check_vs_numba"] = check(args.size, args.size, device=args.device)
    results.update(benchmark(tuple(args.batch), args.size, args.size, args.seconds, args.device))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
