"""The sampler's view memory: a panorama of what the player has seen around them, in latents.

`camera_warp` turns the last frame by each camera move, but what a turn brings into view is not in the last
frame: the warp repeats its edge, and the model has to invent the rest from a 16-frame context. Turn around and
the view you left is gone. The memory keeps it. Every finished frame is painted into an equirectangular
panorama (pitch × yaw) at the camera's orientation, the sum of the actions' camera moves since the prompt's first
frame; each new frame's previous frame is the last frame turned, as before, but where the turn reveals what the
last frame did not hold and the panorama saw it in the last `view_memory_frames` frames, it is the panorama's
view instead (`fill` of `warp_previous`).

It is a pure rotation model: exact for turning on the spot, stale for what walking has moved since (the model
corrects its guess, as it does the warp's edge). The orientation is the engine's camera: yaw about the world's up
axis, then pitch about the camera's right axis (positive pitch looks down, clamped to ±90° from the prompt's
first frame, taken as level), the frames' vertical field of view `camera_warp`; the bottom `warp_keep_rows`
rows (the hotbar) are not painted. Every operation works on fixed tensors in place: no host sync, so the
graphed sampler replays it.
"""
import math

import torch
import torch.nn.functional as F

from worldsim.models.camera import _CAMERA_PITCH, _CAMERA_YAW, CAMERA_MAX_DEGREES, screen_rays
from worldsim.models.dynamics import DynamicsConfig

NEVER = 1e9  # the age of a panorama cell no frame has painted


def camera_axes(views):
    """Right, up and forward unit vectors (..., 3) of cameras at views (..., 2) = (pitch, yaw) radians."""
    pitch, yaw = views[..., 0], views[..., 1]
    cp, sp, cy, sy = pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin()
    zero = torch.zeros_like(cp)
    right = torch.stack([cy, zero, -sy], -1)
    up = torch.stack([sy * sp, cp, cy * sp], -1)
    forward = torch.stack([sy * cp, -sp, cy * cp], -1)
    return right, up, forward


class ViewMemory:
    """The panorama of a batch of plays: `reset`, then per chunk `views(actions)` -> `render` -> `write`."""

    def __init__(self, config: DynamicsConfig, batch: int, device=None, dtype=torch.float32):
        if not config.camera_warp:
            raise ValueError("view_memory fills in what the camera warp reveals: it needs camera_warp > 0")
        c = config
        self.fov, self.keep_rows, self.max_age = c.camera_warp, c.warp_keep_rows, c.view_memory_frames
        self.h, self.w = c.latent_height, c.latent_width
        ph, pw = c.view_memory_size
        self.panorama = torch.zeros(batch, c.latent_channels, ph, pw, device=device, dtype=dtype)
        self.age = torch.full((batch, 1, ph, pw), NEVER, device=device)  # frames since a cell was last painted
        self.view = torch.zeros(batch, 2, device=device)  # (pitch, yaw) radians of the last frame painted
        # the frames' pixel rays in camera coordinates (h, w, 3) and the panorama cells' directions (ph, pw, 3)
        self.tan_x, self.tan_y, sx, sy = screen_rays(self.h, self.w, self.fov, device)
        self._rays = torch.stack([sx, sy, torch.ones_like(sx)], -1)
        yaw = ((torch.arange(pw, device=device, dtype=torch.float32) + 0.5) / pw * 2 - 1) * math.pi
        pitch = ((torch.arange(ph, device=device, dtype=torch.float32) + 0.5) / ph * 2 - 1) * (math.pi / 2)
        pitch, yaw = pitch[:, None].expand(ph, pw), yaw[None, :].expand(ph, pw)
        self._cells = torch.stack([yaw.sin() * pitch.cos(), -pitch.sin(), yaw.cos() * pitch.cos()], -1)
        # the lowest grid y painted: the last scene row's centre when the bottom rows are the HUD
        self._bottom = 1 - (2 * self.keep_rows + 1) / self.h if self.keep_rows else 1.0

    def reset(self) -> None:
        self.panorama.zero_()
        self.age.fill_(NEVER)
        self.view.zero_()

    def views(self, actions):
        """Orientations (B, K, 2) of the frames the actions (B, K, 25, model order) produce after the last
        frame painted: their camera moves summed, pitch clamped to ±90°, yaw wrapped to [-π, π)."""
        move = actions[..., _CAMERA_PITCH:_CAMERA_YAW + 1].float() * math.radians(CAMERA_MAX_DEGREES)
        out, view = [], self.view
        for k in range(move.shape[1]):
            pitch = (view[:, 0] + move[:, k, 0]).clamp(-math.pi / 2, math.pi / 2)
            yaw = torch.remainder(view[:, 1] + move[:, k, 1] + math.pi, 2 * math.pi) - math.pi
            view = torch.stack([pitch, yaw], -1)
            out.append(view)
        return torch.stack(out, 1)

    def render(self, views):
        """The panorama seen from views (B, K, 2): latents (B, K, C, h, w) and where they hold something seen in
        the last `max_age` frames, (B, K, 1, h, w) bool."""
        B, K = views.shape[:2]
        right, up, forward = (a[:, :, None, None] for a in camera_axes(views))  # (B, K, 1, 1, 3)
        r = self._rays
        d = r[..., 0:1] * right + r[..., 1:2] * up + forward  # (B, K, h, w, 3) world directions
        yaw = torch.atan2(d[..., 0], d[..., 2])
        pitch = torch.atan2(-d[..., 1], torch.hypot(d[..., 0], d[..., 2]))
        pw = self.panorama.shape[-1]
        # one column of the other side on each edge, so that bilinear sampling wraps around in yaw
        grid = torch.stack([yaw / math.pi * pw / (pw + 2), pitch / (math.pi / 2)], -1).reshape(B, K * self.h, self.w, 2)
        wrap = lambda x: torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)
        fill = F.grid_sample(wrap(self.panorama).float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
        age = F.grid_sample(wrap(self.age), grid, mode="bilinear", padding_mode="border", align_corners=False)
        fill = fill.reshape(B, -1, K, self.h, self.w).transpose(1, 2).to(self.panorama.dtype)
        return fill, (age <= self.max_age).reshape(B, 1, K, self.h, self.w).transpose(1, 2)

    def write(self, latents, views, paint=None, only_new=None) -> None:
        """Paint the frames latents (B, K, C, h, w), seen from views (B, K, 2), into the panorama in order, in
        place; the last view becomes the one the next `views` starts from. paint (B, K) bool: which frames are
        painted (default all; the others only age the panorama). only_new (B, K) bool: frames that paint only
        the cells not painted in the last `view_memory_frames` frames (a frame that kept the panorama's view
        would paint a resampled copy over it: copies of copies blur)."""
        for k in range(latents.shape[1]):
            right, up, forward = (a[:, None, None] for a in camera_axes(views[:, k]))  # (B, 1, 1, 3)
            cells = self._cells
            x, y, z = ((cells * axis).sum(-1) for axis in (right, up, forward))  # (B, ph, pw) camera coordinates
            ahead = z > 1e-3
            z = z.clamp(min=1e-3)
            gx, gy = x / z / self.tan_x, -y / z / self.tan_y
            seen = (ahead & (gx.abs() <= 1) & (gy >= -1) & (gy <= self._bottom))[:, None]  # (B, 1, ph, pw)
            if paint is not None:
                seen = seen & paint[:, k, None, None, None]
            if only_new is not None:
                seen = seen & ~(only_new[:, k, None, None, None] & (self.age <= self.max_age))
            grid = torch.stack([gx.clamp(-2, 2), gy.clamp(-2, 2)], -1)
            painted = F.grid_sample(latents[:, k].float(), grid, mode="bilinear", padding_mode="border",
                                    align_corners=False).to(self.panorama.dtype)
            self.panorama.copy_(torch.where(seen, painted, self.panorama))
            self.age.copy_(torch.where(seen, torch.zeros_like(self.age), self.age + 1))
        self.view.copy_(views[:, -1])

    def fill_clip(self, latents, actions, paint=None):
        """A clip's frames (B, F, C, h, w) after the last frame painted, actions (B, F, 25) model order, one
        after another as the sampler meets them: each frame's fill (`render`) from what the frames before it
        painted, then the frame painted (where paint (B, F) holds; default all). Returns the fills
        ((B, F, C, h, w), (B, F, 1, h, w)) and leaves the clip in the panorama."""
        views = self.views(actions)
        fills, valid = [], []
        for i in range(latents.shape[1]):
            f, v = self.render(views[:, i:i + 1])
            fills.append(f)
            valid.append(v)
            self.write(latents[:, i:i + 1], views[:, i:i + 1], None if paint is None else paint[:, i:i + 1])
        return torch.cat(fills, 1), torch.cat(valid, 1)

    def state(self) -> dict:
        return {"panorama": self.panorama.clone(), "age": self.age.clone(), "view": self.view.clone()}

    def load(self, state: dict) -> None:
        for name in ("panorama", "age", "view"):
            getattr(self, name).copy_(state[name])
