"""HostReads: which ops of a computation read tensor values on the host (a device sync on a GPU)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique", "_unique2",
              "unique_dim", "unique_consecutive", "repeat_interleave"}


class HostReads(TorchDispatchMode):
    """Records the ops that read tensor values on the host, or whose output shape depends on them: on a GPU each
    is a device sync, and inside a CUDA graph's capture an error."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        boolean_index = name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1])
        if name in HOST_READS or boolean_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))
