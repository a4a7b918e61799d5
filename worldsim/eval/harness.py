"""The evaluation harness: any world that continues a prompt under given actions, scored against the engine.

A world under test is a `Predictor`: `reset(prompt_frames, prompt_actions, engine_state)` then one
`step(action) -> frame` per tick (or `step_chunk(actions) -> frames` when it makes `chunk_frames` > 1 frames at
once); a world that can roll several prompts out together also has `run_batch(episodes) -> (N, T, H, W, 3)`,
which fidelity uses `eval.batch_size` prompts at a time. Prompt timing follows the data: prompt_actions[i] was
taken at prompt frame i and produced frame i + 1, so there are P - 1 of them; the first step's action is the one
taken at the last prompt frame.

The worlds (worldsim/eval/worlds.py): `EnginePredictor` (the engine re-run from the prompt's end state: scores
perfectly, a test of the harness), `CopyLastFrame` (the floor), `AutoencoderReconstruction` (the ceiling: the
engine's true frames through the autoencoder) and `WorldModelPredictor` (the dynamics model through the sampler).

`evaluate` measures, on held-out world seeds driven by the exploration policy: fidelity per horizon, action
following (an inverse-dynamics model on generated vs real frame pairs), consistency (turn around, walk there and
back, stand still, break a block and look away and back), stability over several long rollouts, and speed. Every field of the report
is always present; what does not apply is null.
"""
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import Progress

from worldsim.data.policies import PolicyConfig, make_policy
from worldsim.engine import actions as action_schema
from worldsim.engine.env import EngineConfig, VoxelEnv
from worldsim.eval import metrics
from worldsim.eval.idm import GROUPS, InverseDynamics, PairScorer, load_idm
from worldsim.eval.worlds import WORLDS, CopyLastFrame, EnginePredictor, Predictor, Timed, make_world

REPORT_FORMAT = 2  # 2: stability over several long runs (stability.runs), not one
SERIES_POINTS = 256  # stability series are averaged down to at most this many points in the JSON


@dataclass
class EvalConfig:
    """What to evaluate and how (the `eval:` section of configs/config.yaml)."""
    world: str = "model"              # engine | copy_last | autoencoder | model: the candidate
    checkpoint: str | None = None     # dynamics run directory (world=model)
    autoencoder: str | None = None    # autoencoder run directory: the ceiling, and the model's decoder
    idm: str | None = None            # IDM directory (python -m worldsim.eval.idm); None: no action-following scores
    out_dir: str = "eval"             # report.json, sheet.png
    seed: int = 10_000                # first held-out world seed; training worlds lie below it
    episodes: int = 8                 # fidelity worlds (seeds seed .. seed + episodes - 1)
    prompts_per_world: int = 4        # fidelity prompts in each world, one after another along the policy's path
    batch_size: int = 32              # fidelity prompts a world rolls out together (1: one by one)
    warmup_frames: int = 40           # policy ticks before the prompt, so episodes do not start at spawn
    prompt_frames: int = 8
    horizons: tuple = (1, 4, 16, 64)  # frames after the last prompt frame
    turn_degrees: float = 10.0        # consistency: the turn is turn_ticks × turn_degrees of yaw
    turn_ticks: int = 36
    walk_ticks: int = 20              # consistency: walk forward this many ticks, then back as many
    still_ticks: int = 60             # consistency: stand still (no keys, no mouse) this many ticks
    look_away_ticks: int = 18         # consistency: after breaking, turn away this many ticks of turn_degrees
    break_max_ticks: int = 60         # consistency: give up holding attack after this many ticks
    crosshair_fraction: float = 0.25  # side of the region around the crosshair compared, as a fraction of the frame
    stability_frames: int = 6000      # long rollout (5 minutes at 20 fps)
    stability_runs: int = 4           # long rollouts, in worlds stability_seed + 0 .. stability_runs - 1
    stability_seed: int | None = None  # the first long rollout's world (None: seed + episodes, after fidelity's)
    sample_steps: int | None = None   # Euler steps per chunk for world=model (None: the model's default)
    context_noise: float | None = None  # level finished frames enter the cache at (None: the model's default)
    sample_shift: float | None = None   # shift of the Euler steps' levels (None: the model's default)
    sample_start: float | None = None   # level the Euler steps start from, 1 from noise (None: the model's default)
    view_memory: bool | None = None     # the sampler's panorama of what it saw (None: the model's default)
    idle_start: float | None = None     # the start of frames whose action does nothing, 0: sample_start (None: the model's)
    idle_turn: float | None = None      # the most camera move in degrees per tick an idle action holds (None: the model's)
    keep_view: bool | None = None       # frames that hold no button keep the view they know (None: the model's)
    commit_last_step: bool | None = None  # frames enter the caches from their last Euler step (None: the model's)
    device: str = "auto"              # auto | cpu | cuda
    sheet: bool = True                # write sheet.png
    progress: bool = True

    def __post_init__(self):
        self.horizons = tuple(int(h) for h in self.horizons)
        if self.world not in WORLDS:
            raise ValueError(f"eval.world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        if not self.horizons or min(self.horizons) < 1:
            raise ValueError(f"eval.horizons must be positive frame counts, got {self.horizons}")
        for name in ("episodes", "prompts_per_world", "batch_size", "prompt_frames", "turn_ticks", "walk_ticks", "still_ticks",
                     "look_away_ticks", "break_max_ticks", "stability_frames", "stability_runs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"eval.{name} must be ≥ 1, got {getattr(self, name)!r}")
        if self.stability_seed is not None and (isinstance(self.stability_seed, bool)
                                                or not isinstance(self.stability_seed, int) or self.stability_seed < 0):
            raise ValueError(f"eval.stability_seed must be a world seed ≥ 0 or null, got {self.stability_seed!r}")
        if not 0 < self.crosshair_fraction <= 1:
            raise ValueError(f"eval.crosshair_fraction must be in (0, 1], got {self.crosshair_fraction!r}")
        if self.context_noise is not None and not 0 <= self.context_noise < 1:
            raise ValueError(f"eval.context_noise must be in [0, 1) or null, got {self.context_noise!r}")
        if self.sample_shift is not None and not self.sample_shift > 0:
            raise ValueError(f"eval.sample_shift must be > 0 or null, got {self.sample_shift!r}")
        if self.sample_start is not None and not 0 < self.sample_start <= 1:
            raise ValueError(f"eval.sample_start must be in (0, 1] or null, got {self.sample_start!r}")
        if self.idle_start is not None and not 0 <= self.idle_start < 1:
            raise ValueError(f"eval.idle_start must be in [0, 1) or null, got {self.idle_start!r}")
        if self.idle_turn is not None and not self.idle_turn >= 0:
            raise ValueError(f"eval.idle_turn must be >= 0 degrees per tick or null, got {self.idle_turn!r}")
        for name in ("view_memory", "keep_view", "commit_last_step"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"eval.{name} must be true, false or null, got {getattr(self, name)!r}")

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)


# ---------------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """Real frames and the actions between them; `state` is the engine state at the last prompt frame."""
    seed: int
    frames: np.ndarray        # (prompt + continuation, H, W, 3): frames[i + 1] follows actions[i]
    actions: list[dict]
    state: dict
    prompt: int
    env: VoxelEnv = field(repr=False, default=None)  # left at the episode's last frame
    policy: object = field(repr=False, default=None)
    info: dict = field(repr=False, default=None)
    start: int = 0            # the policy tick of the first frame

    @property
    def prompt_frames(self) -> np.ndarray:
        return self.frames[:self.prompt]

    @property
    def prompt_actions(self) -> list[dict]:
        return self.actions[:self.prompt - 1]

    @property
    def continuation(self) -> list[dict]:
        return self.actions[self.prompt - 1:]


def record_episode(engine_config: EngineConfig, policy_config: PolicyConfig, seed: int, warmup: int, prompt: int,
                   continuation: int = 0) -> Episode:
    """The policy drives the engine in world `seed`: warm-up ticks, then prompt frames, then more frames."""
    env = VoxelEnv(engine_config)
    policy = make_policy(policy_config.name, policy_config, seed=seed)
    obs, info = env.reset(seed=seed)
    for _ in range(warmup):
        obs, _, _, _, info = env.step(policy.act(obs, info))
    frames, taken, state = [obs], [], None
    for i in range(prompt - 1 + continuation):
        if i == prompt - 1:
            state = env.get_state()
        action = policy.act(obs, info)
        obs, _, _, _, info = env.step(action)
        frames.append(obs)
        taken.append(action)
    state = state if state is not None else env.get_state()
    return Episode(seed, np.stack(frames), taken, state, prompt, env, policy, info, start=warmup)


def record_prompts(config: EvalConfig, engine_config: EngineConfig, policy_config: PolicyConfig,
                   seed: int) -> list[Episode]:
    """`config.prompts_per_world` fidelity episodes in world `seed`, one after another along the policy's path:
    each prompt starts on the frame where the previous episode's continuation ended."""
    stride = config.prompt_frames - 1 + config.max_horizon
    return [record_episode(engine_config, policy_config, seed, config.warmup_frames + j * stride,
                           config.prompt_frames, config.max_horizon) for j in range(config.prompts_per_world)]


# ---------------------------------------------------------------------------------------------- measures
def measure_fidelity(config: EvalConfig, episodes: list[Episode], worlds: dict[str, Timed | None],
                     scorers: dict[str, PairScorer] | None) -> tuple[dict, dict]:
    """PSNR/SSIM per horizon per world: the spread, every episode's value, and the candidate's paired difference
    from copy-last (its standard error taken over worlds, since prompts in one world are not independent);
    the first episode's frames at the horizons for the sheet."""
    per = {name: {"psnr": {h: [] for h in config.horizons}, "ssim": {h: [] for h in config.horizons}}
           for name, world in worlds.items() if world is not None}
    strip = {"real": [episodes[0].frames[episodes[0].prompt - 1 + h] for h in config.horizons]}
    for name in per:
        for first in range(0, len(episodes), config.batch_size):
            group = episodes[first:first + config.batch_size]
            for index, (episode, made) in enumerate(zip(group, worlds[name].run_batch(group)), start=first):
                truth = episode.frames[episode.prompt - 1:]  # the last prompt frame, then one frame per action
                generated = np.concatenate([truth[:1], made])
                for h in config.horizons:
                    per[name]["psnr"][h].append(float(metrics.psnr(generated[h], truth[h])[0]))
                    per[name]["ssim"][h].append(float(metrics.ssim(generated[h], truth[h])[0]))
                if index == 0:
                    strip[name] = [generated[h] for h in config.horizons]
                if name == "candidate" and scorers is not None:
                    for t, action in enumerate(episode.continuation):
                        scorers["real"].add(truth[t], truth[t + 1], action)
                        scorers["generated"].add(generated[t], generated[t + 1], action)
    fidelity = {name: ({metric: {str(h): metrics.spread(values[h]) for h in config.horizons}
                        for metric, values in per[name].items()} if name in per else None) for name in worlds}
    seeds = [episode.seed for episode in episodes]
    versus = {metric: {str(h): metrics.paired_difference(per["candidate"][metric][h], per["copy_last"][metric][h],
                                                          seeds) for h in config.horizons}
              for metric in ("psnr", "ssim")}
    values = {name: {metric: {str(h): v[h] for h in config.horizons} for metric, v in per[name].items()}
              for name in per}
    return {"worlds": fidelity, "candidate_minus_copy_last": versus, "values": values}, strip


def _crosshair(frames: np.ndarray, fraction: float) -> np.ndarray:
    """The square around the frame centre whose side is `fraction` of the shorter side (at least 11 pixels: SSIM)."""
    H, W = frames.shape[-3:-1]
    side = min(min(H, W), max(11, int(round(fraction * min(H, W)))))
    top, left = (H - side) // 2, (W - side) // 2
    return frames[..., top:top + side, left:left + side, :]


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    return {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0])}


def consistency_scripts(config: EvalConfig, episode: Episode) -> dict[str, tuple[list[dict], int, bool, dict]]:
    """Per test: its actions, the frame index (after the prompt's last frame) to compare the end with, whether
    to compare only the crosshair region, and facts for the report. The break test is planned on the engine."""
    turn = lambda degrees: action_schema.validate({"camera": [0.0, degrees]})
    d = config.turn_degrees
    scripts = {"turn_around": ([turn(d)] * config.turn_ticks, 0, False, {}),
               "walk_there_and_back": ([action_schema.validate({"forward": 1})] * config.walk_ticks
                                       + [action_schema.validate({"back": 1})] * config.walk_ticks, 0, False, {}),
               "stand_still": ([action_schema.noop()] * config.still_ticks, 0, False, {})}
    env = VoxelEnv(episode.env.config)
    env.set_state(episode.state)
    plan, pitch = [], float(episode.state["player"]["pitch"])
    while pitch < 55.0 and len(plan) < 10:  # look down at the ground in front
        plan.append(action_schema.validate({"camera": [min(10.0, 60.0 - pitch), 0.0]}))
        pitch = env.step(plan[-1])[4]["pitch"]
    broke = False
    for _ in range(config.break_max_ticks):
        plan.append(action_schema.validate({"attack": 1}))
        if env.step(plan[-1])[4]["edits"]:
            broke = True
            break
    after_break = len(plan)
    plan += [turn(d)] * config.look_away_ticks + [turn(-d)] * config.look_away_ticks
    scripts["break_block"] = (plan, after_break, True, {"engine_broke_block": broke})
    return scripts


TURN_SHEET_EVERY = 6  # the sheet shows the 360° turn's frames every this many ticks


def measure_consistency(config: EvalConfig, episode: Episode, candidate: Timed, engine: Timed,
                        frames: dict | None = None) -> dict:
    """For each scripted test: the candidate's end frame vs the engine's, and each one's end vs its own start.
    frames: a dict that gets the turn's frames for the sheet, {"engine": (n, H, W, 3), "candidate": ...} uint8,
    every TURN_SHEET_EVERY ticks from the prompt's last frame to the end."""
    results = {}
    for name, (script, compare_at, crosshair, facts) in consistency_scripts(config, episode).items():
        ends, runs = {}, {}
        for key, world in (("candidate", candidate), ("engine", engine)):
            world.reset(episode.prompt_frames, episode.prompt_actions, episode.state)
            made = np.concatenate([episode.frames[episode.prompt - 1:episode.prompt], world.run(script)])
            if crosshair:
                made = _crosshair(made, config.crosshair_fraction)
            ends[key] = (made[compare_at], made[-1])
            runs[key] = made
        results[name] = {"ticks": len(script), "compared_with_tick": compare_at, "crosshair_only": crosshair,
                         "candidate_vs_engine": _compare(ends["candidate"][1], ends["engine"][1]),
                         "candidate_vs_engine_every_tick": {
                             "psnr": float(metrics.psnr(runs["candidate"], runs["engine"]).mean()),
                             "ssim": float(metrics.ssim(runs["candidate"], runs["engine"]).mean())},
                         "candidate_end_vs_start": _compare(ends["candidate"][1], ends["candidate"][0]),
                         "engine_end_vs_start": _compare(ends["engine"][1], ends["engine"][0]),
                         "engine_broke_block": facts.get("engine_broke_block")}
        if name == "turn_around" and frames is not None:
            frames.update({key: runs[key][::TURN_SHEET_EVERY] for key in ("engine", "candidate")})
    return results


def _series(values: np.ndarray) -> list:
    """Block means of (N, k) per-frame values down to at most SERIES_POINTS rows."""
    blocks = np.array_split(values, min(len(values), SERIES_POINTS))
    return [[float(v) for v in block.mean(axis=0)] for block in blocks]


def record_long_run(config: EvalConfig, engine_config: EngineConfig, policy_config: PolicyConfig, seed: int,
                    scorers: dict[str, PairScorer] | None) -> tuple[Episode, np.ndarray]:
    """The policy drives the engine in world `seed` for the prompt and `config.stability_frames` ticks more,
    keeping the prompt's frames, every action and the real frames' statistics (N, stats), not the frames: the
    real pairs go to the IDM's scorer as they come."""
    episode = record_episode(engine_config, policy_config, seed, config.warmup_frames, config.prompt_frames)
    env, policy, info = episode.env, episode.policy, episode.info
    obs = previous = episode.frames[-1]
    real, taken = metrics.StatsStream(obs), list(episode.actions)
    for _ in range(config.stability_frames):
        taken.append(policy.act(obs, info))
        obs, _, _, _, info = env.step(taken[-1])
        real.add(obs)
        if scorers is not None:
            scorers["real"].add(previous, obs, taken[-1])
        previous = obs
    return dataclasses.replace(episode, actions=taken, env=None, policy=None, info=None), real.result()


def _long_run_result(seed: int, real: np.ndarray, gen: np.ndarray, fps: float) -> dict:
    """One long run: whether the candidate collapsed (metrics.collapse), and its frame statistics against the
    range of the real ones: where it first left the range and how often it was out."""
    low, high = real.min(axis=0), real.max(axis=0)
    out = (gen < low) | (gen > high)  # (N, stats)
    first = lambda flags: int(np.argmax(flags)) if flags.any() else None
    per_stat = {name: {"real_min": float(low[j]), "real_max": float(high[j]), "candidate_min": float(gen[:, j].min()),
                       "candidate_max": float(gen[:, j].max()), "fraction_out_of_range": float(out[:, j].mean()),
                       "first_out_of_range": first(out[:, j])} for j, name in enumerate(metrics.STAT_NAMES)}
    return {"seed": seed, "frames": int(len(gen)), "collapse": metrics.collapse(real, gen, fps),
            "first_out_of_range": first(out.any(axis=1)), "fraction_out_of_range": float(out.any(axis=1).mean()),
            "stats": per_stat, "series": {"names": list(metrics.STAT_NAMES), "real": _series(real),
                                          "candidate": _series(gen)}}


def measure_stability(config: EvalConfig, runs: list[tuple[Episode, np.ndarray]], candidate: Timed,
                      scorers: dict[str, PairScorer] | None, fps: float,
                      progress: Progress | None) -> tuple[dict, dict]:
    """The candidate continues each long run's prompt under its actions (record_long_run), `eval.batch_size` runs
    at a time where it rolls out batches. Per run: collapse (frozen or faded to one colour) and drift in content
    (frame statistics out of the real range); over the runs: how many collapsed, and the statistics pooled (the
    real and candidate extremes over all runs, the fraction out of range averaged over them). One long run's
    verdict is chance as much as model, so several runs in other worlds give it."""
    gen = [metrics.StatsStream(episode.frames[episode.prompt - 1]) for episode, _ in runs]
    task = progress.add_task("stability", total=len(runs) * config.stability_frames) if progress else None
    for first in range(0, len(runs), config.batch_size):
        group = [episode for episode, _ in runs[first:first + config.batch_size]]
        previous = [episode.frames[episode.prompt - 1] for episode in group]
        done = [0] * len(group)
        for rows, frames in candidate.stream(group):
            for row, chunk in zip(rows, frames):
                for frame in chunk:
                    gen[first + row].add(frame)
                    if scorers is not None:
                        scorers["generated"].add(previous[row], frame, group[row].continuation[done[row]])
                    previous[row], done[row] = frame, done[row] + 1
            if progress:
                progress.advance(task, len(rows) * frames.shape[1])
    gen = [stream.result() for stream in gen]
    results = [_long_run_result(episode.seed, real, g, fps) for (episode, real), g in zip(runs, gen)]
    count = lambda key: sum(r["collapse"][key] for r in results)
    pooled = {}
    for name in metrics.STAT_NAMES:
        cells = [r["stats"][name] for r in results]
        firsts = [c["first_out_of_range"] for c in cells if c["first_out_of_range"] is not None]
        pooled[name] = {"real_min": min(c["real_min"] for c in cells), "real_max": max(c["real_max"] for c in cells),
                        "candidate_min": min(c["candidate_min"] for c in cells),
                        "candidate_max": max(c["candidate_max"] for c in cells),
                        "fraction_out_of_range": float(np.mean([c["fraction_out_of_range"] for c in cells])),
                        "first_out_of_range": min(firsts) if firsts else None}
    firsts = [r["first_out_of_range"] for r in results if r["first_out_of_range"] is not None]
    result = {"frames": config.stability_frames, "seeds": [r["seed"] for r in results],
              "collapse": {"collapsed": count("collapsed") > 0, "frozen": count("frozen") > 0,
                           "faded": count("faded") > 0, "runs": len(results), "collapsed_runs": count("collapsed"),
                           "frozen_runs": count("frozen"), "faded_runs": count("faded"),
                           "seconds_before": metrics.spread([r["collapse"]["seconds_before"] for r in results]),
                           "contrast_ratio": metrics.spread([r["collapse"]["mean_contrast"]["ratio"]
                                                             for r in results])},
              "first_out_of_range": min(firsts) if firsts else None,
              "fraction_out_of_range": float(np.mean([r["fraction_out_of_range"] for r in results])),
              "stats": pooled, "runs": results}
    return result, {"real": runs[0][1], "candidate": gen[0]}


def measure_action_following(scorers: dict[str, PairScorer] | None) -> dict:
    """The IDM on real and generated pairs, and generated relative to real per group."""
    if scorers is None:
        return {"real": None, "generated": None, "relative": {group: None for group in GROUPS}}
    real, generated = scorers["real"].report(), scorers["generated"].report()
    ratio = lambda g, r: None if g is None or not r else g / r
    relative = {group: {key: ratio(generated["groups"][group][key], real["groups"][group][key])
                        for key in ("accuracy", "balanced_accuracy")} for group in GROUPS}
    return {"real": real, "generated": generated, "relative": relative}


# ---------------------------------------------------------------------------------------------- the whole evaluation
def evaluate(config: EvalConfig, engine_config: EngineConfig, policy_config: PolicyConfig,
             candidate: Predictor | None = None, idm: InverseDynamics | None = None,
             autoencoder_reference: Predictor | None = None) -> tuple[dict, dict]:
    """Run every measure. `candidate`, `idm` and the ceiling default to what `config` names.
    Returns the report (JSON-ready) and the arrays the sheet draws."""
    notes = []
    candidate = candidate if candidate is not None else make_world(config.world, config, engine_config)
    if idm is None and config.idm is not None:
        idm = load_idm(config.idm)
    if idm is None:
        notes.append("no IDM given (eval.idm=DIR, trained by python -m worldsim.eval.idm): action following skipped")
    elif (idm.config.height, idm.config.width) != (engine_config.height, engine_config.width):
        raise ValueError(f"the IDM reads {idm.config.height}×{idm.config.width} frames but the engine makes "
                         f"{engine_config.height}×{engine_config.width}")
    if autoencoder_reference is None and config.autoencoder is not None:
        autoencoder_reference = make_world("autoencoder", config, engine_config)
    if autoencoder_reference is None:
        notes.append("no autoencoder checkpoint given (eval.autoencoder=DIR): the ceiling is skipped")
    worlds = {"candidate": Timed(candidate), "copy_last": Timed(CopyLastFrame()),
              "autoencoder": None if autoencoder_reference is None else Timed(autoencoder_reference)}
    engine = Timed(EnginePredictor(engine_config))
    scorers = None if idm is None else {"real": PairScorer(idm), "generated": PairScorer(idm)}
    seconds = {}
    with Progress(disable=not config.progress, transient=True) as progress:
        start = time.perf_counter()
        seeds = [config.seed + i for i in range(config.episodes)]
        task = progress.add_task("episodes", total=len(seeds))
        episodes = []
        for seed in seeds:
            for episode in record_prompts(config, engine_config, policy_config, seed):
                if episodes:  # only the first episode's engine goes on (consistency); the others' are let go
                    episode = dataclasses.replace(episode, env=None, policy=None, info=None)
                episodes.append(episode)
            progress.advance(task)
        fidelity, strip = measure_fidelity(config, episodes, worlds, scorers)
        seconds["fidelity"] = time.perf_counter() - start
        start = time.perf_counter()
        turn = {}
        consistency = measure_consistency(config, episodes[0], worlds["candidate"], engine, turn)
        seconds["consistency"] = time.perf_counter() - start
        start = time.perf_counter()
        first = config.seed + config.episodes if config.stability_seed is None else config.stability_seed
        long_runs = [record_long_run(config, engine_config, policy_config, first + r, scorers)
                     for r in range(config.stability_runs)]
        stability, stats = measure_stability(config, long_runs, worlds["candidate"], scorers,
                                             VoxelEnv.metadata["render_fps"], progress)
        seconds["stability"] = time.perf_counter() - start
    report = {
        "format": REPORT_FORMAT, "world": config.world, "candidate": candidate.name,
        "config": dataclasses.asdict(config), "engine": dataclasses.asdict(engine_config),
        "policy": policy_config.name,
        "fidelity": {"horizons": list(config.horizons), "seeds": seeds,
                     "prompts": [{"seed": e.seed, "first_tick": e.start} for e in episodes],
                     **fidelity},
        "action_following": measure_action_following(scorers),
        "consistency": consistency,
        "stability": stability,
        "timing": {"fps": {name: None if world is None else world.fps for name, world in
                           {**worlds, "engine": engine}.items()},
                   "batch_fps": {name: None if world is None else world.batch_fps for name, world in worlds.items()},
                   "batch_size": config.batch_size, "seconds": seconds},
        "notes": notes,
    }
    report["config"]["horizons"] = list(config.horizons)
    return report, {"strip": strip, "stats": stats, "turn": turn, "turn_every": TURN_SHEET_EVERY}


def run_eval(config: EvalConfig, engine_config: EngineConfig, policy_config: PolicyConfig, **worlds) -> dict:
    """Evaluate, write report.json and sheet.png into config.out_dir, print the table; returns the report."""
    from worldsim.eval.report import print_report, write_report, write_sheet
    report, arrays = evaluate(config, engine_config, policy_config, **worlds)
    out = Path(config.out_dir)
    write_report(report, out / "report.json")
    if config.sheet:
        write_sheet(report, arrays, out / "sheet.png")
    print_report(report)
    return report
