"""TrainConfig: the training settings shared by every model (the `train:` section of configs/config.yaml)."""
import math
from dataclasses import dataclass, fields

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging settings; every field is checked at construction."""

    out_dir: str = "runs/train"     # checkpoints, curves and samples; a rerun with resume=True continues here
    data: str = "data/cache"        # the training cache the model's training reads
    steps: int = 2000               # optimiser steps in all (the cosine schedule ends here)
    batch_size: int = 16            # per process: the global batch is batch_size × processes
    lr: float = 3e-4
    weight_decay: float = 0.0       # AdamW decay of matrices (ndim ≥ 2); biases and norms never decay
    warmup_steps: int = 100         # linear warm-up from 0 to lr
    grad_clip: float = 1.0          # max global gradient norm (0: no clipping)
    ckpt_every: int = 500           # steps between checkpoints (0: only at the end)
    log_every: int = 10             # steps between curve rows and progress-bar updates
    sample_every: int = 500         # steps between sample images (0: never)
    seed: int = 0                   # data order, and the random state of a fresh run
    num_workers: int = 0            # DataLoader worker processes
    resume: bool = True             # continue from the last checkpoint in out_dir if there is one
    compile: bool = False           # torch.compile the model for training
    ema: float = 0.0                # EMA decay of the weights (0: off), e.g. 0.999
    precision: str = "auto"         # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    max_minutes: float = 0.0        # wall-clock budget of this call: checkpoint and stop when spent (0: none);
                                    # a rerun resumes, so a long run can be trained in timed pieces
    init_from: str = ""             # a fresh run starts from these weights: a directory with model.safetensors
                                    # (its ema.safetensors when there is one), e.g. a run or a shipped world's
                                    # dynamics/; "" or null: random initialisation. Ignored when resuming
    init_grow: bool = False         # with init_from: the checkpoint may be shallower than the model (every other
                                    # weight of the same shape); the layers it lacks start as identities (models
                                    # that can grow: the task has grow_from)

    def __post_init__(self):
        if self.init_from is None:
            self.init_from = ""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (float, "float") and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, value := float(value))
            expected = {"str": str, "int": int, "float": float, "bool": bool}.get(f.type, f.type)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise TypeError(f"train.{f.name} must be {expected.__name__}, got {value!r}")
        _check(self.out_dir != "", "out_dir", "must not be empty", self.out_dir)
        _check(self.steps >= 1, "steps", "must be ≥ 1", self.steps)
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1", self.batch_size)
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a finite number > 0", self.lr)
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be ≥ 0",
               self.weight_decay)
        _check(self.warmup_steps >= 0, "warmup_steps", "must be ≥ 0", self.warmup_steps)
        _check(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "must be ≥ 0 (0: off)",
               self.grad_clip)
        _check(self.ckpt_every >= 0, "ckpt_every", "must be ≥ 0 (0: only at the end)", self.ckpt_every)
        _check(self.log_every >= 1, "log_every", "must be ≥ 1", self.log_every)
        _check(self.sample_every >= 0, "sample_every", "must be ≥ 0 (0: never)", self.sample_every)
        _check(self.num_workers >= 0, "num_workers", "must be ≥ 0", self.num_workers)
        _check(0.0 <= self.ema < 1.0, "ema", "must be in [0, 1) (0: off)", self.ema)
        _check(math.isfinite(self.max_minutes) and self.max_minutes >= 0, "max_minutes", "must be ≥ 0 (0: no limit)",
               self.max_minutes)
        _check(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}", self.precision)


def _check(ok: bool, name: str, rule: str, value) -> None:
    if not ok:
        raise ValueError(f"train.{name} {rule}, got {value!r}")
