"""Dataset generation: exploration policies drive engine worlds and every episode becomes a trajectory on disk.

Episode i is world seed `seed + i` driven by a policy seeded from it, so any episode can be remade alone and
a rerun makes the same frames. On the CPU episodes run in parallel worker processes (one numba thread each);
with CUDA (or `batched=true`) each worker (or this process, with workers=1) steps a VoxelVectorEnv of
`vector_envs` worlds, rendered in one launch per tick on the GPU, and writes one trajectory per world. Runs are resumable and atomic: `generate-progress.json` lists the finished episodes
(written after each one's files are closed), and a rerun skips those, removes every other episode file it finds
(a killed run's leftovers) with a message, and makes the rest. At the end `stats.json` holds the action
statistics of everything in the directory, and with fmt=cache the training cache is (re)built in
`<out_dir>/cache` from the finished episodes (decoded from their mp4s: the episodes stay the resumable unit).
"""
import contextlib
import dataclasses
import datetime
import fcntl
import json
import multiprocessing
import os
import queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from worldsim.data.policies import ActionStats, PolicyConfig, make_policy
from worldsim.engine.env import EngineConfig

FORMATS = ("interchange", "cache")
PROGRESS_FILE = "generate-progress.json"
STATS_FILE = "stats.json"
LOCK_FILE = ".generate.lock"
CACHE_DIR = "cache"
EPISODE_PREFIX = "episode_"
POLICY_STREAM = 1      # spawn key that separates the policy's random stream from the world seed
REPORT_EVERY = 20      # frames between progress reports (and checks that the parent still lives)


@dataclass
class GenerateConfig:
    out_dir: str = "data/generated"
    episodes: int = 16
    frames_per_episode: int = 1000
    width: int | None = None       # None: the engine config's
    height: int | None = None
    workers: int = 2               # processes; 1 runs in this process
    seed: int = 0                  # episode i uses world seed seed + i
    fmt: str = "interchange"       # interchange | cache (interchange episodes, then a cache built from them)
    device: str = "auto"           # auto | cpu | cuda
    batched: bool | None = None    # step VoxelVectorEnvs of vector_envs worlds; None: when the device is cuda
    vector_envs: int = 64          # worlds per VoxelVectorEnv on the batched path
    progress: bool = True          # show a progress bar

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"generate.fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"generate.device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("episodes", "frames_per_episode", "workers", "vector_envs"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"generate.{name} must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class EpisodeTask:
    """Everything a worker needs to make one episode."""
    index: int
    stem: str
    world_seed: int
    policy_seed: int
    frames: int
    engine: EngineConfig
    policy: PolicyConfig


def policy_seed(world_seed: int) -> int:
    """The policy seed of the episode in world `world_seed`: a separate stream derived from it."""
    return int(np.random.SeedSequence(int(world_seed), spawn_key=(POLICY_STREAM,)).generate_state(1)[0])


def episode_stem(out_dir: Path, index: int) -> Path:
    return out_dir / f"{EPISODE_PREFIX}{index:06d}"


def _writer(task: EpisodeTask):
    from worldsim.data.interchange import TrajectoryWriter
    options = {"generator": "worldsim.data.generate", "episode": task.index, "policy": task.policy.name,
               "policy_seed": task.policy_seed, "policy_config": dataclasses.asdict(task.policy),
               "fov": task.engine.fov, "view_distance": task.engine.view_distance, "hud": task.engine.hud}
    return TrajectoryWriter(task.stem, task.engine.width, task.engine.height, fps=20, source="engine",
                            seed=task.world_seed, options=options)


# ------------------------------------------------------------------------------------------ one episode
def run_episode(task: EpisodeTask, report=None) -> tuple[int, dict]:
    """Make one episode's trajectory; report(frames) is called every REPORT_EVERY frames. Returns its stats."""
    from worldsim.engine.env import VoxelEnv
    env = VoxelEnv(task.engine)
    obs, info = env.reset(seed=task.world_seed)
    policy = make_policy(task.policy.name, task.policy, task.policy_seed)
    stats = ActionStats()
    with _writer(task) as writer:
        for t in range(task.frames):
            action = policy.act(obs, info)
            writer.write(obs, action, info)
            stats.add(action, info)
            if t + 1 < task.frames:  # the last action has no frame to produce
                obs, _, _, _, info = env.step(action)
            if report is not None and (t + 1) % REPORT_EVERY == 0:
                report(REPORT_EVERY)
        writer.close()
    if report is not None and task.frames % REPORT_EVERY:
        report(task.frames % REPORT_EVERY)
    return task.index, stats.to_dict()


def _unbatch_info(infos: dict, i: int) -> dict:
    """Sub-env i's info from a vector env's batched info dict, as plain Python values."""
    return {k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in infos.items()
            if not k.startswith("_")}


def run_batch(tasks: list[EpisodeTask], device: str = "cpu", report=None) -> list[tuple[int, dict]]:
    """Make several episodes at once in one VoxelVectorEnv, rendered in one launch per tick on CUDA."""
    from worldsim.engine.env import VoxelVectorEnv
    n, frames = len(tasks), tasks[0].frames
    env = VoxelVectorEnv(n, tasks[0].engine, render_device=device)
    obs, infos = env.reset(seed=[task.world_seed for task in tasks])
    policies = [make_policy(task.policy.name, task.policy, task.policy_seed) for task in tasks]
    stats = [ActionStats() for _ in tasks]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_writer(task)) for task in tasks]
        for t in range(frames):
            acts = []
            for i in range(n):
                info = _unbatch_info(infos, i)
                acts.append(policies[i].act(obs[i], info))
                writers[i].write(obs[i], acts[i], info)
                stats[i].add(acts[i], info)
            if t + 1 < frames:
                obs, _, _, _, infos = env.step({k: np.stack([np.asarray(a[k]) for a in acts]) for k in acts[0]})
            if report is not None and (t + 1) % REPORT_EVERY == 0:
                report(n * REPORT_EVERY)
        for writer in writers:
            writer.close()
    if report is not None and frames % REPORT_EVERY:
        report(n * (frames % REPORT_EVERY))
    return [(task.index, s.to_dict()) for task, s in zip(tasks, stats)]


# ------------------------------------------------------------------------------------------ worker processes
_progress_queue = None   # set in each worker process by _init_worker
_parent_pid = None


class ParentDied(Exception):
    """The generating process is gone: stop, so that no orphan finishes an episode a rerun is remaking."""


def _init_worker(progress_queue) -> None:
    global _progress_queue, _parent_pid
    _progress_queue, _parent_pid = progress_queue, os.getppid()


def _worker_report(frames: int) -> None:
    if os.getppid() != _parent_pid:
        raise ParentDied()
    _progress_queue.put(frames)


def _worker_job(job: list[EpisodeTask], batched: bool, device: str) -> list[tuple[int, dict]]:
    return run_job(job, batched, device, _worker_report)


def run_job(job: list[EpisodeTask], batched: bool, device: str, report=None) -> list[tuple[int, dict]]:
    """One episode alone, or several together in a vector env."""
    return run_batch(job, device, report) if batched else [run_episode(task, report) for task in job]


@contextlib.contextmanager
def _environment(**variables):
    """Set environment variables while spawning workers (they read them before importing numba)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_pool(jobs: list[list[EpisodeTask]], workers: int, batched: bool, device: str, report):
    """Yield (index, stats) as worker processes finish their jobs."""
    ctx = multiprocessing.get_context("spawn")
    progress_queue = ctx.Queue()
    # One numba thread per worker: the workers already fill the cores, more threads only contend.
    with _environment(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1"), \
            ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(progress_queue,)) as executor:
        pending = {executor.submit(_worker_job, job, batched, device) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_queue, report)
                for future in done:
                    yield from future.result()
        finally:
            for future in pending:
                future.cancel()
    _drain(progress_queue, report)


def _drain(progress_queue, report) -> None:
    while True:
        try:
            report(progress_queue.get_nowait())
        except queue.Empty:
            return


def _jobs(tasks: list[EpisodeTask], batched: bool, vector_envs: int) -> list[list[EpisodeTask]]:
    size = vector_envs if batched else 1
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


# ------------------------------------------------------------------------------------------ bookkeeping
class ProgressLog:
    """generate-progress.json: the settings a directory was made with and the stats of each finished episode."""

    def __init__(self, out_dir: Path, settings: dict):
        self.path, self.settings, self.finished = out_dir / PROGRESS_FILE, settings, {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved["settings"] != settings:
                changed = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
                raise ValueError(f"{out_dir} holds episodes generated with other settings ({', '.join(changed)} "
                                 f"differ); use another generate.out_dir or the same settings")
            self.finished = {int(k): v for k, v in saved["finished"].items()}

    def finish(self, index: int, stats: dict) -> None:
        self.finished[index] = stats
        self._save()

    def keep_only(self, indices: set[int]) -> None:
        """Forget finished episodes whose files are gone (they will be made again)."""
        self.finished = {i: v for i, v in self.finished.items() if i in indices}
        self._save()

    def _save(self) -> None:
        _write_json_atomic(self.path, {"settings": self.settings,
                                       "finished": {str(k): v for k, v in sorted(self.finished.items())}})


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """Hold a lock on the directory so that two generators never write into it at once."""
    with open(out_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another generation is writing into {out_dir}; wait for it or choose another "
                             f"generate.out_dir") from None
        yield


def _remove_unfinished(out_dir: Path, finished: set[int], console: Console) -> None:
    """Delete every episode file whose episode is not recorded as finished, and writer leftovers, saying which."""
    from worldsim.data.interchange import cleanup_partial
    removed = [str(p) for p in cleanup_partial(out_dir)]
    for path in sorted(out_dir.glob(f"{EPISODE_PREFIX}*")):
        number = path.name[len(EPISODE_PREFIX):].split(".")[0].split("-")[0]
        if number.isdigit() and int(number) not in finished:
            path.unlink()
            removed.append(str(path))
    if removed:
        console.print(f"[yellow]removed {len(removed)} file(s) of unfinished episodes from an interrupted run:[/] "
                      + ", ".join(Path(p).name for p in removed))


def _is_complete(stem: Path) -> bool:
    return all(stem.with_name(stem.name + suffix).exists() for suffix in (".mp4", ".jsonl", "-options.json"))


class FramesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:,.0f} frames/s")


def _resolve_device(config: GenerateConfig) -> str:
    if config.device != "auto":
        return config.device
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


# ------------------------------------------------------------------------------------------ the entry point
def generate(config: GenerateConfig, engine_config: EngineConfig | None = None,
             policy_config: PolicyConfig | None = None, console: Console | None = None) -> dict:
    """Make config.episodes episodes in config.out_dir (skipping finished ones); returns the run's summary."""
    console = console or Console()
    sizes = {k: v for k, v in (("width", config.width), ("height", config.height)) if v is not None}
    engine_config = EngineConfig.with_overrides(engine_config, {**sizes, "max_episode_steps": None})
    policy_config = policy_config or PolicyConfig()
    make_policy(policy_config.name, policy_config, 0)  # fail now, not in a worker, on a bad policy name
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"seed": config.seed, "frames_per_episode": config.frames_per_episode,
                "engine": dataclasses.asdict(engine_config), "policy": dataclasses.asdict(policy_config)}
    device = _resolve_device(config)
    batched = config.batched if config.batched is not None else device == "cuda"
    with _exclusive(out_dir):
        log = ProgressLog(out_dir, settings)
        finished = {i for i in log.finished if _is_complete(episode_stem(out_dir, i))}
        log.keep_only(finished)
        _remove_unfinished(out_dir, finished, console)
        tasks = [EpisodeTask(i, str(episode_stem(out_dir, i)), config.seed + i, policy_seed(config.seed + i),
                             config.frames_per_episode, engine_config, policy_config)
                 for i in range(config.episodes) if i not in finished]
        if finished:
            console.print(f"{len(finished)} episode(s) already finished in {out_dir}; making {len(tasks)} more")
        start = time.perf_counter()
        with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                      FramesPerSecond(), TimeRemainingColumn(), console=console,
                      disable=not config.progress) as progress:
            bar = progress.add_task("frames", total=len(tasks) * config.frames_per_episode)
            report = lambda frames: progress.advance(bar, frames)  # noqa: E731
            jobs = _jobs(tasks, batched, config.vector_envs)
            if config.workers > 1 and len(jobs) > 1:
                results = _run_pool(jobs, min(config.workers, len(jobs)), batched, device, report)
            else:
                results = (result for job in jobs for result in run_job(job, batched, device, report))
            for index, stats in results:
                log.finish(index, stats)
        seconds = time.perf_counter() - start
        summary = _summarise(config, log, len(tasks), seconds, device, batched, engine_config)
        _write_json_atomic(out_dir / STATS_FILE, summary)
        stats = ActionStats()
        for i in sorted(log.finished):
            stats.merge(ActionStats.from_dict(log.finished[i]))
        stats.print_table(console)
        console.print(f"{summary['frames_made']} frames in {seconds:.1f} s ({summary['frames_per_s']:.0f} frames/s); "
                      f"{len(log.finished)} episode(s) in {out_dir}; statistics in {out_dir / STATS_FILE}",
                      soft_wrap=True)  # paths stay whole, to copy from a log
        if config.fmt == "cache":
            summary["cache"] = str(build_cache(out_dir, console))
    return summary


def _summarise(config, log: ProgressLog, made: int, seconds: float, device: str, batched: bool,
               engine_config: EngineConfig) -> dict:
    stats = ActionStats()
    for i in sorted(log.finished):
        stats.merge(ActionStats.from_dict(log.finished[i]))
    frames_made = made * config.frames_per_episode
    return {"episodes": len(log.finished), "episodes_made": made, "frames_made": frames_made,
            "seconds": seconds, "frames_per_s": frames_made / seconds if seconds > 0 else 0.0,
            "device": device, "batched": batched, "workers": config.workers,
            "width": engine_config.width, "height": engine_config.height, "seed": config.seed,
            "frames_per_episode": config.frames_per_episode, "actions": stats.summary()}


def build_cache(out_dir: Path, console: Console) -> Path:
    """(Re)build the training cache in out_dir/cache from the episodes in out_dir (decoded from their mp4s)."""
    from worldsim.data.convert import interchange_to_cache
    result = interchange_to_cache(out_dir, out_dir / CACHE_DIR, overwrite=True)
    console.print(f"training cache of {result['episodes']} episode(s), {result['frames']} frames, in {result['dst']}")
    return out_dir / CACHE_DIR


# ------------------------------------------------------------------------------------------ benchmark
def bench_generation(out_dir: str = "bench_results/generation", width: int = 128, height: int = 128,
                     workers: int = 2, episodes: int = 4, frames_per_episode: int = 500,
                     json_path: str = "bench_results/generation.json", console: Console | None = None) -> dict:
    """Frames/s of generation with encoding (fresh directory each time); prints a table and saves JSON."""
    import shutil
    from worldsim.bench import machine
    console = console or Console()
    shutil.rmtree(out_dir, ignore_errors=True)
    config = GenerateConfig(out_dir=out_dir, episodes=episodes, frames_per_episode=frames_per_episode,
                            width=width, height=height, workers=workers, device="cpu", progress=False)
    summary = generate(config, EngineConfig(), PolicyConfig(), console=Console(quiet=True))
    result = {"case": f"generate {width}x{height}, {workers} worker(s), interchange", "episodes": episodes,
              "frames": summary["frames_made"], "seconds": summary["seconds"],
              "frames_per_s": summary["frames_per_s"], "machine": machine(),
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    table = Table(title="generation (policy + engine + H.264 encoding + jsonl)")
    for column in ("case", "frames", "seconds", "frames/s"):
        table.add_column(column, justify="right")
    table.add_row(result["case"], str(result["frames"]), f"{result['seconds']:.1f}", f"{result['frames_per_s']:.0f}")
    console.print(table)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> None:
    """python -m worldsim.data.generate: the generation benchmark (mode=generate makes datasets)."""
    import argparse
    parser = argparse.ArgumentParser(description="Frames/s of generation with H.264 encoding (policy + engine + "
                                     "jsonl), in a fresh directory; prints a table and saves JSON. Datasets: "
                                     "python run_world.py mode=generate.")
    parser.add_argument("--out-dir", default="bench_results/generation", help="where the episodes go (replaced)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500, help="frames per episode")
    parser.add_argument("--out", default="bench_results/generation.json", help="the JSON written")
    args = parser.parse_args(argv)
    bench_generation(args.out_dir, workers=args.workers, episodes=args.episodes, frames_per_episode=args.frames,
                     json_path=args.out)


if __name__ == "__main__":
    main()
