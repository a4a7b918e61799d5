"""Training the dynamics transformer on encoded clips (`mode=train_dynamics`), with sampled rollouts as PNG strips.

The cache must hold autoencoder latents (`mode=encode`). Clips are `context_frames` long, the window the
sampler keeps (with `dynamics.adversarial` > 0, longer: worldsim/models/adversarial.py). The autoencoder that
made the latents (its run directory is in the cache index) decodes the sample rollouts; without it the strips
show the first three latent channels.
"""
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from worldsim.data.cache import Cache, ClipDataset
from worldsim.models.dynamics import DynamicsConfig, DynamicsModel, grow_from
from worldsim.models.guards import frame_mean_range, frame_spread_floor
from worldsim.models.objective import check_trainable, flow_matching_loss
from worldsim.sampling import Sampler
from worldsim.training import TrainConfig, train, unwrap

log = logging.getLogger(__name__)

SAMPLE_CLIPS = 4        # rollouts per sample image, spread over the dataset
LATENT_VIEW_SCALE = 3.0  # unit-scale latents shown as RGB: ±3 std maps to the colour range


class DynamicsTask:
    """The TrainTask of the dynamics model: batches {"latents": (B, T, C, h, w), "actions": (B, T, 25), ...}."""

    def __init__(self, config: DynamicsConfig, autoencoder_dir: str | None = None):
        check_trainable(config)
        self.config = config
        self.model = DynamicsModel(config)
        self.autoencoder_dir = autoencoder_dir
        self._decoder = None

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        return flow_matching_loss(model, self.config, batch["latents"], batch["actions"])

    def grow_from(self, model, directory, name: str) -> None:
        """train.init_grow: a shallower checkpoint's weights, the extra blocks left as identities."""
        grow_from(model, directory, name)

    @torch.no_grad()
    def save_samples(self, model, batch: dict, path: Path) -> None:
        """Top row of each pair: the clip's true frames after the prompt; below: the model's rollout from the
        prompt under the clip's actions."""
        latents, actions = batch["latents"], batch["actions"]
        with torch.autocast(latents.device.type, enabled=False):  # the cache wants one dtype throughout
            generated = rollout(model, latents.float(), actions.float(), prompt_frames(self.config))
        truth = latents[:, -generated.shape[1]:]
        rows = [strip(self.to_images(clip)) for pair in zip(truth, generated) for clip in pair]
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)

    def to_images(self, latents) -> torch.Tensor:
        """(T, C, h, w) latents -> uint8 (T, H, W, 3): decoded, or the first three channels as colours."""
        decoder = self.decoder(latents.device)
        if decoder is not None:
            from worldsim.models.autoencoder import to_uint8
            return to_uint8(decoder.decode(latents.float())).cpu()
        rgb = (latents[:, :3].float() / LATENT_VIEW_SCALE).clamp(-1, 1)
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=4, mode="nearest")
        return ((rgb + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def decoder(self, device):
        if self._decoder is None and self.autoencoder_dir:
            try:
                from worldsim.models.train_autoencoder import load_autoencoder
                self._decoder = load_autoencoder(self.autoencoder_dir, device=device)
            except (FileNotFoundError, ValueError) as e:
                log.warning("samples show latents, not frames: cannot load the autoencoder (%s)", e)
                self.autoencoder_dir = None
        return self._decoder


def prompt_frames(config: DynamicsConfig) -> int:
    """Half the window, in whole chunks: the rest of each sample clip is generated."""
    return max(1, config.context_frames // 2 // config.chunk_frames) * config.chunk_frames


def rollout(model, latents, actions, prompt: int):
    """Sample frames prompt.. of the clips (B, T, ...) from their first `prompt` frames and the clip's actions
    (data order). Returns (B, T', C, h, w) with T' the whole chunks that fit."""
    model = unwrap(model)
    K = model.config.chunk_frames
    sampler = Sampler(model, batch_size=latents.shape[0], seed=0)
    sampler.reset(latents[:, :prompt], actions[:, :prompt - 1])
    # New frame i is produced by a_{i-1}, taken while seeing frame i - 1.
    chunks = [sampler.step(actions[:, i - 1:i - 1 + K]) for i in range(prompt, latents.shape[1] - K + 1, K)]
    return torch.cat(chunks, dim=1)


def strip(frames) -> np.ndarray:
    """uint8 (T, H, W, 3) -> one image (H, T * W, 3)."""
    return torch.cat(list(frames), dim=1).numpy()


def latent_source(cache_dir, config: DynamicsConfig) -> str | None:
    """Check the cache's latents fit the model; return the autoencoder run that made them (or None)."""
    info = Cache(cache_dir).latent_info
    if info is None:
        from worldsim.data.cache import MissingLatentsError
        raise MissingLatentsError(cache_dir)
    want = [config.latent_channels, config.latent_height, config.latent_width]
    if list(info["shape"]) != want:
        raise ValueError(f"{cache_dir}: latents are (C, h, w) = {tuple(info['shape'])} but the dynamics config "
                         f"expects {tuple(want)} (latent_channels, latent_height, latent_width)")
    return info.get("checkpoint")


def sample_batch(dataset: ClipDataset) -> dict:
    picks = np.linspace(0, len(dataset) - 1, min(SAMPLE_CLIPS, len(dataset))).round().astype(int)
    return default_collate([dataset[int(i)] for i in picks])


def train_dynamics(model_config: DynamicsConfig, train_config: TrainConfig, **train_kwargs) -> dict:
    """Train on the latents of the cache train_config.data; checkpoints, curves and samples in out_dir."""
    from worldsim.models import adversarial
    autoencoder_dir = latent_source(train_config.data, model_config)
    adversarially = adversarial.enabled(model_config)
    frames = adversarial.clip_frames(model_config) if adversarially else model_config.context_frames
    dataset = ClipDataset(train_config.data, frames_per_clip=frames, latents=True)
    if len(dataset) == 0:
        what = "the adversarial prompt + adversarial_frames" if adversarially else "context_frames"
        raise ValueError(f"{train_config.data}: no episode is {frames} frames ({what}) long")
    if model_config.latent_guard > 0 and model_config.guard_range is None:  # the data's range, saved with the run
        guard_range = frame_mean_range(Cache(train_config.data).latents, model_config.latent_guard)
        model_config = dataclasses.replace(model_config, guard_range=guard_range)
    if model_config.spread_guard > 0 and model_config.spread_floor is None:
        floor = frame_spread_floor(Cache(train_config.data).latents, model_config.spread_guard)
        model_config = dataclasses.replace(model_config, spread_floor=floor)
    task = DynamicsTask(model_config, autoencoder_dir)
    if adversarially:
        task = adversarial.AdversarialTask(task)
    return train(task, dataset, train_config, sample_batch=sample_batch(dataset), **train_kwargs)
