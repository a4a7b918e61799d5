"""The camera warp: a frame turned by an action's camera move, and what a frame that only turns knows of its view.

Turning on the spot moves every pixel of the view in a way that the previous frame and the action fix exactly: a
pixel's ray in the new view, rotated back by the turn, lands somewhere in the old view (or beyond its edges). With
`DynamicsConfig.camera_warp` each frame's previous frame is turned so (`turn_previous`) before the model sees it,
which leaves the model what the player's movement changes; `known_view` is what the sampler keeps of that view
(`keep_view`). Works on any channels: latents or RGB frames. Actions are the model's (B, F, 25) vectors in model
order (row i produced frame i).
"""
import math

import torch
import torch.nn.functional as F

_CAMERA_PITCH, _CAMERA_YAW = 15, 16  # the action vector's camera entries (actions.VECTOR_ORDER; a test checks)
CAMERA_MAX_DEGREES = 10.0            # degrees a camera entry of 1.0 stands for (actions.CAMERA_MAX_DEGREES)

_RAYS: dict = {}  # screen_rays' tables by (h, w, fov, device): constants that each warp would otherwise remake


def screen_rays(h: int, w: int, fov: float, device=None):
    """tan of the half field of view across and up, and each pixel centre's screen coordinates (sx, sy), (h, w)
    each, y up, of frames h x w with vertical field of view `fov` degrees: pixel (i, j)'s ray is (sx, sy, 1).
    Made once per size, field of view and device (13 ops that every camera warp of every step made again), except
    while torch.compile traces (constants that inductor folds) or a CUDA graph is captured."""
    if torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return _screen_rays(h, w, fov, device)  # (made in a graph's memory pool, they must not outlive it)
    key = (h, w, float(fov), torch.device(device or "cpu"))
    if key not in _RAYS:
        with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable in and out of inference mode
            _RAYS[key] = _screen_rays(h, w, fov, device)
    return _RAYS[key]


def _screen_rays(h: int, w: int, fov: float, device=None):
    tan_y = math.tan(math.radians(fov) / 2)
    tan_x = tan_y * w / h
    u = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1  # grid_sample's x in [-1, 1]
    v = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1  # y, down
    return tan_x, tan_y, (u * tan_x)[None, :].expand(h, w), (-v * tan_y)[:, None].expand(h, w)


def _turn_grid(actions, fov: float, keep_rows: int, h: int, w: int, device):
    """Where each pixel of the views after the camera moves of actions (B, F, 25), model order, lies in the view
    before: grid (B, F, h, w, 2) in grid_sample's coordinates, and inside (B, F, h, w) bool, whether that is
    within the old frame's scene (not off its edges, behind it or in its bottom keep_rows HUD rows)."""
    # a slice, not an index list: a list becomes a host tensor copied to the device, which a CUDA graph capture refuses
    camera = actions[..., _CAMERA_PITCH:_CAMERA_YAW + 1].float() * math.radians(CAMERA_MAX_DEGREES)  # (B, F, 2)
    tan_x, tan_y, sx, sy = screen_rays(h, w, fov, device)
    cp, sp = camera[..., 0].cos()[..., None, None], camera[..., 0].sin()[..., None, None]  # (B, F, 1, 1)
    cy, syaw = camera[..., 1].cos()[..., None, None], camera[..., 1].sin()[..., None, None]
    # d = Yaw(yaw) Pitch(pitch) (sx, sy, 1): the new view's ray in the old view's frame
    py, pz = sy * cp - sp, sy * sp + cp
    dx, dz = sx * cy + pz * syaw, -sx * syaw + pz * cy
    ahead = dz > 1e-3
    dz = dz.clamp(min=1e-3)  # a ray the turn put behind the old camera samples the edge
    grid = torch.stack([dx / dz / tan_x, -(py / dz) / tan_y], dim=-1)  # (B, F, h, w, 2)
    gx, gy = grid[..., 0], grid[..., 1]
    bottom = 1 - 2 * keep_rows / h  # the old frame's HUD rows hold no scene
    return grid, (gx.abs() <= 1) & (gy >= -1) & (gy <= bottom) & ahead


def holds_button(actions):
    """(B, F) bool: whether each action (B, F, 25), model order, holds a button (any entry but the camera's)."""
    return (actions[..., :_CAMERA_PITCH] != 0).any(dim=-1) | (actions[..., _CAMERA_YAW + 1:] != 0).any(dim=-1)


def turn_degrees(actions):
    """(B, F): the larger of each action's (B, F, 25, model order) pitch and yaw moves, in degrees per tick."""
    return actions[..., _CAMERA_PITCH:_CAMERA_YAW + 1].abs().amax(dim=-1) * CAMERA_MAX_DEGREES


def keeps_view(config, actions):
    """(B, F) bool: the frames that keep their view under keep_view (config: a DynamicsConfig, for its idle_turn),
    for actions (B, F, 25), model order: those
    that hold no button and stand (no camera move) or turn faster than idle_turn degrees a tick. A slow turn does
    not: kept over its many ticks, the view's resampled copy wore into a flat haze that never let the model bring
    in what came into view (a 5-minute run in world 10034 washed out after 102 s; it held when slow turns took the
    idle start instead), while a fast turn reveals a wide strip each tick for the model to make."""
    turn = turn_degrees(actions)
    return ~holds_button(actions) & ((turn == 0) | (turn > config.idle_turn))


def known_view(prev, actions, fov: float, keep_rows: int = 0, fill=None, turned=None, keep=None, inside=None):
    """What a frame that only turns the camera (or stands) knows of its view before the model makes it: the
    previous frame prev (B, F, C, h, w) turned by the actions (B, F, 25), model order, where the old view holds
    the pixel (a pure rotation is exact; standing, it is the previous frame itself), the HUD rows kept; and in a
    frame that turns, the view memory's fill = (frames, valid) where valid: the panorama is painted once and
    rendered once, where a chain of warps resamples the view at every tick and blurs it. Returns the view
    (B, F, C, h, w) and where it is known, (B, F, 1, h, w) bool: nowhere in a frame that does not keep its view,
    keep (B, F) bool (`keeps_view`; default: those whose action holds no button, for walking, jumping or breaking
    changes what the view shows). turned: `warp_previous(prev, actions, fov, keep_rows, fill)` where the caller
    has it already (the sampler's start), else it is made here; inside: the turn's `inside` (`turn_previous`)
    where the caller has it."""
    B, Fr, C, h, w = prev.shape
    if turned is None:
        view, inside = turn_previous(prev, actions, fov, keep_rows, fill)  # filled where it left the old view
    else:
        view = turned
        if inside is None:
            inside = _turn_grid(actions, fov, keep_rows, h, w, prev.device)[1]
    hud = (torch.arange(h, device=prev.device) >= h - keep_rows)[:, None]  # (h, 1): kept as they were
    known = inside[:, :, None] | hud
    if fill is not None:
        frames, valid = fill
        turns = (actions[..., _CAMERA_PITCH:_CAMERA_YAW + 1] != 0).any(dim=-1)  # (B, F)
        valid = valid & turns[:, :, None, None, None] & ~hud
        view = torch.where(valid, frames.to(view.dtype), view)
        known = known | valid
    keep = ~holds_button(actions) if keep is None else keep
    return view, known & keep[:, :, None, None, None]


def warp_previous(prev, actions, fov: float, keep_rows: int = 0, fill=None):
    """`turn_previous`'s turned frames."""
    return turn_previous(prev, actions, fov, keep_rows, fill)[0]


def turn_previous(prev, actions, fov: float, keep_rows: int = 0, fill=None):
    """Each previous frame prev (B, F, C, h, w) as seen after the camera move of actions (B, F, 25), model order
    (row i turned the view from frame i - 1 to frame i): a pixel's ray in the new view, rotated by the turn into
    the old view, is projected there and the old frame sampled (bilinear, the edge repeated where the turn
    reveals what the old view did not hold). A pure rotation is exact for any scene: only what the player's
    movement changes is left to the model. Yaw (positive: right) about the camera's up axis after pitch
    (positive: down) about its right axis, the frames' vertical field of view `fov` degrees; the bottom
    `keep_rows` rows stay put (the HUD). Works on any channels: latents or RGB frames.

    fill = (frames (B, F, C, h, w), valid (B, F, 1, h, w) bool) in the new views: where a new pixel's ray leaves
    the old frame (or meets its HUD rows) and valid holds, the pixel is fill's instead of the repeated edge.
    Returns the turned frames and inside (B, F, h, w) bool: where a new pixel's ray lies in the old frame's scene."""
    B, Fr, C, h, w = prev.shape
    grid, inside = _turn_grid(actions, fov, keep_rows, h, w, prev.device)
    turned = F.grid_sample(prev.reshape(B * Fr, C, h, w).float(), grid.reshape(B * Fr, h, w, 2), mode="bilinear",
                           padding_mode="border", align_corners=False).reshape(B, Fr, C, h, w).to(prev.dtype)
    if fill is not None:
        frames, valid = fill
        if tuple(frames.shape) != tuple(prev.shape) or tuple(valid.shape) != (B, Fr, 1, h, w):
            raise ValueError(f"fill must be frames {tuple(prev.shape)} and valid {(B, Fr, 1, h, w)}, got "
                             f"{tuple(frames.shape)} and {tuple(valid.shape)}")
        turned = torch.where(inside[:, :, None] | ~valid, turned, frames.to(turned.dtype))
    if keep_rows:
        turned = torch.cat([turned[..., :h - keep_rows, :], prev[..., h - keep_rows:, :]], dim=-2)
    return turned, inside
