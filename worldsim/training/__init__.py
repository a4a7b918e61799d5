"""Shared training: TrainConfig, the generic `train` loop (DDP, bf16, EMA, exact resume) and pickle-free checkpoints."""
from worldsim.training.checkpoint import (
    CheckpointError, TrainingState, capture_rng_state, load_config, load_model, load_training_state, load_weights,
    restore_rng_state, save_checkpoint, save_training_state, seed_everything)
from worldsim.training.config import TrainConfig
from worldsim.training.distributed import Distributed, setup_distributed
from worldsim.training.sampler import ResumableBatchSampler
from worldsim.training.trainer import TrainTask, autocast_context, lr_at, to_device, train
from worldsim.training.wrap import call_module, unwrap

__all__ = ["TrainConfig", "TrainTask", "train", "CheckpointError", "TrainingState", "save_checkpoint", "load_config",
           "load_weights", "load_model", "save_training_state", "load_training_state", "capture_rng_state",
           "restore_rng_state", "seed_everything", "unwrap", "call_module", "Distributed", "setup_distributed",
           "ResumableBatchSampler", "autocast_context", "lr_at", "to_device"]
