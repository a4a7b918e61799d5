"""Checkpoints without pickle: safetensors weights with a JSON config beside them, and resumable training state.

A model checkpoint in DIR is `NAME.safetensors` (the state dict) and `NAME.json`:
    {"format": 1, "class": "package.module.Model", "config_class": "...Config", "config": {...}, ...extra}
Training state (for resume) is `training_state.safetensors` (optimizer tensors as "optimizer/<param>/<name>",
torch RNG states as uint8 tensors "rng/<rank>/torch_cpu", "rng/<rank>/cuda<i>") and `training_state.json`
(step, optimizer hyperparameters and scalar state, numpy and python RNG states, data position, extra).
Every file is written to a temporary name and renamed into place, so a kill never leaves half a file.
"""
import dataclasses
import json
import os
import random
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from worldsim.training.wrap import unwrap

FORMAT = 1
STATE = "training_state"
MAX_LISTED = 8  # mismatched tensors named in one error message


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model or cannot be read; the message names the file and tensors."""


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, data: dict) -> None:
    """Write JSON atomically."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    _replace(tmp, path)


def write_tensors(path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically (CPU, contiguous; tensors that share memory are copied apart)."""
    path = Path(path)
    seen, out = set(), {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        out[key] = t.clone() if storage in seen else t
        seen.add(storage)
    tmp = _temporary(path)
    try:
        safetensors.torch.save_file(out, str(tmp), metadata={"format": str(FORMAT)})
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_tensors(path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; a missing file or an unreadable one is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file, it may be truncated or of another "
                              f"format ({type(e).__name__}: {e})") from None


def read_json(path) -> dict:
    """A JSON object from a checkpoint directory, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON, it may be truncated ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of format {FORMAT} (found {data.get('format')!r})"
                              if isinstance(data, dict) else f"{path}: not a JSON object")
    return data


def _qualname(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------------------------- model weights

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def save_checkpoint(directory, model: nn.Module, config, *, name: str = "model", extra: dict | None = None,
                    storage_dtype: str | None = None) -> Path:
    """Write DIR/NAME.safetensors (the unwrapped model's state dict) and DIR/NAME.json (class, config, extra).

    storage_dtype ("float16" | "bfloat16") stores fp32 tensors at half size (for shipped models); the JSON
    records it and load_weights casts back to the model's dtype."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")
    if storage_dtype is not None and storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)} or None, got {storage_dtype!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = unwrap(model)
    state = module.state_dict()
    if storage_dtype is not None:
        state = {k: v.to(STORAGE_DTYPES[storage_dtype]) if v.dtype == torch.float32 else v for k, v in state.items()}
    write_tensors(directory / f"{name}.safetensors", state)
    meta = {"format": FORMAT, "class": _qualname(module), "config_class": _qualname(config),
            "config": dataclasses.asdict(config), **({"storage_dtype": storage_dtype} if storage_dtype else {}),
            **(extra or {})}
    write_json(directory / f"{name}.json", meta)
    return directory / f"{name}.safetensors"


def load_config(directory, name, config_cls):
    """The config dataclass saved beside DIR/NAME.safetensors; unknown or missing fields are an error naming them."""
    path = Path(directory) / f"{name}.json"
    meta = read_json(path)
    values = meta.get("config")
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: has no 'config' object")
    return config_from_dict(values, config_cls, source=str(path))


def config_from_dict(values: dict, config_cls, source: str = "config"):
    """Build `config_cls` from a dict that must name exactly its fields (lists become tuples where typed so).
    Fields the class lists in LATER_FIELDS were added after checkpoints were first saved, with defaults that do
    what those checkpoints did: a dict without them gets the defaults."""
    known = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    later = set(getattr(config_cls, "LATER_FIELDS", ()))
    unknown, missing = sorted(set(values) - set(known)), sorted(set(known) - set(values) - later)
    if unknown or missing:
        parts = ([f"unknown fields {unknown}"] if unknown else []) + ([f"missing fields {missing}"] if missing else [])
        raise CheckpointError(f"{source}: does not fit {config_cls.__name__}: {'; '.join(parts)}")
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for key, value in values.items():
        hint = hints.get(key)
        is_tuple = typing.get_origin(hint) is tuple or hint is tuple or isinstance(known[key].default, tuple)
        kwargs[key] = tuple(value) if is_tuple and isinstance(value, list) else value
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid {config_cls.__name__}: {e}") from None


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected, wrongly shaped or wrongly typed tensor."""
    problems = []
    for key in sorted(set(expected) - set(found))[:MAX_LISTED]:
        problems.append(f"missing tensor {key!r} (model has {tuple(expected[key].shape)})")
    for key in sorted(set(found) - set(expected))[:MAX_LISTED]:
        problems.append(f"unexpected tensor {key!r} {tuple(found[key].shape)} (not in the model)")
    for key in sorted(set(found) & set(expected)):
        want, got = expected[key], found[key]
        if want.shape != got.shape:
            problems.append(f"tensor {key!r}: checkpoint has shape {tuple(got.shape)}, model has {tuple(want.shape)}")
        elif want.dtype != got.dtype:
            problems.append(f"tensor {key!r}: checkpoint has dtype {got.dtype}, model has {want.dtype}")
    if problems:
        more = "" if len(problems) <= MAX_LISTED else f"; and {len(problems) - MAX_LISTED} more"
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(problems[:MAX_LISTED]) + more)


def storage_dtype_of(path) -> torch.dtype | None:
    """The storage dtype recorded in the JSON beside a safetensors file (None: tensors stored as the model's)."""
    meta_path = Path(path).with_suffix(".json")
    if not meta_path.exists():
        return None
    name = read_json(meta_path).get("storage_dtype")
    if name is not None and name not in STORAGE_DTYPES:
        raise CheckpointError(f"{meta_path}: unknown storage_dtype {name!r} (known: {sorted(STORAGE_DTYPES)})")
    return STORAGE_DTYPES.get(name)


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a safetensors state dict into `model` strictly (every tensor present, same shapes and dtypes).

    A checkpoint saved with a storage_dtype holds its fp32 tensors in that dtype: exactly those are expected
    so, and cast back on loading."""
    module = unwrap(model)
    tensors = read_tensors(path)
    expected = module.state_dict()
    stored = storage_dtype_of(path)
    if stored is not None:
        expected = {k: v.to(stored) if v.dtype == torch.float32 else v for k, v in expected.items()}
    check_state_dict(expected, tensors, str(path))
    module.load_state_dict(tensors, strict=True)
    return model


def load_model(directory, build, config_cls, *, name: str = "model", device="cpu") -> nn.Module:
    """Build a model from the config saved in DIR (`build(config)`) and load its weights strictly."""
    config = load_config(directory, name, config_cls)
    model = build(config)
    load_weights(model, Path(directory) / f"{name}.safetensors")
    return model.to(device)


# ---------------------------------------------------------------------------------------------- random state

def capture_rng_state() -> dict:
    """This process's torch (CPU and CUDA), numpy (global) and python random states."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state = {**numpy_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                            for k, v in numpy_state["state"].items()}}
    version, internal, gauss = random.getstate()
    return {"torch_cpu": torch.get_rng_state(),
            "torch_cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],  # current device
            "numpy": numpy_state, "python": [version, list(internal), gauss]}


def restore_rng_state(state: dict) -> None:
    """Restore what capture_rng_state returned."""
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[0])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {k: (np.array(v, dtype=np.uint32) if k == "key" else v)
                            for k, v in numpy_state["state"].items()}
    np.random.set_state(numpy_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global generator and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------- training state

@dataclass
class TrainingState:
    """What load_training_state returns besides the optimizer it fills."""

    step: int
    rng: list[dict]                     # one capture_rng_state() per rank
    data: dict                          # the data position (sampler geometry and step)
    extra: dict = field(default_factory=dict)


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def save_training_state(directory, *, step: int, optimizer: torch.optim.Optimizer, rng: list[dict],
                        data: dict, extra: dict | None = None) -> None:
    """Write DIR/training_state.{safetensors,json}: optimizer state, step, per-rank RNG states, data position."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = _jsonable(value)
    rng_json = []
    for rank, r in enumerate(rng):
        tensors[f"rng/{rank}/torch_cpu"] = r["torch_cpu"]
        for i, t in enumerate(r["torch_cuda"]):
            tensors[f"rng/{rank}/cuda{i}"] = t
        rng_json.append({"numpy": r["numpy"], "python": r["python"], "cuda_devices": len(r["torch_cuda"])})
    write_tensors(directory / f"{STATE}.safetensors", tensors)
    write_json(directory / f"{STATE}.json", {
        "format": FORMAT, "step": int(step), "data": data, "rng": rng_json, "extra": extra or {},
        "optimizer": {"class": _qualname(optimizer), "param_groups": _jsonable(state["param_groups"]),
                      "scalars": scalars}})


def load_training_state(directory, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Fill `optimizer` from DIR/training_state.* and return the step, RNG states and data position."""
    directory = Path(directory)
    meta = read_json(directory / f"{STATE}.json")
    tensors = read_tensors(directory / f"{STATE}.safetensors")
    saved = meta["optimizer"]
    if saved["class"] != _qualname(optimizer):
        raise CheckpointError(f"{directory / STATE}.json: optimizer {saved['class']}, "
                              f"this run uses {_qualname(optimizer)}")
    current = optimizer.state_dict()["param_groups"]
    groups = []
    for i, (group, now) in enumerate(zip(saved["param_groups"], current)):
        if len(group["params"]) != len(now["params"]):
            raise CheckpointError(f"{directory / STATE}.json: parameter group {i} has {len(group['params'])} "
                                  f"parameters, the model gives {len(now['params'])}")
        groups.append({k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in group.items()})
    if len(groups) != len(current):
        raise CheckpointError(f"{directory / STATE}.json: {len(saved['param_groups'])} parameter groups, "
                              f"this run has {len(current)}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in saved["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    for pid, entries in state.items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != params[pid].shape:
                raise CheckpointError(f"{directory / STATE}.safetensors: optimizer/{pid}/{name} has shape "
                                      f"{tuple(value.shape)}, parameter {pid} has {tuple(params[pid].shape)}")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    rng = []
    for rank, r in enumerate(meta["rng"]):
        rng.append({"torch_cpu": tensors[f"rng/{rank}/torch_cpu"],
                    "torch_cuda": [tensors[f"rng/{rank}/cuda{i}"] for i in range(r["cuda_devices"])],
                    "numpy": r["numpy"], "python": r["python"]})
    return TrainingState(step=int(meta["step"]), rng=rng, data=meta["data"], extra=meta.get("extra", {}))
