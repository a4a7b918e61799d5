"""Every benchmark in one call: each benchmark script runs in its own process under a time limit, and one table
and one JSON say what ran, how long it took, and where its figures are.

    python -m worldsim.benchmarks --out bench_results/all            # the set for this machine (CUDA or CPU)
    python -m worldsim.benchmarks --minutes 9 --only kernels rollouts  # some stages, 9 minutes in all
    python -m worldsim.benchmarks --list                               # the stages and their commands

For a short lease of a GPU machine: the stages run in order of what the targets need most. A stage that does not
finish in its time is stopped, and what it printed is kept in its log. A stage is skipped when the time left is
under MIN_STAGE_SECONDS. Each stage writes its own JSON (the script's --out) and log under --out; summary.json lists
them with their status, seconds and the last lines printed.
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_STAGE_SECONDS = 20.0
TAIL_LINES = 40    # kept in summary.json
TAIL_ECHO = 25     # printed after each stage (its table, usually)


@dataclass
class Stage:
    """One benchmark script run: `args` after `python -m`, with {out} standing for the stage's JSON path."""
    name: str
    args: list
    seconds: float        # the most it may take
    what: str


SHIPPED = "assets/world"
# In order of what a short lease needs most: the GPU checks that every later stage relies on, then the figures
# never measured with this code (play and rollouts with the view memory, the small sampler, compiled training),
# then the kernel timings (measured 2026-11-26, the kernels unchanged since) and the rest.
CUDA_STAGES = [
    Stage("kernels-checks", ["kernels.bench", "--quick", "--checks-only", "--out", "{out}"], 150,
          "attention kernels and row noise: bf16/fp16 checks against the reference on the GPU, CUDA-graph replay"),
    Stage("play", ["worldsim.play.bench", "--checkpoint", SHIPPED, "--soak-frames", "0", "--rollout-envs", "0",
                   "--seconds", "10", "--out", "{out}"], 120,
          "play the shipped world through the env at batch 1 (target 100 frames/s unpaced), latency"),
    Stage("rollouts", ["worldsim.play.bench", "--checkpoint", SHIPPED, "--skip-play", "--soak-frames", "0",
                       "--rollout-envs", "256", "--precision", "bf16", "--decode-precision", "bf16",
                       "--profile-steps", "5", "--out", "{out}"],
          150, "rollouts of the shipped world, 256 envs, bf16 (target 20,000 frames/s), and a profile of 5 steps"),
    Stage("rollouts-compiled", ["worldsim.play.bench", "--checkpoint", SHIPPED, "--skip-play", "--soak-frames", "0",
                                "--rollout-envs", "256", "--precision", "bf16", "--decode-precision", "bf16",
                                "--compile", "--profile-steps", "5", "--out", "{out}"],
          180, "the same with the sampler's step under torch.compile (world.compile=true), compiled in the warm-up"),
    Stage("dynamics-small", ["worldsim.models.bench_dynamics", "--config", "small", "--steps", "2", "--batches", "1",
                             "256", "--graphs", "both", "--dtype", "bf16", "--out", "{out}"], 240,
          "the small dynamics sampler + decode, batch 1 and 256 (target 8 ms a frame at batch 1)"),
    Stage("dynamics-small-compiled", ["worldsim.models.bench_dynamics", "--config", "small", "--steps", "2",
                                      "--batches", "1", "256", "--compile", "on", "--dtype", "bf16", "--out", "{out}"],
          240, "the same with the step under torch.compile, replayed as CUDA graphs"),
    Stage("training-small", ["worldsim.models.bench_dynamics", "--config", "small", "--skip-sampler",
                             "--train-batch", "32", "--dtype", "bf16", "--out", "{out}"], 180,
          "small dynamics training: tokens/s and MFU (goal 30%)"),
    Stage("training-small-compiled", ["worldsim.models.bench_dynamics", "--config", "small", "--skip-sampler",
                                      "--train-batch", "32", "--dtype", "bf16", "--train-compile", "--out", "{out}"],
          240, "the same under torch.compile (compiled in the untimed warm-up steps)"),
    Stage("kernels", ["kernels.bench", "--quick", "--skip-checks", "--out", "{out}"], 240,
          "attention kernel timings against SDPA and FlexAttention"),
    Stage("rollouts-fp32", ["worldsim.play.bench", "--checkpoint", SHIPPED, "--skip-play", "--soak-frames", "0",
                            "--rollout-envs", "256", "--out", "{out}"], 150,
          "rollouts of the shipped world, 256 envs, fp32"),
    Stage("autoencoder", ["worldsim.models.bench_autoencoder", "--checkpoint", f"{SHIPPED}/autoencoder",
                          "--out", "{out}"], 90, "the shipped decoder: ms a frame and frames/s at batch 256"),
    Stage("render", ["worldsim.engine.render_gpu", "--out", "{out}"], 120,
          "the engine's Triton raycaster against the numba one, 1 to 1,024 worlds"),
]
CPU_STAGES = [
    Stage("play", ["worldsim.play.bench", "--checkpoint", SHIPPED, "--soak-frames", "0", "--rollout-envs", "16",
                   "--seconds", "20", "--out", "{out}"], 240,
          "play the shipped world (target 20 frames/s, latency at most 2 frames), rollouts of 16"),
    Stage("dynamics-tiny", ["worldsim.models.bench_dynamics", "--config", "tiny", "--steps", "2", "--batches", "1",
                            "16", "--out", "{out}"], 240, "the tiny dynamics sampler + decode (target 50 ms a frame)"),
    Stage("rollouts-compiled", ["worldsim.play.bench", "--checkpoint", SHIPPED, "--skip-play", "--soak-frames", "0",
                                "--rollout-envs", "16", "--compile", "--out", "{out}"], 300,
          "rollouts of 16 with the sampler's step under torch.compile (world.compile=true; compiling: 1-2 minutes)"),
    Stage("autoencoder", ["worldsim.models.bench_autoencoder", "--checkpoint", f"{SHIPPED}/autoencoder",
                          "--out", "{out}"], 120, "the shipped decoder: ms a frame"),
]
QUICK_STAGES = [  # a minute on a 2-core CPU: that the runner and the scripts work, not figures to keep
    Stage("dynamics-tiny", ["worldsim.models.bench_dynamics", "--config", "tiny", "--steps", "2", "--batches", "1",
                            "--frames", "5", "--warmup", "2", "--autoencoder", "none", "--out", "{out}"], 120,
          "the tiny dynamics sampler, a few frames"),
]


@dataclass
class Result:
    name: str
    command: list
    status: str                  # ok | failed | timed out | skipped
    returncode: int | None
    seconds: float
    json: str | None             # the stage's JSON, where it wrote one
    log: str | None
    tail: list = field(default_factory=list)


def stages_for(cuda: bool, quick: bool = False) -> list[Stage]:
    if quick:
        return list(QUICK_STAGES)
    return list(CUDA_STAGES if cuda else CPU_STAGES)


def run_stage(stage: Stage, out_dir: Path, limit: float) -> Result:
    """Run one stage in its own process for at most `limit` seconds, its output streamed to NAME.log."""
    out_json = out_dir / f"{stage.name}.json"
    log_path = out_dir / f"{stage.name}.log"
    command = [sys.executable, "-m", *[a.replace("{out}", str(out_json)) for a in stage.args]]
    out_json.unlink(missing_ok=True)  # a JSON left from an earlier call must not pass for this one's
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            returncode = process.wait(timeout=limit)
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode, status = None, "timed out"
    seconds = time.perf_counter() - start
    tail = log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return Result(stage.name, command, status, returncode, round(seconds, 1),
                  str(out_json) if out_json.exists() else None, str(log_path), tail)


def run(stages: list[Stage], out_dir: Path, minutes: float | None = None, echo=print) -> list[Result]:
    """Run `stages` in order within `minutes` (None: no limit); returns one Result per stage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if minutes is None else time.perf_counter() + 60 * minutes
    results = []
    for stage in stages:
        remaining = math.inf if deadline is None else deadline - time.perf_counter()
        left = min(stage.seconds, remaining)
        if remaining < MIN_STAGE_SECONDS:
            results.append(Result(stage.name, [], "skipped", None, 0.0, None, None,
                                  [f"{remaining:.0f} s left, under {MIN_STAGE_SECONDS:.0f}"]))
            echo(f"{stage.name}: skipped (time is up)")
            continue
        echo(f"{stage.name}: {stage.what} (at most {left:.0f} s)")
        result = run_stage(stage, out_dir, left)
        echo(f"{stage.name}: {result.status} in {result.seconds:.0f} s; its last lines:")
        echo("\n".join(f"  {line}" for line in result.tail[-TAIL_ECHO:]))
        results.append(result)
        write_summary(results, out_dir)  # after every stage, so that a cut-off call keeps what finished
    return results


def machine() -> dict:
    import torch
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_summary(results: list[Result], out_dir: Path) -> Path:
    path = out_dir / "summary.json"
    path.write_text(json.dumps({"machine": machine(), "stages": [asdict(r) for r in results]}, indent=1) + "\n")
    return path


def print_table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="benchmarks")
    for column in ("stage", "status", "seconds", "JSON"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, r.status, f"{r.seconds:.0f}", Path(r.json).name if r.json else "-")
    Console().print(table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/all", help="directory for the stages' JSON, logs and summary")
    parser.add_argument("--minutes", type=float, help="time for all stages together (default: each stage's own)")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run these stages, in this order")
    parser.add_argument("--cpu", action="store_true", help="the CPU set even where CUDA is present")
    parser.add_argument("--quick", action="store_true", help="a one-minute check that the runner works")
    parser.add_argument("--list", action="store_true", help="print the stages and exit")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    import torch
    stages = stages_for(torch.cuda.is_available() and not args.cpu, args.quick)
    if args.only:
        known = {s.name: s for s in CUDA_STAGES + CPU_STAGES + QUICK_STAGES}
        known.update({s.name: s for s in stages})  # this machine's version where both sets have a stage
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        stages = [known[name] for name in args.only]
    if args.list:
        width = max(len(s.name) for s in stages)
        for s in stages:
            print(f"{s.name:{width}s} {s.seconds:4.0f} s  python -m {' '.join(s.args)}\n{'':{width + 8}s}{s.what}")
        return
    results = run(stages, Path(args.out), args.minutes)
    print_table(results)
    print(f"saved {Path(args.out) / 'summary.json'}")
    if any(r.status in ("failed", "timed out") for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
