"""Play speed, input-to-screen latency and a soak of the world model; prints a table and saves JSON.

    python -m worldsim.play.bench                        # untrained CPU world, 10 s of play, 2,000-frame soak
    python -m worldsim.play.bench --soak-frames 72000     # the full soak: an hour of play time at 20 fps
    python -m worldsim.play.bench --checkpoint assets/world

Without --checkpoint it times an untrained world of the play sizes (configs/dynamics/tiny.yaml, configs/
autoencoder/cpu.yaml): the weights do not change the time. The game runs headless (SDL's dummy driver) with
generation in its worker thread and the engine twin following the actions unseen (world.twin=true), exactly as
when playing (--no-twin: without the twin):
- play: frames made per second at the game's pace (20 fps target) and unpaced (the worker back to back),
  with the model's ms per frame (sampling + decoding) and the part of it after the frame's input was read
  (the env's `prepare`, run by the worker while the last frame is shown, does the rest), the window loop's
  ticks and redraws per second;
- latency: a mouse move happens at random times, PROBE_EVERY seconds apart on average (uniform in half to
  one and a half times it, so that the moves fall at every phase of the game's and the worker's ticks); it is
  posted as an event at the game's first tick after it, as the window system would queue it, and its latency
  is the time from the move to the first drawn frame whose action included it, in ms and in frames of 1/fps;
- rollout: frames per second of a batch of worlds under the random policy (no files written); with
  --profile-steps, the ops and kernels that take a step's time;
- soak: N frames of the env alone (a scripted walk, each step followed by the env's `prepare` and the game's
  rewind snapshots kept, as in play), resident memory after warm-up and at the end, and the per-frame time
  (step + prepare) of the first and last tenth and its trend.
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBE_EVERY = 0.5        # seconds between latency probes
WARMUP_FRAMES = 150      # soak frames before the memory baseline: the rewind ring (11 × 10 frames) is full
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def untrained_world(directory) -> str:
    import yaml

    from worldsim.envs.world_model import random_world
    from worldsim.models.autoencoder import AutoencoderConfig
    from worldsim.models.dynamics import DynamicsConfig
    dynamics = DynamicsConfig(**yaml.safe_load((CONFIGS / "dynamics" / "tiny.yaml").read_text()))
    autoencoder = AutoencoderConfig(**yaml.safe_load((CONFIGS / "autoencoder" / "cpu.yaml").read_text()))
    return str(random_world(directory, dynamics, autoencoder))


def _threads(threads: int | None) -> dict:
    """The env's torch_threads override: none (the world's default) when `threads` is None."""
    return {} if threads is None else {"torch_threads": threads}


def resolve(probes: list, shown: list, latencies: list) -> None:
    """Move each probe (input events counted when it was read, time it happened) whose event a drawn frame
    reflects into `latencies` (ms from then to the first such frame drawn). The game keeps only its last 256 shown
    frames, so probes are resolved as play goes, not at the end."""
    for probe in list(probes):
        serial, posted = probe
        drawn = [t for seen, t in shown if seen >= serial and t == t]
        if drawn:
            latencies.append((drawn[0] - posted) * 1000.0)
            probes.remove(probe)


def play_session(checkpoint: str, seconds: float, fps: int, probe: bool, steps: int | None = None,
                 display_fps: int = 120, precision: str = "fp32", threads: int | None = None,
                 decode_precision: str = "auto", twin: bool = True, world: dict | None = None) -> dict:
    """Play headless for `seconds` with the worker thread; returns rates and, with `probe`, latencies. twin: the
    engine follows the actions, unseen, as in play (world.twin=true); world: more world.* settings."""
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    import pygame

    from worldsim.envs.world_model import WorldModelEnv
    from worldsim.play.game import Game, PlayConfig
    make_env = lambda: WorldModelEnv(checkpoint=checkpoint, twin=twin, steps=steps, precision=precision,  # noqa: E731
                                     decode_precision=decode_precision,
                                     **_threads(threads), **(world or {}))
    game = Game(make_env, PlayConfig(scale=4, fps=fps, generation="thread", display_fps=display_fps,
                                     record_dir=tempfile.mkdtemp()), seed=0)  # made on the worker, as in play
    game.mouse.set(True)
    clock = pygame.time.Clock()
    probes, latencies, ms, ms_to_frame, loops, last_tick = [], [], [], [], 0, None
    game.tick([pygame.event.Event(pygame.KEYDOWN, key=pygame.K_w, mod=0, unicode="w", scancode=0)])
    game.start()
    gaps = random.Random(0)
    start = time.perf_counter()
    next_probe = start + PROBE_EVERY * gaps.uniform(0.5, 1.5)
    try:
        while time.perf_counter() - start < seconds:
            now = time.perf_counter()
            if probe and now >= next_probe:  # the move happened at next_probe: the game reads it now
                pygame.event.post(pygame.event.Event(pygame.MOUSEMOTION, rel=(8, 0), pos=(0, 0), buttons=(0, 0, 0)))
                game.tick(pygame.event.get())
                probes.append((game.input.events_seen, next_probe))
                next_probe += PROBE_EVERY * gaps.uniform(0.5, 1.5)
            else:
                game.tick(pygame.event.get())
            resolve(probes, game.shown, latencies)
            loops += 1
            if game.info.get("ms_per_frame") is not None and game.info.get("tick") != last_tick:
                last_tick = game.info["tick"]
                ms.append(game.info["ms_per_frame"])
                ms_to_frame.append(game.info.get("ms_to_frame", game.info["ms_per_frame"]))
            game.wait(clock)
        elapsed = time.perf_counter() - start
        frames = game.ticks
    finally:
        game.close()
    resolve(probes, game.shown, latencies)
    out = {"fps": frames / elapsed, "frames": frames, "seconds": elapsed, "loop_ticks_per_s": loops / elapsed,
           "redraws_per_s": game.draws / elapsed,
           "model_ms_per_frame_median": statistics.median(ms) if ms else None,
           "model_ms_after_input_median": statistics.median(ms_to_frame) if ms_to_frame else None}
    if probe:
        frame_ms = 1000.0 / fps
        out.update({"latency_ms_median": statistics.median(latencies) if latencies else None,
                    "latency_ms_max": max(latencies) if latencies else None,
                    "latency_frames_median": statistics.median(latencies) / frame_ms if latencies else None,
                    "latency_frames_max": max(latencies) / frame_ms if latencies else None,
                    "probes": len(probes) + len(latencies), "probes_seen": len(latencies)})
    return out


def soak(checkpoint: str, frames: int, fps: int, snapshot_every: int = 10, ring: int = 11,
         threads: int | None = None, world: dict | None = None) -> dict:
    """`frames` env steps of a scripted walk with rewind snapshots kept; memory and per-frame time trend."""
    import collections

    from worldsim.envs.world_model import WorldModelEnv
    from worldsim.play.headless import scripted_walk
    env = WorldModelEnv(checkpoint=checkpoint, twin=False, **_threads(threads), **(world or {}))
    env.reset(seed=0)
    script = scripted_walk(20 * fps, fps)  # 20 s of walking and turning, repeated
    snapshots = collections.deque(maxlen=ring)
    times = np.empty(frames)
    baseline, baseline_blocks, every, series, blocks = None, None, max(1, frames // 20), [], []
    for t in range(frames):
        if t == WARMUP_FRAMES:
            baseline, baseline_blocks = rss_mb(), sys.getallocatedblocks()
        if t % every == 0:
            series.append([t, rss_mb()])
            blocks.append([t, sys.getallocatedblocks()])
        start = time.perf_counter()
        env.step(script[t % len(script)])
        env.prepare()  # as the play worker does after each frame
        times[t] = time.perf_counter() - start
        if t % snapshot_every == 0:
            snapshots.append(env.snapshot())
    end, end_blocks = rss_mb(), sys.getallocatedblocks()
    tenth = max(1, frames // 10)
    slope = np.polyfit(np.arange(frames), times * 1000.0, 1)[0] * 1000.0 if frames > 1 else 0.0
    return {"frames": frames, "rss_mb_after_warmup": baseline, "rss_mb_end": end,
            "rss_growth_mb": None if baseline is None else end - baseline,
            # Python objects kept after the warm-up: about 0 a frame; a config patch built per compiled call kept 4.4
            "python_blocks_per_frame": None if baseline is None
            else (end_blocks - baseline_blocks) / (frames - WARMUP_FRAMES),
            "ms_per_frame_first_tenth": float(times[:tenth].mean() * 1000.0),
            "ms_per_frame_last_tenth": float(times[-tenth:].mean() * 1000.0),
            "trend_ms_per_1000_frames": float(slope),
            "rss_mb_series": series,  # [frame, resident MB] 20 times along the soak: growth that levels off or not
            "python_blocks_series": blocks,  # [frame, Python's allocated memory blocks] at the same frames: growth
                                             # here is Python objects kept, growth of the memory alone is native
            "ms_per_frame_by_twentieth": [float(c.mean() * 1000.0) for c in np.array_split(times, min(20, frames))]}


def rollout_speed(checkpoint: str, num_envs: int, steps: int, warmup: int = 3, precision: str = "fp32",
                  decode_precision: str = "auto", profile_steps: int = 0, on_timed=None,
                  world: dict | None = None) -> dict:
    """Frames per second of a batched rollout (random policy) in the world model, at batch `num_envs`: one reset
    (rendering every world's prompt takes far longer than the steps), `warmup` untimed steps (CUDA graphs are
    captured), then `steps` timed ones; then, with `profile_steps`, that many more under torch.profiler
    (`profile_rollout`), so that one call says both how fast a step is and where its time goes. `on_timed(result)`
    is called between the two (the caller saves the timing before the profile runs)."""
    from worldsim.envs.world_model import WorldModelVectorEnv
    from worldsim.rollout import make_batch_policy
    env = WorldModelVectorEnv(num_envs, checkpoint=checkpoint, precision=precision, decode_precision=decode_precision,
                              **(world or {}))
    policy = make_batch_policy("random", num_envs, 0)
    start = time.perf_counter()
    obs, infos = env.reset(seed=0)
    reset_s = time.perf_counter() - start
    for t in range(warmup + steps):
        if t == warmup:
            start = time.perf_counter()
        obs, _, _, _, infos = env.step(policy(obs, infos))
    seconds = time.perf_counter() - start
    result = {"num_envs": num_envs, "frames": steps * num_envs, "fps": steps * num_envs / seconds,
              "ms_per_batch_step": seconds / steps * 1000.0, "reset_s": reset_s}
    if on_timed is not None:
        on_timed(result)
    if profile_steps:
        result["profile"] = profile_rollout(env, policy, obs, infos, profile_steps)
    env.close()
    return result


def profile_rollout(env, policy, obs, infos, steps: int, top: int = 25) -> dict:
    """`steps` batch steps under torch.profiler: the ops (and on CUDA the kernels) with the most self time, in ms
    per step, and the step's wall time beside what they sum to (the rest is Python and numpy). On CUDA a step
    replays CUDA graphs, so its kernels show with the device time they took there."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            obs, _, _, _, infos = env.step(policy(obs, infos))
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = list(prof.key_averages())

    def device_us(e):  # torch renamed cuda → device time in 2.4; both spellings for the GPU image's torch
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0) or 0.0

    rows = [{"name": e.key, "calls_per_step": e.count / steps, "cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "device_ms_per_step": device_us(e) / 1e3 / steps} for e in events]
    key = "device_ms_per_step" if cuda else "cpu_ms_per_step"
    by_cpu = sorted(rows, key=lambda r: r["cpu_ms_per_step"], reverse=True)[:top]  # launch-bound work shows here
    rows.sort(key=lambda r: r[key], reverse=True)
    return {"steps": steps, "wall_ms_per_step": wall * 1e3 / steps, "sorted_by": key,
            "cpu_ms_per_step": sum(r["cpu_ms_per_step"] for r in rows),
            "device_ms_per_step": sum(r["device_ms_per_step"] for r in rows), "top": rows[:top], "top_cpu": by_cpu}


def print_profile(profile: dict, rows: int = 15) -> None:
    """The profile's ops by the time it sorted them by (device time on CUDA), and on CUDA also by CPU time."""
    from rich.console import Console
    from rich.table import Table
    lists = [("top", profile["sorted_by"])]
    if profile["sorted_by"] != "cpu_ms_per_step":
        lists.append(("top_cpu", "cpu_ms_per_step"))
    for name, key in lists:
        table = Table(title=f"rollout step profile by {key.split('_')[0]} time: {profile['wall_ms_per_step']:.2f} ms "
                            f"wall a step, ops' self time {profile['cpu_ms_per_step']:.2f} ms CPU, "
                            f"{profile['device_ms_per_step']:.2f} ms device")
        for column in ("op", "calls a step", "CPU ms a step", "device ms a step"):
            table.add_column(column, justify="left" if column == "op" else "right")
        for r in profile[name][:rows]:
            table.add_row(r["name"][:60], f"{r['calls_per_step']:.1f}", f"{r['cpu_ms_per_step']:.3f}",
                          f"{r['device_ms_per_step']:.3f}")
        Console().print(table)


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="WorldSim play: world model on this machine")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for section, values in results.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, (list, dict)):  # series and profiles go to the JSON only (profiles have their table)
                continue
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            table.add_row(f"{section}.{key}", text)
    Console().print(table)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="world checkpoint (default: an untrained world of the CPU sizes)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of play per session")
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--steps", type=int, help="denoising steps in play (default: the model's)")
    parser.add_argument("--display-fps", type=int, default=120, help="window loop ticks per second (play.display_fps)")
    parser.add_argument("--soak-frames", type=int, default=2000, help="72000: an hour of play time; 0: skip")
    parser.add_argument("--soak-checkpoint", help="world checkpoint for the soak (default: the play one)")
    parser.add_argument("--skip-play", action="store_true", help="skip the play sessions (rollouts and the soak still run)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="world.precision of the play and rollout worlds")
    parser.add_argument("--decode-precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="world.decode_precision of the play and rollout worlds")
    parser.add_argument("--rollout-envs", type=int, default=16, help="batch of the rollout timing (0: skip)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after the rollout timing, this many steps under torch.profiler: the ops and kernels "
                             "with the most time a step, printed and in the JSON (0: none)")
    parser.add_argument("--no-twin", action="store_true", help="play without the engine twin (world.twin=false)")
    parser.add_argument("--commit-last-step", action="store_true",
                        help="frames enter the caches from their last Euler step (world.commit_last_step=true)")
    parser.add_argument("--compile", action="store_true",
                        help="the sampler's step under torch.compile (world.compile=true); compiled in the untimed "
                             "warm-up steps of the rollouts, and in the first seconds of play")
    parser.add_argument("--threads", type=int, help="world.torch_threads of the play and soak worlds (default: "
                                                     "the world's, 2)")
    parser.add_argument("--out", default="bench_results/play.json")
    args = parser.parse_args(argv)
    if args.profile_steps < 0:
        parser.error(f"--profile-steps must be 0 (no profile) or more, got {args.profile_steps}")
    from worldsim.envs.world_model import WorldModelConfig
    default_threads = WorldModelConfig().torch_threads
    world = {"commit_last_step": True} if args.commit_last_step else {}
    if args.compile:
        world["compile"] = True
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(section=None, value=None):  # after each part: a run stopped at its time limit keeps what it finished
        if section is not None:
            results[section] = value
        out.write_text(json.dumps(results, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or untrained_world(Path(tmp) / "world")
        import torch
        results = {"setup": {"checkpoint": args.checkpoint or "untrained: dynamics tiny + autoencoder cpu",
                             "soak_checkpoint": args.soak_checkpoint or "the play checkpoint",
                             "torch_threads": args.threads or default_threads,
                             "steps": args.steps, "precision": args.precision,
                             "decode_precision": args.decode_precision, "twin": not args.no_twin,
                             "commit_last_step": args.commit_last_step, "compile": args.compile,
                             "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                             "torch": torch.__version__}}
        save()
        if not args.skip_play:
            results["play"] = play_session(checkpoint, args.seconds, args.fps, probe=True, steps=args.steps,
                                           display_fps=args.display_fps, precision=args.precision,
                                           decode_precision=args.decode_precision, threads=args.threads,
                                           twin=not args.no_twin, world=world)
            save()
            results["play_unpaced"] = play_session(checkpoint, args.seconds, 1000, probe=False, steps=args.steps,
                                                   display_fps=args.display_fps, precision=args.precision,
                                                   decode_precision=args.decode_precision, threads=args.threads,
                                                   twin=not args.no_twin, world=world)
            save()
        if args.rollout_envs:
            results["rollout"] = rollout_speed(checkpoint, args.rollout_envs, steps=20, precision=args.precision,
                                               decode_precision=args.decode_precision,
                                               profile_steps=args.profile_steps,
                                               on_timed=lambda timed: save("rollout", timed), world=world)
            save()
        if args.soak_frames:
            results["soak"] = soak(args.soak_checkpoint or checkpoint, args.soak_frames, args.fps,
                                   threads=args.threads, world=world)
    results["setup"]["load_average_1min_end"] = os.getloadavg()[0]
    print_table(results)
    if "profile" in results.get("rollout", {}):
        print_profile(results["rollout"]["profile"])
    save()
    print(f"saved {out}")
    return results


if __name__ == "__main__":
    main()
