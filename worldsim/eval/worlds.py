"""The worlds the evaluation scores: each continues a prompt under given actions (`Predictor`), and `Timed` counts
the frames each makes and the seconds it spends.

`EnginePredictor` (the engine re-run from the prompt's end state: scores perfectly, a test of the harness),
`CopyLastFrame` (the floor), `AutoencoderReconstruction` (the ceiling: the engine's true frames through the
autoencoder) and `WorldModelPredictor` (the dynamics model through the sampler). torch is imported where a world
needs it, so that the engine's worlds load without it."""
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np

from worldsim.engine import actions as action_schema
from worldsim.engine.env import EngineConfig, VoxelEnv

if TYPE_CHECKING:
    from worldsim.eval.harness import Episode, EvalConfig

WORLDS = ("engine", "copy_last", "autoencoder", "model")


class Predictor(Protocol):
    """A world under test: continues a prompt under given actions."""
    name: str
    chunk_frames: int  # frames made per step; when > 1, step_chunk(list of chunk_frames actions) -> (K, H, W, 3)

    def reset(self, prompt_frames: np.ndarray, prompt_actions: list[dict], engine_state: dict | None) -> None: ...

    def step(self, action: dict) -> np.ndarray: ...


class EnginePredictor:
    """The engine itself, restored to the prompt's last state: the same actions give the true frames."""
    name, chunk_frames = "engine", 1

    def __init__(self, engine_config: EngineConfig):
        self.env = VoxelEnv(engine_config)

    def reset(self, prompt_frames, prompt_actions, engine_state):
        if engine_state is None:
            raise ValueError("the engine predictor needs the engine state at the end of the prompt")
        self.env.set_state(engine_state)

    def step(self, action):
        return self.env.step(action)[0]


class CopyLastFrame:
    """The floor: the last prompt frame, forever."""
    name, chunk_frames = "copy_last", 1

    def reset(self, prompt_frames, prompt_actions, engine_state):
        self.frame = np.array(prompt_frames[-1])

    def step(self, action):
        return self.frame.copy()


class AutoencoderReconstruction:
    """The ceiling: the engine's true frames encoded and decoded, what a perfect dynamics model would show."""
    name, chunk_frames = "autoencoder", 1

    def __init__(self, autoencoder, engine_config: EngineConfig):
        self.autoencoder, self.engine = autoencoder.eval(), EnginePredictor(engine_config)

    @classmethod
    def from_checkpoint(cls, directory, engine_config: EngineConfig, device="cpu") -> "AutoencoderReconstruction":
        from worldsim.models.train_autoencoder import load_autoencoder
        return cls(load_autoencoder(directory, device=device), engine_config)

    def reset(self, prompt_frames, prompt_actions, engine_state):
        self.engine.reset(prompt_frames, prompt_actions, engine_state)

    def step(self, action):
        return self._through(self.engine.step(action)[None])[0]

    def _through(self, frames: np.ndarray) -> np.ndarray:
        import torch
        from worldsim.models.autoencoder import to_uint8
        with torch.no_grad():
            latents = self.autoencoder.encode(torch.from_numpy(frames))
            return to_uint8(self.autoencoder.decode(latents)).cpu().numpy()

    def run_batch(self, episodes: list["Episode"]) -> np.ndarray:
        """Each episode's continuation from the engine, then all frames through the autoencoder in batches."""
        truth = []
        for episode in episodes:
            self.reset(episode.prompt_frames, episode.prompt_actions, episode.state)
            truth.append(np.stack([self.engine.step(a) for a in episode.continuation]))
        truth = np.stack(truth)
        flat = truth.reshape(-1, *truth.shape[2:])
        return np.concatenate([self._through(flat[i:i + 64]) for i in range(0, len(flat), 64)]).reshape(truth.shape)


class WorldModelPredictor:
    """The world model: prompt frames encoded and prefilled, then the sampler's chunks decoded to frames."""
    name = "model"

    def __init__(self, dynamics, autoencoder, sample_steps: int | None = None, seed: int = 0):
        from worldsim.sampling import Sampler
        self.autoencoder = autoencoder.eval()
        self.sampler = Sampler(dynamics, batch_size=1, steps=sample_steps, seed=seed)
        self.chunk_frames = dynamics.config.chunk_frames
        self.seed = seed
        # the prompt must fit the cache beside one chunk, and be whole chunks
        self.max_prompt = dynamics.config.context_frames - self.chunk_frames

    @classmethod
    def from_checkpoints(cls, dynamics_dir, autoencoder_dir, device="cpu", sample_steps=None, seed=0,
                         context_noise=None, sample_shift=None, view_memory=None, sample_start=None,
                         idle_start=None, idle_turn=None, keep_view=None, commit_last_step=None):
        from worldsim.models.dynamics import DynamicsModel
        from worldsim.models.dynamics_config import DynamicsConfig, with_sampling
        from worldsim.models.train_autoencoder import load_autoencoder
        from worldsim.training.checkpoint import load_model
        if dynamics_dir is None or autoencoder_dir is None:
            raise ValueError("world=model needs eval.checkpoint=DYNAMICS_RUN_DIR and eval.autoencoder=AUTOENCODER_RUN_DIR")
        name = "ema" if (Path(dynamics_dir) / "ema.safetensors").exists() else "model"
        dynamics = load_model(dynamics_dir, DynamicsModel, DynamicsConfig, name=name, device=device).eval()
        dynamics.config = with_sampling(dynamics.config, context_noise=context_noise, sample_shift=sample_shift,
                                        view_memory=view_memory, sample_start=sample_start,
                                        idle_start=idle_start, idle_turn=idle_turn, keep_view=keep_view,
                                        commit_last_step=commit_last_step)
        return cls(dynamics, load_autoencoder(autoencoder_dir, device=device), sample_steps, seed)

    def _vectors(self, taken: list[dict]):
        import torch
        rows = [action_schema.to_vector(a) for a in taken]
        return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, action_schema.ACTION_DIM), np.float32))[None]

    def _prompt(self, prompt_frames, prompt_actions):
        """The prompt's latents (1, P, C, h, w) and actions (1, P - 1, 25), cut to what the cache holds."""
        import torch
        keep = min(len(prompt_frames), self.max_prompt) // self.chunk_frames * self.chunk_frames
        if keep < 1:
            raise ValueError(f"a prompt of {len(prompt_frames)} frames holds no whole chunk of {self.chunk_frames}")
        frames, taken = prompt_frames[-keep:], list(prompt_actions)[len(prompt_actions) - (keep - 1):] if keep > 1 else []
        with torch.no_grad():
            latents = self.autoencoder.encode(torch.from_numpy(np.ascontiguousarray(frames)))  # (P, C, h, w)
        return latents[None], self._vectors(taken)

    def reset(self, prompt_frames, prompt_actions, engine_state):
        import torch
        self.sampler.generator.manual_seed(self.seed)  # the same prompt gives the same continuation
        with torch.no_grad():
            self.sampler.reset(*self._prompt(prompt_frames, prompt_actions))

    def _decode(self, latents) -> np.ndarray:
        import torch
        from worldsim.models.autoencoder import to_uint8
        with torch.no_grad():
            return to_uint8(self.autoencoder.decode(latents)).cpu().numpy()

    def step_chunk(self, taken: list[dict]) -> np.ndarray:
        import torch
        with torch.no_grad():
            return self._decode(self.sampler.step(self._vectors(taken))[0])  # (K, H, W, 3)

    def stream_batch(self, episodes: list["Episode"]) -> Iterator[np.ndarray]:
        """The episodes' continuations as one sampler batch, seeded once for the batch, chunk by chunk: frames
        (N, K, H, W, 3), the last chunk cut to the continuations' length. A batch of one gives what reset + step
        give."""
        import torch
        from worldsim.sampling import Sampler
        prompts = [self._prompt(e.prompt_frames, e.prompt_actions) for e in episodes]
        T, K = len(episodes[0].continuation), self.chunk_frames
        if any(len(e.continuation) != T for e in episodes):
            raise ValueError("a batch of rollouts needs continuations of one length")
        taken = torch.cat([self._vectors(list(e.continuation) + [action_schema.noop()] * (-T % K)) for e in episodes])
        sampler = self.sampler if len(episodes) == 1 else Sampler(self.sampler.model, batch_size=len(episodes),
                                                                  steps=self.sampler.steps)
        sampler.generator.manual_seed(self.seed)
        with torch.no_grad():
            sampler.reset(torch.cat([p[0] for p in prompts]), torch.cat([p[1] for p in prompts]))
        for i in range(0, taken.shape[1], K):
            with torch.no_grad():
                latents = sampler.step(taken[:, i:i + K])  # (N, K, C, h, w)
            frames = self._decode(latents.flatten(0, 1))
            yield frames.reshape(len(episodes), K, *frames.shape[1:])[:, :T - i]

    def run_batch(self, episodes: list["Episode"]) -> np.ndarray:
        """The episodes' continuations (N, T, H, W, 3) as one sampler batch (stream_batch)."""
        return np.concatenate(list(self.stream_batch(episodes)), axis=1)

    def step(self, action):
        if self.chunk_frames != 1:
            raise RuntimeError(f"this model makes {self.chunk_frames} frames per step: call step_chunk")
        return self.step_chunk([action])[0]


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_world(kind: str, config: "EvalConfig", engine_config: EngineConfig) -> Predictor:
    """The predictor `kind` names, loaded from the checkpoints in `config`."""
    if kind == "engine":
        return EnginePredictor(engine_config)
    if kind == "copy_last":
        return CopyLastFrame()
    if kind == "autoencoder":
        if config.autoencoder is None:
            raise ValueError("world=autoencoder needs eval.autoencoder=AUTOENCODER_RUN_DIR")
        return AutoencoderReconstruction.from_checkpoint(config.autoencoder, engine_config, _device(config.device))
    if kind == "model":
        return WorldModelPredictor.from_checkpoints(config.checkpoint, config.autoencoder, _device(config.device),
                                                    config.sample_steps, config.seed, config.context_noise,
                                                    config.sample_shift, config.view_memory, config.sample_start,
                                                    config.idle_start, config.idle_turn, config.keep_view,
                                                    config.commit_last_step)
    raise ValueError(f"unknown world {kind!r}; known: {', '.join(WORLDS)}")


class Timed:
    """A predictor wrapped to count the frames it makes and the seconds it spends making them."""

    def __init__(self, world: Predictor):
        self.world, self.name, self.chunk_frames = world, world.name, getattr(world, "chunk_frames", 1)
        self.frames, self.seconds = 0, 0.0
        self.batch_frames, self.batch_seconds = 0, 0.0

    def reset(self, prompt_frames, prompt_actions, engine_state):
        self.world.reset(prompt_frames, list(prompt_actions), engine_state)

    def run(self, taken: list[dict]) -> np.ndarray:
        """Frames (len(taken), H, W, 3) for the actions; the last chunk is padded with no-ops and cut."""
        K, out = self.chunk_frames, []
        padded = list(taken) + [action_schema.noop()] * (-len(taken) % K)
        start = time.perf_counter()
        for i in range(0, len(padded), K):
            out.extend(self.world.step_chunk(padded[i:i + K]) if K > 1 else [self.world.step(padded[i])])
        self.seconds += time.perf_counter() - start
        self.frames += len(padded)
        return np.stack(out[:len(taken)]) if taken else np.zeros((0,), np.uint8)

    def run_batch(self, episodes: list["Episode"]) -> np.ndarray:
        """The episodes' continuations (N, T, H, W, 3): together where the world can, else one by one."""
        if not hasattr(self.world, "run_batch"):
            runs = []
            for episode in episodes:
                self.reset(episode.prompt_frames, episode.prompt_actions, episode.state)
                runs.append(self.run(episode.continuation))
            return np.stack(runs)
        start = time.perf_counter()
        frames = self.world.run_batch(episodes)
        self.batch_seconds += time.perf_counter() - start
        self.batch_frames += frames.shape[0] * frames.shape[1]
        return frames

    def stream(self, episodes: list["Episode"]) -> Iterator[tuple[list[int], np.ndarray]]:
        """The episodes' continuations chunk by chunk, as (rows, frames (len(rows), K, H, W, 3)): all episodes
        together where the world streams batches (stream_batch, timed as batches), else one after another."""
        if hasattr(self.world, "stream_batch"):
            rows, chunks = list(range(len(episodes))), self.world.stream_batch(episodes)
            while True:
                start = time.perf_counter()
                frames = next(chunks, None)
                self.batch_seconds += time.perf_counter() - start
                if frames is None:
                    return
                self.batch_frames += frames.shape[0] * frames.shape[1]
                yield rows, frames
        for row, episode in enumerate(episodes):
            self.reset(episode.prompt_frames, episode.prompt_actions, episode.state)
            taken = episode.continuation
            for i in range(0, len(taken), self.chunk_frames):
                yield [row], self.run(taken[i:i + self.chunk_frames])[None]

    @property
    def fps(self) -> float | None:
        """Frames per second one at a time (reset + run), as play makes them."""
        return self.frames / self.seconds if self.seconds > 0 else None

    @property
    def batch_fps(self) -> float | None:
        """Frames per second over the batched rollouts (run_batch), all rows counted."""
        return self.batch_frames / self.batch_seconds if self.batch_seconds > 0 else None
