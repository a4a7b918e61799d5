"""The training loop every model shares: AdamW, warm-up + cosine, clipping, bf16, EMA, DDP, checkpoints, resume.

A model's training supplies a TrainTask (its model, its config, a loss and a way to draw samples) and a
Dataset; `train` does the rest. Layout of `config.out_dir`:
    model.safetensors, model.json        the latest weights and the model's config (load_model reads them)
    ema.safetensors, ema.json            the EMA weights, when config.ema > 0
    checkpoints/step_XXXXXXXX/           the latest complete checkpoints: the files above + training_state.*
    curves.csv, curves.png               loss, lr, grad_norm, the task's metrics, steps/s every log_every steps
    samples/step_XXXXXX.png              task.save_samples every sample_every steps and at the end
Resume is exact: data order depends on (seed, epoch) only, the sampler restarts at the saved step, and the
optimizer and every RNG (per rank) are restored, so a killed and resumed run ends with the same weights as an
uninterrupted one (bit for bit on the CPU in fp32 with the same process setup).
"""
import copy
import json
import logging
import math
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from worldsim.training.checkpoint import (
    capture_rng_state, load_training_state, load_weights, read_json, restore_rng_state, save_checkpoint,
    save_training_state, seed_everything)
from worldsim.training.config import TrainConfig
from worldsim.training.curves import CurveLog
from worldsim.training.distributed import Distributed, setup_distributed
from worldsim.training.sampler import ResumableBatchSampler
from worldsim.training.wrap import ForwardHost, unwrap

log = logging.getLogger(__name__)

MIN_LR_FRACTION = 0.1      # the cosine schedule ends at this fraction of lr
KEEP_CHECKPOINTS = 2       # step directories kept: the latest, and one before it in case the disk lies
SAMPLE_BATCH_ITEMS = 8     # dataset items in the default sample batch
CHECKPOINTS = "checkpoints"
RESUME_FREE = {"out_dir", "resume", "num_workers", "log_every", "sample_every", "ckpt_every", "max_minutes"}  # no effect on the weights


class TrainTask(Protocol):
    """What a model's training supplies to `train`."""

    model: nn.Module
    config: Any  # the model's config dataclass, saved beside the weights

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and metrics (floats or 0-d tensors; tensors avoid a GPU sync every step)."""

    def save_samples(self, model: nn.Module, batch: dict, path: Path) -> None:
        """Write an image of what the model makes of `batch` (e.g. a PNG grid)."""

    # Optional: a task that trains more than the model (a critic with its own optimizer) has
    # save_state(directory) and load_state(directory); each checkpoint then holds that state too, and resume
    # restores it.


def lr_at(step: int, config: TrainConfig, schedule: str = "cosine") -> float:
    """Learning rate for the update after `step` completed steps: linear warm-up, then cosine or constant."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if schedule == "constant":
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    low = config.lr * MIN_LR_FRACTION
    return low + 0.5 * (config.lr - low) * (1.0 + math.cos(math.pi * progress))


def to_device(batch, device: torch.device):
    """Move every tensor in a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def autocast_context(config: TrainConfig, device: torch.device):
    """bf16 autocast for precision=bf16, or auto on CUDA; nothing (fp32) otherwise."""
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings (ndim ≥ 2) only, never on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.95))


class EMA:
    """An fp32 copy of the model whose weights follow the trained ones: ema ← decay·ema + (1 − decay)·w."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema, params = list(self.module.parameters()), [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema, params, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


@contextmanager
def isolated_rng(seed: int):
    """Run a block with every RNG seeded by `seed`, then put the training RNG states back as they were."""
    state = capture_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        restore_rng_state(state)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint directory in out_dir (complete ones are renamed into place last)."""
    steps = sorted((out_dir / CHECKPOINTS).glob("step_*[0-9]"))
    return steps[-1] if steps else None


class _Run:
    """One call of `train`: the wrapped model, optimizer, data and outputs, and the step they are at."""

    def __init__(self, task: TrainTask, dataset: Dataset, config: TrainConfig, dist: Distributed,
                 sample_batch: dict | None, schedule: str, progress: bool):
        self.task, self.config, self.dist, self.schedule = task, config, dist, schedule
        self.out_dir = Path(config.out_dir)
        self.model = task.model.to(dist.device)
        self.optimizer = make_optimizer(self.model, config)
        self.ema = EMA(self.model, config.ema) if config.ema > 0 else None
        self.step = self._resume_or_start()
        self.sampler = ResumableBatchSampler(len(dataset), config.batch_size, config.seed, rank=dist.rank,
                                             world_size=dist.world_size, start_step=self.step)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=config.num_workers,
                                 pin_memory=dist.device.type == "cuda",
                                 generator=torch.Generator().manual_seed(config.seed))
        self.sample_batch = sample_batch if sample_batch is not None else default_collate(
            [dataset[i] for i in range(min(SAMPLE_BATCH_ITEMS, len(dataset)))])
        self.forward_model = self._wrap(self.model)
        self.curves = CurveLog(self.out_dir / "curves.csv", self.step) if dist.is_main else None
        self.bar = tqdm(total=config.steps, initial=self.step, disable=not (progress and dist.is_main),
                        dynamic_ncols=True, desc=self.out_dir.name)
        self.sums: dict[str, torch.Tensor | float] = {}
        self.window_start, self.window_steps, self.last_row = time.perf_counter(), 0, {}

    def _wrap(self, model: nn.Module) -> nn.Module:
        model = ForwardHost(model)
        if self.config.compile:
            model = torch.compile(model)
        if self.dist.enabled:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    def _resume_or_start(self) -> int:
        """Load the latest checkpoint if resuming (returns its step); otherwise seed a fresh run (step 0)."""
        found = None
        if self.dist.is_main:
            for partial in (self.out_dir / CHECKPOINTS).glob("*.partial"):
                shutil.rmtree(partial, ignore_errors=True)
            found = latest_checkpoint(self.out_dir)
            if found is not None and not self.config.resume:
                log.warning("train.resume=false: removing the previous checkpoints in %s", self.out_dir / CHECKPOINTS)
                shutil.rmtree(self.out_dir / CHECKPOINTS)
                found = None
        self.dist.barrier()
        found = self.dist.broadcast(None if found is None else str(found))
        if found is None:
            if self.config.init_from:
                self._init_from(Path(self.config.init_from))
            seed_everything(self.config.seed * 1000 + self.dist.rank)  # ranks draw different noise
            return 0
        found = Path(found)
        load_weights(self.model, found / "model.safetensors")
        if self.ema is not None:
            ema_path = found / "ema.safetensors"
            load_weights(self.ema.module, ema_path if ema_path.exists() else found / "model.safetensors")
        state = load_training_state(found, self.optimizer)
        if hasattr(self.task, "load_state"):  # what the task trains beside the model (a critic, say)
            self.task.load_state(found)
        self._warn_changes(state)
        if len(state.rng) == self.dist.world_size:
            restore_rng_state(state.rng[self.dist.rank])
        else:
            log.warning("%s was written by %d processes, this run has %d: random states are reseeded, the run will "
                        "not repeat an uninterrupted one exactly", found, len(state.rng), self.dist.world_size)
            seed_everything(self.config.seed * 1000 + self.dist.rank + state.step)
        if self.dist.is_main:
            tqdm.write(f"resuming from {found} (step {state.step})", file=sys.stderr)
        return state.step

    def _init_from(self, directory: Path) -> None:
        """Start a fresh run from the weights in `directory` (its EMA weights when it has them), loaded strictly."""
        name = "ema" if (directory / "ema.safetensors").exists() else "model"
        path = directory / f"{name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"train.init_from={directory}: no model.safetensors there (a run's out_dir or "
                                    "a shipped world's dynamics/ directory)")
        if self.config.init_grow:
            if not hasattr(self.task, "grow_from"):
                raise ValueError(f"train.init_grow: the {type(self.task).__name__}'s model cannot grow from a "
                                 "shallower checkpoint")
            self.task.grow_from(unwrap(self.model), directory, name)
        else:
            load_weights(self.model, path)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
        saved = read_json(directory / f"{name}.json").get("config", {}) if (directory / f"{name}.json").exists() else {}
        now = json.loads(json.dumps(asdict(self.task.config))) if is_dataclass(self.task.config) else {}  # as saved
        changed = {k: (saved[k], v) for k, v in now.items() if k in saved and saved[k] != v}
        if self.dist.is_main:
            tqdm.write(f"starting from the weights of {path}", file=sys.stderr)
            if changed:
                log.warning("train.init_from: config fields differ from %s's (saved, now): %s", path.name, changed)

    def _warn_changes(self, state) -> None:
        """Say which settings differ from the checkpoint's run: the result then differs from an uninterrupted one."""
        if not self.dist.is_main:
            return
        now = {"batch_size": self.config.batch_size, "world_size": self.dist.world_size, "seed": self.config.seed}
        changed = {k: (state.data.get(k), v) for k, v in now.items() if state.data.get(k) != v}
        saved_config = state.extra.get("train_config", {})
        changed.update({k: (saved_config[k], v) for k, v in asdict(self.config).items()
                        if k in saved_config and saved_config[k] != v and k not in RESUME_FREE})
        if changed:
            log.warning("resuming with settings changed since the checkpoint (saved, now): %s", changed)

    def train_step(self, batch: dict) -> None:
        self.model.train()
        lr = lr_at(self.step, self.config, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast_context(self.config, self.dist.device):
            loss, metrics = self.task.loss(self.forward_model, to_device(batch, self.dist.device))
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(),
                                             self.config.grad_clip if self.config.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self._accumulate({"loss": loss.detach(), **metrics, "grad_norm": grad_norm.detach()})
        self.last_lr = lr

    def _accumulate(self, values: dict) -> None:
        for k, v in values.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.window_steps += 1

    def log_row(self) -> None:
        """Average the window's values over steps and ranks; rank 0 writes them to the curves and the bar."""
        names = sorted(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=self.dist.device)
                              for k in names]) / self.window_steps
        values = self.dist.mean(values).tolist()
        elapsed = time.perf_counter() - self.window_start
        row = {"step": self.step, "lr": self.last_lr, **dict(zip(names, values)),
               "steps_per_s": self.window_steps / max(elapsed, 1e-9)}
        self.sums, self.window_steps, self.window_start, self.last_row = {}, 0, time.perf_counter(), row
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"training diverged: loss is {row['loss']} at step {self.step} "
                                     f"(lower train.lr or raise train.warmup_steps)")
        if self.dist.is_main:
            self.curves.append(row)
            self.bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}", refresh=False)

    def save_samples(self) -> None:
        if not self.dist.is_main:
            return
        model = self.ema.module if self.ema is not None else self.model
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        try:
            with isolated_rng(self.config.seed), torch.no_grad(), \
                    autocast_context(self.config, self.dist.device):
                self.task.save_samples(model, to_device(self.sample_batch, self.dist.device), path)
        finally:
            model.train(was_training)

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N (weights, EMA, training state) atomically, then publish its weights in out_dir."""
        rng = self.dist.gather(capture_rng_state())
        final = self.out_dir / CHECKPOINTS / f"step_{self.step:08d}"
        self.dist.barrier()
        if self.dist.is_main:
            self._write_checkpoint(final, rng)
        self.dist.barrier()
        return final

    def _write_checkpoint(self, final: Path, rng: list[dict]) -> None:
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        extra = {"step": self.step, "train_config": asdict(self.config)}
        save_checkpoint(partial, self.model, self.task.config, name="model", extra=extra)
        if self.ema is not None:
            save_checkpoint(partial, self.ema.module, self.task.config, name="ema", extra={**extra, "ema": self.ema.decay})
        save_training_state(partial, step=self.step, optimizer=self.optimizer, rng=rng,
                            data=self.sampler.position(self.step), extra={"train_config": asdict(self.config)})
        if hasattr(self.task, "save_state"):
            self.task.save_state(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for name in ("model", "ema") if self.ema is not None else ("model",):
            for suffix in (".safetensors", ".json"):
                _publish(final / f"{name}{suffix}", self.out_dir / f"{name}{suffix}")
        for old in sorted((self.out_dir / CHECKPOINTS).glob("step_*[0-9]"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        self.curves.plot(self.out_dir / "curves.png")

    def out_of_time(self, started: float) -> bool:
        """Whether train.max_minutes is spent; every process takes rank 0's answer so that all stop together."""
        if not self.config.max_minutes:
            return False
        spent = torch.tensor([float(time.perf_counter() - started > 60.0 * self.config.max_minutes)])
        if self.dist.enabled:
            spent = spent.to(self.dist.device)
            torch.distributed.broadcast(spent, src=0)
        return bool(spent.item())

    def run(self, stop_after: int | None) -> dict:
        config = self.config
        batches, started = iter(self.loader), time.perf_counter()
        while self.step < config.steps:
            if stop_after is not None and self.step >= stop_after:
                return self.summary(stopped=True)
            self.train_step(next(batches))
            self.bar.update(1)
            done = self.step == config.steps
            timed_out = not done and self.step % config.log_every == 0 and self.out_of_time(started)
            if self.step % config.log_every == 0 or done:
                self.log_row()
            if (config.sample_every and self.step % config.sample_every == 0) or done or timed_out:
                self.save_samples()
            if (config.ckpt_every and self.step % config.ckpt_every == 0) or done or timed_out:
                self.save_checkpoint()
            if timed_out:
                log.info("train.max_minutes=%g spent at step %d of %d: checkpoint saved; rerun to resume",
                         config.max_minutes, self.step, config.steps)
                return self.summary(stopped=True)
        return self.summary(stopped=False)

    def summary(self, stopped: bool) -> dict:
        self.bar.close()
        latest = latest_checkpoint(self.out_dir)
        return {"step": self.step, "stopped": stopped, "out_dir": str(self.out_dir),
                "checkpoint": None if latest is None else str(latest),
                "loss": self.last_row.get("loss"), "metrics": dict(self.last_row)}


def train(task: TrainTask, dataset: Dataset, config: TrainConfig, *, sample_batch: dict | None = None,
          device: str | torch.device | None = None, stop_after: int | None = None, schedule: str = "cosine",
          progress: bool = True) -> dict:
    """Train `task.model` on `dataset` for config.steps steps (resuming from out_dir); returns the last log row.

    Under torchrun each process trains its shard and rank 0 writes. `device` defaults to cuda:LOCAL_RANK when
    CUDA is available. `stop_after` stops right after that many steps without writing anything more, as a
    kill would (for tests). `schedule`: "cosine" (to MIN_LR_FRACTION·lr at config.steps) or "constant".
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be cosine or constant, got {schedule!r}")
    dist = setup_distributed(device)
    try:
        result = _Run(task, dataset, config, dist, sample_batch, schedule, progress).run(stop_after)
        dist.barrier()  # every rank done with the group before one tears it down (gloo can abort otherwise)
        return result
    finally:
        dist.close()


def _publish(src: Path, dst: Path) -> None:
    """Put `src` at `dst` atomically: a hard link where the filesystem allows, else a copy."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)
