"""Exploration policies that drive an environment the way people play, and statistics of the actions they take.

`ExplorationPolicy` switches between behaviours (walk, sprint, look around, mine, build, idle) that last runs
of ticks. Keys are held for runs, the camera follows a smoothed random process (an Ornstein–Uhlenbeck yaw
velocity and a pitch that glides towards targets near the horizon), and hands act on purpose: attack is held
on a target until it breaks, use places the selected hotbar block. A policy reads only `obs` and `info`, so it
drives the engine and the world model alike; info keys it cannot find (pos, pitch, target_block, ...) only make
it blinder. Camera moves are [pitch, yaw] degrees per tick, positive pitch looks down (MineRL).
"""
import importlib
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from worldsim.engine import actions
from worldsim.engine.actions import BUTTONS, CAMERA_MAX_DEGREES

BEHAVIOURS = ("walk", "sprint", "look_around", "mine", "build", "idle")
HOTBAR_SLOTS = 9
AIR, WATER = 0, 5  # worldsim.engine.blocks ids; an edit into one of these is a break, out of one a placement


def _default_weights() -> dict:
    return {"walk": 0.3, "sprint": 0.12, "look_around": 0.1, "mine": 0.2, "build": 0.18, "idle": 0.1}


def _default_durations() -> dict:
    return {"walk": [40, 160], "sprint": [20, 80], "look_around": [20, 60], "mine": [40, 140],
            "build": [40, 120], "idle": [10, 40]}


@dataclass
class PolicyConfig:
    """The behaviour mix and the shape of the camera process; durations are [min, max] ticks."""
    name: str = "explore"            # explore | random | module.path:callable
    weights: dict = field(default_factory=_default_weights)      # relative, behaviour -> weight
    durations: dict = field(default_factory=_default_durations)  # behaviour -> [min, max] ticks
    yaw_speed: float = 2.5           # degrees/tick: stationary spread of the yaw velocity while walking
    yaw_tau: float = 12.0            # ticks: how long a turn keeps its speed (OU correlation time)
    pitch_center: float = 5.0        # degrees: where the gaze rests (a little below the horizon)
    pitch_spread: float = 10.0       # degrees: spread of gaze targets around pitch_center
    pitch_tau: float = 8.0           # ticks: time constant of gliding towards a pitch target
    look_down_rate: float = 0.01     # per tick while walking: chance to glance down at the blocks ahead
    strafe_rate: float = 0.02        # per tick: chance to start or stop strafing
    jump_rate: float = 0.01          # per tick: chance of a jump for no reason (more while sprinting)
    hotbar_rate: float = 0.004       # per tick: chance to pick another hotbar slot
    stuck_ticks: int = 6             # ticks of no progress with keys held before jumping
    random_camera_std: float = 2.0   # degrees: camera noise of the random policy
    still_rate: float = 0.0          # chance that an idle spell stands still: no keys, camera exactly still

    def __post_init__(self):
        self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        self.durations = {str(k): [int(x) for x in v] for k, v in dict(self.durations).items()}
        for what, table in (("weights", self.weights), ("durations", self.durations)):
            unknown = sorted(set(table) - set(BEHAVIOURS))
            if unknown:
                raise ValueError(f"policy.{what} has unknown behaviour(s) {unknown}; known: {list(BEHAVIOURS)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"policy.weights must be non-negative with a positive sum, got {self.weights}")
        self.durations = {**_default_durations(), **self.durations}
        self.still_rate = float(self.still_rate)
        if not 0.0 <= self.still_rate <= 1.0:
            raise ValueError(f"policy.still_rate must be a probability in [0, 1], got {self.still_rate!r}")
        for name, span in self.durations.items():
            if len(span) != 2 or not 1 <= span[0] <= span[1]:
                raise ValueError(f"policy.durations.{name} must be [min, max] ticks with 1 <= min <= max, got {span}")


def _seed_generator(seed) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else np.random.SeedSequence(int(seed)))


# ----------------------------------------------------------------------------------------------- policies
class ExplorationPolicy:
    """A seeded, human-like player: behaviours of a few seconds each, momentum in keys and camera."""

    def __init__(self, config: PolicyConfig | None = None, seed: int | None = None):
        self.config = config or PolicyConfig()
        weights = np.array([self.config.weights.get(b, 0.0) for b in BEHAVIOURS])
        self._probs = weights / weights.sum()
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start afresh; with a seed the actions that follow are a function of it and of what is observed."""
        if seed is not None or not hasattr(self, "rng"):
            self.rng = _seed_generator(seed)
        self.behaviour, self.ticks_left = "idle", 0
        self.yaw_velocity, self.yaw_bias, self.yaw_scale = 0.0, 0.0, 1.0
        self.pitch_velocity, self.pitch_target, self.pitch = 0.0, self.config.pitch_center, 0.0
        self.strafe = 0                  # -1 left, 0 none, 1 right
        self.jump_ticks = 0              # ticks jump stays held
        self.turn_ticks = 0              # ticks of turning away from an obstacle
        self.no_progress = 0             # ticks with movement keys held but the body not moving
        self.positions: deque = deque(maxlen=4)
        self.slot = None                 # hotbar slot to press this tick
        self.sneak = self.pillar = False
        self.still = False               # an idle spell that stands still (still_rate)
        self.use_wait = 0                # ticks until the next use tap while building
        self.no_target = 0               # ticks in mine/build without a block under the crosshair

    # -- behaviour choice
    def _start_behaviour(self, behaviour: str | None = None) -> None:
        c, rng = self.config, self.rng
        self.behaviour = behaviour or BEHAVIOURS[rng.choice(len(BEHAVIOURS), p=self._probs)]
        lo, hi = c.durations[self.behaviour]
        self.ticks_left = int(rng.integers(lo, hi + 1))
        self.yaw_bias = float(rng.normal(0.0, 0.3 * c.yaw_speed))
        self.yaw_scale = {"walk": 1.0, "sprint": 0.6, "look_around": 2.5, "mine": 0.25, "build": 0.5,
                          "idle": 0.15}[self.behaviour]
        self.pitch_target = self._horizon_pitch()
        self.sneak = self.pillar = False
        self.no_target = 0
        # drawn only when asked for, so that still_rate 0 leaves every other draw (and the data) as it was
        self.still = self.behaviour == "idle" and self.config.still_rate > 0 and rng.random() < self.config.still_rate
        if self.still:
            self.yaw_velocity = self.pitch_velocity = 0.0  # the camera starts again from rest
        if self.behaviour == "mine":
            self.pitch_target = float(rng.uniform(25.0, 65.0)) if rng.random() < 0.7 else self._horizon_pitch()
        elif self.behaviour == "build":
            self.slot = int(rng.integers(HOTBAR_SLOTS))
            self.pillar = rng.random() < 0.25
            self.sneak = not self.pillar and rng.random() < 0.3
            self.pitch_target = 88.0 if self.pillar else float(rng.uniform(35.0, 65.0))
            self.use_wait = 0

    def _horizon_pitch(self) -> float:
        c = self.config
        return float(np.clip(self.rng.normal(c.pitch_center, c.pitch_spread), -45.0, 60.0))

    # -- the camera: an OU process on yaw velocity, a damped glide of pitch towards its target
    def _camera(self, steady: bool) -> np.ndarray:
        c, rng = self.config, self.rng
        sigma = c.yaw_speed * self.yaw_scale * (0.15 if steady else 1.0)
        mean = self.yaw_bias * (0.2 if steady else 1.0)
        if self.turn_ticks > 0:
            mean, self.turn_ticks = math.copysign(2.0 * c.yaw_speed, self.yaw_bias or 1.0), self.turn_ticks - 1
        self.yaw_velocity += (mean - self.yaw_velocity) / c.yaw_tau \
            + sigma * math.sqrt(2.0 / c.yaw_tau) * float(rng.normal())
        if self.behaviour in ("walk", "sprint", "look_around") and rng.random() < (
                c.look_down_rate if self.behaviour != "look_around" else 4 * c.look_down_rate):
            self.pitch_target = float(rng.uniform(30.0, 70.0))
        elif rng.random() < 0.02 and self.behaviour in ("walk", "sprint", "look_around", "idle"):
            self.pitch_target = self._horizon_pitch()
        desired = (self.pitch_target - self.pitch) / c.pitch_tau
        self.pitch_velocity += 0.3 * (desired - self.pitch_velocity) + (0.0 if steady else 0.15 * float(rng.normal()))
        camera = np.clip([self.pitch_velocity, self.yaw_velocity], -CAMERA_MAX_DEGREES, CAMERA_MAX_DEGREES)
        self.pitch = float(np.clip(self.pitch + camera[0], -90.0, 90.0))
        return camera.astype(np.float32)

    # -- legs: momentum, strafing runs, jumping when blocked or in water
    def _legs(self, action: dict, info: dict) -> None:
        c, rng, b = self.config, self.rng, self.behaviour
        moving = b in ("walk", "sprint") or (b == "look_around" and rng.random() < 0.02)
        if b in ("walk", "sprint"):
            action["forward"] = 1
            action["sprint"] = int(b == "sprint")
            if rng.random() < c.strafe_rate:
                self.strafe = 0 if self.strafe else int(rng.choice([-1, 1]))
            if self.strafe:
                action["left" if self.strafe < 0 else "right"] = 1
        elif b == "build" and not self.pillar and rng.random() < 0.02:
            action["back"], moving = 1, True
        action["sneak"] = int(self.sneak)
        self._watch_progress(info, moving)
        on_ground = info.get("on_ground", True)
        if self.no_progress >= c.stuck_ticks and on_ground and self.jump_ticks == 0:
            self.jump_ticks = 3
            if self.no_progress >= 3 * c.stuck_ticks:  # jumping did not help: turn away or dig through
                self.no_progress = 0
                if rng.random() < 0.5:
                    self.turn_ticks = int(rng.integers(10, 25))
                else:
                    self._start_behaviour("mine")
                    self.pitch_target = float(rng.uniform(-5.0, 25.0))
        rate = c.jump_rate * (4 if b == "sprint" else 1)
        if moving and on_ground and rng.random() < rate:
            self.jump_ticks = 3
        if self.pillar:
            self.jump_ticks = max(self.jump_ticks, 1)
        if info.get("in_water", False) and rng.random() < 0.9:
            self.jump_ticks = max(self.jump_ticks, 1)
        if self.jump_ticks > 0:
            action["jump"], self.jump_ticks = 1, self.jump_ticks - 1

    def _watch_progress(self, info: dict, moving: bool) -> None:
        pos = info.get("pos")
        if pos is None:
            return
        self.positions.append((float(pos[0]), float(pos[2])))
        if not moving:
            self.no_progress = 0
            return
        (x0, z0), (x1, z1) = self.positions[0], self.positions[-1]
        travelled = math.hypot(x1 - x0, z1 - z0)
        moved_enough = len(self.positions) < self.positions.maxlen or travelled > 0.05 * (len(self.positions) - 1)
        self.no_progress = 0 if moved_enough else self.no_progress + 1

    # -- hands: hold attack until the target breaks; tap use to place
    def _hands(self, action: dict, info: dict) -> bool:
        """Set attack/use; True while the camera should hold still on a target."""
        target = info.get("target_block", None)
        if self.behaviour == "mine":
            if target is None:
                self.no_target += 1
                if self.no_target % 15 == 0:  # nothing in reach: look further down
                    self.pitch_target = min(85.0, self.pitch_target + 15.0)
                if self.no_target > 60:
                    self.ticks_left = 0
                return False
            action["attack"] = 1
            return info.get("crack_stage", -1) >= 0 or "crack_stage" not in info
        if self.behaviour == "build":
            self.use_wait -= 1
            if self.use_wait <= 0 and (target is not None or "target_block" not in info):
                action["use"] = 1
                self.use_wait = 1 if self.pillar else int(self.rng.integers(4, 14))
            return False
        return False

    def act(self, obs, info: dict) -> dict:
        """The action to take while seeing `obs`; `info` is what the environment returned with it."""
        info = info or {}
        if "pitch" in info:
            self.pitch = float(info["pitch"])
        if self.ticks_left <= 0:
            self._start_behaviour()
        self.ticks_left -= 1
        action = actions.noop()
        if self.still:  # hands off: only water still makes the player swim up
            if info.get("in_water", False):
                action["jump"] = 1
            return action
        steady = self._hands(action, info)
        self._legs(action, info)
        action["camera"] = self._camera(steady)
        if self.slot is None and self.rng.random() < self.config.hotbar_rate:
            self.slot = int(self.rng.integers(HOTBAR_SLOTS))
        if self.slot is not None:
            action[f"hotbar.{self.slot + 1}"], self.slot = 1, None
        return action


class RandomPolicy:
    """Uniformly random buttons with a small Gaussian camera: a baseline without momentum.

    Its draws are a counter-based Philox stream keyed by its seed (`kernels.noise.row_normal`, as the samplers'
    noise, in a domain of its own): a button is pressed where its normal is positive, and the camera is
    random_camera_std times a normal. Draw n depends only on the seed and n, so `RandomPolicies` steps any number of
    them as one batch, with the same actions, in one call."""

    def __init__(self, config: PolicyConfig | None = None, seed: int | None = None):
        self.config = config or PolicyConfig()
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None or not hasattr(self, "key"):
            self.key = random_policy_keys([_seed_generator(None).integers(1 << 63) if seed is None else seed])
            self.draws = torch.zeros(1, dtype=torch.int64)

    def act(self, obs, info: dict) -> dict:
        buttons, camera = random_actions(self.key, self.draws, self.config.random_camera_std)
        self.draws += 1
        action = dict(zip(BUTTONS, buttons[0].tolist()))
        action["camera"] = camera[0]
        return action


class RandomPolicies:
    """N `RandomPolicy`s stepped together, sub-env i seeded seeds[i]: the actions each one's `act` would give
    (tested), as a batched action dict made in one draw for the whole batch. At 256 envs the per-env path
    (`PerEnvPolicies`: act, unbatch the infos, stack the dicts) took 11.5 ms a step on the 2-core CPU (2026-12-07),
    about what a whole step may take on a GPU for 20,000 frames/s."""

    def __init__(self, config: PolicyConfig | None, seeds: list[int]):
        self.config = config or PolicyConfig()
        self.keys = random_policy_keys(seeds)
        self.draws = torch.zeros(len(seeds), dtype=torch.int64)

    def __call__(self, obs: np.ndarray, infos: dict) -> dict:
        buttons, camera = random_actions(self.keys, self.draws, self.config.random_camera_std)
        self.draws += 1
        batch = {name: buttons[:, j] for j, name in enumerate(BUTTONS)}
        batch["camera"] = camera
        return actions.validate_batch(batch, len(self.draws))


RANDOM_POLICY_DOMAIN = 0x52414E44  # xor-ed into each key's high word: not the stream of a sampler seeded alike


def random_policy_keys(seeds) -> torch.Tensor:
    from kernels.noise import seed_keys
    keys = seed_keys(seeds)
    keys[:, 1] ^= RANDOM_POLICY_DOMAIN
    return keys


def random_actions(keys: torch.Tensor, draws: torch.Tensor, camera_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Buttons (B, len(BUTTONS)) int64 0/1 and camera (B, 2) float32 degrees of draw `draws` of each row's stream."""
    from kernels.noise import row_normal
    z = row_normal(keys, draws, len(BUTTONS) + 2).numpy()
    buttons = (z[:, :len(BUTTONS)] > 0).astype(np.int64)
    camera = (camera_std * z[:, len(BUTTONS):]).clip(-CAMERA_MAX_DEGREES, CAMERA_MAX_DEGREES).astype(np.float32)
    return buttons, camera


POLICIES = {"explore": ExplorationPolicy, "random": RandomPolicy}


def make_policy(name: str, config: PolicyConfig | None = None, seed: int | None = None):
    """A policy by name ("explore", "random") or import path "package.module:callable" called as f(config, seed)."""
    config = config or PolicyConfig()
    if name in POLICIES:
        return POLICIES[name](config, seed)
    if ":" not in name:
        raise ValueError(f"unknown policy {name!r}; use one of {sorted(POLICIES)} or an import path "
                         f"'package.module:callable'")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"policy {name!r} does not resolve: cannot import module {module_name!r} ({e})") from e
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"policy {name!r} does not resolve: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"policy {name!r} does not resolve to a callable or class")
    policy = factory(config, seed)
    if not callable(getattr(policy, "act", None)):
        raise ValueError(f"policy {name!r} made a {type(policy).__name__} without an act(obs, info) method")
    return policy


# ---------------------------------------------------------------------------------------------- statistics
# Camera bin edges (degrees per tick), symmetric and finer near zero where most moves lie; the outer bins are
# open, so a move beyond ±CAMERA_MAX_DEGREES still counts.
CAMERA_BIN_EDGES = (-10.0, -5.0, -2.0, -1.0, -0.25, 0.25, 1.0, 2.0, 5.0, 10.0)


class ActionStats:
    """Coverage of what a policy did: key fractions, a (pitch, yaw) camera histogram, blocks broken and placed."""

    def __init__(self):
        self.frames = 0
        self.key_counts = {name: 0 for name in BUTTONS}
        bins = len(CAMERA_BIN_EDGES) + 1
        self.camera_hist = np.zeros((bins, bins), dtype=np.int64)  # [pitch bin, yaw bin]
        self.camera_abs_sum = np.zeros(2)
        self.broken = self.placed = self.hotbar_changes = 0
        self._slot = None

    def add(self, action: dict, info: dict | None = None) -> None:
        """Count one frame: the action taken on it and the info it came with (its edits, its slot)."""
        self.frames += 1
        for name in BUTTONS:
            self.key_counts[name] += int(action.get(name, 0))
        camera = np.asarray(action.get("camera", (0.0, 0.0)), dtype=np.float64)
        pitch_bin, yaw_bin = np.searchsorted(CAMERA_BIN_EDGES, camera, side="right")
        self.camera_hist[pitch_bin, yaw_bin] += 1
        self.camera_abs_sum += np.abs(camera)
        for _, _, _, old, new in (info or {}).get("edits", ()):
            if new == AIR:
                self.broken += 1
            elif old in (AIR, WATER):
                self.placed += 1
        slot = (info or {}).get("selected_slot")
        if slot is not None and self._slot is not None and slot != self._slot:
            self.hotbar_changes += 1
        self._slot = slot

    def end_episode(self) -> None:
        """Forget the last slot, so the next episode's first frame counts no change."""
        self._slot = None

    def merge(self, other: "ActionStats") -> "ActionStats":
        self.frames += other.frames
        for name in BUTTONS:
            self.key_counts[name] += other.key_counts[name]
        self.camera_hist += other.camera_hist
        self.camera_abs_sum += other.camera_abs_sum
        self.broken += other.broken
        self.placed += other.placed
        self.hotbar_changes += other.hotbar_changes
        return self

    def to_dict(self) -> dict:
        """Raw counts as JSON values (from_dict restores them)."""
        return {"frames": self.frames, "key_counts": dict(self.key_counts), "camera_hist": self.camera_hist.tolist(),
                "camera_abs_sum": self.camera_abs_sum.tolist(), "broken": self.broken, "placed": self.placed,
                "hotbar_changes": self.hotbar_changes}

    @classmethod
    def from_dict(cls, data: dict) -> "ActionStats":
        stats = cls()
        stats.frames, stats.key_counts = int(data["frames"]), {k: int(v) for k, v in data["key_counts"].items()}
        stats.camera_hist = np.asarray(data["camera_hist"], dtype=np.int64)
        stats.camera_abs_sum = np.asarray(data["camera_abs_sum"], dtype=np.float64)
        stats.broken, stats.placed = int(data["broken"]), int(data["placed"])
        stats.hotbar_changes = int(data["hotbar_changes"])
        return stats

    def summary(self) -> dict:
        """Fractions and totals for people and JSON: keys, camera histogram and marginals, blocks."""
        n = max(self.frames, 1)
        return {
            "frames": self.frames,
            "key_fraction": {name: count / n for name, count in self.key_counts.items()},
            "camera": {
                "bin_edges_degrees": list(CAMERA_BIN_EDGES),
                "histogram_pitch_yaw": self.camera_hist.tolist(),
                "pitch_fraction": (self.camera_hist.sum(1) / n).tolist(),
                "yaw_fraction": (self.camera_hist.sum(0) / n).tolist(),
                "mean_abs_pitch": self.camera_abs_sum[0] / n,
                "mean_abs_yaw": self.camera_abs_sum[1] / n,
            },
            "blocks_broken": self.broken,
            "blocks_placed": self.placed,
            "hotbar_changes": self.hotbar_changes,
        }

    def print_table(self, console: Console | None = None) -> None:
        """Key fractions, camera marginals and block counts as rich tables."""
        console = console or Console()
        s = self.summary()
        keys = Table(title=f"actions over {s['frames']} frames")
        keys.add_column("key")
        keys.add_column("fraction of frames", justify="right")
        for name, fraction in s["key_fraction"].items():
            keys.add_row(name, f"{fraction:.3f}")
        keys.add_row("blocks broken", str(s["blocks_broken"]))
        keys.add_row("blocks placed", str(s["blocks_placed"]))
        keys.add_row("hotbar changes", str(s["hotbar_changes"]))
        console.print(keys)
        edges = ("-inf", *(f"{e:g}" for e in CAMERA_BIN_EDGES), "inf")
        camera = Table(title=f"camera °/tick (mean |pitch| {s['camera']['mean_abs_pitch']:.2f}, "
                             f"mean |yaw| {s['camera']['mean_abs_yaw']:.2f})")
        for column in ("bin", "pitch", "yaw"):
            camera.add_column(column, justify="right")
        for i, (p, y) in enumerate(zip(s["camera"]["pitch_fraction"], s["camera"]["yaw_fraction"])):
            camera.add_row(f"[{edges[i]}, {edges[i + 1]})", f"{p:.3f}", f"{y:.3f}")
        console.print(camera)
