"""The world model as gymnasium environments: `WorldModelEnv` (one imagined world) and `WorldModelVectorEnv`.

Both have the engine's action space and observations (uint8 (H, W, 3) at the autoencoder's resolution), so
the game, the recorder and the rollouts drive them exactly as they drive `VoxelEnv`. Each step: the action is
validated, turned into the model's 25-dim vector, the sampler makes the next latent frame, the autoencoder
decodes it.

A world checkpoint is a directory holding two run directories, `dynamics/` and `autoencoder/` (each
`model.safetensors` + `model.json`, or `ema.*`, as the training modes write them; `save_world` writes one).
A dynamics run directory works too when the autoencoder's directory is given separately.

Where an episode starts (`prompt`):
    None or "seed"   P frames the engine renders at the spawn point of the episode's seed, the player still
                     (prompt_motion="still") or turning slowly ("look"); the reset seed also seeds the noise
    a trajectory     NAME (or NAME.mp4 / NAME.jsonl) of an interchange trajectory: its first P frames and the
                     P - 1 actions between them
    an image file    .png/.jpg/...: that frame held P times with no-op actions; another size is resized (warned)

With `chunk_frames` K > 1 the model makes K frames per pass: the action of the step that starts a chunk is
held for its K frames, and the actions of the next K - 1 steps are not seen by the model (they still reach the
twin and the hotbar slot). The CPU and GPU interactive configs have K = 1.

`info` of reset and step:
    tick, step       frames since reset (the model's clock; tick is the engine's name for it)
    seed             the episode seed (the world the prompt was rendered in, and the sampler's noise)
    selected_slot    0..8, tracked from the hotbar keys, as the engine does
    denoise_steps    Euler steps per chunk now (set_steps changes it)
    context_frames   frames the model sees besides the one it makes (grows to the cache's window)
    ms_per_frame     wall-clock ms of sampling + decoding this frame (None after reset; absent with timing=False,
                     which makes info bit-reproducible, as check_env wants)
    ms_to_frame      the part of it inside step, after the action came: less by what `prepare` did before
    edits            [] (the model keeps no block list)
  only while a twin engine runs (twin=True and a seed prompt), the engine's values after the same actions:
    pos, yaw, pitch, target_block, crack_stage, on_ground, in_water, and `edits` from the engine.
  Without a twin these keys are absent: the model has no position.
"""
import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from worldsim.engine import actions
from worldsim.engine.env import SEED_BOUND, EngineConfig, VoxelEnv, config_with_overrides
from worldsim.engine.player import TICKS_PER_SECOND
from worldsim.envs.imagination import Imagination
from worldsim.envs.prompts import PROMPT_MOTIONS, Prompt, engine_prompt, file_prompt, prompt_length
from worldsim.models.autoencoder import native_bf16

TWIN_KEYS = ("pos", "yaw", "pitch", "target_block", "crack_stage", "on_ground", "in_water", "edits")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
DECODE_PRECISIONS = ("auto", *PRECISIONS)


@dataclass
class WorldModelConfig:
    checkpoint: str | None = None     # world directory (dynamics/ + autoencoder/) or a dynamics run directory;
                                      # None: the world shipped in assets/ (what python run_world.py plays)
    autoencoder: str | None = None    # autoencoder run directory, when checkpoint is a dynamics run directory
    device: str = "auto"              # auto | cpu | cuda[:i]
    steps: int | None = None          # denoising (Euler) steps per chunk; None: the model's sample_steps
    prompt: str | None = None         # None/"seed" | trajectory NAME | image file (see the module docstring)
    prompt_frames: int | None = None  # P; None: PROMPT_FRAMES capped by the window
    prompt_motion: str = "still"      # still | look: what the player does during a seed prompt
    twin: bool = False                # run the engine beside the model on the same actions (seed prompts;
                                      # with a file prompt it is turned off with a warning)
    timing: bool = True               # report ms_per_frame in info
    max_episode_steps: int | None = None
    torch_threads: int | None = 2     # torch's CPU threads, at most the cores (pin_torch_threads); None: left alone
    cuda_graphs: bool = True          # on CUDA, replay each sampler step as a CUDA graph (Sampler(graphs=True))
    compile: bool = False             # the sampler's step and the decoder under torch.compile (Sampler(compile=True)):
                                      # small ops fused; the first reset compiles (on a 2-core CPU 1-4 min, 10 s with
                                      # inductor's cache warm), a step count not used yet at its first step
    precision: str = "fp32"           # fp32 | bf16: the dynamics model's weights, KV cache and sampling (the
                                      # decoder's is decode_precision); bf16 halves the cache's bytes and runs the
                                      # attention kernels' tensor-core path on CUDA
    decode_precision: str = "auto"    # auto | fp32 | bf16: the decoder's (a copy; prompts are encoded in fp32).
                                      # auto: bf16 on a CPU with bf16 instructions (twice as fast there, the
                                      # frames within a few levels of fp32's), else fp32
    commit_last_step: bool | None = None  # frames enter the KV caches from their last Euler step's pass, with no
                                      # commit pass: a third fewer dynamics passes at 2 steps, a fifth less work a
                                      # frame measured with decoding, the long runs flatter
                                      # (models/README.md); None: the model's setting

    def __post_init__(self):
        for name in ("twin", "timing", "cuda_graphs", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"world.{name} must be true or false, got {getattr(self, name)!r}")
        if self.commit_last_step is not None and not isinstance(self.commit_last_step, bool):
            raise ValueError(f"world.commit_last_step must be true, false or null, got {self.commit_last_step!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"world.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.decode_precision not in DECODE_PRECISIONS:
            raise ValueError(f"world.decode_precision must be one of {list(DECODE_PRECISIONS)}, "
                             f"got {self.decode_precision!r}")
        if self.prompt_motion not in PROMPT_MOTIONS:
            raise ValueError(f"prompt_motion must be one of {PROMPT_MOTIONS}, got {self.prompt_motion!r}")
        if self.steps is not None and (int(self.steps) != self.steps or self.steps < 1):
            raise ValueError(f"steps must be None or a positive whole number, got {self.steps!r}")
        if self.prompt_frames is not None and (int(self.prompt_frames) != self.prompt_frames or self.prompt_frames < 1):
            raise ValueError(f"prompt_frames must be None or a positive whole number, got {self.prompt_frames!r}")
        if self.max_episode_steps is not None and (int(self.max_episode_steps) != self.max_episode_steps
                                                   or self.max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be None or a positive whole number, "
                             f"got {self.max_episode_steps!r}")
        threads = self.torch_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"world.torch_threads must be null or a positive whole number, got {self.torch_threads!r}")

    def decode_dtype(self, device: str) -> torch.dtype:
        """The decoder's dtype on `device` (cpu | cuda...)."""
        if self.decode_precision == "auto":
            return torch.bfloat16 if device == "cpu" and native_bf16() else torch.float32
        return PRECISIONS[self.decode_precision]

    @property
    def seed_prompt(self) -> bool:
        return self.prompt in (None, "", "seed")

    @classmethod
    def with_overrides(cls, config: "WorldModelConfig | None", overrides: dict) -> "WorldModelConfig":
        """`config` (or the defaults) with some fields replaced; an unknown field name raises TypeError."""
        return config_with_overrides(cls, config, overrides, "world model")


# ---------------------------------------------------------------------------------------------- checkpoints

def pin_torch_threads(threads: int | None) -> None:
    """Keep torch at `threads` CPU threads (at most the machine's cores). The engine's numba renderer shares the
    OpenMP runtime with torch, and its first parallel call sets the thread count torch reads; this puts it back.
    Measured on the 2-core machine (torch 2.13, numba 0.68, omp layer), the tiny world per env step: 43 ms with
    one thread, 29 ms with two, 31 ms with two and the engine twin rendering every step."""
    if threads is not None:
        threads = max(1, min(int(threads), os.cpu_count() or 1))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def resolve_device(device: str) -> str:
    """auto → cuda where torch has a CUDA device, else cpu; cpu or cuda[:i] checked against this machine."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"world.device must be auto, cpu or cuda[:i], got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"world.device={device} but torch {torch.__version__} sees no CUDA device here; "
                             f"use world.device=cpu (or auto)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"world.device={device} but there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def _run_name(directory: Path) -> str:
    return "ema" if (directory / "ema.safetensors").exists() else "model"


def load_world(checkpoint, autoencoder=None, device: str = "cpu"):
    """(dynamics, autoencoder) from a world directory (None: the shipped one, `shipped_world`), or from a dynamics
    run plus an autoencoder run.

    Missing paths raise FileNotFoundError and unreadable or mismatched files CheckpointError, naming them."""
    from worldsim.models.dynamics import load_dynamics
    from worldsim.models.train_autoencoder import load_autoencoder
    from worldsim.training.checkpoint import CheckpointError
    if not checkpoint:
        from worldsim.envs import shipped_world
        checkpoint = shipped_world()  # none named: the world that python run_world.py plays
        if checkpoint is None:
            raise ValueError("the world model needs a checkpoint: checkpoint=PATH (a directory with dynamics/ and "
                             "autoencoder/ runs); none ships in assets/")
    root = Path(checkpoint)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such world checkpoint directory")
    dynamics_dir = root / "dynamics" if (root / "dynamics").is_dir() else root
    autoencoder_dir = Path(autoencoder) if autoencoder else root / "autoencoder"
    if not autoencoder_dir.is_dir():
        raise FileNotFoundError(f"{autoencoder_dir}: no autoencoder run directory (a world checkpoint holds "
                                f"dynamics/ and autoencoder/; or give world.autoencoder=PATH)")
    if not (dynamics_dir / f"{_run_name(dynamics_dir)}.json").exists():
        raise FileNotFoundError(f"{dynamics_dir}: no dynamics model (model.json + model.safetensors) in it")
    dynamics = load_dynamics(dynamics_dir, name=_run_name(dynamics_dir), device=device).eval()
    ae = load_autoencoder(autoencoder_dir, device=device).eval()
    d = dynamics.config
    if tuple(ae.config.latent_shape) != (d.latent_channels, d.latent_height, d.latent_width):
        raise CheckpointError(f"{autoencoder_dir} makes latents {tuple(ae.config.latent_shape)} but the dynamics "
                              f"model in {dynamics_dir} takes {(d.latent_channels, d.latent_height, d.latent_width)}")
    return dynamics, ae


def save_world(directory, dynamics, autoencoder) -> Path:
    """Write a world checkpoint: DIRECTORY/dynamics and DIRECTORY/autoencoder runs."""
    from worldsim.training.checkpoint import save_checkpoint
    directory = Path(directory)
    save_checkpoint(directory / "dynamics", dynamics, dynamics.config)
    save_checkpoint(directory / "autoencoder", autoencoder, autoencoder.config)
    return directory


def random_world(directory, dynamics_config, autoencoder_config, seed: int = 0, scale: float = 0.05) -> Path:
    """Save an untrained world (weights perturbed so that AdaLN-zero does not make the dynamics output 0):
    for tests and for timing before any model is trained."""
    from worldsim.models.autoencoder import Autoencoder
    from worldsim.models.dynamics import DynamicsModel
    torch.manual_seed(seed)
    dynamics, autoencoder = DynamicsModel(dynamics_config), Autoencoder(autoencoder_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dynamics.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return save_world(directory, dynamics, autoencoder)


# ---------------------------------------------------------------------------------------------- the envs

def _draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(SEED_BOUND))


def _selected_slot(slot: int, action: dict) -> int:
    """The hotbar slot after `action`: the lowest pressed hotbar key wins, as in the engine."""
    for i in range(9):
        if action[f"hotbar.{i + 1}"]:
            return i
    return slot


class _ModelWorld:
    """What both envs share: config, models, prompt making."""

    def _setup(self, config, overrides, engine, models):
        self.config = WorldModelConfig.with_overrides(config, overrides)
        c = self.config
        self.device = resolve_device(c.device)
        self.torch_threads = c.torch_threads if self.device == "cpu" else None
        pin_torch_threads(self.torch_threads)
        dynamics, autoencoder = models if models is not None else load_world(c.checkpoint, c.autoencoder, self.device)
        if dynamics.head.weight.dtype != PRECISIONS[c.precision]:  # a cast copy: given models stay as they are
            dynamics = copy.deepcopy(dynamics).to(PRECISIONS[c.precision]) if models is not None else \
                dynamics.to(PRECISIONS[c.precision])
        if c.commit_last_step is not None and c.commit_last_step != dynamics.config.commit_last_step:
            from worldsim.models.dynamics_config import with_sampling
            if models is not None:  # a shallow copy shares the weights and leaves the given model's config alone
                dynamics = copy.copy(dynamics)
            dynamics.config = with_sampling(dynamics.config, commit_last_step=c.commit_last_step)
        self.dynamics_config = dynamics.config
        ae = autoencoder.config
        self.size = (ae.height, ae.width)
        self.engine_config = EngineConfig.with_overrides(engine, {"width": ae.width, "height": ae.height})
        self.prompt_frames = prompt_length(c.prompt_frames, dynamics.config)
        if c.twin and not c.seed_prompt:
            warnings.warn(f"the engine twin (F5 in play) starts only from a seed prompt, so it is off for {c.prompt}",
                          stacklevel=3)
            self.config = c = dataclasses.replace(c, twin=False)
        # file prompts are read once, so that a bad file fails here, before anything starts
        self.file_prompt = None if c.seed_prompt else file_prompt(c.prompt, self.size, self.prompt_frames)
        return dynamics, autoencoder

    def _prompt(self, seed: int) -> Prompt:
        if self.file_prompt is not None:
            return self.file_prompt
        prompt = engine_prompt(self.engine_config, seed, self.prompt_frames, self.config.prompt_motion,
                               keep_twin=self.config.twin)
        pin_torch_threads(self.torch_threads)
        return prompt


class WorldModelEnv(_ModelWorld, gymnasium.Env):
    """The imagined voxel world: the engine's interface, frames from the dynamics model and the autoencoder."""

    frame_source = "model"   # recordings of it say source=model
    metadata = {"render_modes": ["rgb_array"], "render_fps": TICKS_PER_SECOND}

    def __init__(self, config: WorldModelConfig | None = None, engine: EngineConfig | None = None,
                 render_mode: str | None = None, *, models=None, **overrides):
        dynamics, autoencoder = self._setup(config, overrides, engine, models)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, shape=(*self.size, 3), dtype=np.uint8)
        self.action_space = actions.action_space()
        self.imagination = Imagination(dynamics, autoencoder, 1, self.config.steps, self.config.cuda_graphs,
                                       self.config.decode_dtype(self.device), self.config.compile, prepares=True)
        self.twin: VoxelEnv | None = None
        self._frame: np.ndarray | None = None
        self._twin_info: dict = {}
        self._seed = self._tick = self._slot = 0

    @property
    def twin_frame(self) -> np.ndarray | None:
        """The engine's frame after the same actions (rendered on the first ask after a step), or None without a
        twin."""
        if self.twin is None:
            return None
        frame = self.twin.render()
        pin_torch_threads(self.torch_threads)  # the engine's renderer may have reset torch's threads
        return frame

    def set_steps(self, steps: int) -> None:
        """Denoising steps from the next frame on."""
        self.imagination.set_steps(steps)

    @property
    def steps(self) -> int:
        return self.imagination.steps

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start from the prompt; a seed prompt is rendered in the world of `seed` (drawn when None)."""
        super().reset(seed=seed)
        self._seed = seed if seed is not None else _draw_seed(self.np_random)
        prompt = self._prompt(self._seed)
        self.imagination.reset(prompt.frames[None], prompt.vectors[None], [self._seed])
        self.twin = prompt.twin
        self._twin_info = {} if self.twin is None else self.twin.sim.info()
        self._frame, self._tick, self._slot = prompt.frames[-1].copy(), 0, 0
        for action in prompt.actions:
            self._slot = _selected_slot(self._slot, action)
        return self._frame.copy(), self._info()

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before using the environment")
        action = actions.validate(action)
        self._frame = self.imagination.step(actions.to_vector(action)[None])[0]
        self._tick += 1
        self._slot = _selected_slot(self._slot, action)
        if self.twin is not None:  # rendered only when its frame is asked for (`twin_frame`)
            _, self._twin_info = self.twin.advance(action)
            pin_torch_threads(self.torch_threads)  # (it may generate terrain with numba's threads)
        limit = self.config.max_episode_steps
        truncated = limit is not None and self._tick >= limit
        return self._frame.copy(), 0.0, False, truncated, self._info()

    def prepare(self) -> None:
        """Do now what the next step can do before it knows its action (the last frame's commit pass into the
        model's caches), so that the step is quicker; the frames are the same (to float rounding: at most a
        level of 255 here and there). Play calls it while the frame is shown; calling it or not changes nothing
        else."""
        if self._frame is None:
            raise RuntimeError("call reset() before using the environment")
        self.imagination.prepare()

    def _info(self) -> dict:
        info = {"tick": self._tick, "step": self._tick, "seed": self._seed, "selected_slot": self._slot,
                "denoise_steps": self.imagination.steps, "context_frames": self.imagination.context_frames,
                "edits": []}
        if self.config.timing:
            info["ms_per_frame"] = self.imagination.last_ms if self._tick else None
            info["ms_to_frame"] = self.imagination.last_step_ms if self._tick else None
        info.update({k: self._twin_info[k] for k in TWIN_KEYS if k in self._twin_info})
        return info

    def render(self):
        """The last frame (a copy), or None when render_mode is None."""
        if self.render_mode is None or self._frame is None:
            return None
        return self._frame.copy()

    def snapshot(self) -> dict:
        """Everything needed to continue exactly from here: sampler, last frame, step count, twin state."""
        if self._frame is None:
            raise RuntimeError("call reset() before snapshot()")
        return {"imagination": self.imagination.snapshot(), "frame": self._frame.copy(), "tick": self._tick,
                "slot": self._slot, "seed": self._seed,
                "twin": None if self.twin is None else self.twin.get_state()}

    def restore(self, state: dict) -> np.ndarray:
        """Go back to a snapshot of this env; returns its frame. What follows replays what followed it."""
        self.imagination.restore(state["imagination"])
        self._frame = state["frame"].copy()
        self._tick, self._slot, self._seed = state["tick"], state["slot"], state["seed"]
        if state["twin"] is not None and self.twin is not None:
            self.twin.set_state(state["twin"])
            self._twin_info = self.twin.sim.info()
            pin_torch_threads(self.torch_threads)
        return self._frame.copy()


class WorldModelVectorEnv(_ModelWorld, gymnasium.vector.VectorEnv):
    """`num_envs` imagined worlds sampled as one batch; sub-env i equals a WorldModelEnv reset with seed s + i.

    Autoreset is NEXT_STEP, as in VoxelVectorEnv. All sub-envs start and truncate together (they are stepped
    together and share max_episode_steps), so an autoreset restarts the whole batch, each sub-env with a seed
    drawn from its own generator. No twins: rollouts want speed. `reset` and `step` return their frames without a
    copy: each is a new array that no later step writes into.
    """

    frame_source = "model"
    metadata = {"render_modes": ["rgb_array"], "render_fps": TICKS_PER_SECOND,
                "autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: WorldModelConfig | None = None, engine: EngineConfig | None = None,
                 render_mode: str | None = None, *, models=None, **overrides):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive whole number, got {num_envs!r}")
        self.num_envs = int(num_envs)
        overrides["twin"] = False
        dynamics, autoencoder = self._setup(config, overrides, engine, models)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.single_observation_space = spaces.Box(0, 255, shape=(*self.size, 3), dtype=np.uint8)
        self.single_action_space = actions.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.imagination = Imagination(dynamics, autoencoder, self.num_envs, self.config.steps,
                                        self.config.cuda_graphs, self.config.decode_dtype(self.device),
                                        self.config.compile)
        self._rngs: list[np.random.Generator] = []
        self._seeds: list[int] = []
        self._needs_reset = False
        self._frames: np.ndarray | None = None
        self._ticks = np.zeros(self.num_envs, dtype=np.int64)
        self._slots = np.zeros(self.num_envs, dtype=np.int64)

    def set_steps(self, steps: int) -> None:
        self.imagination.set_steps(steps)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """Reset every sub-env: seed s gives sub-env i the seed s + i; a list gives one seed each."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        if seed is None:
            if not self._rngs:
                self._rngs = [gymnasium.utils.seeding.np_random()[0] for _ in range(self.num_envs)]
            seeds = None
        else:
            seeds = [int(seed) + i for i in range(self.num_envs)] if isinstance(seed, (int, np.integer)) else list(seed)
            if len(seeds) != self.num_envs or any(s is None for s in seeds):
                raise ValueError(f"reset(seed=...) needs one seed per sub-env ({self.num_envs}), got {seed!r}")
            self._rngs = [gymnasium.utils.seeding.np_random(s)[0] for s in seeds]
        return self._start(seeds)

    def _start(self, seeds: list[int] | None):
        # a single env draws its episode seed from np_random seeded with its reset seed; so does row i here
        self._seeds = [int(s) for s in seeds] if seeds is not None else [_draw_seed(rng) for rng in self._rngs]
        prompts = [self._prompt(s) for s in self._seeds]
        self.imagination.reset(np.stack([p.frames for p in prompts]), np.stack([p.vectors for p in prompts]),
                               self._seeds)
        self._frames = np.stack([p.frames[-1] for p in prompts])
        self._ticks[:] = 0
        self._slots[:] = 0
        self._needs_reset = False
        return self._frames, self._infos()

    def step(self, action: dict):
        if self._frames is None:
            raise RuntimeError("call reset() before step()")
        batch = actions.validate_batch(action, self.num_envs)
        if self._needs_reset:
            obs, infos = self._start(None)
            return obs, np.zeros(self.num_envs), np.zeros(self.num_envs, np.bool_), \
                np.zeros(self.num_envs, np.bool_), infos
        self._frames = self.imagination.step(actions.to_vectors(batch))
        self._ticks += 1
        pressed = np.stack([batch[f"hotbar.{i + 1}"] for i in range(9)], axis=1).astype(bool)  # (N, 9)
        self._slots = np.where(pressed.any(axis=1), pressed.argmax(axis=1), self._slots)  # as _selected_slot
        limit = self.config.max_episode_steps
        truncations = np.full(self.num_envs, limit is not None and int(self._ticks[0]) >= limit)
        self._needs_reset = bool(truncations[0])
        # not copied: a new array each step that no later step writes into (at 256 envs a copy cost 1.3 ms)
        return (self._frames, np.zeros(self.num_envs, dtype=np.float64), np.zeros(self.num_envs, dtype=np.bool_),
                truncations, self._infos())

    def _infos(self) -> dict:
        """The single env's info of every sub-env, batched as gymnasium's _add_info would (one array and one
        '_key' mask per key), built from whole arrays: no per-env Python."""
        n = self.num_envs
        columns = {"tick": self._ticks.copy(), "step": self._ticks.copy(), "seed": np.array(self._seeds, np.int64),
                   "selected_slot": self._slots.astype(np.int64), "denoise_steps": np.full(n, self.imagination.steps),
                   "context_frames": np.full(n, self.imagination.context_frames)}
        if self.config.timing:
            ms = self.imagination.last_ms if int(self._ticks[0]) else None
            columns["ms_per_frame"] = np.full(n, ms, dtype=object if ms is None else np.float64)
        infos = {}
        for key, column in columns.items():
            infos[key], infos[f"_{key}"] = column, np.ones(n, dtype=np.bool_)
        return infos

    def render(self):
        """The last frames as a tuple, one per sub-env, or None when render_mode is None."""
        if self.render_mode is None or self._frames is None:
            return None
        return tuple(frame.copy() for frame in self._frames)
