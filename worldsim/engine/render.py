"""First-person voxel raycaster on the CPU (numba): textures, per-face shading, fog, sky, day and night.

Each pixel is one ray, traced by `trace_ray` alone, so a GPU port can copy that function line by line:

1. Ray. The pixel centre (j + 0.5, i + 0.5) maps to screen coordinates sx (right) and sy (up) scaled by
   tan(fov / 2) (and the aspect ratio for sx); the direction forward + sx * right + sy * up is normalised,
   so the ray parameter t is a distance in blocks.
2. Walk. Amanatides-Woo DDA from the eye's voxel: step across whichever of the x, y, z cell boundaries is
   nearest (ties go to z, then y: x only when strictly nearest). A ray stops when t exceeds the view
   distance, or when it leaves the world's y range moving away from it. Above or below the world is air.
   The eye's own voxel is skipped if opaque; if it is water or glass the ray starts inside it.
3. Surfaces. Every boundary where the block changes is a surface (a block next to itself is culled, except
   leaves). On a surface the texel at the exact hit point (nearest neighbour) is shaded by the face's
   direction and the daylight, fogged by distance, and composited front to back with its alpha:
   opaque blocks end the ray, leaf holes and glass let it go on, water is half see-through and also absorbs
   light along the distance the ray travels inside it. Glass and water also show their back faces.
4. The targeted block gets a dark outline along its face edges and the crack texels of the current stage.
5. Whatever transmittance is left takes the sky colour (with the sun and moon). The fog colour is the sky
   colour in the ray's direction without them, so fogged terrain fades seamlessly into the sky.

Colours are floats in 0..1 until the final rounding to uint8; this CPU version computes in float64.
"""
import math
import time
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from worldsim.engine.blocks import AIR, DEFAULT_HOTBAR, GLASS, LEAVES, NUM_BLOCKS, OPAQUE, WATER
from worldsim.engine.hud import HOTBAR_SLOTS, draw_hud
from worldsim.engine.textures import ATLAS, CRACKS, FACE_BOTTOM, FACE_SIDE, FACE_TOP, TEX
from worldsim.engine.world import World

# Face brightness as in Minecraft: tops brightest, z-facing sides lighter than x-facing ones, bottoms darkest.
SHADE_TOP, SHADE_Z, SHADE_X, SHADE_BOTTOM = 1.0, 0.8, 0.6, 0.5
FOG_START = 0.35            # fog begins at this fraction of the view distance and is total at the view distance
OUTLINE_PIXELS = 1.25       # the targeted block's dark edge band is about this many pixels wide on screen,
OUTLINE_MIN_WIDTH = 1.0 / 48  # and at least this many blocks wide close up
OUTLINE_ALPHA = 0.8
CRACK_DARKEN = 0.3          # cracked texels keep this fraction of their colour
WATER_ABSORPTION = 0.1      # per block travelled inside water; exp(-0.1 * 16) ≈ 0.2 left after 16 blocks
WATER_FOG = (0.08, 0.20, 0.50)
UNDERWATER_TINT = (0.55, 0.70, 1.0)
MIN_LIGHT = 0.18            # the darkest midnight keeps this fraction of daylight
SUN_COS = math.cos(math.radians(4.0))   # angular radius of the sun disc
MOON_COS = math.cos(math.radians(3.0))  # angular radius of the moon disc
SUN_TILT = math.radians(25.0)           # the sun's path leans towards +z so it is not straight overhead at noon
INV_255 = 1.0 / 255.0
TRANSMITTANCE_EPS = 1.0 / 512           # below this nothing further along the ray can change a pixel

# Colours (0..1) of the sky at full day and at full night, and the orange glow around sunrise and sunset.
DAY_ZENITH, DAY_HORIZON = (0.36, 0.56, 0.98), (0.70, 0.82, 1.0)
NIGHT_ZENITH, NIGHT_HORIZON = (0.01, 0.015, 0.05), (0.04, 0.06, 0.14)
TWILIGHT = (1.0, 0.55, 0.25)
SUN_COLOUR = (1.0, 0.97, 0.80)
MOON_COLOUR = (0.82, 0.84, 0.88)

# Per-block flags for the kernel. A block whose neighbour is the same block shows no face between them,
# except leaves (Minecraft's fancy leaves); glass and water show their back faces when a ray leaves them.
CULL_SAME = np.ones(NUM_BLOCKS, np.bool_)
CULL_SAME[LEAVES] = False
BACK_FACE = np.zeros(NUM_BLOCKS, np.bool_)
BACK_FACE[[GLASS, WATER]] = True

# Layout of the per-frame float64 `light` vector read by sky_colour and trace_ray.
(L_ZENITH, L_HORIZON, L_TWILIGHT_RGB, L_SUN_DIR, L_SUN_RGB, L_WATER_FOG, L_TINT) = 0, 3, 6, 9, 12, 15, 18
L_TWILIGHT, L_LIGHT, L_UNDERWATER = 21, 22, 23
LIGHT_SIZE = 24


@dataclass
class View:
    """Where the camera is and what the HUD shows: everything a frame depends on besides the world."""
    eye: tuple[float, float, float]   # eye position in blocks
    yaw: float                        # degrees; 0 looks along +z, 90 along -x
    pitch: float                      # degrees, positive looks down (MineRL)
    time_of_day: float = 0.25         # fraction of a day: 0 sunrise, 0.25 noon, 0.5 sunset, 0.75 midnight
    target: tuple[int, int, int] | None = None   # targeted block: outlined
    crack_stage: int = -1             # -1 none, 0..9 crack overlay on the target while breaking
    hotbar: tuple[int, ...] = DEFAULT_HOTBAR     # 9 block ids
    selected_slot: int = 0            # 0..8


def _mix(a, b, w):
    return tuple(x * (1.0 - w) + y * w for x, y in zip(a, b))


def light_vectors(time_of_day: np.ndarray, underwater: np.ndarray) -> np.ndarray:
    """The per-frame lighting constants (sky colours, sun, daylight) for arrays of times of day and underwater
    flags, one float64 row of LIGHT_SIZE per frame."""
    time_of_day = np.asarray(time_of_day, np.float64)
    underwater = np.asarray(underwater, np.bool_)
    angle = 2.0 * np.pi * time_of_day                          # 0 sunrise in +x, pi/2 noon, pi sunset in -x
    elevation = np.sin(angle)
    daylight = np.clip(0.5 + 2.5 * elevation, 0.0, 1.0)[:, None]
    twilight = np.clip(1.0 - np.abs(elevation) / 0.35, 0.0, 1.0)

    def mix(night, day):
        return np.asarray(night) * (1.0 - daylight) + np.asarray(day) * daylight

    out = np.zeros((len(time_of_day), LIGHT_SIZE), np.float64)
    out[:, L_ZENITH:L_ZENITH + 3] = mix(NIGHT_ZENITH, DAY_ZENITH)
    out[:, L_HORIZON:L_HORIZON + 3] = mix(NIGHT_HORIZON, DAY_HORIZON)
    out[:, L_TWILIGHT_RGB:L_TWILIGHT_RGB + 3] = TWILIGHT
    out[:, L_SUN_DIR:L_SUN_DIR + 3] = np.stack(
        [np.cos(angle), elevation * math.cos(SUN_TILT), elevation * math.sin(SUN_TILT)], -1)
    out[:, L_SUN_RGB:L_SUN_RGB + 3] = SUN_COLOUR
    out[:, L_WATER_FOG:L_WATER_FOG + 3] = WATER_FOG
    out[:, L_TINT:L_TINT + 3] = np.where(underwater[:, None], UNDERWATER_TINT, 1.0)
    out[:, L_TWILIGHT] = twilight
    out[:, L_LIGHT] = MIN_LIGHT + (1.0 - MIN_LIGHT) * daylight[:, 0]
    out[:, L_UNDERWATER] = underwater
    return out


def light_vector(time_of_day: float, underwater: bool) -> np.ndarray:
    """light_vectors for one frame: a float64 vector of LIGHT_SIZE."""
    return light_vectors(np.array([time_of_day]), np.array([underwater]))[0]


@njit(cache=True)
def sky_colour(dx, dy, dz, light, with_sun):
    """Sky seen along unit direction (dx, dy, dz): horizon to zenith gradient, twilight glow, the sun disc."""
    up = math.sqrt(min(1.0, max(0.0, dy)))
    r = light[L_HORIZON] + (light[L_ZENITH] - light[L_HORIZON]) * up
    g = light[L_HORIZON + 1] + (light[L_ZENITH + 1] - light[L_HORIZON + 1]) * up
    b = light[L_HORIZON + 2] + (light[L_ZENITH + 2] - light[L_HORIZON + 2]) * up
    sx, sy, sz = light[L_SUN_DIR], light[L_SUN_DIR + 1], light[L_SUN_DIR + 2]
    if light[L_TWILIGHT] > 0.0:
        toward_sun = 0.5 + 0.5 * (dx * sx + dz * sz) / math.sqrt(sx * sx + sz * sz + 1e-12)
        low = 1.0 - min(1.0, abs(dy))
        glow = light[L_TWILIGHT] * toward_sun * toward_sun * low * low * low * low * 0.8
        r += (light[L_TWILIGHT_RGB] - r) * glow
        g += (light[L_TWILIGHT_RGB + 1] - g) * glow
        b += (light[L_TWILIGHT_RGB + 2] - b) * glow
    if with_sun and dy > -0.02:
        facing = dx * sx + dy * sy + dz * sz
        if facing > SUN_COS:
            r, g, b = light[L_SUN_RGB], light[L_SUN_RGB + 1], light[L_SUN_RGB + 2]
        elif -facing > MOON_COS:      # the moon stands opposite the sun
            r, g, b = MOON_COLOUR[0], MOON_COLOUR[1], MOON_COLOUR[2]
    return r, g, b


@njit(cache=True)
def fog_amount(t, max_t):
    """How much of the fog colour replaces a surface at distance t: 0 up to FOG_START, 1 at max_t, smooth between."""
    f = min(1.0, max(0.0, (t / max_t - FOG_START) / (1.0 - FOG_START)))
    return f * f * (3.0 - 2.0 * f)


@njit(cache=True)
def _face_texel(atlas, block, face, u, v):
    """RGBA (0..1) and the texel indices of `block`'s face kind `face` at face coordinates (u, v) in [0, 1)."""
    tu = min(TEX - 1, max(0, int(u * TEX)))
    tv = min(TEX - 1, max(0, int(v * TEX)))
    r = atlas[block, face, tv, tu, 0] * INV_255
    g = atlas[block, face, tv, tu, 1] * INV_255
    b = atlas[block, face, tv, tu, 2] * INV_255
    a = atlas[block, face, tv, tu, 3] * INV_255
    return r, g, b, a, tu, tv


@njit(cache=True)
def _composite(r, g, b, trans, cr, cg, cb, alpha, light, fog, fog_r, fog_g, fog_b):
    """Front-to-back blending: add a layer of colour (cr, cg, cb) lit by `light` and fogged by `fog` with
    opacity `alpha` behind what the ray has accumulated so far, whose remaining transmittance is `trans`."""
    w = trans * alpha
    k = light * (1.0 - fog)
    return (r + w * (cr * k + fog_r * fog), g + w * (cg * k + fog_g * fog), b + w * (cb * k + fog_b * fog),
            trans * (1.0 - alpha))


@njit(cache=True)
def trace_ray(voxels, mask, height, ex, ey, ez, dx, dy, dz, max_t, pixel_angle, atlas, opaque,
              cull_same, back_face, light, tx, ty, tz, crack_stage, cracks):
    """Colour (r, g, b in 0..1) seen along the unit ray from the eye (ex, ey, ez) in direction (dx, dy, dz)."""
    ix, iy, iz = int(math.floor(ex)), int(math.floor(ey)), int(math.floor(ez))
    inf = math.inf
    step_x, step_y, step_z = 0, 0, 0
    t_max_x, t_max_y, t_max_z = inf, inf, inf
    t_delta_x, t_delta_y, t_delta_z = inf, inf, inf
    if dx > 0.0:
        step_x, t_max_x, t_delta_x = 1, (ix + 1 - ex) / dx, 1.0 / dx
    elif dx < 0.0:
        step_x, t_max_x, t_delta_x = -1, (ix - ex) / dx, -1.0 / dx
    if dy > 0.0:
        step_y, t_max_y, t_delta_y = 1, (iy + 1 - ey) / dy, 1.0 / dy
    elif dy < 0.0:
        step_y, t_max_y, t_delta_y = -1, (iy - ey) / dy, -1.0 / dy
    if dz > 0.0:
        step_z, t_max_z, t_delta_z = 1, (iz + 1 - ez) / dz, 1.0 / dz
    elif dz < 0.0:
        step_z, t_max_z, t_delta_z = -1, (iz - ez) / dz, -1.0 / dz

    fog_r, fog_g, fog_b = sky_colour(dx, dy, dz, light, False)
    lum = light[L_LIGHT]
    # The eye's own block: inside water or glass the ray starts in it; inside an opaque block we see out.
    prev = AIR
    if 0 <= iy < height:
        prev = voxels[ix & mask, iy, iz & mask]
        if opaque[prev]:
            prev = AIR
    water_t0 = 0.0
    r, g, b, trans = 0.0, 0.0, 0.0, 1.0
    t = 0.0
    while True:
        # Step into the next voxel across the nearest boundary; axis 0/1/2 = x/y/z.
        if t_max_x < t_max_y and t_max_x < t_max_z:
            axis, t = 0, t_max_x
            ix += step_x
            t_max_x += t_delta_x
        elif t_max_y < t_max_z:
            axis, t = 1, t_max_y
            iy += step_y
            t_max_y += t_delta_y
        else:
            axis, t = 2, t_max_z
            iz += step_z
            t_max_z += t_delta_z
        if t > max_t:
            t = max_t
            break
        if iy >= height or iy < 0:
            if (iy >= height and step_y >= 0) or (iy < 0 and step_y <= 0):
                break
            block = AIR
        else:
            block = voxels[ix & mask, iy, iz & mask]
        if block == prev and cull_same[block]:
            continue

        # A surface between `prev` and `block` at distance t: the hit point's coordinates within the face.
        px, py, pz = ex + t * dx, ey + t * dy, ez + t * dz
        if axis == 0:
            u, v, shade = pz - iz, 1.0 - (py - iy), SHADE_X
            face = FACE_SIDE
        elif axis == 1:
            u, v = px - ix, pz - iz
            if step_y < 0:
                face, shade = FACE_TOP, SHADE_TOP
            else:
                face, shade = FACE_BOTTOM, SHADE_BOTTOM
        else:
            u, v, shade = px - ix, 1.0 - (py - iy), SHADE_Z
            face = FACE_SIDE
        fog = fog_amount(t, max_t)

        if prev == WATER:   # light absorbed along the way through the water, as a layer of water fog
            absorbed = 1.0 - math.exp(-WATER_ABSORPTION * (t - water_t0))
            r, g, b, trans = _composite(r, g, b, trans, light[L_WATER_FOG], light[L_WATER_FOG + 1],
                                        light[L_WATER_FOG + 2], absorbed, lum, fog, fog_r, fog_g, fog_b)
        if back_face[prev]:   # leaving glass or water: its face seen from inside (top and bottom swap)
            back = face
            if axis == 1:
                back = FACE_BOTTOM if face == FACE_TOP else FACE_TOP
            cr, cg, cb, ca, tu, tv = _face_texel(atlas, prev, back, u, v)
            r, g, b, trans = _composite(r, g, b, trans, cr, cg, cb, ca, shade * lum, fog, fog_r, fog_g, fog_b)

        if block != AIR:
            cr, cg, cb, ca, tu, tv = _face_texel(atlas, block, face, u, v)
            if ix == tx and iy == ty and iz == tz:
                if ca > 0.0 and crack_stage >= 0 and cracks[crack_stage, tv, tu] != 0:
                    cr, cg, cb = cr * CRACK_DARKEN, cg * CRACK_DARKEN, cb * CRACK_DARKEN
                if min(u, 1.0 - u, v, 1.0 - v) < max(OUTLINE_MIN_WIDTH, OUTLINE_PIXELS * pixel_angle * t):
                    cr, cg, cb = cr * (1.0 - OUTLINE_ALPHA), cg * (1.0 - OUTLINE_ALPHA), cb * (1.0 - OUTLINE_ALPHA)
                    ca = max(ca, OUTLINE_ALPHA)
            if opaque[block]:
                ca = 1.0
            r, g, b, trans = _composite(r, g, b, trans, cr, cg, cb, ca, shade * lum, fog, fog_r, fog_g, fog_b)
        if block == WATER and prev != WATER:
            water_t0 = t
        prev = block
        if trans < TRANSMITTANCE_EPS:
            break

    if trans >= TRANSMITTANCE_EPS:
        if prev == WATER:   # the ray ends inside water: absorb up to where it ends
            fog = fog_amount(t, max_t)
            absorbed = 1.0 - math.exp(-WATER_ABSORPTION * (t - water_t0))
            r, g, b, trans = _composite(r, g, b, trans, light[L_WATER_FOG], light[L_WATER_FOG + 1],
                                        light[L_WATER_FOG + 2], absorbed, lum, fog, fog_r, fog_g, fog_b)
        sr, sg, sb = sky_colour(dx, dy, dz, light, True)   # the sun shows beyond the fogged edge, as in Minecraft
        r += trans * sr
        g += trans * sg
        b += trans * sb
    return r * light[L_TINT], g * light[L_TINT + 1], b * light[L_TINT + 2]


@njit(parallel=True, fastmath=False, cache=True)
def render_frame(voxels, mask, height, eye, forward, right, up, tan_half, aspect, max_t, atlas, opaque,
                 cull_same, back_face, light, target, crack_stage, cracks, row_order, out):
    """Trace one ray per pixel of `out` (H, W, 3) uint8; rows run in parallel and pixels never interact."""
    rows, cols = out.shape[0], out.shape[1]
    pixel_angle = 2.0 * tan_half / rows     # a pixel's size in blocks per block of distance, at the centre
    for k in prange(rows):
        i = row_order[k]
        sy = (1.0 - 2.0 * (i + 0.5) / rows) * tan_half
        for j in range(cols):
            sx = (2.0 * (j + 0.5) / cols - 1.0) * tan_half * aspect
            dx = forward[0] + sx * right[0] + sy * up[0]
            dy = forward[1] + sx * right[1] + sy * up[1]
            dz = forward[2] + sx * right[2] + sy * up[2]
            norm = math.sqrt(dx * dx + dy * dy + dz * dz)
            r, g, b = trace_ray(voxels, mask, height, eye[0], eye[1], eye[2], dx / norm, dy / norm, dz / norm,
                                max_t, pixel_angle, atlas, opaque, cull_same, back_face, light, target[0], target[1],
                                target[2], crack_stage, cracks)
            out[i, j, 0] = np.uint8(min(255.0, max(0.0, r * 255.0 + 0.5)))
            out[i, j, 1] = np.uint8(min(255.0, max(0.0, g * 255.0 + 0.5)))
            out[i, j, 2] = np.uint8(min(255.0, max(0.0, b * 255.0 + 0.5)))


def row_order(rows: int) -> np.ndarray:
    """Rows in bit-reversed order. Threads take equal contiguous runs of this order, so each one gets rows from
    all over the screen: sky rows (long rays) and ground rows (short rays) are shared out evenly."""
    bits = max(1, (rows - 1).bit_length())
    keys = [int(format(k, f"0{bits}b")[::-1], 2) for k in range(rows)]
    return np.argsort(keys, kind="stable").astype(np.int64)


def camera_bases(yaw: np.ndarray, pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit forward, screen-right and screen-up vectors, each (B, 3), for arrays of yaws and pitches in degrees
    (yaw 0 looks along +z, 90 along -x; positive pitch looks down)."""
    yaw_r, pitch_r = np.radians(yaw), np.radians(pitch)
    forward = np.stack([-np.sin(yaw_r) * np.cos(pitch_r), -np.sin(pitch_r), np.cos(yaw_r) * np.cos(pitch_r)], -1)
    right = np.stack([-np.cos(yaw_r), np.zeros_like(yaw_r), -np.sin(yaw_r)], -1)
    return forward, right, np.cross(right, forward)


def camera_basis(yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """camera_bases for one view: forward, right, up, each (3,)."""
    forward, right, up = camera_bases(np.array([yaw], np.float64), np.array([pitch], np.float64))
    return forward[0], right[0], up[0]


def check_view(view: View) -> None:
    """Raise ValueError naming the first field of `view` that no renderer can draw."""
    eye = np.asarray(view.eye, np.float64)
    if eye.shape != (3,) or not np.all(np.isfinite(eye)):
        raise ValueError(f"view.eye must be three finite coordinates, got {view.eye!r}")
    if not (math.isfinite(view.yaw) and math.isfinite(view.pitch) and math.isfinite(view.time_of_day)):
        raise ValueError(f"view yaw, pitch and time_of_day must be finite, got {view!r}")
    if not -1 <= view.crack_stage < len(CRACKS):
        raise ValueError(f"view.crack_stage must be -1 or 0..{len(CRACKS) - 1}, got {view.crack_stage}")
    if len(view.hotbar) != HOTBAR_SLOTS:
        raise ValueError(f"hotbar must list {HOTBAR_SLOTS} block ids, got {len(view.hotbar)}")
    if not 0 <= view.selected_slot < HOTBAR_SLOTS:
        raise ValueError(f"selected_slot must be within 0..{HOTBAR_SLOTS - 1}, got {view.selected_slot}")


class Renderer:
    """Renders first-person frames of a World: uint8 (height, width, 3), with the HUD unless hud=False."""

    def __init__(self, width: int, height: int, fov: float = 70.0, view_distance: int = 48, hud: bool = True):
        for name, value in (("width", width), ("height", height)):
            if int(value) != value or value < 1:
                raise ValueError(f"render {name} must be a positive whole number of pixels, got {value!r}")
        if not 0.0 < fov < 180.0:
            raise ValueError(f"fov must be a vertical field of view in degrees within (0, 180), got {fov!r}")
        if view_distance < 1:
            raise ValueError(f"view_distance must be at least 1 block, got {view_distance!r}")
        self.width, self.height = int(width), int(height)
        self.fov = float(fov)
        self.view_distance = int(view_distance)
        self.hud = bool(hud)
        self._tan_half = math.tan(math.radians(self.fov) / 2.0)
        self._row_order = row_order(self.height)

    def render(self, world: World, view: View) -> np.ndarray:
        """A new C-contiguous uint8 (height, width, 3) frame of `world` seen from `view`."""
        check_view(view)
        eye = np.array(view.eye, np.float64)
        forward, right, up = camera_basis(view.yaw, view.pitch)
        max_t = float(min(self.view_distance, world.view_distance))
        eye_y = math.floor(eye[1])
        underwater = 0 <= eye_y < world.height and world.voxels[
            math.floor(eye[0]) & world.mask, eye_y, math.floor(eye[2]) & world.mask] == WATER
        light = light_vector(view.time_of_day % 1.0, bool(underwater))
        target = np.array(view.target if view.target is not None else (0, -(1 << 30), 0), np.int64)
        crack_stage = view.crack_stage if view.target is not None else -1
        frame = np.empty((self.height, self.width, 3), np.uint8)
        render_frame(world.voxels, world.mask, world.height, eye, forward, right, up, self._tan_half,
                     self.width / self.height, max_t, ATLAS, OPAQUE, CULL_SAME, BACK_FACE, light, target,
                     crack_stage, CRACKS, self._row_order, frame)
        if self.hud:
            draw_hud(frame, view.hotbar, view.selected_slot)
        return frame


def benchmark(seconds: float = 2.0) -> dict[str, float]:
    """Frames per second of one Renderer with HUD at 128×128 and 640×360 on the default terrain."""
    from worldsim.engine.worldgen import spawn_point
    world = World(seed=0, view_distance=48)
    x, y, z = spawn_point(0)
    world.ensure_loaded(x, z)
    view = View(eye=(x, y + 1.62, z), yaw=30.0, pitch=10.0)
    results = {}
    for width, height in ((128, 128), (640, 360)):
        renderer = Renderer(width, height)
        renderer.render(world, view)                    # compile / warm up
        frames, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            renderer.render(world, view)
            frames += 1
        results[f"{width}x{height}"] = frames / (time.perf_counter() - start)
    return results


if __name__ == "__main__":
    print(f"numba threads: {numba.get_num_threads()}")
    for resolution, fps in benchmark().items():
        print(f"{resolution:>8}  {fps:8.1f} frames/s")
