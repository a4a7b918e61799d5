"""Play without a screen: a scripted walk through any env, written as an interchange trajectory (mp4 + jsonl).

What `python run_world.py` does on a machine with no display, so that the quickstart works everywhere.
"""
import datetime
import time
from pathlib import Path

import numpy as np

from worldsim.engine import actions

TURN_DEGREES = 3.0   # yaw per frame while the walk turns


def scripted_walk(frames: int, fps: int) -> list[dict]:
    """Walk forward; from the 3rd to the 5th second turn right, from the 6th to the 7th left; hop each 4 s."""
    script = []
    for t in range(frames):
        second = t / fps
        action = actions.noop()
        action["forward"] = 1
        yaw = TURN_DEGREES if 3 <= second < 5 else -TURN_DEGREES if 6 <= second < 7 else 0.0
        action["camera"] = np.array([0.0, yaw], np.float32)
        action["jump"] = int(t % (4 * fps) == 2 * fps)
        script.append(action)
    return script


def headless_walk(env, seconds: float, fps: int, out_dir, seed: int | None = None, source: str = "engine") -> dict:
    """Play the scripted walk in `env` and write it to out_dir; returns {path, frames, seconds, fps, step_fps}."""
    from worldsim.data.interchange import TrajectoryWriter, env_options
    frames = max(1, round(seconds * fps))
    obs, info = env.reset(seed=seed)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    options = env_options(env)
    h, w = obs.shape[:2]
    stepping = 0.0
    start = time.perf_counter()
    with TrajectoryWriter(Path(out_dir) / f"headless-{source}-{stamp}", w, h, fps=fps, source=source,
                          seed=info.get("seed"), options=options) as writer:
        for action in scripted_walk(frames, fps):
            writer.write(obs, action, info)
            t = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            stepping += time.perf_counter() - t
            if terminated or truncated:
                obs, info = env.reset()
    total = time.perf_counter() - start
    return {"path": writer.final.mp4, "frames": frames, "seconds": total, "fps": frames / total,
            "step_fps": frames / stepping if stepping > 0 else float("inf")}
