"""The engine as gymnasium environments: `VoxelEnv` (one world) and `VoxelVectorEnv` (many, stepped together).

One step is one tick (1/20 s). Inside a step, in this order: the camera turns (pitch clamped to ±90°), a
hotbar key selects a slot, the body moves, then attack and use act on the block targeted from the new
position, columns around the player are loaded, and the frame is rendered. Action a_t gives frame t + 1.

`info` of reset and step:
    pos            (x, y, z) floats, the feet (centre of the bottom of the 0.6 × 1.8 box)
    yaw, pitch     degrees; yaw in [-180, 180), 0 looks along +z, 90 along -x; pitch positive looks down
    tick           ticks since reset
    selected_slot  0..8, the hotbar slot that use places from
    target_block   (x, y, z) ints of the block under the crosshair within reach, or None
    crack_stage    0..9 while the target is being broken, else -1
    seed           the world seed of this episode
    on_ground, in_water   bools
    edits          [(x, y, z, old, new), ...] the blocks this step changed ([] after reset)
"""
import dataclasses
from dataclasses import dataclass

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from worldsim.engine import actions
from worldsim.engine.blocks import DEFAULT_HOTBAR
from worldsim.engine.interact import crack_stage, interact, select_slot, target
from worldsim.engine.player import TICKS_PER_SECOND, Player, move, settle, turn
from worldsim.engine.render import Renderer, View
from worldsim.engine.world import World
from worldsim.engine.worldgen import spawn_point

# Times of day as the renderer reads them (fraction of a day, 0 sunrise): Minecraft's day of 24000 ticks,
# starting at its "morning" (tick 1000) when the cycle runs, else held at noon.
NOON = 0.25
MORNING_TICK = 1000
MIN_VIEW_DISTANCE = 16  # one column on each side of the player's: anything less loads no neighbours
SEED_BOUND = 2 ** 31    # seeds drawn for unseeded episodes lie in [0, SEED_BOUND)


def config_with_overrides(cls, config, overrides: dict, what: str):
    """`config` (or cls's defaults) with some fields replaced; an unknown field name raises TypeError naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {what} config field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config or cls(), **overrides)


@dataclass
class EngineConfig:
    width: int = 128
    height: int = 128
    fov: float = 70.0               # vertical field of view, degrees
    view_distance: int = 48         # blocks; columns load this far around the player and rays stop here
    hud: bool = True                # crosshair, hotbar, target outline, crack overlay
    day_night: bool = False         # False: always noon
    day_length_ticks: int = 24000   # ticks per day when day_night is on
    max_episode_steps: int | None = None  # truncate episodes after this many steps (None: never)

    def __post_init__(self):
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"engine.{name} must be a positive whole number of pixels, got {value!r}")
        if not (isinstance(self.fov, (int, float)) and 0 < self.fov < 180):
            raise ValueError(f"engine.fov must be a field of view in degrees within (0, 180), got {self.fov!r}")
        if int(self.view_distance) != self.view_distance or self.view_distance < MIN_VIEW_DISTANCE:
            raise ValueError(f"engine.view_distance must be a whole number of blocks >= {MIN_VIEW_DISTANCE}, "
                             f"got {self.view_distance!r}")
        if int(self.day_length_ticks) != self.day_length_ticks or self.day_length_ticks < 1:
            raise ValueError(f"engine.day_length_ticks must be a positive whole number, got {self.day_length_ticks!r}")
        if self.max_episode_steps is not None and (int(self.max_episode_steps) != self.max_episode_steps
                                                   or self.max_episode_steps < 1):
            raise ValueError(f"engine.max_episode_steps must be None or a positive whole number, "
                             f"got {self.max_episode_steps!r}")

    @classmethod
    def with_overrides(cls, config: "EngineConfig | None", overrides: dict) -> "EngineConfig":
        """`config` (or the defaults) with some fields replaced; an unknown field name raises TypeError."""
        return config_with_overrides(cls, config, overrides, "engine")


class Simulation:
    """One world and one player, stepped tick by tick: the engine without rendering or gymnasium."""

    def __init__(self, config: EngineConfig, seed: int, player: Player | None = None, tick: int = 0,
                 edits=()):
        self.config, self.seed, self.tick = config, int(seed), int(tick)
        self.world = World(self.seed, view_distance=config.view_distance)
        self.world.set_edits(edits)
        spawned = player is None
        self.player = Player(*spawn_point(self.seed, self.world.height)) if spawned else player
        self.world.ensure_loaded(self.player.x, self.player.z)
        if spawned:
            settle(self.world, self.player)
        self.hit = target(self.world, self.player)
        self.edits: list = []  # what the last step changed

    def step(self, action: dict) -> None:
        """Advance one tick under a validated action."""
        turn(self.player, action["camera"])
        select_slot(self.player, action)
        move(self.world, self.player, action)
        self.edits = interact(self.world, self.player, action, DEFAULT_HOTBAR)
        self.world.ensure_loaded(self.player.x, self.player.z)
        self.hit = target(self.world, self.player)
        self.tick += 1

    def time_of_day(self) -> float:
        if not self.config.day_night:
            return NOON
        return ((self.tick + MORNING_TICK) / self.config.day_length_ticks) % 1.0

    def view(self) -> View:
        """What the renderer needs besides the world."""
        p = self.player
        return View(eye=p.eye, yaw=p.yaw, pitch=p.pitch, time_of_day=self.time_of_day(),
                    target=None if self.hit is None else self.hit.block,
                    crack_stage=crack_stage(self.world, p, self.hit), hotbar=DEFAULT_HOTBAR,
                    selected_slot=p.selected_slot)

    def info(self) -> dict:
        p = self.player
        return {"pos": (p.x, p.y, p.z), "yaw": p.yaw, "pitch": p.pitch, "tick": self.tick,
                "selected_slot": p.selected_slot, "target_block": None if self.hit is None else self.hit.block,
                "crack_stage": crack_stage(self.world, p, self.hit), "seed": self.seed,
                "on_ground": p.on_ground, "in_water": p.in_water, "edits": list(self.edits)}

    def get_state(self) -> dict:
        """Seed, tick, player (with velocity and breaking progress) and world edits, as plain JSON values."""
        return {"seed": self.seed, "tick": self.tick, "player": self.player.to_dict(),
                "edits": [list(edit) for edit in self.world.get_edits()]}

    @classmethod
    def from_state(cls, config: EngineConfig, state: dict) -> "Simulation":
        """A simulation in exactly the state `get_state` described: the same actions then give the same frames."""
        missing = {"seed", "tick", "player", "edits"} - set(state)
        if missing:
            raise ValueError(f"engine state is missing {sorted(missing)}")
        return cls(config, state["seed"], Player.from_dict(state["player"]), state["tick"],
                   [tuple(int(v) for v in edit) for edit in state["edits"]])


def _draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(SEED_BOUND))


class VoxelEnv(gymnasium.Env):
    """The voxel world, first person: uint8 (H, W, 3) frames, MineRL Dict actions, reward 0, never terminates."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": TICKS_PER_SECOND}

    def __init__(self, config: EngineConfig | None = None, render_mode: str | None = None, **overrides):
        self.config = EngineConfig.with_overrides(config, overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        c = self.config
        self.observation_space = spaces.Box(0, 255, shape=(c.height, c.width, 3), dtype=np.uint8)
        self.action_space = actions.action_space()
        self.renderer = Renderer(c.width, c.height, fov=c.fov, view_distance=c.view_distance, hud=c.hud)
        self.sim: Simulation | None = None
        self._frame: np.ndarray | None = None

    @property
    def world(self) -> World:
        return self._started().world

    def _started(self) -> Simulation:
        if self.sim is None:
            raise RuntimeError("call reset() before using the environment")
        return self.sim

    def current_view(self) -> View:
        """The camera and HUD state the last frame was rendered from."""
        return self._started().view()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode in the world of `seed` (one drawn from np_random when None), at its spawn point."""
        super().reset(seed=seed)
        self.sim = Simulation(self.config, seed if seed is not None else _draw_seed(self.np_random))
        self._frame = self.renderer.render(self.sim.world, self.sim.view())
        return self._frame, self.sim.info()

    def step(self, action):
        sim = self._started()
        sim.step(actions.validate(action))
        self._frame = self.renderer.render(sim.world, sim.view())
        limit = self.config.max_episode_steps
        truncated = limit is not None and sim.tick >= limit
        return self._frame, 0.0, False, truncated, sim.info()

    def advance(self, action) -> tuple[bool, dict]:
        """`step` without making the frame, for a follower whose frames are seldom looked at (the world model's
        twin: rendering is nine tenths of a step); `render()` makes it when asked. Returns (truncated, info)."""
        sim = self._started()
        sim.step(actions.validate(action))
        self._frame = None
        limit = self.config.max_episode_steps
        return limit is not None and sim.tick >= limit, sim.info()

    def render(self):
        """The last frame (a copy), or None when render_mode is None."""
        if self.render_mode is None or self.sim is None:
            return None
        if self._frame is None:  # stepped by `advance`
            self._frame = self.renderer.render(self.sim.world, self.sim.view())
        return self._frame.copy()

    def get_state(self) -> dict:
        """The full engine state as a JSON-serialisable dict (see Simulation.get_state)."""
        return self._started().get_state()

    def set_state(self, state: dict) -> np.ndarray:
        """Restore a state from get_state (in this or another env with the same config); returns its frame."""
        self.sim = Simulation.from_state(self.config, state)
        self._frame = self.renderer.render(self.sim.world, self.sim.view())
        return self._frame.copy()


def _resolve_render_device(device: str) -> str:
    """'auto' is 'cuda' where torch sees a GPU and Triton imports (the GPU renderer is a Triton kernel), else 'cpu';
    anything else must name a torch device."""
    if device == "auto":
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            return "cpu"
        import torch
        import kernels
        return "cuda" if torch.cuda.is_available() and kernels.triton_available() else "cpu"
    if device != "cpu" and not str(device).startswith("cuda"):
        raise ValueError(f"render_device must be 'auto', 'cpu' or a CUDA device, got {device!r}")
    return str(device)


class VoxelVectorEnv(gymnasium.vector.VectorEnv):
    """`num_envs` voxel worlds stepped together; sub-env i equals a VoxelEnv reset with seed s + i.

    Autoreset is NEXT_STEP: the step after a sub-env truncates ignores its action, resets it (seed drawn
    from its own generator, as a single env's reset() would) and returns the new episode's first frame.

    Frames come from the numba Renderer on the CPU, or with render_device='cuda' from the Triton BatchRenderer,
    which draws every world in one launch ('auto', the default, picks CUDA where torch sees a GPU).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": TICKS_PER_SECOND,
                "autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: EngineConfig | None = None, render_mode: str | None = None,
                 render_device: str = "auto", **overrides):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive whole number, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.config = EngineConfig.with_overrides(config, overrides)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        c = self.config
        self.single_observation_space = spaces.Box(0, 255, shape=(c.height, c.width, 3), dtype=np.uint8)
        self.single_action_space = actions.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_device = _resolve_render_device(render_device)
        if self.render_device == "cpu":
            self.renderer = Renderer(c.width, c.height, fov=c.fov, view_distance=c.view_distance, hud=c.hud)
        else:  # all worlds at once in one Triton launch; imported here so the CPU path never loads torch
            from worldsim.engine.render_gpu import BatchRenderer
            self.renderer = BatchRenderer(c.width, c.height, fov=c.fov, view_distance=c.view_distance, hud=c.hud,
                                          device=self.render_device)
        self.sims: list[Simulation] = []
        self._rngs: list[np.random.Generator] = []   # per sub-env, like each single env's np_random
        self._needs_reset = np.zeros(self.num_envs, dtype=np.bool_)
        self._frames: np.ndarray | None = None

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """Reset every sub-env: seed s gives sub-env i the seed s + i; a list gives one seed each."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        seeds = self._episode_seeds(seed)
        if seeds[0] is not None:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        elif not self._rngs:
            self._rngs = [seeding.np_random()[0] for _ in range(self.num_envs)]
        self.sims = [Simulation(self.config, s if s is not None else _draw_seed(rng))
                     for s, rng in zip(seeds, self._rngs)]
        self._needs_reset[:] = False
        self._frames = self._render_all()
        infos = {}
        for i, sim in enumerate(self.sims):
            infos = self._add_info(infos, sim.info(), i)
        return self._frames, infos

    def _episode_seeds(self, seed) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset(seed=...) needs one seed per sub-env ({self.num_envs}), got {len(seeds)}")
        if any(s is None for s in seeds):
            raise ValueError("reset(seed=[...]) needs every seed; pass seed=None to draw them all")
        return [int(s) for s in seeds]

    def step(self, action: dict):
        if not self.sims:
            raise RuntimeError("call reset() before step()")
        per_env = actions.split_batch(action, self.num_envs)
        truncations = np.zeros(self.num_envs, dtype=np.bool_)
        limit = self.config.max_episode_steps
        for i, sim in enumerate(self.sims):
            if self._needs_reset[i]:
                self.sims[i] = Simulation(self.config, _draw_seed(self._rngs[i]))
                continue
            sim.step(per_env[i])
            truncations[i] = limit is not None and sim.tick >= limit
        self._needs_reset = truncations.copy()
        self._frames = self._render_all()
        infos = {}
        for i, sim in enumerate(self.sims):
            infos = self._add_info(infos, sim.info(), i)
        return (self._frames, np.zeros(self.num_envs, dtype=np.float64), np.zeros(self.num_envs, dtype=np.bool_),
                truncations, infos)

    def _render_all(self) -> np.ndarray:
        """Frames of every sub-env, (N, H, W, 3) uint8; the one place a batched renderer plugs in."""
        c = self.config
        if self.render_device != "cpu":
            views = [sim.view() for sim in self.sims]
            return self.renderer.render([sim.world for sim in self.sims], views).cpu().numpy()
        frames = np.empty((self.num_envs, c.height, c.width, 3), dtype=np.uint8)
        for i, sim in enumerate(self.sims):
            frames[i] = self.renderer.render(sim.world, sim.view())
        return frames

    def render(self):
        """The last frames as a tuple, one per sub-env, or None when render_mode is None."""
        if self.render_mode is None or self._frames is None:
            return None
        return tuple(frame.copy() for frame in self._frames)

    def get_state(self) -> list[dict]:
        """Each sub-env's engine state (see Simulation.get_state)."""
        return [sim.get_state() for sim in self.sims]

    def set_state(self, states: list[dict]) -> np.ndarray:
        """Restore every sub-env from get_state; returns the (N, H, W, 3) frames."""
        if len(states) != self.num_envs:
            raise ValueError(f"set_state needs {self.num_envs} states, got {len(states)}")
        self.sims = [Simulation.from_state(self.config, state) for state in states]
        self._needs_reset[:] = False
        self._frames = self._render_all()
        return self._frames.copy()
