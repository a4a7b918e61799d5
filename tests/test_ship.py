"""Shipping a world: half-size weights that load strictly and behave as the runs', with their provenance."""
import json

import pytest
import torch
from safetensors import safe_open

from worldsim.envs.ship import ShipConfig, ship_world
from worldsim.envs.world_model import load_world, random_world
from worldsim.models.autoencoder import AutoencoderConfig
from worldsim.models.dynamics import DynamicsConfig
from worldsim.training.checkpoint import CheckpointError


def tiny_world(directory):
    dynamics = DynamicsConfig(latent_channels=8, latent_height=4, latent_width=4, n_layer=2, n_head=2, n_embd=64,
                              context_frames=4, sample_steps=2)
    autoencoder = AutoencoderConfig(height=32, width=32, latent_channels=8, enc_channels=(16, 32, 32),
                                    dec_channels=(32, 32, 16))
    return random_world(directory, dynamics, autoencoder)


def ship(runs, out, **kw):
    return ship_world(ShipConfig(dynamics=str(runs / "dynamics"), autoencoder=str(runs / "autoencoder"),
                                 out=str(out), notes="test", **kw))


def test_shipped_world_is_half_size_loads_back_and_records_its_source(tmp_path):
    runs = tiny_world(tmp_path / "runs")
    (tmp_path / "eval").mkdir()
    report = {"fidelity": {"worlds": {"candidate": {"psnr": {"1": {"mean": 20.0}, "4": {"mean": 15.0}}},
                                      "copy_last": {"psnr": {"1": {"mean": 23.0}, "4": {"mean": 14.0}}}},
                           "candidate_minus_copy_last": {"psnr": {"4": {"mean": 1.0, "standard_error": 0.4,
                                                                        "groups": 8, "verdict": "ahead"}}}},
              "action_following": {"relative": {"move": {"accuracy": 0.9}}}}
    (tmp_path / "eval" / "report.json").write_text(json.dumps(report))
    out = ship(runs, tmp_path / "assets" / "world", eval=str(tmp_path / "eval"))
    for part in ("dynamics", "autoencoder"):
        with safe_open(str(out / part / "model.safetensors"), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert torch.float32 not in dtypes and torch.float16 in dtypes
        full = (runs / part / "model.safetensors").stat().st_size
        assert (out / part / "model.safetensors").stat().st_size < 0.55 * full
    dynamics, autoencoder = load_world(out)
    source_dynamics, source_autoencoder = load_world(runs)
    assert next(dynamics.parameters()).dtype == torch.float32  # cast back on loading
    for (name, a), b in zip(dynamics.state_dict().items(), source_dynamics.state_dict().values()):
        assert torch.equal(a, b.half().float()), name
    z = torch.randn(2, *autoencoder.config.latent_shape)
    with torch.no_grad():
        assert (autoencoder.decode(z) - source_autoencoder.decode(z)).abs().max() < 0.02
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["runs"]["dynamics"]["source"] == str(runs / "dynamics")
    assert provenance["storage_dtype"] == "float16" and provenance["notes"] == "test"
    assert provenance["max_relative_output_difference"] < 0.05
    assert json.loads((out / "eval" / "report.json").read_text()) == report
    summary = provenance["eval"]["summary"]
    assert summary["beats_copy_last"] == {"1": False, "4": True}
    assert summary["candidate_minus_copy_last"] == {"4": {"mean": 1.0, "standard_error": 0.4, "verdict": "ahead"}}
    assert summary["action_following_relative"] == {"move": 0.9}
    # shipping again replaces the directory whole
    (out / "stale.txt").write_text("x")
    ship(runs, out)
    assert not (out / "stale.txt").exists() and not (out / "eval").exists()


def test_the_world_ships_with_the_sampling_its_eval_ran_with(tmp_path):
    runs = tiny_world(tmp_path / "runs")  # the run's default: 2 steps
    shipped_steps = lambda out: json.loads((out / "dynamics" / "model.json").read_text())["config"]["sample_steps"]
    assert shipped_steps(ship(runs, tmp_path / "a")) == 2
    assert shipped_steps(ship(runs, tmp_path / "b", sample_steps=1)) == 1
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps({"config": {"sample_steps": 3, "context_noise": 0.0,
                                                                                "sample_shift": 4.0,
                                                                                "sample_start": 0.6,
                                                                                "idle_start": 0.1, "idle_turn": 2.0}}))
    out = ship(runs, tmp_path / "c", eval=str(tmp_path / "eval"))
    config = load_world(out)[0].config
    assert shipped_steps(out) == 3 and config.sample_steps == 3 and config.context_noise == 0.0
    assert config.sample_shift == 4.0 and config.sample_start == 0.6
    assert config.idle_start == 0.1 and config.idle_turn == 2.0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["runs"]["dynamics"]["config"]["sample_steps"] == 3
    assert provenance["runs"]["dynamics"]["config"]["context_noise"] == 0.0
    with pytest.raises(ValueError, match="ran with sample_steps=3"):
        ship(runs, tmp_path / "d", eval=str(tmp_path / "eval"), sample_steps=4)
    with pytest.raises(ValueError, match="ran with context_noise=0.0"):
        ship(runs, tmp_path / "d", eval=str(tmp_path / "eval"), context_noise=0.05)
    with pytest.raises(ValueError, match="ran with sample_shift=4.0"):
        ship(runs, tmp_path / "d", eval=str(tmp_path / "eval"), sample_shift=1.0)
    with pytest.raises(ValueError, match="ran with sample_start=0.6"):
        ship(runs, tmp_path / "d", eval=str(tmp_path / "eval"), sample_start=1.0)
    with pytest.raises(ValueError, match="ran with idle_start=0.1"):
        ship(runs, tmp_path / "d", eval=str(tmp_path / "eval"), idle_start=0.0)
    with pytest.raises(ValueError, match="ran with keep_view=False"):  # the eval ran with the run's own
        ship(runs, tmp_path / "d", eval=str(tmp_path / "eval"), keep_view=True)
    with pytest.raises(ValueError, match="ship.sample_start must be in"):
        ship(runs, tmp_path / "d", sample_start=0.0)
    with pytest.raises(ValueError, match="ship.idle_start must be in"):
        ship(runs, tmp_path / "d", idle_start=1.0)
    with pytest.raises(ValueError, match="ship.idle_turn must be"):
        ship(runs, tmp_path / "d", idle_turn=-1.0)
    assert not (tmp_path / "d").exists()
    # a run saved before sample_start existed ships with its default
    for name in ("model", "ema"):
        path = runs / "dynamics" / f"{name}.json"
        if path.exists():
            meta = json.loads(path.read_text())
            del meta["config"]["sample_start"]
            path.write_text(json.dumps(meta))
    assert load_world(ship(runs, tmp_path / "e"))[0].config.sample_start == 1.0


def test_half_size_weights_without_their_record_or_with_a_bad_one_are_refused(tmp_path):
    out = ship(tiny_world(tmp_path / "runs"), tmp_path / "world")
    meta_path = out / "dynamics" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["storage_dtype"] = "int3"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="storage_dtype"):
        load_world(out)
    del meta["storage_dtype"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="dtype torch.float16"):
        load_world(out)


def test_bad_ship_settings_name_the_problem(tmp_path):
    runs = tiny_world(tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="ship.dynamics"):
        ShipConfig(dynamics=str(tmp_path / "nope"), autoencoder=str(runs / "autoencoder"))
    with pytest.raises(FileNotFoundError, match="report.json"):
        ship(runs, tmp_path / "w", eval=str(tmp_path))
    with pytest.raises(ValueError, match="ship.dtype"):
        ship(runs, tmp_path / "w", dtype="int8")
    with pytest.raises(ValueError, match="ship.sample_steps"):
        ship(runs, tmp_path / "w", sample_steps=0)
    assert not (tmp_path / "w").exists()


def test_the_shipped_default_world_loads_strictly_and_its_record_fits_it():
    from worldsim.envs import shipped_world
    world = shipped_world()
    if world is None:
        pytest.skip("no world ships in assets/")
    dynamics, autoencoder = load_world(world)
    provenance = json.loads((world / "provenance.json").read_text())
    for part in ("dynamics", "autoencoder"):
        assert provenance["runs"][part]["config"] == json.loads((world / part / "model.json").read_text())["config"]
    assert sum(provenance["bytes"].values()) < 40 * 2 ** 20  # the size budget
    z = torch.randn(1, 2, *autoencoder.config.latent_shape)
    with torch.no_grad():
        v = dynamics(z, torch.zeros(1, 2, 25), torch.full((1, 2), 0.5))
        frames = autoencoder.decode(z[0])
    assert torch.isfinite(v).all() and frames.shape == (2, 3, 128, 128)


def test_the_world_model_env_without_a_checkpoint_is_the_shipped_world():
    import gymnasium
    from worldsim.envs import shipped_world
    world = shipped_world()
    if world is None:
        pytest.skip("no world ships in assets/")
    env = gymnasium.make("worldsim/WorldModel-v0", timing=False)
    obs, info = env.reset(seed=0)
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert obs.shape == (128, 128, 3) and info["step"] == 1
    assert env.unwrapped.dynamics_config == load_world(world)[0].config
    env.close()


def test_eval_takes_a_world_directory_however_it_is_named(tmp_path):
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("run_world", root / "run_world.py")
    run_world = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_world)
    world = tmp_path / "world"
    for part in ("dynamics", "autoencoder"):
        (world / part).mkdir(parents=True)
    blank = {"world": "model", "checkpoint": None, "autoencoder": None}
    want = {"checkpoint": str(world / "dynamics"), "autoencoder": str(world / "autoencoder")}
    for checkpoint, config in ((world, blank), (None, {**blank, "checkpoint": str(world)})):
        assert {k: run_world.eval_checkpoints(checkpoint, config)[k] for k in want} == want
    run = {**blank, "checkpoint": str(tmp_path / "run"), "autoencoder": str(tmp_path / "ae")}
    assert run_world.eval_checkpoints(None, run) == run  # run directories stay as named
    with pytest.raises(FileNotFoundError, match="checkpoint=.*nope: no such world directory"):
        run_world.eval_checkpoints(tmp_path / "nope", blank)


def test_mode_eval_without_a_checkpoint_evaluates_the_shipped_world(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from worldsim.envs import shipped_world
    world = shipped_world()
    if world is None:
        pytest.skip("no world ships in assets/")
    command = [sys.executable, "run_world.py", "mode=eval", "eval.episodes=1", "eval.prompts_per_world=1",
               "eval.horizons=[1,4]", "eval.turn_ticks=2", "eval.walk_ticks=2", "eval.look_away_ticks=2",
               "eval.break_max_ticks=2", "eval.still_ticks=4", "eval.warmup_frames=10", "eval.stability_frames=20",
               "eval.stability_runs=1", "eval.progress=false", "eval.sheet=false",
               f"eval.out_dir={tmp_path}"]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["candidate"] == "model" and report["config"]["checkpoint"] == str(world / "dynamics")
    assert report["config"]["autoencoder"] == str(world / "autoencoder")
    assert report["fidelity"]["worlds"]["autoencoder"] is not None  # the shipped decoder is the ceiling too
