"""Engine benchmarks: frames/s of rendering and of whole env steps; prints a table and saves JSON."""
import dataclasses
import datetime
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from worldsim.engine import actions
from worldsim.engine.env import EngineConfig, VoxelEnv, VoxelVectorEnv


@dataclass
class BenchConfig:
    out: str = "bench_results/engine.json"
    frames: int = 200        # frames timed per case after warm-up
    warmup: int = 20
    vector_envs: int = 16
    gpu_envs: int = 1024


def walk_pitch(t: int) -> float:
    """The walk's pitch at tick t: around the horizon, slightly up, where rays are longest and frames cost most."""
    return -5.0 + 10.0 * np.sin(t / 20)


def walk_action(t: int) -> dict:
    """A fixed, deterministic walk: forward, turning slowly, looking around the horizon, jumping now and then."""
    action = actions.noop()
    action["forward"] = 1
    action["jump"] = int(t % 40 == 0)
    pitch_change = walk_pitch(t + 1) - walk_pitch(t) if t > 0 else walk_pitch(1)
    action["camera"] = np.array([pitch_change, 2.0], dtype=np.float32)
    return action


def machine() -> dict:
    """What the figures were measured on."""
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "date": datetime.date.today().isoformat()}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def time_frames(step, frames: int, warmup: int) -> float:
    """Seconds per call of step(t), after warm-up calls that absorb JIT compilation."""
    for t in range(warmup):
        step(t)
    start = time.perf_counter()
    for t in range(warmup, warmup + frames):
        step(t)
    return (time.perf_counter() - start) / frames


def bench_single(config: EngineConfig, bench: BenchConfig, seed: int) -> list[dict]:
    env = VoxelEnv(config)
    env.reset(seed=seed)
    step_s = time_frames(lambda t: env.step(walk_action(t)), bench.frames, bench.warmup)
    view = env.current_view()
    render_s = time_frames(lambda t: env.renderer.render(env.world, view), bench.frames, bench.warmup)
    size = f"{config.width}x{config.height}"
    return [
        {"case": f"render {size}, hud={config.hud}", "envs": 1, "frames_per_s": 1 / render_s, "ms_per_frame": 1e3 * render_s},
        {"case": f"env.step {size}, hud={config.hud}", "envs": 1, "frames_per_s": 1 / step_s, "ms_per_frame": 1e3 * step_s},
    ]


def bench_vector(config: EngineConfig, bench: BenchConfig, seed: int, n: int, device: str = "cpu") -> dict:
    env = VoxelVectorEnv(n, config, render_device=device)
    env.reset(seed=seed)

    def step(t):
        single = walk_action(t)
        env.step({k: np.stack([np.asarray(single[k])] * n) for k in single})

    step_s = time_frames(step, max(1, bench.frames // n), max(1, bench.warmup // n))
    return {"case": f"vector env.step {config.width}x{config.height} ({device})", "envs": n, "frames_per_s": n / step_s,
            "ms_per_frame": 1e3 * step_s / n}


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def bench_batch_render(config: EngineConfig, bench: BenchConfig, seed: int) -> list[dict]:
    """The Triton BatchRenderer alone on CUDA: many worlds, each seen from its own point of the walk."""
    import torch
    from worldsim.engine.render_gpu import BatchRenderer
    rows = []
    for n in sorted({1, 64, 256, bench.gpu_envs}):
        env = VoxelVectorEnv(n, config, render_device="cpu")  # worlds and views only; rendering timed below
        env.reset(seed=seed)
        worlds, views = [sim.world for sim in env.sims], [sim.view() for sim in env.sims]
        renderer = BatchRenderer(config.width, config.height, config.fov, config.view_distance, config.hud, "cuda")

        def render(t):
            renderer.render(worlds, views)
            torch.cuda.synchronize()

        seconds = time_frames(render, max(10, bench.frames // 4), 5)
        rows.append({"case": f"BatchRenderer {config.width}x{config.height} (cuda)", "envs": n,
                     "frames_per_s": n / seconds, "ms_per_frame": 1e3 * seconds / n})
    return rows


def bench_engine(config: EngineConfig, bench: BenchConfig, seed: int = 0) -> list[dict]:
    """Run every engine case, print the table and save the JSON; returns the rows."""
    rows = bench_single(config, bench, seed)
    rows += bench_single(dataclasses.replace(config, width=640, height=360), bench, seed)
    rows.append(bench_vector(config, bench, seed, bench.vector_envs))
    if torch_cuda_available():
        rows += bench_batch_render(config, bench, seed)
        rows.append(bench_vector(config, bench, seed, bench.gpu_envs, device="cuda"))
    table = Table(title="WorldSim engine benchmark")
    for column in ("case", "envs", "frames/s", "ms/frame"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for row in rows:
        table.add_row(row["case"], str(row["envs"]), f"{row['frames_per_s']:.1f}", f"{row['ms_per_frame']:.2f}")
    Console().print(table)
    out = Path(bench.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "config": dataclasses.asdict(config),
                               "bench": dataclasses.asdict(bench), "results": rows}, indent=2))
    print(f"saved {out}")
    return rows
