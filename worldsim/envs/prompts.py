"""Where an imagined episode starts: P frames and the P - 1 actions between them, from the engine at a seed's
spawn point, from an interchange trajectory or from an image file (the `prompt` of worldsim.envs.world_model)."""
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldsim.engine import actions
from worldsim.engine.env import EngineConfig, VoxelEnv

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PROMPT_FRAMES = 8           # default prompt length (capped by the cache's window, rounded to whole chunks)
LOOK_DEGREES = 3.0          # yaw per frame of the "look" prompt motion
PROMPT_MOTIONS = ("still", "look")


@dataclass
class Prompt:
    """Where an episode starts: frames (P, H, W, 3) uint8 and the P - 1 actions between them."""
    frames: np.ndarray
    actions: list
    twin: VoxelEnv | None = None    # the engine after the prompt (seed prompts with a twin)

    @property
    def vectors(self) -> np.ndarray:
        rows = [actions.to_vector(a) for a in self.actions]
        return np.stack(rows) if rows else np.zeros((0, actions.ACTION_DIM), np.float32)


def prompt_length(requested: int | None, dynamics_config) -> int:
    """P: whole chunks, at least one, at most the cache's window (or `requested`, which must be whole chunks)."""
    K, window = dynamics_config.chunk_frames, dynamics_config.cache_frames
    if requested is None:
        return max(K, min(PROMPT_FRAMES, window) // K * K)
    if requested % K:
        raise ValueError(f"prompt_frames={requested} must be a multiple of the model's chunk_frames={K}")
    return requested


def engine_prompt(engine: EngineConfig, seed: int, frames: int, motion: str, keep_twin: bool) -> Prompt:
    """P frames rendered by the engine at the spawn point of `seed`."""
    env = VoxelEnv(engine, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    shown, taken = [obs], []
    for i in range(frames - 1):
        action = actions.noop()
        if motion == "look":  # half the frames turning right, then back
            action["camera"] = np.array([0.0, LOOK_DEGREES if i < (frames - 1) / 2 else -LOOK_DEGREES], np.float32)
        obs, *_ = env.step(action)
        shown.append(obs)
        taken.append(action)
    return Prompt(np.stack(shown), taken, env if keep_twin else None)


def _resized(frame: np.ndarray, size: tuple[int, int], source) -> np.ndarray:
    """`frame` at (height, width) `size`; another size is resized with a warning naming `source`."""
    if frame.shape[:2] == size:
        return frame
    from PIL import Image
    stretched = frame.shape[1] * size[0] != frame.shape[0] * size[1]
    warnings.warn(f"{source}: {frame.shape[1]}×{frame.shape[0]} frames resized to the model's {size[1]}×{size[0]}"
                  + (" (stretched: the aspect ratio differs)" if stretched else ""), stacklevel=3)
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))


def image_prompt(path, size: tuple[int, int], frames: int) -> Prompt:
    """An image file held for P frames with no-op actions."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            frame = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    frame = _resized(frame, size, path)
    return Prompt(np.repeat(frame[None], frames, axis=0), [actions.noop() for _ in range(frames - 1)])


def trajectory_prompt(stem, size: tuple[int, int], frames: int) -> Prompt:
    """The first P frames of an interchange trajectory and the actions between them."""
    from worldsim.data.interchange import read_trajectory
    trajectory = read_trajectory(stem)  # TrajectoryError / TrajectoryNotFoundError name the file
    if len(trajectory) < frames:
        raise ValueError(f"{stem}: {len(trajectory)} frames, too short for a prompt of {frames}")
    shown = np.stack([_resized(f, size, stem) for f in trajectory.frames[:frames]])
    return Prompt(shown, list(trajectory.actions[:frames - 1]))


def file_prompt(prompt: str, size: tuple[int, int], frames: int) -> Prompt:
    """A trajectory or image prompt, by the file's name."""
    if Path(prompt).suffix.lower() in IMAGE_SUFFIXES:
        return image_prompt(prompt, size, frames)
    return trajectory_prompt(prompt, size, frames)
