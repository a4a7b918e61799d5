"""HostReads: which ops of a computation read tensor values on the host (a device sync on a GPU), or copy host
memory to the device (inside a CUDA graph's capture, an error; at every replay, stale)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique", "_unique2",
              "unique_dim", "unique_consecutive", "repeat_interleave"}


class HostReads(TorchDispatchMode):
    """Records the ops that read tensor values on the host, or whose output shape depends on them (on a GPU each
    is a device sync, and inside a CUDA graph's capture an error), and the copies of host tensors to a device.
    (A tensor made from Python values straight on the device, torch.tensor(values, device=...), dispatches no op
    and is not seen.)"""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        boolean_index = name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1])
        if name in HOST_READS or boolean_index:
            self.seen.append(name)
        elif _host_to_device(name, args, kwargs or {}):
            self.seen.append(f"{name} host to device")
        return func(*args, **(kwargs or {}))


def _host_to_device(name: str, args, kwargs) -> bool:
    if name == "_to_copy" and torch.is_tensor(args[0]) and args[0].device.type == "cpu":
        device = kwargs.get("device")
        return device is not None and torch.device(device).type != "cpu"
    if name == "copy_" and all(torch.is_tensor(a) for a in args[:2]):
        return args[0].device.type != "cpu" and args[1].device.type == "cpu"
    return False
