"""The shared training package: checkpoints without pickle, the loop, exact resume, DDP on gloo, curves, samples."""
import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from worldsim.training import (
    CheckpointError, ResumableBatchSampler, TrainConfig, call_module, load_config, load_model, load_weights, save_checkpoint,
    seed_everything, train, unwrap)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class TinyConfig:
    inputs: int = 8
    hidden: int = 16
    widths: tuple = (1, 2)


class TinyNet(nn.Module):
    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.inputs, config.hidden), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(config.hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def predict(self, x, scale: float = 1.0):
        return self(x * scale)


class Regression(Dataset):
    """y = x·w + small noise, fixed by a seed."""

    def __init__(self, n: int = 128, inputs: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, inputs, generator=g)
        self.y = self.x @ torch.randn(inputs, generator=g) + 0.01 * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class TinyTask:
    """Uses the torch (dropout, input noise), numpy and python RNGs, so that resume must restore all of them."""

    def __init__(self, seed: int = 0):
        seed_everything(seed)
        self.config = TinyConfig()
        self.model = TinyNet(self.config)

    def loss(self, model, batch):
        x = batch["x"] + 0.01 * torch.randn_like(batch["x"]) * float(np.random.rand() + np.random.rand())
        error = (call_module(model, TinyNet.predict, x, scale=1.0) - batch["y"]) ** 2
        loss = error.mean()
        return loss, {"max_error": error.max().detach(), "core": unwrap(model).config.hidden}

    def save_samples(self, model, batch, path):
        prediction = model(batch["x"])
        pixels = ((prediction - batch["y"]).abs().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        Image.fromarray(np.repeat(pixels[None], 4, axis=0)).save(path)


def config_for(tmp_path, **overrides) -> TrainConfig:
    values = dict(out_dir=str(tmp_path / "run"), steps=12, batch_size=8, lr=1e-2, warmup_steps=2, ckpt_every=4,
                  log_every=2, sample_every=6, seed=3, ema=0.9)
    return TrainConfig(**{**values, **overrides})


def weights(path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------- config

def test_train_config_matches_the_yaml_and_checks_fields():
    import yaml
    section = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())["train"]
    assert list(section) == list(TrainConfig.__dataclass_fields__)
    TrainConfig(lr=1)  # an int where a float is expected is accepted
    for field, value in [("steps", 0), ("batch_size", -1), ("lr", 0.0), ("ema", 1.0), ("precision", "fp16"),
                         ("grad_clip", -1.0), ("log_every", 0), ("resume", 1), ("steps", 2.5)]:
        with pytest.raises((ValueError, TypeError), match=f"train.{field}"):
            TrainConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    seed_everything(0)
    model = TinyNet(TinyConfig(hidden=12)).eval()
    save_checkpoint(tmp_path, model, model.config, extra={"step": 7})
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == 1 and meta["step"] == 7 and meta["class"].endswith("TinyNet")
    assert load_config(tmp_path, "model", TinyConfig) == TinyConfig(hidden=12)  # the tuple comes back a tuple
    loaded = load_model(tmp_path, TinyNet, TinyConfig).eval()
    x = torch.randn(5, 8)
    assert torch.equal(model(x), loaded(x))
    assert b"pickle" not in (tmp_path / "model.safetensors").read_bytes()[:200]


def test_mismatched_checkpoints_name_the_tensor(tmp_path):
    model = TinyNet(TinyConfig())
    save_checkpoint(tmp_path, model, model.config)
    with pytest.raises(CheckpointError, match=r"net\.0\.weight.*\(16, 8\).*\(20, 8\)"):
        load_weights(TinyNet(TinyConfig(hidden=20)), tmp_path / "model.safetensors")
    extra_layer = nn.Sequential(*model.net, nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"missing tensor '4\.weight'"):
        load_weights(extra_layer, tmp_path / "model.safetensors")
    from safetensors.torch import save_file
    state = {f"net.{k}": v for k, v in model.net.state_dict().items()}
    save_file({**state, "net.9.bias": torch.zeros(3)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'net\.9\.bias'"):
        load_weights(model, tmp_path / "extra.safetensors")
    save_file({**state, "net.0.bias": state["net.0.bias"].double()}, str(tmp_path / "dtype.safetensors"))
    with pytest.raises(CheckpointError, match=r"net\.0\.bias.*float64.*float32"):
        load_weights(model, tmp_path / "dtype.safetensors")


def test_config_with_unknown_or_missing_fields_is_an_error(tmp_path):
    model = TinyNet(TinyConfig())
    save_checkpoint(tmp_path, model, model.config)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["config"]["depth"] = 3
    del meta["config"]["hidden"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"unknown fields \['depth'\]; missing fields \['hidden'\]"):
        load_config(tmp_path, "model", TinyConfig)


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    model = TinyNet(TinyConfig())
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_weights(model, tmp_path / "nowhere.safetensors")
    path = save_checkpoint(tmp_path, model, model.config)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_weights(model, path)
    path.write_bytes(b"\x80\x04 not safetensors at all")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights(model, path)


# ---------------------------------------------------------------------------------------------- the loop

def test_sampler_order_is_fixed_by_seed_and_sharded_across_ranks():
    one = ResumableBatchSampler(20, 4, seed=1)
    assert one.batches_per_epoch == 5
    epoch0 = [i for s in range(5) for i in one.batch(s)]
    assert sorted(epoch0) == list(range(20)) and one.batch(5) != one.batch(0)
    late = iter(ResumableBatchSampler(20, 4, seed=1, start_step=7))
    assert next(late) == one.batch(7)
    ranks = [ResumableBatchSampler(20, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].batch(0) + ranks[1].batch(0) == one.batch(0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, 4, seed=0, world_size=2)


def test_training_lowers_the_loss_and_writes_curves_samples_and_checkpoints(tmp_path):
    config = config_for(tmp_path, steps=60, ckpt_every=20, sample_every=30, log_every=10, lr=3e-2, ema=0.0)
    result = train(TinyTask(), Regression(), config, progress=False)
    run = Path(config.out_dir)
    rows = (run / "curves.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "loss" in rows[0] and "max_error" in rows[0]
    losses = [float(r.split(",")[rows[0].split(",").index("loss")]) for r in rows[1:]]
    assert len(losses) == 6 and losses[-1] < 0.3 * losses[0]
    assert result["step"] == 60 and result["loss"] == losses[-1]
    assert Image.open(run / "curves.png").size[0] > 100
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000030.png", "step_000060.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000040", "step_00000060"]
    assert not list(run.glob("ema.*"))
    loaded = load_model(run, TinyNet, TinyConfig)
    assert_same_weights(loaded.state_dict(), weights(run / "checkpoints" / "step_00000060" / "model.safetensors"))


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    dataset = Regression()
    whole = config_for(tmp_path / "whole")
    train(TinyTask(seed=0), dataset, whole, progress=False)
    cut = config_for(tmp_path / "cut")
    # killed after step 6: the last checkpoint is step 4, the curve rows of steps 5–6 are left behind
    assert train(TinyTask(seed=0), dataset, cut, progress=False, stop_after=6)["stopped"]
    assert (Path(cut.out_dir) / "curves.csv").read_text().splitlines()[-1].startswith("6,")
    seed_everything(123)  # the resumed process is in some other random state
    result = train(TinyTask(seed=99), dataset, cut, progress=False)
    assert result["step"] == 12
    for name in ("model", "ema"):
        assert_same_weights(weights(Path(whole.out_dir) / f"{name}.safetensors"),
                            weights(Path(cut.out_dir) / f"{name}.safetensors"))
    steps = [int(r.split(",")[0]) for r in (Path(cut.out_dir) / "curves.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8, 10, 12]
    whole_curve = (Path(whole.out_dir) / "curves.csv").read_text().splitlines()
    cut_curve = (Path(cut.out_dir) / "curves.csv").read_text().splitlines()
    loss_col = whole_curve[0].split(",").index("loss")
    assert [r.split(",")[loss_col] for r in whole_curve] == [r.split(",")[loss_col] for r in cut_curve]
    # a finished run resumes to nothing; resume=false starts over
    assert train(TinyTask(), dataset, cut, progress=False)["step"] == 12
    fresh = config_for(tmp_path / "cut", resume=False, steps=4)
    train(TinyTask(seed=0), dataset, fresh, progress=False)
    assert sorted(p.name for p in (Path(cut.out_dir) / "checkpoints").iterdir()) == ["step_00000004"]


def test_a_spent_time_budget_checkpoints_and_a_rerun_finishes_as_one_run(tmp_path):
    dataset = Regression()
    whole = config_for(tmp_path / "whole")
    train(TinyTask(seed=0), dataset, whole, progress=False)
    timed = config_for(tmp_path / "timed", max_minutes=1e-9)  # spent at the first log step (2), off the ckpt grid
    result = train(TinyTask(seed=0), dataset, timed, progress=False)
    assert result["stopped"] and result["step"] == 2
    assert sorted(p.name for p in (Path(timed.out_dir) / "checkpoints").iterdir()) == ["step_00000002"]
    result = train(TinyTask(seed=5), dataset, config_for(tmp_path / "timed"), progress=False)
    assert not result["stopped"] and result["step"] == 12
    for name in ("model", "ema"):
        assert_same_weights(weights(Path(whole.out_dir) / f"{name}.safetensors"),
                            weights(Path(timed.out_dir) / f"{name}.safetensors"))
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=-1.0)


def test_init_from_starts_a_fresh_run_from_saved_weights_strictly(tmp_path, caplog):
    dataset = Regression()
    source = config_for(tmp_path / "source", steps=4)
    train(TinyTask(seed=0), dataset, source, progress=False)
    source_ema = weights(Path(source.out_dir) / "ema.safetensors")
    # one step at lr ~0 from the source's EMA weights stays on them; the run counts its own steps from 0
    tuned = config_for(tmp_path / "tuned", steps=1, warmup_steps=1_000_000, init_from=source.out_dir, ema=0.0)
    result = train(TinyTask(seed=7), dataset, tuned, progress=False)
    assert result["step"] == 1
    tuned_weights = weights(Path(tuned.out_dir) / "model.safetensors")
    for key, value in source_ema.items():
        assert torch.allclose(tuned_weights[key], value, atol=1e-7), key
    assert not torch.equal(source_ema["net.0.weight"], weights(Path(source.out_dir) / "model.safetensors")["net.0.weight"])
    # a config field that changes no shape is allowed, and named in a warning; unchanged fields are not named
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worldsim.training.trainer"):
        train(TinyTask(seed=0), dataset, config_for(tmp_path / "same", steps=1, init_from=source.out_dir),
              progress=False)
    assert "differ" not in caplog.text
    other = TinyTask(seed=0)
    other.config = TinyConfig(widths=(3,))
    with caplog.at_level(logging.WARNING, logger="worldsim.training.trainer"):
        train(other, dataset, config_for(tmp_path / "other", steps=1, init_from=source.out_dir), progress=False)
    assert "widths" in caplog.text
    # weights of another shape name the tensor; a directory without weights says what it wants
    wider = TinyTask(seed=0)
    wider.config = TinyConfig(hidden=32)
    wider.model = TinyNet(wider.config)
    with pytest.raises(CheckpointError, match="net.0.weight"):
        train(wider, dataset, config_for(tmp_path / "wider", init_from=source.out_dir), progress=False)
    with pytest.raises(FileNotFoundError, match="train.init_from"):
        train(TinyTask(), dataset, config_for(tmp_path / "none", init_from=str(tmp_path / "nowhere")), progress=False)
    assert TrainConfig(init_from=None).init_from == ""
    with pytest.raises(ValueError, match="init_grow.*cannot grow"):
        train(TinyTask(), dataset, config_for(tmp_path / "grow", init_from=source.out_dir, init_grow=True),
              progress=False)


def test_trains_on_a_clip_dataset(tmp_path):
    from worldsim.data.cache import CacheWriter, ClipDataset
    rng = np.random.default_rng(0)
    with CacheWriter(tmp_path / "cache", width=8, height=8) as writer:
        for _ in range(2):
            writer.add_episode(rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), np.zeros((12, 25), np.float32))
    clips = ClipDataset(tmp_path / "cache", frames_per_clip=2, stride=1)

    class NextFrame:
        def __init__(self):
            self.config = TinyConfig()
            self.model = nn.Conv2d(3, 3, 3, padding=1)

        def loss(self, model, batch):
            frames = batch["frames"].permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # (B, T, 3, H, W)
            return ((model(frames[:, 0]) - frames[:, 1]) ** 2).mean(), {}

        def save_samples(self, model, batch, path):
            Image.fromarray(batch["frames"][0, 0].cpu().numpy()).save(path)

    config = TrainConfig(out_dir=str(tmp_path / "run"), steps=4, batch_size=4, ckpt_every=2, sample_every=2,
                         num_workers=1)
    assert train(NextFrame(), clips, config, progress=False)["step"] == 4
    assert (tmp_path / "run" / "samples" / "step_000004.png").exists()


# ---------------------------------------------------------------------------------------------- DDP

def run_ddp_worker(out_dir: str, phase: str) -> None:
    """Body of the torchrun script, one phase per launch (a process group is created once per process, as in
    real use): "full" trains 8 steps; "cut" is killed after step 6; "resume" continues the cut run."""
    import os

    import torch.distributed as dist
    rank = int(os.environ["RANK"])
    config = TrainConfig(out_dir=out_dir, steps=8, batch_size=4, lr=1e-2, warmup_steps=2, ckpt_every=4,
                         log_every=2, sample_every=4, seed=5, ema=0.5)
    if phase == "cut":
        assert train(TinyTask(seed=rank), Regression(), config, progress=False, stop_after=6)["stopped"]
        return
    task = TinyTask(seed=rank if phase == "full" else rank + 7)  # different weights: rank 0's or the checkpoint's win
    train(task, Regression(), config, progress=False)
    assert not dist.is_initialized()
    from safetensors.torch import save_file
    save_file(task.model.state_dict(), str(Path(out_dir) / f"rank{rank}.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_ends_with_identical_weights_and_resumes_exactly(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nsys.path.insert(0, {str(REPO)!r})\n"
                      "from test_training import run_ddp_worker\nrun_ddp_worker(sys.argv[1], sys.argv[2])\n")
    out, resumed = tmp_path / "run", tmp_path / "run-cut"
    for run_dir, phase in ((out, "full"), (resumed, "cut"), (resumed, "resume")):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                   f"--master_port={free_port()}", str(script), str(run_dir), phase]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{phase}: {done.stderr[-3000:]}"
    assert_same_weights(weights(out / "rank0.safetensors"), weights(out / "rank1.safetensors"))
    assert_same_weights(weights(out / "rank0.safetensors"), weights(out / "model.safetensors"))
    state = json.loads((out / "checkpoints" / "step_00000008" / "training_state.json").read_text())
    assert len(state["rng"]) == 2 and state["data"]["world_size"] == 2
    assert (out / "curves.csv").exists() and (out / "samples" / "step_000008.png").exists()
    # the cut run was killed after step 6 and resumed from its step-4 checkpoint
    for rank in range(2):
        assert_same_weights(weights(out / "rank0.safetensors"), weights(resumed / f"rank{rank}.safetensors"))
    assert_same_weights(weights(out / "ema.safetensors"), weights(resumed / "ema.safetensors"))
