"""The action schema: MineRL / OpenAI VPT names at the edges, the 25-dim vector inside the models.

`camera = [pitch, yaw]` in degrees per tick. Positive pitch looks down and positive yaw turns right, as in
MineRL. Action `a_t` is what the player does while seeing frame t; it produces frame t + 1.
"""
import math

import numpy as np
from gymnasium import spaces

BUTTONS = ("forward", "back", "left", "right", "jump", "sneak", "sprint", "attack", "use", "drop", "inventory",
           *(f"hotbar.{i}" for i in range(1, 10)))
KEYS = (*BUTTONS, "camera")

# VPT quantises camera moves to at most 10 degrees per tick; the model vector scales by the same maximum and
# clips beyond it, so a vector entry of 1.0 means "10 degrees this tick".
CAMERA_MAX_DEGREES = 10.0
# The engine itself takes any camera move up to half a turn per tick.
CAMERA_LIMIT_DEGREES = 180.0

# The model's action vector, in the order used by open Minecraft world models.
VECTOR_ORDER = ("inventory", "ESC", *(f"hotbar.{i}" for i in range(1, 10)), "forward", "back", "left", "right",
                "camera_pitch", "camera_yaw", "jump", "sneak", "sprint", "swapHands", "attack", "use", "pickItem",
                "drop")
ACTION_DIM = len(VECTOR_ORDER)
assert ACTION_DIM == 25
_INDEX = {name: i for i, name in enumerate(VECTOR_ORDER)}


def action_space() -> spaces.Dict:
    """The Dict action space shared by every environment."""
    return spaces.Dict({
        **{name: spaces.Discrete(2) for name in BUTTONS},
        "camera": spaces.Box(-CAMERA_LIMIT_DEGREES, CAMERA_LIMIT_DEGREES, shape=(2,), dtype=np.float32),
    })


def noop() -> dict:
    """An action that does nothing: no button held, camera still."""
    return {**{name: 0 for name in BUTTONS}, "camera": np.zeros(2, dtype=np.float32)}


def validate(action) -> dict:
    """A checked copy of `action` with every key present (missing ones are 0); raises ValueError naming the problem."""
    if not isinstance(action, dict):
        raise ValueError(f"an action must be a dict of MineRL keys, got {type(action).__name__}")
    unknown = set(action) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown action key(s) {sorted(unknown)}; known keys: {list(KEYS)}")
    out = noop()
    for name in BUTTONS:
        if name in action:
            value = np.asarray(action[name])
            if value.shape != () or value.item() not in (0, 1):
                raise ValueError(f"action[{name!r}] must be 0 or 1, got {action[name]!r}")
            out[name] = int(value.item())
    if "camera" in action:
        camera = np.asarray(action["camera"], dtype=np.float64)
        if camera.shape != (2,):
            raise ValueError(f"action['camera'] must be [pitch, yaw] of shape (2,), got shape {camera.shape}")
        if not np.all(np.isfinite(camera)):
            raise ValueError(f"action['camera'] must be finite, got {camera.tolist()}")
        if np.any(np.abs(camera) > CAMERA_LIMIT_DEGREES):
            raise ValueError(f"action['camera'] must be within ±{CAMERA_LIMIT_DEGREES} degrees, got {camera.tolist()}")
        out["camera"] = camera.astype(np.float32)
    return out


def validate_batch(action, num_envs: int) -> dict:
    """A checked copy of a vector env's batched action, every key present (missing ones are 0): buttons int64
    (N,), camera float32 (N, 2). Checked as whole arrays (no per-env Python); raises ValueError naming the key and
    the first sub-env at fault."""
    if not isinstance(action, dict):
        raise ValueError(f"a batched action must be a dict of arrays, got {type(action).__name__}")
    unknown = set(action) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown action key(s) {sorted(unknown)}; known keys: {list(KEYS)}")
    out = {}
    for name in KEYS:
        if name not in action:
            out[name] = np.zeros((num_envs, 2), np.float32) if name == "camera" else np.zeros(num_envs, np.int64)
            continue
        value = np.asarray(action[name])
        if value.ndim == 0 or value.shape[0] != num_envs:
            raise ValueError(f"action[{name!r}] must have a leading dimension of num_envs={num_envs}, "
                             f"got shape {value.shape}")
        if name == "camera":
            if value.shape != (num_envs, 2):
                raise ValueError(f"action['camera'] must be [pitch, yaw] of shape (2,) per sub-env, got shape "
                                 f"{value.shape[1:]}")
            camera = value.astype(np.float64)
            bad = ~np.isfinite(camera).all(axis=1)
            if bad.any():
                i = int(bad.argmax())
                raise ValueError(f"action['camera'] must be finite, got {camera[i].tolist()} (sub-env {i})")
            bad = (np.abs(camera) > CAMERA_LIMIT_DEGREES).any(axis=1)
            if bad.any():
                i = int(bad.argmax())
                raise ValueError(f"action['camera'] must be within ±{CAMERA_LIMIT_DEGREES} degrees, "
                                 f"got {camera[i].tolist()} (sub-env {i})")
            out[name] = camera.astype(np.float32)
        else:
            if value.shape != (num_envs,):
                raise ValueError(f"action[{name!r}] must be one 0 or 1 per sub-env, shape ({num_envs},), "
                                 f"got shape {value.shape}")
            bad = ~((value == 0) | (value == 1))
            if bad.any():
                i = int(bad.argmax())
                raise ValueError(f"action[{name!r}] must be 0 or 1, got {value[i].tolist()!r} (sub-env {i})")
            out[name] = value.astype(np.int64)
    return out


def split_batch(action, num_envs: int) -> list[dict]:
    """Validated per-env actions from a vector env's batched action (buttons (N,), camera (N, 2))."""
    batch = validate_batch(action, num_envs)
    buttons = {name: batch[name].tolist() for name in BUTTONS}
    return [{**{name: buttons[name][i] for name in BUTTONS}, "camera": batch["camera"][i]} for i in range(num_envs)]


def to_vectors(batch: dict) -> np.ndarray:
    """The model's (N, 25) float32 vectors of a batch checked by validate_batch: to_vector of each row."""
    camera = batch["camera"]
    vec = np.zeros((len(camera), ACTION_DIM), dtype=np.float32)
    for name in BUTTONS:
        vec[:, _INDEX[name]] = batch[name]
    vec[:, [_INDEX["camera_pitch"], _INDEX["camera_yaw"]]] = np.clip(camera / CAMERA_MAX_DEGREES, -1, 1)
    return vec


def to_vector(action: dict) -> np.ndarray:
    """The model's float32 (25,) vector for one action; camera scaled by CAMERA_MAX_DEGREES and clipped to [-1, 1]."""
    action = validate(action)
    vec = np.zeros(ACTION_DIM, dtype=np.float32)
    for name in BUTTONS:
        vec[_INDEX[name]] = action[name]
    vec[_INDEX["camera_pitch"]], vec[_INDEX["camera_yaw"]] = np.clip(action["camera"] / CAMERA_MAX_DEGREES, -1, 1)
    return vec


def from_vector(vec) -> dict:
    """The action a (25,) vector stands for: buttons above 0.5 are pressed; camera scaled back to degrees."""
    vec = np.asarray(vec, dtype=np.float32)
    if vec.shape != (ACTION_DIM,):
        raise ValueError(f"an action vector must have shape ({ACTION_DIM},), got {vec.shape}")
    if not np.all(np.isfinite(vec)):
        raise ValueError("an action vector must be finite")
    action = {name: int(vec[_INDEX[name]] > 0.5) for name in BUTTONS}
    action["camera"] = np.array([vec[_INDEX["camera_pitch"]], vec[_INDEX["camera_yaw"]]], np.float32) * CAMERA_MAX_DEGREES
    return action


def look_direction(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Unit view vector (x, y, z) for a yaw and pitch in degrees: yaw 0 looks along +z, yaw 90 along -x, pitch 90 down."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    return np.array([-math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
