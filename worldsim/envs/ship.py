"""Ship a trained world (`mode=ship`): a dynamics run and an autoencoder run, copied at half size into a world
directory (assets/world by default) together with the record of how they were made and how they scored.

    python run_world.py mode=ship ship.dynamics=runs/dyn ship.autoencoder=runs/ae ship.eval=eval/model

The world directory holds dynamics/model.{safetensors,json} and autoencoder/model.{safetensors,json} (the EMA
weights where the run has them, stored as float16 and cast back on loading), eval/ (the evaluation's report.json
and sheet.png when given) and provenance.json: the source runs, their model and training configs, steps, the
training data's statistics, the evaluation summary and free-form notes (which machine trained what). The
directory is replaced atomically; it is checked by loading it back and comparing its outputs with the runs'.
"""
import dataclasses
import datetime
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from worldsim.models.dynamics import DynamicsConfig
from worldsim.training.checkpoint import STORAGE_DTYPES, read_json, save_checkpoint, write_json

RECIPE = [
    "python run_world.py mode=generate generate.fmt=cache generate.out_dir=data/train generate.episodes=N seed=0",
    "python run_world.py mode=train_autoencoder autoencoder=cpu train.data=data/train/cache train.out_dir=runs/ae ...",
    "python run_world.py mode=encode encode.checkpoint=runs/ae encode.cache=data/train/cache",
    "python run_world.py mode=train_dynamics dynamics=tiny train.data=data/train/cache train.out_dir=runs/dyn ...",
    "python run_world.py mode=eval eval.checkpoint=runs/dyn eval.autoencoder=runs/ae eval.idm=runs/idm",
    "python run_world.py mode=ship ship.dynamics=runs/dyn ship.autoencoder=runs/ae ship.eval=eval/model",
]


@dataclass
class ShipConfig:
    dynamics: str = "runs/dyn"          # a dynamics run directory (mode=train_dynamics)
    autoencoder: str = "runs/ae"        # the autoencoder run whose latents the dynamics was trained on
    out: str = "assets/world"           # the world directory written (replaced)
    eval: str | None = None             # an eval out_dir (report.json, sheet.png) to keep beside the world
    data_stats: str | None = None       # the training data's stats.json (default: beside the runs' train.data)
    dtype: str = "float16"              # storage dtype: float16 | bfloat16
    notes: str = ""                     # free text kept in provenance.json (machines, hours, commands)
    sample_steps: int | None = None     # the shipped default Euler steps (None: the eval's, else the run's)
    context_noise: float | None = None  # the shipped context noise level (None: the eval's, else the run's)
    sample_shift: float | None = None   # the shipped shift of the steps' levels (None: the eval's, else the run's)
    view_memory: bool | None = None     # whether the shipped sampler keeps its panorama (None: the eval's, else the run's)
    sample_start: float | None = None   # the shipped level the steps start from (None: the eval's, else the run's)
    idle_start: float | None = None     # the shipped start of frames whose action does nothing (None: the eval's, ...)
    idle_turn: float | None = None      # the shipped most camera move of an idle action (None: the eval's, ...)
    keep_view: bool | None = None       # frames holding no button keep their known view (None: the eval's, ...)
    commit_last_step: bool | None = None  # frames enter the caches from their last Euler step (None: the eval's, ...)

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"ship.dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}")
        for name in ("dynamics", "autoencoder"):
            if not Path(getattr(self, name)).is_dir():
                raise FileNotFoundError(f"ship.{name}={getattr(self, name)}: no such run directory")
        if self.eval is not None and not (Path(self.eval) / "report.json").exists():
            raise FileNotFoundError(f"ship.eval={self.eval}: no report.json in it (run mode=eval first)")
        if self.sample_steps is not None and (not isinstance(self.sample_steps, int) or self.sample_steps < 1):
            raise ValueError(f"ship.sample_steps must be a whole number >= 1 or null, got {self.sample_steps!r}")
        if self.context_noise is not None and not 0 <= self.context_noise < 1:
            raise ValueError(f"ship.context_noise must be in [0, 1) or null, got {self.context_noise!r}")
        if self.sample_shift is not None and not self.sample_shift > 0:
            raise ValueError(f"ship.sample_shift must be > 0 or null, got {self.sample_shift!r}")
        if self.sample_start is not None and not 0 < self.sample_start <= 1:
            raise ValueError(f"ship.sample_start must be in (0, 1] or null, got {self.sample_start!r}")
        if self.idle_start is not None and not 0 <= self.idle_start < 1:
            raise ValueError(f"ship.idle_start must be in [0, 1) or null, got {self.idle_start!r}")
        if self.idle_turn is not None and not self.idle_turn >= 0:
            raise ValueError(f"ship.idle_turn must be >= 0 degrees per tick or null, got {self.idle_turn!r}")


def _run_record(run: Path, name: str) -> dict:
    """What a run's checkpoint JSON says about how it was made (config, step, training config)."""
    meta = read_json(run / f"{name}.json")
    return {"source": str(run), "weights": name, "class": meta.get("class"), "config": meta.get("config"),
            "step": meta.get("step"), "train_config": meta.get("train_config"), "ema": meta.get("ema")}


def eval_summary(report: dict) -> dict:
    """The bar's numbers from an eval report.json: PSNR per horizon of the model beside copy-last-frame and the
    autoencoder, whether it beats copy-last at each (and the paired difference with its standard error and
    verdict, where the report has it), action following (generated / real accuracy per group),
    the consistency tests' end-frame PSNR and the long rollout's fraction of frames out of the real range."""
    worlds = report.get("fidelity", {}).get("worlds", {})
    psnr = {name: {h: round(v["mean"], 2) for h, v in w.get("psnr", {}).items()} for name, w in worlds.items()}
    model, floor = psnr.get("candidate", {}), psnr.get("copy_last", {})
    relative = report.get("action_following", {}).get("relative", {})
    versus = report.get("fidelity", {}).get("candidate_minus_copy_last", {})
    return {
        "psnr": psnr,
        "beats_copy_last": {h: model[h] > floor[h] for h in model if h in floor},
        "candidate_minus_copy_last": {h: {k: v[k] for k in ("mean", "standard_error", "verdict")}
                                      for h, v in versus.get("psnr", {}).items()},
        "action_following_relative": {g: round(v["accuracy"], 3) for g, v in relative.items()},
        "consistency_end_psnr": {t: round(v["candidate_vs_engine"]["psnr"], 2)
                                 for t, v in report.get("consistency", {}).items() if "candidate_vs_engine" in v},
        "stability": {k: report.get("stability", {}).get(k)
                      for k in ("frames", "seeds", "collapse", "fraction_out_of_range")},
        "fps": report.get("timing", {}).get("fps", {}).get("candidate"),
    }


# the dynamics config's sampling defaults, set when shipping
SAMPLING = ("sample_steps", "context_noise", "sample_shift", "view_memory", "sample_start", "idle_start", "idle_turn",
            "keep_view", "commit_last_step")
DYNAMICS_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DynamicsConfig)}


def shipped_sampling(config: ShipConfig, run: dict, report: dict | None) -> dict:
    """The sampling defaults the world ships with (Euler steps, context noise, level shift): those its
    evaluation ran with, so that play gets what was measured; ship.X may only agree with them. Without an eval:
    ship.X, else the run's (`run`: the run's dynamics config)."""
    out = {}
    for key in SAMPLING:
        wanted, own = getattr(config, key), run.get(key, DYNAMICS_DEFAULTS[key])  # runs saved before a field: its default
        evaluated = None
        if report is not None:
            evaluated = (report.get("config") or {}).get(key)
            evaluated = own if evaluated is None else evaluated
        if wanted is not None and evaluated is not None and wanted != evaluated:
            raise ValueError(f"ship.{key}={wanted} but the eval in {config.eval} ran with {key}={evaluated}: "
                             f"evaluate with eval.{key}={wanted} first")
        out[key] = next(v for v in (wanted, evaluated, own) if v is not None)
    return out


def _data_stats(config: ShipConfig, records: dict) -> dict | None:
    candidates = [Path(config.data_stats)] if config.data_stats else []
    for record in records.values():
        data = (record.get("train_config") or {}).get("data")
        if data:
            candidates.append(Path(data).parent / "stats.json")
    for path in candidates:
        if path.exists():
            stats = json.loads(path.read_text())
            keep = ("episodes", "frames_made", "frames_per_episode", "width", "height", "seed", "workers", "device")
            return {"source": str(path), **{k: stats[k] for k in keep if k in stats}}
    if config.data_stats:
        raise FileNotFoundError(f"ship.data_stats={config.data_stats}: no such file")
    return None


@torch.no_grad()
def _same_outputs(a_dynamics, a_autoencoder, b_dynamics, b_autoencoder, dtype: str, tolerance: float = 0.05) -> float:
    """Largest difference between two worlds' decoded frames and one dynamics pass on fixed inputs (the shipped
    half-size weights must behave as the run's)."""
    from worldsim.models.dynamics import ACTION_DIM
    g = torch.Generator().manual_seed(0)
    c = a_dynamics.config
    latents = torch.randn(1, 2, c.latent_channels, c.latent_height, c.latent_width, generator=g)
    actions, levels = torch.zeros(1, 2, ACTION_DIM), torch.full((1, 2), 0.5)
    worst = 0.0
    for model in ("dynamics", "decode"):
        if model == "dynamics":
            x, y = a_dynamics(latents, actions, levels), b_dynamics(latents, actions, levels)
        else:
            x, y = a_autoencoder.decode(latents[0]), b_autoencoder.decode(latents[0])
        worst = max(worst, float((x - y).abs().max() / (x.abs().max() + 1e-6)))
    if worst > tolerance:
        raise RuntimeError(f"the shipped world's outputs differ from the runs' by {worst:.3f} (relative): "
                           f"ship.dtype={dtype} may be too coarse for these weights")
    return worst


def ship_world(config: ShipConfig) -> Path:
    from worldsim.envs.world_model import _run_name, load_world
    dynamics_run, autoencoder_run = Path(config.dynamics), Path(config.autoencoder)
    dynamics, autoencoder = load_world(dynamics_run, autoencoder_run)
    names = {"dynamics": _run_name(dynamics_run), "autoencoder": _run_name(autoencoder_run)}
    records = {"dynamics": _run_record(dynamics_run, names["dynamics"]),
               "autoencoder": _run_record(autoencoder_run, names["autoencoder"])}

    report = json.loads((Path(config.eval) / "report.json").read_text()) if config.eval is not None else None
    sampling = shipped_sampling(config, dataclasses.asdict(dynamics.config), report)
    dynamics.config = dataclasses.replace(dynamics.config, **sampling)
    records["dynamics"]["config"] = {**records["dynamics"]["config"], **sampling}

    out = Path(config.out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part, model in (("dynamics", dynamics), ("autoencoder", autoencoder)):
        save_checkpoint(tmp / part, model, model.config, storage_dtype=config.dtype,
                        extra={"source": records[part]["source"], "step": records[part]["step"]})
    shipped = load_world(tmp)
    difference = _same_outputs(dynamics, autoencoder, *shipped, dtype=config.dtype)
    if config.eval is not None:
        (tmp / "eval").mkdir()
        for name in ("report.json", "sheet.png"):
            if (Path(config.eval) / name).exists():
                shutil.copyfile(Path(config.eval) / name, tmp / "eval" / name)
    provenance = {
        "shipped": datetime.datetime.now().isoformat(timespec="seconds"),
        "storage_dtype": config.dtype, "max_relative_output_difference": difference,
        "bytes": {part: (tmp / part / "model.safetensors").stat().st_size for part in names},
        "runs": records, "data": _data_stats(config, records),
        "eval": None if report is None else {"source": str(config.eval), "report": "eval/report.json",
                                             "summary": eval_summary(report)},
        "recipe": RECIPE, "notes": config.notes,
    }
    write_json(tmp / "provenance.json", provenance)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    total = sum(provenance["bytes"].values())
    print(f"shipped {out}: dynamics step {records['dynamics']['step']}, autoencoder step "
          f"{records['autoencoder']['step']}, {sampling['sample_steps']} Euler steps, {total / 2**20:.1f} MiB as {config.dtype} "
          f"(outputs within {difference:.1e} of the runs')")
    return out


def ship_config_from(values: dict) -> ShipConfig:
    known = {f.name for f in dataclasses.fields(ShipConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown ship settings {unknown}; known: {sorted(known)}")
    return ShipConfig(**values)

