"""Training the frame autoencoder on a training cache, and writing its latents back into caches.

    python run_world.py mode=train_autoencoder autoencoder=cpu train.data=data/cache train.out_dir=runs/ae
    python run_world.py mode=encode encode.checkpoint=runs/ae encode.cache=data/cache
    python run_world.py mode=tune_decoder tune_decoder.autoencoder=runs/ae train.data=data/cache train.out_dir=runs/ae_dec

Training is the shared loop (worldsim.training.train) on single frames; afterwards the per-channel latent
statistics are measured on training frames and saved into the published weights (model and EMA), so that
`encode` gives unit-scale latents.

`tune_decoder` trains only the decoder of a trained autoencoder, on whole frames and the latents its encoder
already wrote into the cache. The encoder and the normalisation are copied unchanged, so every latent made
with the original (training caches, dynamics models trained on them) stays valid for the tuned one. With
`tune_decoder.dec_blocks` the tuned decoder has another number of residual blocks a level, starting from the
original's first ones: the shipped decoder is the two-block one made one-block that way (half the decoding work).
"""
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from tqdm import tqdm

from worldsim.data.cache import Cache, ClipDataset, MissingLatentsError, write_latents
from worldsim.models.autoencoder import (Autoencoder, AutoencoderConfig, frames_to_float, reconstruction_loss,
                                         to_uint8, vae_loss)
from worldsim.training import TrainConfig, train
from worldsim.training.checkpoint import load_model, read_json, save_checkpoint
from worldsim.training.wrap import call_module

log = logging.getLogger(__name__)

SAMPLE_FRAMES = 8       # frames in the sample grid, spread over the dataset
STATS_FRAMES = 2048     # training frames whose latents set the normalisation
STATS_SEED = 0


class AutoencoderTask:
    """The TrainTask of the autoencoder: batches are single-frame clips {"frames": uint8 (B, 1, H, W, 3), ...}."""

    def __init__(self, config: AutoencoderConfig):
        self.config = config
        self.model = Autoencoder(config)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        x = frames_to_float(batch["frames"][:, 0], self.config)  # (B, 3, H, W)
        if self.config.train_crop:
            x = random_crops(x, self.config.train_crop, self.config.downsample)
        recon, mean, logvar = model(x)  # through the (DDP) wrapper, so that gradients are averaged
        return vae_loss(recon, x, mean, logvar, self.config)

    @torch.no_grad()
    def save_samples(self, model, batch: dict, path: Path) -> None:
        frames = batch["frames"][:, 0]
        save_grid(frames, to_uint8(model.decode(model.encode(frames))), path)


def random_crops(x: torch.Tensor, size: int, align: int) -> torch.Tensor:
    """One random size×size crop per image of (B, 3, H, W), its corner on the latent grid (multiples of align)."""
    B, _, H, W = x.shape
    rows = torch.randint(0, (H - size) // align + 1, (B,)) * align
    cols = torch.randint(0, (W - size) // align + 1, (B,)) * align
    return torch.stack([x[i, :, r:r + size, c:c + size] for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))])


def save_grid(top: torch.Tensor, bottom: torch.Tensor, path) -> None:
    """PNG of uint8 frames (B, H, W, 3): `top` in the first row (inputs), `bottom` below (reconstructions)."""
    rows = [torch.cat(list(t.cpu()), dim=1) for t in (top, bottom)]  # (H, B·W, 3) each
    Image.fromarray(torch.cat(rows, dim=0).numpy()).save(path)


def sample_batch(dataset: ClipDataset) -> dict:
    """SAMPLE_FRAMES frames spread evenly over the dataset (so over episodes), for the sample grids."""
    picks = np.linspace(0, len(dataset) - 1, min(SAMPLE_FRAMES, len(dataset))).round().astype(int)
    return default_collate([dataset[int(i)] for i in picks])


def train_autoencoder(model_config: AutoencoderConfig, train_config: TrainConfig, **train_kwargs) -> dict:
    """Train on train_config.data (a cache of model_config's resolution), then save the latent normalisation.
    train_kwargs go to `train` (progress, stop_after, device)."""
    dataset = ClipDataset(train_config.data, frames_per_clip=1,
                          expect_resolution=(model_config.height, model_config.width))
    task = AutoencoderTask(model_config)
    summary = train(task, dataset, train_config, sample_batch=sample_batch(dataset), **train_kwargs)
    if int(os.environ.get("RANK", "0")) == 0 and not summary.get("stopped"):
        fit_and_save_latent_stats(train_config.out_dir, train_config.data, seed=train_config.seed)
    return summary


def raw_latent_means(model: Autoencoder, frames, batch_size: int = 64) -> torch.Tensor:
    """Posterior means (N, C, h, w) of uint8 frames (N, H, W, 3), before normalisation."""
    device = model.latent_std.device
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch_size):
            chunk = torch.from_numpy(np.asarray(frames[i:i + batch_size])).to(device)
            out.append(model.encode_raw(frames_to_float(chunk, model.config))[1].float().cpu())
    return torch.cat(out)


def fit_and_save_latent_stats(run_dir, cache_dir, seed: int = STATS_SEED, frames: int = STATS_FRAMES) -> None:
    """Measure per-channel latent mean and std on `frames` training frames; rewrite the run's model and EMA."""
    cache = Cache(cache_dir)
    picks = np.sort(np.random.default_rng(seed).choice(cache.num_frames, min(frames, cache.num_frames), replace=False))

    def fit(name: str, model: Autoencoder, extra: dict) -> None:
        model.fit_latent_stats(raw_latent_means(model, cache.frames[picks]))
        extra["latent_stats"] = {"frames": len(picks), "cache": str(cache_dir)}
        log.info("%s: latent std per channel %s", name, [round(v, 3) for v in model.latent_std.tolist()])

    rewrite_published(run_dir, fit)


def rewrite_published(run_dir, change) -> None:
    """Load the run's published model and EMA, let change(name, model, extra) edit them, and save them again."""
    run_dir = Path(run_dir)
    for name in ("model", "ema"):
        if not (run_dir / f"{name}.safetensors").exists():
            continue
        meta = read_json(run_dir / f"{name}.json")
        model = load_model(run_dir, Autoencoder, AutoencoderConfig, name=name).eval()
        extra = {k: v for k, v in meta.items() if k not in ("format", "class", "config_class", "config")}
        change(name, model, extra)
        save_checkpoint(run_dir, model, model.config, name=name, extra=extra)


def load_autoencoder(checkpoint_dir, device="cpu", prefer_ema: bool = True) -> Autoencoder:
    """The trained autoencoder in a run directory: its EMA weights when there are some, else the model's."""
    checkpoint_dir = Path(checkpoint_dir)
    name = "ema" if prefer_ema and (checkpoint_dir / "ema.safetensors").exists() else "model"
    if not (checkpoint_dir / f"{name}.safetensors").exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no model.safetensors; train one with "
                                f"python run_world.py mode=train_autoencoder train.out_dir={checkpoint_dir}")
    return load_model(checkpoint_dir, Autoencoder, AutoencoderConfig, name=name, device=device).eval()


def encode_cache(checkpoint_dir, cache_dir, batch_size: int = 64, device: str | None = None) -> Path:
    """Write normalised latents (float16, (N, C, h, w)) of every frame of the cache into it (mode=encode)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_autoencoder(checkpoint_dir, device)
    c = model.config
    cache = Cache(cache_dir, expect_resolution=(c.height, c.width))

    def batches():
        with torch.inference_mode():
            for i in tqdm(range(0, cache.num_frames, batch_size), desc=f"encode {cache.directory.name}",
                          unit="batch", dynamic_ncols=True):
                frames = torch.from_numpy(np.array(cache.frames[i:i + batch_size])).to(device)
                yield model.encode(frames).float().cpu().numpy()  # (b, C, h, w)

    info = {"checkpoint": str(checkpoint_dir), "mean": model.latent_mean.tolist(), "std": model.latent_std.tolist(),
            "normalised": True}
    path = write_latents(cache.directory, batches(), c.latent_shape, info)
    print(f"latents {c.latent_shape} of {cache.num_frames} frames written to {path}")
    return path


@dataclass
class DecoderTuneConfig:
    """mode=tune_decoder (the `tune_decoder:` section); the data, steps and out_dir come from `train:`."""

    autoencoder: str = "runs/ae"      # the trained run whose decoder is tuned (its EMA weights when it has them)
    l2_weight: float | None = None    # the loss's MSE weight (None: the run's own); PSNR is an MSE measure
    grad_weight: float | None = None  # the image-gradient L1 weight (None: the run's own)
    dec_blocks: int | None = None     # residual blocks per decoder level (None: the run's). Fewer make a cheaper
                                      # decoder that starts from the run's first blocks of each level

    def __post_init__(self):
        if not self.autoencoder:
            raise ValueError("tune_decoder.autoencoder must name a trained autoencoder run directory")
        if self.dec_blocks is not None and (isinstance(self.dec_blocks, bool) or not isinstance(self.dec_blocks, int)
                                            or self.dec_blocks < 0):
            raise ValueError(f"tune_decoder.dec_blocks must be an integer ≥ 0 or null, got {self.dec_blocks!r}")
        for name in ("l2_weight", "grad_weight"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"tune_decoder.{name} must be a number ≥ 0 or null, got {value!r}")


def with_decoder_blocks(model: Autoencoder, config: AutoencoderConfig) -> Autoencoder:
    """A copy of `model` whose decoder has config.dec_blocks residual blocks a level. Everything the two share
    is copied: the encoder, the normalisation and the decoder's layers but the blocks past the new count (fewer
    blocks: the first ones of each level are kept; more: the new ones start as identity, as ResBlocks do)."""
    new = Autoencoder(config).to(next(model.parameters()).device)
    old = model.state_dict()
    state = new.state_dict()
    kept = {name: old[name] for name in state if name in old}
    for name, tensor in kept.items():
        if tensor.shape != state[name].shape:
            raise ValueError(f"decoder layer {name}: {tuple(tensor.shape)} in the source, {tuple(state[name].shape)} "
                             f"in the new decoder (only dec_blocks may change)")
    state.update(kept)
    new.load_state_dict(state)
    return new.eval()


class DecoderTask:
    """The TrainTask of decoder tuning: batches carry frames and their cached latents; only the decoder learns."""

    def __init__(self, model: Autoencoder, config: AutoencoderConfig):
        self.config, self.model = config, model
        model.config = config
        model.encoder.requires_grad_(False)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        x = frames_to_float(batch["frames"][:, 0], self.config)  # (B, 3, H, W)
        recon = call_module(model, Autoencoder.decode_unclamped, batch["latents"][:, 0])
        return reconstruction_loss(recon, x, self.config)

    @torch.no_grad()
    def save_samples(self, model, batch: dict, path: Path) -> None:
        save_grid(batch["frames"][:, 0], to_uint8(model.decode(batch["latents"][:, 0])), path)


def check_latents_match(cache: Cache, model: Autoencoder, source) -> None:
    """The cache's latents must be this autoencoder's: same normalisation as the one it records."""
    info = cache.latent_info
    if info is None:
        raise MissingLatentsError(cache.directory)
    same = (tuple(info["shape"]) == model.config.latent_shape and
            np.allclose(info.get("mean", []), model.latent_mean.tolist(), atol=1e-5) and
            np.allclose(info.get("std", []), model.latent_std.tolist(), atol=1e-5))
    if not same:
        raise ValueError(f"{cache.directory}: its latents were written by {info.get('checkpoint')}, not by {source} "
                         f"(the shapes or normalisation differ): run python run_world.py mode=encode "
                         f"encode.checkpoint={source} encode.cache={cache.directory}")


def tune_decoder(tune: DecoderTuneConfig, train_config: TrainConfig) -> dict:
    """Train the decoder of tune.autoencoder on train_config.data's frames and latents into train_config.out_dir."""
    source, out = Path(tune.autoencoder), Path(train_config.out_dir)
    if out.resolve() == source.resolve():
        raise ValueError(f"train.out_dir {out} is the autoencoder being tuned: give the tuned run its own directory")
    model = load_autoencoder(source)
    changes = {k: float(v) for k, v in (("l2_weight", tune.l2_weight), ("grad_weight", tune.grad_weight))
               if v is not None}
    config = replace(model.config, **changes)
    if tune.dec_blocks is not None and tune.dec_blocks != config.dec_blocks:
        config = replace(config, dec_blocks=tune.dec_blocks)
        model = with_decoder_blocks(model, config)
    cache = Cache(train_config.data, expect_resolution=(config.height, config.width))
    check_latents_match(cache, model, source)
    dataset = ClipDataset(cache, frames_per_clip=1, latents=True)
    summary = train(DecoderTask(model, config), dataset, train_config, sample_batch=sample_batch(dataset))
    if int(os.environ.get("RANK", "0")) == 0 and not summary.get("stopped"):
        record_tuned_from(out, source)
    return summary


def record_tuned_from(run_dir: Path, source: Path) -> None:
    """Add where the encoder and normalisation came from to the tuned run's published model and EMA."""
    origin = read_json(source / "model.json")

    def record(name: str, model: Autoencoder, extra: dict) -> None:
        extra["decoder_tuned_from"] = {"autoencoder": str(source), "step": origin.get("step")}
        extra["latent_stats"] = origin.get("latent_stats")

    rewrite_published(run_dir, record)
