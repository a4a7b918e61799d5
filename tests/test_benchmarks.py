"""The benchmark runner: stages in their own processes, time limits, and a summary that keeps what finished."""
import json

import pytest

from worldsim import benchmarks
from worldsim.benchmarks import Stage, run, stages_for


def test_the_quick_set_runs_a_real_benchmark_and_records_it(tmp_path):
    results = run(stages_for(cuda=False, quick=True), tmp_path, echo=lambda *a: None)
    assert [r.status for r in results] == ["ok"]
    rows = json.loads((tmp_path / "dynamics-tiny.json").read_text())["rows"]
    assert rows and rows[0]["batch"] == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"][0]["json"] == str(tmp_path / "dynamics-tiny.json")
    assert summary["machine"]["cpu_count"] >= 1


def test_a_stage_past_its_time_is_stopped_and_what_it_printed_is_kept(tmp_path, monkeypatch):
    (tmp_path / "sleeper.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    [result] = run([Stage("sleeper", ["sleeper"], 2.0, "sleeps")], tmp_path / "out", echo=lambda *a: None)
    assert result.status == "timed out" and result.returncode is None and result.seconds < 30
    assert "started" in (tmp_path / "out" / "sleeper.log").read_text()


def test_a_failing_stage_is_named_and_the_time_left_decides_the_rest(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "broken.json").write_text("{}")  # left by an earlier call: must not count as this one's
    stages = [Stage("broken", ["worldsim_no_such_module", "--out", "{out}"], 60, "fails"),
              *stages_for(cuda=False, quick=True)]
    monkeypatch.setattr(benchmarks, "MIN_STAGE_SECONDS", 1e6)  # whatever is left after the first is too little
    first, second = run(stages, tmp_path / "out", minutes=10, echo=lambda *a: None)
    assert first.status == "skipped" and second.status == "skipped"
    monkeypatch.setattr(benchmarks, "MIN_STAGE_SECONDS", 20.0)
    [first] = run(stages[:1], tmp_path / "out", minutes=10, echo=lambda *a: None)
    assert first.status == "failed" and first.returncode != 0 and first.json is None
    assert any("worldsim_no_such_module" in line for line in first.tail)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["stages"][0]["status"] == "failed"


def test_the_command_line_refuses_unknown_stages_and_bad_budgets(capsys):
    with pytest.raises(SystemExit):
        benchmarks.main(["--only", "nope"])
    assert "unknown stage(s) nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmarks.main(["--minutes", "0"])
    assert "--minutes must be positive" in capsys.readouterr().err
    benchmarks.main(["--list", "--only", "kernels", "rollouts"])
    listed = capsys.readouterr().out
    assert "kernels.bench" in listed and "--rollout-envs 256" in listed


def test_the_rollout_profile_says_where_a_step_spends_its_time(tmp_path):
    from test_world_model_env import tiny_configs
    from worldsim.envs.world_model import random_world
    from worldsim.play.bench import rollout_speed
    world = str(random_world(tmp_path / "world", *tiny_configs()))
    result = rollout_speed(world, num_envs=2, steps=2, warmup=1, profile_steps=2)
    profile = result["profile"]
    assert profile["steps"] == 2 and profile["sorted_by"] == "cpu_ms_per_step"
    times = [r["cpu_ms_per_step"] for r in profile["top"]]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert 0 < profile["cpu_ms_per_step"] <= profile["wall_ms_per_step"] * 1.05
    names = {r["name"] for r in profile["top"]}
    assert "aten::addmm" in names or "aten::linear" in names  # the transformer's projections are in a step
    attention = [r for r in profile["top"] if "scaled_dot_product" in r["name"]]
    assert attention and attention[0]["calls_per_step"] > 0
    assert profile["top_cpu"] == profile["top"]  # on the CPU both lists rank by CPU time


def test_a_device_profile_prints_by_device_time_and_by_cpu_time(capsys):
    from worldsim.play.bench import print_profile
    kernel = {"name": "attention_kernel", "calls_per_step": 12.0, "cpu_ms_per_step": 0.0, "device_ms_per_step": 1.5}
    launch = {"name": "cudaGraphLaunch", "calls_per_step": 1.0, "cpu_ms_per_step": 0.9, "device_ms_per_step": 0.0}
    print_profile({"wall_ms_per_step": 3.0, "sorted_by": "device_ms_per_step", "cpu_ms_per_step": 0.9,
                   "device_ms_per_step": 1.5, "top": [kernel, launch], "top_cpu": [launch, kernel]})
    out = capsys.readouterr().out
    assert "by device time" in out and "by cpu time" in out
    assert out.index("attention_kernel") < out.index("cudaGraphLaunch")  # the device table first


def test_a_negative_profile_step_count_is_refused():
    from worldsim.play.bench import main
    with pytest.raises(SystemExit):
        main(["--profile-steps", "-1"])


def test_the_dynamics_bench_saves_each_case_as_it_finishes(tmp_path, monkeypatch):
    """A stage stopped at its time limit keeps the cases it finished: the JSON holds each case before the next
    begins."""
    from worldsim.models import bench_dynamics
    out, seen = tmp_path / "dynamics.json", []
    real = bench_dynamics.time_case

    def spy(*args, **kwargs):
        seen.append(json.loads(out.read_text())["rows"] if out.exists() else None)
        return real(*args, **kwargs)
    monkeypatch.setattr(bench_dynamics, "time_case", spy)
    bench_dynamics.main(["--config", "tiny", "--steps", "1", "--batches", "1", "2", "--frames", "5", "--warmup", "2",
                         "--autoencoder", "none", "--out", str(out)])
    assert seen[0] is None and [r["batch"] for r in seen[1]] == [1]
    assert [r["batch"] for r in json.loads(out.read_text())["rows"]] == [1, 2]


def test_the_play_bench_saves_the_rollout_timing_before_its_profile(tmp_path, monkeypatch):
    from test_world_model_env import tiny_configs
    from worldsim.envs.world_model import random_world
    from worldsim.play import bench
    world, out, seen = str(random_world(tmp_path / "world", *tiny_configs())), tmp_path / "play.json", []
    real = bench.profile_rollout

    def spy(*args, **kwargs):
        seen.append(json.loads(out.read_text()))
        return real(*args, **kwargs)
    monkeypatch.setattr(bench, "profile_rollout", spy)
    bench.main(["--checkpoint", world, "--skip-play", "--soak-frames", "0", "--rollout-envs", "2",
                "--profile-steps", "1", "--out", str(out)])
    assert seen[0]["rollout"]["fps"] > 0 and "profile" not in seen[0]["rollout"]
    assert json.loads(out.read_text())["rollout"]["profile"]["steps"] == 1


def test_the_gpu_set_checks_the_kernels_first_and_times_them_later(capsys):
    """On a short lease the GPU checks run before everything that relies on them, and the kernel timings (already
    measured, the kernels unchanged since) wait until the never-measured figures are in; the kernels bench takes
    the two halves apart, and refuses to be asked for neither."""
    from kernels import bench
    names = [s.name for s in stages_for(cuda=True)]
    assert names[0] == "kernels-checks" and names.index("kernels") > names.index("training-small-compiled")
    assert names.index("play") < names.index("rollouts") < names.index("dynamics-small")
    with pytest.raises(SystemExit):
        bench.main(["--checks-only", "--skip-checks"])
    assert "leave nothing to run" in capsys.readouterr().err


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("stage", [s for s in stages_for(cuda=True) + stages_for(cuda=False)],
                         ids=lambda s: f"{'cuda' if s in stages_for(cuda=True) else 'cpu'}-{s.name}")
def test_every_stage_command_line_parses(stage, monkeypatch, tmp_path):
    """Each stage's arguments are ones its script takes (a wrong flag found on a GPU lease costs the lease): the
    script's own parser reads them, and the run stops right after."""
    import argparse
    import importlib
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)  # exits with the parser's message on an unknown or bad argument
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module, *args = [a.replace("{out}", str(tmp_path / "out.json")) for a in stage.args]
    with pytest.raises(_Parsed):
        importlib.import_module(module).main(args)


def test_step_traffic_counts_the_ops_a_step_runs():
    """The GPU floor of a sampler step, counted on the CPU: each layer's keys and values enter the ring once per
    step (two index_copy_ of a chunk's rows each), the attention reads every cache frame at every pass, and a
    batch of 2 moves and computes twice what a batch of 1 does."""
    from test_sampling import small_model
    from worldsim.models.step_traffic import by_line, step_ops, summarize
    model = small_model(n_layer=2, context_frames=4)
    c = model.config
    one, two = (step_ops(model, batch, steps=2, lines=batch == 1) for batch in (1, 2))
    copies = [o for o in one if o["op"] == "index_copy_"]
    rows = c.chunk_frames * c.tokens_per_frame * c.n_embd * 4  # one chunk's keys, fp32
    assert len(copies) == 2 * c.n_layer and all(o["written"] == rows for o in copies)
    attention = [o for o in one if o["op"] in ("scaled_dot_product_attention", "cache_attention")]
    assert len(attention) == 3 * c.n_layer  # the commit pass and two Euler steps
    assert [o["op"] for o in one] == [o["op"] for o in two]
    a, b = (summarize(ops, 3e12, 6e14) for ops in (one, two))
    assert b["total"]["flops"] == 2 * a["total"]["flops"] > 0
    for name, group in a["ops"].items():
        if name in ("scaled_dot_product_attention", "cache_attention", "index_copy_"):  # per-row data only
            assert b["ops"][name]["written"] == 2 * group["written"]
            assert abs(b["ops"][name]["read"] / group["read"] - 2) < 0.01
    assert a["total"]["read"] < b["total"]["read"] < 2 * a["total"]["read"]  # the weights are read once
    assert 0 < a["total"]["floor_ms"] < b["total"]["floor_ms"]
    # every op is put on the project's line that made it: the rotary's four ops a layer in each of the two passes
    lines = by_line(one)
    assert sum(g["count"] for g in lines) == len(one) and all(g["line"].startswith(("worldsim/", "kernels/"))
                                                             for g in lines)
    rotary = [g for g in lines if "torch.cat([x2, x1]" in g["line"]]
    assert len(rotary) == 1 and rotary[0]["count"] == 4 * 2 * c.n_layer
