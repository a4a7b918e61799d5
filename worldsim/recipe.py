"""The training recipe in one timed call, for a short lease of a GPU machine:

    python -m worldsim.recipe --minutes 9 --stages generate,autoencoder,encode,dynamics --out DIR

Each stage is the README recipe's own command (`run_world.py mode=...`); training stages get a share of the
time as train.max_minutes, so they checkpoint and stop in time, and a rerun (on the same machine) resumes
them. At the end the runs' final weights and their latest checkpoint (to resume elsewhere) are packed into
DIR as parts of at most --part-mib MiB (`cat DIR/pack.part* | tar -xz` unpacks), with results/status.json.
Stages and sizes are flags; `--dry` runs every stage at toy sizes (a check on a CPU before a lease).

Measured on one H100 (2026-11-26): generation with 15 CPU workers 1,316 frames/s (the cache is then decoded
from the mp4s by reader threads); autoencoder (cpu size, full 128×128 frames, batch 64) about 37 steps/s;
dynamics (tiny, batch 64) about 22 steps/s after about 30 s of Triton compilation.
"""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

STAGES = ("generate", "autoencoder", "encode", "dynamics")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole call")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--out", required=True, help="where the packed parts go")
    p.add_argument("--data", default="data/train", help="generated data directory (its cache/ is trained on)")
    p.add_argument("--episodes", type=int, default=45)
    p.add_argument("--frames", type=int, default=1000, help="frames per episode")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--autoencoder-run", default="runs/ae")
    p.add_argument("--autoencoder-args", default="autoencoder=cpu autoencoder.train_crop=0 train.batch_size=64 "
                   "train.lr=1e-3 train.ema=0.999 train.warmup_steps=200 train.steps=8000",
                   help="run_world.py overrides of the autoencoder stage")
    p.add_argument("--autoencoder-share", type=float, default=0.4, help="of the training time left")
    p.add_argument("--dynamics-run", default="runs/dyn")
    p.add_argument("--dynamics-args", default="dynamics=tiny train.batch_size=64 train.lr=6e-4 train.ema=0.999 "
                   "train.warmup_steps=200 train.steps=6000", help="run_world.py overrides of the dynamics stage")
    p.add_argument("--part-mib", type=int, default=15)
    p.add_argument("--reserve", type=float, default=40.0, help="seconds kept for packing and process start-up")
    p.add_argument("--dry", action="store_true", help="toy sizes, to check the stages on a CPU")
    args = p.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    if args.dry:
        args.episodes, args.frames, args.workers = 2, 48, 1
        args.autoencoder_args += " train.batch_size=4 train.steps=10 train.num_workers=1"
        args.dynamics_args += " train.batch_size=2 train.steps=4 train.num_workers=1"
    return args


class Clock:
    def __init__(self, minutes: float, reserve: float):
        self.start, self.limit, self.reserve, self.status = time.time(), 60 * minutes, reserve, {}

    def left(self) -> float:
        return self.limit - (time.time() - self.start) - self.reserve

    def run(self, name: str, cmd: list[str], timeout: float) -> bool:
        """Run one command in its own process group, killed (with its workers) at `timeout` seconds."""
        timeout = max(5.0, min(timeout, self.left()))
        print(f"\n=== [{time.time() - self.start:.0f}s] {name} (at most {timeout:.0f}s): {' '.join(cmd)}", flush=True)
        t = time.time()
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "killed at its time limit"
        self.status[name] = {"rc": rc, "seconds": round(time.time() - t, 1)}
        print(f"=== {name}: {rc} after {time.time() - t:.0f}s", flush=True)
        return rc == 0


def run_stages(args, clock: Clock) -> None:
    world = [sys.executable, str(Path(__file__).resolve().parents[1] / "run_world.py")]
    cache = f"{args.data}/cache"
    if "generate" in args.stages:
        clock.run("generate", world + ["mode=generate", "generate.fmt=cache", "generate.progress=false",
                                       "generate.device=cpu", f"generate.workers={args.workers}",
                                       f"generate.out_dir={args.data}", f"generate.episodes={args.episodes}",
                                       f"generate.frames_per_episode={args.frames}", "seed=0"], clock.left())
    training = [s for s in ("autoencoder", "dynamics") if s in args.stages]
    if "autoencoder" in args.stages:
        share = args.autoencoder_share if "dynamics" in training else 1.0
        minutes = max(0.2, share * (clock.left() - (30 if "encode" in args.stages else 0)) / 60 - 0.5)
        clock.run("autoencoder", world + ["mode=train_autoencoder", f"train.data={cache}",
                                          f"train.out_dir={args.autoencoder_run}", f"train.max_minutes={minutes:.2f}",
                                          "train.num_workers=6", "train.log_every=50"]
                  + args.autoencoder_args.split(), 60 * minutes + 120)
    if "encode" in args.stages:
        clock.run("encode", world + ["mode=encode", f"encode.checkpoint={args.autoencoder_run}",
                                     f"encode.cache={cache}", "encode.batch_size=256"], 120)
    if "dynamics" in args.stages:
        minutes = max(0.2, clock.left() / 60 - 1.0)  # start-up, compilation, the final samples and checkpoint
        clock.run("dynamics", world + ["mode=train_dynamics", f"train.data={cache}",
                                       f"train.out_dir={args.dynamics_run}", f"train.max_minutes={minutes:.2f}",
                                       "train.num_workers=4", "train.log_every=50", "train.sample_every=0"]
                  + args.dynamics_args.split(), 60 * minutes + 120)


def pack(args, clock: Clock) -> list[Path]:
    """Final weights, curves and samples of each run, and its latest checkpoint, as one tar.gz in parts;
    identical files are stored once (results/copies.json restores the others)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen, copies = {}, {}
    archive = out / "pack.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for run in (Path(args.autoencoder_run), Path(args.dynamics_run)):
            if not run.is_dir():
                continue
            checkpoints = sorted((run / "checkpoints").glob("step_*"))
            for f in sorted(run.rglob("*")):
                if not f.is_file() or ("checkpoints" in f.parts and not (checkpoints and checkpoints[-1] in f.parents)):
                    continue
                digest = hashlib.sha256(f.read_bytes()).hexdigest()
                if digest in seen:
                    copies[str(f)] = seen[digest]
                    continue
                seen[digest] = str(f)
                tar.add(f, arcname=str(f))
        stats = Path(args.data) / "stats.json"
        if stats.exists():
            tar.add(stats, arcname="results/data_stats.json")
        for name, data in (("copies.json", copies), ("status.json", {"stages": clock.status,
                                                                       "seconds": time.time() - clock.start})):
            path = out / name
            path.write_text(json.dumps(data, indent=1))
            tar.add(path, arcname=f"results/{name}")
            path.unlink()
    data, size = archive.read_bytes(), args.part_mib * 2 ** 20
    archive.unlink()
    parts = []
    for i in range(0, len(data), size):
        parts.append(out / f"pack.part{i // size}")
        parts[-1].write_bytes(data[i:i + size])
    print(f"packed {len(data) / 2 ** 20:.1f} MiB in {len(parts)} part(s) in {out}")
    return parts


def main(argv=None) -> None:
    args = parse(argv)
    clock = Clock(args.minutes, args.reserve)
    try:
        run_stages(args, clock)
    finally:
        pack(args, clock)


if __name__ == "__main__":
    main()
