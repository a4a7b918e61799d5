"""The wrappers around a trained model (DDP, torch.compile, the forward host) and how to see through them."""
from torch import nn


class ForwardHost(nn.Module):
    """Holds the model so that call_module can run any function of it through DDP's and compile's forward."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, _call=None, **kwargs):
        if _call is not None:
            return _call(self.module, *args, **kwargs)
        return self.module(*args, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel, torch.compile and ForwardHost wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, ForwardHost)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _hosted(model: nn.Module) -> bool:
    while not isinstance(model, ForwardHost):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return False
    return True


def call_module(model: nn.Module, fn, *args, **kwargs):
    """fn(unwrapped model, *args, **kwargs), run inside the wrappers' forward so that DDP syncs its gradients.

    For a loss that needs more than `model(...)`, e.g. `call_module(model, Autoencoder.reconstruct, frames)`.
    Under torch.compile pass a function defined once (a method or a module-level function), not a new lambda
    every step, or each step recompiles. One call_module or model(...) per training step, as DDP expects.
    """
    if _hosted(model):
        return model(*args, _call=fn, **kwargs)
    return fn(unwrap(model), *args, **kwargs)
