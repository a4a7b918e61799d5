"""B imagined worlds stepped together, behind the world-model envs: prompts encoded, the sampler's latent chunks
made from actions (each row's noise its own seeded stream) and decoded to uint8 frames."""
import math
import sys
import time

import numpy as np
import torch

from kernels.noise import row_normal, seed_keys
from worldsim.models.autoencoder import ChannelsLastDecode, GraphedDecode, compiled_decode
from worldsim.sampling import Sampler


class RowSeededSampler(Sampler):
    """A Sampler whose noise comes from one counter-based stream per batch row (kernels.noise), so that row i
    of a batch replays a batch-1 sampler seeded alike (Sampler's one generator ties each row's noise to the
    batch size), and a batch's noise is one launch whatever its size. The rows' keys and draw counters are
    device tensors: `noise_state` and `set_noise_state` save and restore them for rewinds."""

    def __init__(self, model, batch_size: int, steps: int | None = None, graphs: bool = False,
                 compile: bool | str = False):
        super().__init__(model, batch_size=batch_size, steps=steps, graphs=graphs, compile=compile)
        self.noise_keys = torch.zeros(batch_size, 2, dtype=torch.int64, device=self.device)
        self.noise_draws = torch.zeros(batch_size, dtype=torch.int64, device=self.device)

    def seed_rows(self, seeds) -> None:
        seeds = list(seeds)
        if len(seeds) != self.batch_size:
            raise ValueError(f"seed_rows needs one seed per row ({self.batch_size}), got {len(seeds)}")
        self.noise_keys.copy_(seed_keys(seeds))
        self.noise_draws.zero_()

    def noise_state(self) -> dict:
        return {"keys": self.noise_keys.clone(), "draws": self.noise_draws.clone()}

    def set_noise_state(self, state: dict) -> None:
        self.noise_keys.copy_(state["keys"])
        self.noise_draws.copy_(state["draws"])

    def _noise(self, frames: int):
        c = self.config
        shape = (frames, c.latent_channels, c.latent_height, c.latent_width)
        noise = row_normal(self.noise_keys, self.noise_draws, math.prod(shape), self.model.head.weight.dtype)
        self.noise_draws.add_(1)
        return noise.view(self.batch_size, *shape)  # (B, K, C, h, w)


def host_frames(frames: torch.Tensor) -> np.ndarray:
    """uint8 frames as a numpy array. From the GPU into page-locked memory, which the copy engine writes directly,
    where a plain .cpu() goes through a pageable staging buffer (at batch 256 the frames are 12.6 MB a step; the
    gain on the H100 waits for a lent one to measure). torch's caching host allocator hands the block out again
    once the array is let go."""
    if frames.device.type != "cuda":
        return frames.cpu().numpy()
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    host.copy_(frames)
    return host.numpy()


class Imagination:
    """B imagined worlds stepped together: prompts encoded, the sampler's chunks decoded to uint8 frames."""

    def __init__(self, dynamics, autoencoder, batch: int, steps: int | None = None, cuda_graphs: bool = True,
                 decode_dtype: torch.dtype = torch.float32, compile: bool = False, prepares: bool = False):
        self.autoencoder = autoencoder.eval()
        graphs = cuda_graphs and dynamics.head.weight.device.type == "cuda"
        # compiled, the sampler runs its buffered step (graphs=True), replayed as a CUDA graph only on CUDA
        self.sampler = RowSeededSampler(dynamics, batch, steps, graphs=graphs or compile, compile=compile)
        self.sampler.capture = graphs
        device = self.autoencoder.latent_std.device.type
        decode = ChannelsLastDecode(self.autoencoder, decode_dtype) \
            if device == "cpu" or decode_dtype != torch.float32 else self.autoencoder.decode
        if compile:
            decode = compiled_decode(decode)
        self.decode = GraphedDecode(self.autoencoder, decode) if graphs and device == "cuda" else decode
        self.chunk_frames = dynamics.config.chunk_frames
        self.window = dynamics.config.cache_frames
        self.queue: list[np.ndarray] = []   # decoded frames of the current chunk not shown yet (K > 1)
        self.last_ms: float | None = None   # wall-clock ms per frame of the last chunk, `prepare` included
        self.last_step_ms: float | None = None  # the same without what `prepare` did before the step
        self.prepared_ms = 0.0              # ms of the `prepare` since the last step
        self.compiled = False               # world.compile: whether the first reset compiled the step
        self.prepares = prepares            # whether `prepare` is called between steps (play): compiled, its
                                            # commit and the denoise after it are compiled at the first reset too

    @property
    def steps(self) -> int:
        return self.sampler.steps

    def set_steps(self, steps: int) -> None:
        if int(steps) != steps or steps < 1:
            raise ValueError(f"denoising steps must be a positive whole number, got {steps!r}")
        self.sampler.steps = int(steps)

    @property
    def context_frames(self) -> int:
        return min(self.sampler.frame, self.window)

    @torch.inference_mode()
    def reset(self, frames: np.ndarray, vectors: np.ndarray, seeds) -> None:
        """Prompt frames (B, P, H, W, 3) uint8 and vectors (B, P - 1, 25); `seeds` seed each row's noise."""
        B, P = frames.shape[:2]
        self.sampler.seed_rows(seeds)
        device = self.autoencoder.latent_std.device
        flat = np.ascontiguousarray(frames.reshape(B * P, *frames.shape[2:]))  # (B·P, H, W, 3)
        latents = self.autoencoder.encode(torch.from_numpy(flat).to(device))     # (B·P, C, h, w)
        dtype = self.sampler.model.head.weight.dtype
        self.sampler.reset(latents.reshape(B, P, *latents.shape[1:]).to(self.sampler.device, dtype),
                           torch.from_numpy(np.ascontiguousarray(vectors)).to(self.sampler.device, dtype))
        self.queue = []
        self.last_ms = self.last_step_ms = None
        self.prepared_ms = 0.0
        if self.sampler.compile and not self.compiled:
            self._compile_now(vectors.shape[-1])

    def _compile_now(self, action_dim: int) -> None:
        """world.compile: compile the step (and on CUDA capture its graphs) during the first reset, by two steps
        from the state just reset that are then undone (`snapshot`/`restore`: exact), so that play does not stall
        on its first frames: with `prepares` (the single env, whose steps commit first where `prepare` did not) the
        commit body and the denoise body, else the fused step. A step count not used yet compiles at its first step."""
        print("world.compile=true: compiling the sampler's step and the decoder (on a 2-core CPU 1-4 minutes the first "
              "time, about 10 s once inductor's cache holds them)", file=sys.stderr, flush=True)
        state = self.snapshot()
        try:
            still = np.zeros((self.sampler.batch_size, action_dim), np.float32)
            for _ in range(self.chunk_frames):  # the first chunk after a reset is a plain step
                self.step(still)
            if self.prepares:  # play: the commit ahead, then the denoise-only step (the fused step never runs there)
                self.prepare()
            for _ in range(self.chunk_frames):  # compiled: the denoise body after a commit, else the fused body
                self.step(still)
        except Exception as error:  # no C compiler for inductor, a torch without it, ...
            cause = getattr(error, "inner_exception", None) or error.__cause__ or error  # a backend's own error
            first = (str(cause).strip().splitlines() or [""])[0]
            raise RuntimeError(f"world.compile=true: torch.compile could not compile the sampler's step "
                               f"({type(cause).__name__}: {first}); play without it (world.compile=false)") from error
        self.restore(state)
        self.last_ms = self.last_step_ms = None
        self.compiled = True

    @torch.inference_mode()
    def step(self, vectors: np.ndarray) -> np.ndarray:
        """The next frames (B, H, W, 3) uint8 under actions (B, 25)."""
        if not self.queue:
            from worldsim.models.autoencoder import to_uint8
            start = time.perf_counter()
            if self.prepares and self.sampler.graphs:  # not prepared: commit now, so that the buffered step only
                self.sampler.commit()                   # denoises and the fused body is never needed (nor compiled)
            B, K = vectors.shape[0], self.chunk_frames
            dtype = self.sampler.model.head.weight.dtype
            # on the host: the sampler checks the actions there (on a GPU, a read of them would be a device sync)
            held = torch.from_numpy(vectors).to(dtype)[:, None].expand(B, K, -1)                      # (B, K, 25)
            latents = self.sampler.step(held.contiguous())                                            # (B, K, C, h, w)
            device = self.autoencoder.latent_std.device
            decoded = self.decode(latents.flatten(0, 1).to(device, self.autoencoder.latent_std.dtype))
            frames = host_frames(to_uint8(decoded))                                                   # (B·K, H, W, 3)
            frames = frames.reshape(B, K, *frames.shape[1:])
            self.queue = [frames[:, k] for k in range(K)]
            self.last_step_ms = (time.perf_counter() - start) * 1000.0 / K
            self.last_ms = self.last_step_ms + self.prepared_ms / K
            self.prepared_ms = 0.0
        return self.queue.pop(0)

    def prepare(self) -> None:
        """The next step's work that does not depend on its action (`Sampler.commit`: the last frame's commit pass,
        where it has one, and its painting into the view memory), done now; its ms are counted into the next
        frame's `last_ms`, and the step's own in `last_step_ms`."""
        if self.queue:  # the chunk still has frames to show: the next step makes none
            return
        start = time.perf_counter()
        self.sampler.commit()
        self.prepared_ms += (time.perf_counter() - start) * 1000.0

    def snapshot(self) -> dict:
        return {"sampler": self.sampler.snapshot(), "noise": self.sampler.noise_state(), "queue": list(self.queue)}

    def restore(self, state: dict) -> None:
        self.sampler.restore(state["sampler"])
        self.prepared_ms = 0.0
        self.sampler.set_noise_state(state["noise"])
        self.queue = list(state["queue"])
