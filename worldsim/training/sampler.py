"""A resumable, shardable batch sampler: the order of every epoch is fixed by (seed, epoch)."""
from functools import lru_cache

import numpy as np
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of dataset indices, starting at any step, each rank taking its share of every global batch.

    Epoch e is the permutation drawn from (seed, e). It is cut into global batches of batch_size × world_size
    indices (the remainder is dropped, so every rank takes the same number of steps); rank r takes the r-th
    slice of each. Step s is therefore batch s % batches_per_epoch of epoch s // batches_per_epoch, and
    resuming at step s only needs s: nothing is loaded to skip the consumed batches.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 start_step: int = 0):
        global_batch = batch_size * world_size
        if num_items < global_batch:
            raise ValueError(f"the dataset has {num_items} items, fewer than one global batch of {global_batch} "
                             f"(batch_size {batch_size} × {world_size} processes)")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.batches_per_epoch = num_items // global_batch

    @lru_cache(maxsize=2)
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of all indices for `epoch`, the same on every rank."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def batch(self, step: int) -> list[int]:
        """This rank's indices for global step `step`."""
        epoch, b = divmod(step, self.batches_per_epoch)
        start = (b * self.world_size + self.rank) * self.batch_size
        return self.epoch_order(epoch)[start:start + self.batch_size].tolist()

    def position(self, step: int) -> dict:
        """The data position after `step` steps, as saved in a checkpoint."""
        epoch, b = divmod(step, self.batches_per_epoch)
        return {"step": step, "epoch": epoch, "batch_in_epoch": b, "seed": self.seed, "num_items": self.num_items,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1
