"""Batched rollouts: a policy drives a vector env (the world model or the engine) and each sub-env's episodes
are written as interchange trajectories; with `rollout.fmt=cache` a training cache is then (re)built in
`<out_dir>/cache` from every trajectory in out_dir, as `generate.fmt=cache` does.

    python run_world.py mode=rollout policy=explore rollout.num_envs=8 rollout.steps=400 world=model checkpoint=PATH
    python run_world.py mode=rollout policy=explore rollout.num_envs=8 rollout.steps=400 world=engine

Policies (`rollout.policy`):
    explore, random          worldsim.data.policies, one per sub-env, seeded seed + i
    package.module:name      an import path, to either of two kinds, told apart by the signature:
        - a factory f(config, seed) (its first two parameters are named config and seed, or it is a class whose
          __init__ takes them): make_policy's convention; called once per sub-env with (PolicyConfig, seed + i),
          each result's act(obs, info) -> action dict
        - anything else callable: a batch policy f(obs) with obs uint8 (N, H, W, 3), returning a dict of arrays
          with a leading N dimension (the vector env's action space), or a list of N action dicts
    A path that does not import or has no such attribute is a ValueError naming it, before any env starts.

With NEXT_STEP autoreset, the step after a sub-env truncates ignores its action and starts a new episode:
the episode so far is closed as one trajectory and the next one starts a new file. The frame on screen at the
truncation has no action taken in it, so it is not written (each line pairs a frame with the action taken).
"""
import datetime
import importlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldsim.engine import actions


@dataclass
class RolloutConfig:
    policy: str = "explore"         # explore | random | package.module:callable (see the module docstring)
    num_envs: int = 4
    steps: int = 200                # steps of the whole batch
    out_dir: str = "data/rollouts"
    seed: int = 0                   # sub-env i starts in world seed + i; its policy is seeded alike
    progress: bool = True
    fmt: str = "interchange"        # interchange | cache (the trajectories, then a cache built from out_dir's)

    def __post_init__(self):
        from worldsim.data.generate import FORMATS
        if self.fmt not in FORMATS:
            raise ValueError(f"rollout.fmt must be one of {FORMATS}, got {self.fmt!r}")
        for name in ("num_envs", "steps"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"rollout.{name} must be a positive whole number, got {value!r}")


def resolve(path: str):
    """The object an import path 'package.module:attr.attr' names; ValueError naming the path otherwise."""
    if ":" not in path:
        raise ValueError(f"policy {path!r} is neither 'explore', 'random' nor an import path 'package.module:name'")
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"policy {path!r} does not resolve: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"policy {path!r} does not resolve: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"policy {path!r} resolves to a {type(obj).__name__}, which is not callable")
    return obj


def is_factory(obj) -> bool:
    """True for make_policy's convention f(config, seed): the first two parameters are named config, seed."""
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return params[:2] == ["config", "seed"]


class PerEnvPolicies:
    """One act(obs, info) policy per sub-env, their actions stacked into a batch."""

    def __init__(self, policies: list):
        self.policies = policies

    def __call__(self, obs: np.ndarray, infos: dict) -> dict:
        chosen = [p.act(o, info) for p, o, info in zip(self.policies, obs, unbatch_all(infos, len(self.policies)))]
        return stack_actions(chosen)


class BatchPolicy:
    """A callable obs batch -> action batch, checked and turned into the vector env's dict of arrays."""

    def __init__(self, fn, name: str, num_envs: int):
        self.fn, self.name, self.num_envs = fn, name, num_envs

    def __call__(self, obs: np.ndarray, infos: dict) -> dict:
        out = self.fn(obs)
        if isinstance(out, (list, tuple)):
            if len(out) != self.num_envs:
                raise ValueError(f"policy {self.name!r} returned {len(out)} actions for {self.num_envs} envs")
            return stack_actions(out)
        if not isinstance(out, dict):
            raise ValueError(f"policy {self.name!r} must return a dict of arrays (or a list of action dicts), "
                             f"got {type(out).__name__}")
        return out


def make_batch_policy(name: str, num_envs: int, seed: int, config=None):
    """The policy `name` names, as a callable (obs (N, H, W, 3), infos) -> batched action dict."""
    from worldsim.data.policies import POLICIES, PolicyConfig, RandomPolicies, make_policy
    config = config or PolicyConfig()
    if name == "random":
        return RandomPolicies(config, [seed + i for i in range(num_envs)])
    if name in POLICIES:
        return PerEnvPolicies([make_policy(name, config, seed + i) for i in range(num_envs)])
    target = resolve(name)
    if is_factory(target):
        return PerEnvPolicies([make_policy(name, config, seed + i) for i in range(num_envs)])
    return BatchPolicy(target, name, num_envs)


def unbatch(infos: dict, i: int) -> dict:
    """Sub-env i's info from a vector env's batched info dict (keys masked out by '_key' are left out)."""
    return {k: v[i] for k, v in infos.items() if not k.startswith("_") and infos.get(f"_{k}", np.ones(i + 1, bool))[i]}


def unbatch_all(infos: dict, n: int) -> list[dict]:
    """[unbatch(infos, i) for i in range(n)], reading each key's mask once."""
    out = [{} for _ in range(n)]
    for key, values in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        for i, info in enumerate(out):
            if mask is None or mask[i]:
                info[key] = values[i]
    return out


def stack_actions(chosen: list[dict]) -> dict:
    """A checked batched action dict (actions.validate_batch) from per-env action dicts."""
    for i, action in enumerate(chosen):
        if not isinstance(action, dict):
            raise ValueError(f"an action must be a dict of MineRL keys, got {type(action).__name__} (sub-env {i})")
    batch = {}
    for key in set().union(*chosen):
        shape = (2,) if key == "camera" else ()
        default = np.zeros(shape, np.float32)
        try:
            column = np.array([a.get(key, default) for a in chosen])
        except ValueError:  # values of several shapes
            column = None
        if column is None or column.dtype == object or column.shape[1:] != shape:
            for i, action in enumerate(chosen):  # the per-action check names the value at fault
                try:
                    actions.validate(action)
                except ValueError as e:
                    raise ValueError(f"{e} (sub-env {i})") from None
        batch[key] = column
    return actions.validate_batch(batch, len(chosen))


def split_actions(batch: dict, n: int) -> list[dict]:
    return actions.split_batch(batch, n)


class EpisodeWriters:
    """One interchange writer per sub-env, restarted at each of its episodes."""

    def __init__(self, out_dir, source: str, fps: int, options: dict):
        self.out_dir, self.source, self.fps, self.options = Path(out_dir), source, fps, options
        self.stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.writers: dict[int, object] = {}
        self.episodes: dict[int, int] = {}
        self.saved: list[Path] = []

    def write(self, i: int, obs: np.ndarray, action: dict, info: dict) -> None:
        from worldsim.data.interchange import TrajectoryWriter
        if i not in self.writers:
            episode = self.episodes.get(i, 0)
            stem = self.out_dir / f"rollout-{self.source}-{self.stamp}-env{i:03d}-ep{episode:03d}"
            h, w = obs.shape[:2]
            seed = info.get("seed")
            self.writers[i] = TrajectoryWriter(stem, w, h, fps=self.fps, source=self.source,
                                               seed=None if seed is None else int(seed), options=self.options)
        self.writers[i].write(obs, action, info)

    def end_episode(self, i: int) -> None:
        writer = self.writers.pop(i, None)
        if writer is not None:
            files = writer.close()
            if files:
                self.saved.append(files[0])
            self.episodes[i] = self.episodes.get(i, 0) + 1

    def close(self) -> list[Path]:
        for i in list(self.writers):
            self.end_episode(i)
        return self.saved

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()


def rollout(env, policy, steps: int, seed: int | None = None, writers: EpisodeWriters | None = None,
            progress: bool = False) -> dict:
    """Run `policy` in the vector env for `steps` steps; returns {frames, seconds, fps, trajectories}."""
    n = env.num_envs
    obs, infos = env.reset(seed=seed)
    ended = np.zeros(n, dtype=bool)   # truncated at the last step: this step's action is ignored (autoreset)
    bar = _progress(steps) if progress else None
    start = time.perf_counter()
    try:
        for _ in range(steps):
            batch = policy(obs, infos)
            if writers is not None:
                for i, action in enumerate(split_actions(batch, n)):
                    if ended[i]:
                        writers.end_episode(i)
                    else:
                        writers.write(i, obs[i], action, unbatch(infos, i))
            obs, _, terminated, truncated, infos = env.step(batch)
            ended = np.asarray(terminated) | np.asarray(truncated)
            if bar is not None:
                bar.update(1)
    except BaseException:
        if writers is not None:
            writers.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    saved = writers.close() if writers is not None else []
    return {"frames": steps * n, "seconds": seconds, "fps": steps * n / seconds if seconds > 0 else float("inf"),
            "trajectories": [str(p) for p in saved]}


def _progress(total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc="rollout", unit="step", dynamic_ncols=True)
