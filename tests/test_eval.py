"""The evaluation harness: the engine scores perfectly, copy-last scores the floor, the IDM beats chance,
the report has every field and is deterministic."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.data.policies import PolicyConfig
from worldsim.engine.env import EngineConfig, VoxelEnv
from worldsim.eval import AutoencoderReconstruction, CopyLastFrame, EnginePredictor, EvalConfig, evaluate
from worldsim.eval.harness import record_episode, record_prompts
from worldsim.eval.idm import (GROUPS, HEADS, IDMConfig, IDMTrainConfig, action_labels, load_idm, print_idm_table,
                               train_idm)
from worldsim.eval.worlds import WORLDS
from worldsim.eval.metrics import PSNR_CAP_DB, STAT_NAMES, collapse, frame_stats, paired_difference, psnr, ssim
from worldsim.eval.report import print_report, write_report, write_sheet

SIZE = 32
ENGINE = EngineConfig(width=SIZE, height=SIZE, view_distance=16)
POLICY = PolicyConfig()


def tiny_config(tmp_path, world="engine", **overrides) -> EvalConfig:
    settings = dict(world=world, out_dir=str(tmp_path), episodes=2, prompts_per_world=1, warmup_frames=10,
                    prompt_frames=4, horizons=(1, 4, 16), turn_ticks=36, walk_ticks=6, look_away_ticks=6,
                    break_max_ticks=40, stability_frames=40, stability_runs=2, progress=False)
    return EvalConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def idm(tmp_path_factory):
    """A tiny IDM trained for a few seconds on tiny engine episodes (seeds 0..), scored on held-out seeds."""
    config = IDMConfig(height=SIZE, width=SIZE, input_size=SIZE, channels=(16, 32, 32), hidden=64)
    train = IDMTrainConfig(out_dir=str(tmp_path_factory.mktemp("idm")), episodes=8, frames_per_episode=100,
                           warmup_frames=10, holdout_episodes=2, steps=600, batch_size=32, lr=3e-3)
    # walking and looking around, turning faster than the default: more of each class in a few hundred frames
    policy = PolicyConfig(weights={"walk": 0.4, "look_around": 0.3, "idle": 0.1, "mine": 0.2}, yaw_speed=4.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is faster than two fighting the renderer's
    try:
        model, report = train_idm(config, train, ENGINE, policy, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model, report, train.out_dir


@pytest.fixture(scope="module")
def engine_report(tmp_path_factory, idm):
    config = tiny_config(tmp_path_factory.mktemp("engine_eval"))
    return evaluate(config, ENGINE, POLICY, idm=idm[0])


@pytest.fixture(scope="module")
def copy_report(tmp_path_factory, idm):
    config = tiny_config(tmp_path_factory.mktemp("copy_eval"), world="copy_last")
    return evaluate(config, ENGINE, POLICY, idm=idm[0])


def test_metrics_identical_and_hand_computed():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert np.all(psnr(a, a) == PSNR_CAP_DB) and np.allclose(ssim(a, a), 1.0)
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255.0 ** 2 / mse), rtol=1e-5)
    assert np.all(ssim(a, b) < 1.0)
    stats = frame_stats(a, previous=b[0])
    assert stats.shape == (2, len(STAT_NAMES)) and stats[0, -1] > 0


def test_collapse_catches_a_frozen_and_a_faded_world():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (200, SIZE, SIZE, 3), dtype=np.uint8)
    real[50:70] = real[50]  # the player stood still for a second
    real_stats = frame_stats(real)
    held = collapse(real_stats, real_stats, fps=20)
    assert not held["collapsed"] and held["first_frame"] is None and held["seconds_before"] == 10.0  # the whole run
    assert held["mean_contrast"]["ratio"] == 1.0
    frozen = real.copy()
    frozen[100:] = frozen[100]  # five seconds without change
    verdict = collapse(real_stats, frame_stats(frozen), fps=20)
    assert verdict["frozen"] and not verdict["faded"] and verdict["longest_still_frames"]["real"] == 19
    # still from frame 101 on; the limit is 50 frames (a quarter of the run), so frame 151 is one too many
    assert verdict["longest_still_frames"]["limit"] == 50 and verdict["first_frame"] == 151
    assert verdict["seconds_before"] == 151 / 20
    faded = real.copy()
    faded[150:] = (faded[150:] // 8 + 100).astype(np.uint8)  # the last 2.5 s: little contrast left
    verdict = collapse(real_stats, frame_stats(faded), fps=20)
    assert verdict["faded"] and not verdict["frozen"] and verdict["collapsed"]
    # the first second whose mean contrast is under the limit ends after the fade began, within a second of it
    assert 150 < verdict["first_frame"] < 170
    # three quarters of the run at the real contrast, the last quarter at an eighth of it
    assert verdict["mean_contrast"]["ratio"] == pytest.approx(0.75 + 0.25 / 8, abs=0.03)
    contrast = frame_stats(faded)[:, STAT_NAMES.index("contrast")]
    last = verdict["first_frame"]
    assert contrast[last - 19:last + 1].mean() < verdict["lowest_contrast_1s"]["limit"] <= contrast[last - 20:last].mean()
    both = frozen.copy()
    both[170:] = (both[170:] // 8 + 100).astype(np.uint8)  # frozen first, then faded too: the earlier counts
    verdict = collapse(real_stats, frame_stats(both), fps=20)
    assert verdict["frozen"] and verdict["faded"] and verdict["first_frame"] == 151
    assert not held["washed_out"] and held["lowest_contrast_ratio_10s"]["candidate"] == 1.0
    assert not any(collapse(real_stats, frame_stats(run), fps=20)["washed_out"] for run in (frozen, faded))


def test_collapse_catches_a_world_washed_out_into_a_haze_that_never_dips():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (600, SIZE, SIZE, 3)).astype(np.float64)  # 30 s
    flatter = lambda frames, c, mean=128: (c * (frames - 128) + mean).astype(np.uint8)
    real = noise.astype(np.uint8)
    real[300:320] = flatter(noise[300:320], 0.45)  # the player faced a wall for a second
    haze = real.copy()
    # from frame 100 on: frames that change but at 0.4 of the usual contrast, over the 1-s dip limit (0.225)
    haze[100:] = flatter(noise[100:], 0.4, 160)
    real_stats, haze_stats = frame_stats(real), frame_stats(haze)
    verdict = collapse(real_stats, haze_stats, fps=20)
    assert verdict["lowest_contrast_1s"]["candidate"] > verdict["lowest_contrast_1s"]["limit"]  # no dip
    assert verdict["washed_out"] and verdict["faded"] and verdict["collapsed"] and not verdict["frozen"]
    assert verdict["lowest_contrast_ratio_10s"]["candidate"] == pytest.approx(0.4, abs=0.01)
    # the first 10 s (200 frames) under half the real contrast start once fewer than a third of them are clear
    # (0.4 + 0.6 clear / 200 < 0.5): at frame 67, so they end at 266
    assert 256 < verdict["first_frame"] < 276 and verdict["seconds_before"] == verdict["first_frame"] / 20
    lighter = real.copy()  # the same at 0.6 of the contrast: blurrier frames, not a haze
    lighter[100:] = flatter(noise[100:], 0.6, 140)
    assert not collapse(real_stats, frame_stats(lighter), fps=20)["collapsed"]


def test_action_labels():
    assert action_labels({"forward": 1, "camera": [0.0, 5.0]})["forward_back"] == 1
    labels = action_labels({"back": 1, "left": 1, "camera": [-1.0, 0.0], "hotbar.3": 1, "attack": 1})
    assert labels == {"forward_back": 2, "left_right": 1, "pitch": 1, "yaw": 2, "jump": 0, "attack": 1, "use": 0,
                      "hotbar": 3}


def test_engine_scores_perfectly(engine_report):
    report, _ = engine_report
    for metric, perfect in (("psnr", PSNR_CAP_DB), ("ssim", 1.0)):
        for h, cell in report["fidelity"]["worlds"]["candidate"][metric].items():
            assert cell["mean"] == pytest.approx(perfect) and cell["min"] == pytest.approx(perfect), (metric, h)
    for name, test in report["consistency"].items():
        assert test["candidate_vs_engine"]["psnr"] == PSNR_CAP_DB, name
        assert test["candidate_vs_engine_every_tick"]["ssim"] == pytest.approx(1.0), name
    assert report["consistency"]["turn_around"]["engine_end_vs_start"]["psnr"] == PSNR_CAP_DB
    assert report["stability"]["fraction_out_of_range"] == 0.0 and report["stability"]["first_out_of_range"] is None
    assert not report["stability"]["collapse"]["collapsed"]
    for group, ratio in report["action_following"]["relative"].items():
        assert ratio["accuracy"] == pytest.approx(1.0), group


def test_copy_last_scores_the_floor(engine_report, copy_report, tmp_path):
    engine, copy = engine_report[0]["fidelity"]["worlds"], copy_report[0]["fidelity"]["worlds"]
    assert engine["copy_last"] == copy["candidate"]  # the reference and the candidate agree
    for h in ("1", "4", "16"):
        assert copy["candidate"]["psnr"][h]["mean"] < engine["candidate"]["psnr"][h]["mean"]
        assert copy["candidate"]["ssim"][h]["mean"] < 1.0
    # one episode by hand: the last prompt frame against the true frame 4 ticks later
    config = tiny_config(tmp_path, world="copy_last")
    episode = record_episode(ENGINE, POLICY, config.seed, config.warmup_frames, config.prompt_frames, 16)
    last, truth = episode.frames[config.prompt_frames - 1], episode.frames[config.prompt_frames - 1 + 4]
    mse = ((last.astype(np.float64) - truth) ** 2).mean()
    hand = 10 * np.log10(255.0 ** 2 / mse)
    cell = copy["candidate"]["psnr"]["4"]  # two episodes: the first is the min or the max
    assert hand == pytest.approx(cell["min"], rel=1e-6) or hand == pytest.approx(cell["max"], rel=1e-6)
    # a frozen world is caught by the stability statistics' motion, and fails the walk's every-tick comparison
    assert copy_report[0]["stability"]["stats"]["motion"]["candidate_max"] == 0.0
    assert copy_report[0]["stability"]["collapse"]["frozen"], copy_report[0]["stability"]["collapse"]
    assert copy_report[0]["stability"]["collapse"]["frozen_runs"] == 2  # every run froze
    walk = copy_report[0]["consistency"]["walk_there_and_back"]
    assert walk["candidate_vs_engine_every_tick"]["psnr"] < PSNR_CAP_DB


def test_stability_over_several_long_runs(engine_report, copy_report, tmp_path):
    engine, copy = engine_report[0]["stability"], copy_report[0]["stability"]
    assert engine["seeds"] == copy["seeds"] == [10_002, 10_003]  # the worlds after the fidelity worlds'
    assert engine["collapse"]["runs"] == 2 and engine["collapse"]["collapsed_runs"] == 0
    assert all(run["fraction_out_of_range"] == 0.0 and run["frames"] == 40 for run in engine["runs"])
    assert copy["collapse"]["collapsed_runs"] == 2 and copy["collapse"]["collapsed"]
    assert engine["collapse"]["seconds_before"]["min"] == 40 / VoxelEnv.metadata["render_fps"]  # held: the whole run
    assert all(run["collapse"]["seconds_before"] < 40 / VoxelEnv.metadata["render_fps"] for run in copy["runs"])
    assert engine["collapse"]["contrast_ratio"]["min"] == engine["collapse"]["contrast_ratio"]["max"] == 1.0
    # the real runs differ from world to world; their pooled range spans both
    lows = [run["stats"]["contrast"]["real_min"] for run in copy["runs"]]
    assert lows[0] != lows[1] and copy["stats"]["contrast"]["real_min"] == min(lows)
    # a run is the same whether measured alone or beside others, and after other fidelity worlds
    alone, _ = evaluate(tiny_config(tmp_path, world="copy_last", episodes=1, stability_runs=1, stability_seed=10_002),
                        ENGINE, POLICY)
    assert alone["stability"]["seeds"] == [10_002] and alone["stability"]["runs"] == copy["runs"][:1]
    with pytest.raises(ValueError, match="stability_runs"):
        EvalConfig(stability_runs=0)
    with pytest.raises(ValueError, match="stability_seed"):
        EvalConfig(stability_seed="ten")


def test_a_long_run_keeps_the_actions_and_statistics_of_the_frames_it_drops(tmp_path):
    from worldsim.engine.actions import to_vector
    from worldsim.eval.harness import record_long_run
    from worldsim.eval.metrics import StatsStream
    config = tiny_config(tmp_path, stability_frames=30)
    episode, real = record_long_run(config, ENGINE, POLICY, 10_005, None)
    full = record_episode(ENGINE, POLICY, 10_005, config.warmup_frames, config.prompt_frames, 30)
    np.testing.assert_array_equal(episode.frames, full.prompt_frames)  # the prompt only
    vectors = lambda taken: np.stack([to_vector(a) for a in taken])
    np.testing.assert_array_equal(vectors(episode.actions), vectors(full.actions))
    assert len(episode.continuation) == 30 and episode.env is None
    expected = StatsStream(full.frames[config.prompt_frames - 1])
    for frame in full.frames[config.prompt_frames:]:
        expected.add(frame)
    np.testing.assert_allclose(real, expected.result())


def test_paired_difference_by_hand():
    # two worlds of two prompts: world means 1.5 and 3.5, so 2.5 ± std(1.5, 3.5) / sqrt(2) = 1.0
    d = paired_difference([1.0, 2.0, 3.0, 4.0], [0.0] * 4, [7, 7, 9, 9])
    assert d == {"mean": 2.5, "standard_error": pytest.approx(1.0), "groups": 2, "verdict": "ahead"}
    assert paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 6.0], [7, 7, 9, 9])["verdict"] == "level"
    assert paired_difference([0.0, 0.0], [5.0, 6.0], [1, 2])["verdict"] == "behind"
    assert paired_difference([1.0, 2.0], [0.0, 0.0], [3, 3])["verdict"] is None  # one world: no spread to judge by
    with pytest.raises(ValueError, match="equal"):
        paired_difference([1.0, 2.0], [0.0], [1, 2])


def test_prompts_follow_one_another_along_the_path(tmp_path):
    config = tiny_config(tmp_path, prompts_per_world=3, horizons=(1, 4))
    first, second, third = record_prompts(config, ENGINE, POLICY, 10_000)
    stride = config.prompt_frames - 1 + 4
    assert [e.start for e in (first, second, third)] == [10, 10 + stride, 10 + 2 * stride]
    np.testing.assert_array_equal(second.frames[0], first.frames[-1])  # the same path, picked up where it ended
    np.testing.assert_array_equal(third.frames[0], second.frames[-1])
    assert len(second.frames) == config.prompt_frames + 4
    with pytest.raises(ValueError, match="prompts_per_world"):
        EvalConfig(prompts_per_world=0)


def test_several_prompts_per_world_in_the_report(copy_report, tmp_path):
    fidelity = copy_report[0]["fidelity"]
    for h, d in fidelity["candidate_minus_copy_last"]["psnr"].items():  # copy-last against itself: exactly level
        assert d["mean"] == 0.0 and d["standard_error"] == 0.0 and d["verdict"] == "level", h
    report, _ = evaluate(tiny_config(tmp_path, world="copy_last", prompts_per_world=2, stability_frames=4), ENGINE,
                         POLICY)
    fidelity = report["fidelity"]
    assert [p["seed"] for p in fidelity["prompts"]] == [10_000, 10_000, 10_001, 10_001]
    assert len(fidelity["values"]["candidate"]["psnr"]["4"]) == 4
    assert fidelity["candidate_minus_copy_last"]["psnr"]["4"]["groups"] == 2
    # the first prompt of each world is the one-prompt evaluation's
    single = copy_report[0]["fidelity"]["values"]["candidate"]["psnr"]["16"]
    assert fidelity["values"]["candidate"]["psnr"]["16"][0::2] == single


def test_episode_prompt_state_reproduces_the_continuation():
    episode = record_episode(ENGINE, POLICY, 10_000, 5, 3, 5)
    engine = EnginePredictor(ENGINE)
    engine.reset(episode.prompt_frames, episode.prompt_actions, episode.state)
    frames = np.stack([engine.step(a) for a in episode.continuation])
    np.testing.assert_array_equal(frames, episode.frames[3:])
    floor = CopyLastFrame()
    floor.reset(episode.prompt_frames, episode.prompt_actions, None)
    np.testing.assert_array_equal(floor.step(episode.continuation[0]), episode.frames[2])


def test_idm_beats_chance_on_held_out_worlds(idm):
    model, report, out_dir = idm
    heads = report["holdout"]["heads"]
    print_idm_table(report["holdout"], title="tiny IDM on held-out worlds")
    # forward/back: three classes (chance 1/3 balanced); camera yaw: five bins (chance 1/5 balanced)
    assert heads["forward_back"]["balanced_accuracy"] > 0.5, heads["forward_back"]
    assert heads["yaw"]["direction_accuracy"] > 0.65, heads["yaw"]
    loaded = load_idm(out_dir)
    frames = torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8)
    for name, logits in model.eval()(frames, frames).items():
        torch.testing.assert_close(loaded(frames, frames)[name], logits)
    assert set(model(frames, frames)) == set(HEADS)


def _keys(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix}
    return {prefix} | {k for key, value in tree.items() for k in _keys(value, f"{prefix}/{key}")}


def test_report_has_every_field(engine_report, tmp_path):
    report, arrays = engine_report
    for key in ("format", "world", "candidate", "config", "engine", "policy", "fidelity", "action_following",
                "consistency", "stability", "timing", "notes"):
        assert key in report, key
    assert set(report["fidelity"]["worlds"]) == {"candidate", "copy_last", "autoencoder"}
    assert report["fidelity"]["worlds"]["autoencoder"] is None  # no checkpoint: null, and a note says so
    assert any("autoencoder" in note for note in report["notes"])
    assert set(report["action_following"]["relative"]) == set(GROUPS)
    assert set(report["consistency"]) == {"turn_around", "walk_there_and_back", "stand_still", "break_block"}
    assert set(report["stability"]["stats"]) == set(STAT_NAMES)
    assert set(report["timing"]["fps"]) == {"candidate", "copy_last", "autoencoder", "engine"}
    assert set(report["timing"]["batch_fps"]) == {"candidate", "copy_last", "autoencoder"}
    without_idm, _ = evaluate(tiny_config(tmp_path, stability_frames=4, episodes=1), ENGINE, POLICY)
    assert _keys(without_idm) - _keys(report) == set()  # the same fields, nulls where nothing was measured
    assert without_idm["action_following"]["real"] is None
    write_report(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["candidate"] == "engine"
    turn = arrays["turn"]  # the sheet's 360° turn, every few ticks; the candidate here is the engine itself
    assert turn["engine"].shape == (report["config"]["turn_ticks"] // arrays["turn_every"] + 1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(turn["candidate"], turn["engine"])
    write_sheet(report, arrays, tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 0
    print_report(report)


def test_deterministic_for_a_seed(engine_report, tmp_path, idm):
    again, _ = evaluate(tiny_config(tmp_path), ENGINE, POLICY, idm=idm[0])
    def comparable(report):
        report = {k: v for k, v in report.items() if k != "timing"}
        report["config"] = {k: v for k, v in report["config"].items() if k != "out_dir"}
        return json.dumps(report, sort_keys=True)
    assert comparable(engine_report[0]) == comparable(again)


def test_config_checks():
    with pytest.raises(ValueError, match="eval.world"):
        EvalConfig(world="dream")
    with pytest.raises(ValueError, match="eval.autoencoder"):
        evaluate(EvalConfig(world="autoencoder", progress=False), ENGINE, POLICY)
    for bad, match in ((dict(sample_start=0.0), "eval.sample_start"), (dict(idle_start=1.0), "eval.idle_start"),
                       (dict(idle_turn=-1.0), "eval.idle_turn"), (dict(keep_view="yes"), "eval.keep_view"),
                       (dict(commit_last_step=1), "eval.commit_last_step")):
        with pytest.raises(ValueError, match=match):
            EvalConfig(**bad)
    assert set(WORLDS) == {"engine", "copy_last", "autoencoder", "model"}


def test_world_model_predictor_runs_the_sampler():
    """An untrained tiny model through the harness's adapter: frames of the right shape, the same for a rerun."""
    pytest.importorskip("worldsim.sampling")
    from worldsim.eval import WorldModelPredictor
    from worldsim.eval.worlds import Timed
    from worldsim.models.autoencoder import Autoencoder, AutoencoderConfig
    from worldsim.models.dynamics import DynamicsConfig, DynamicsModel
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig(height=SIZE, width=SIZE, latent_channels=8, enc_channels=(16, 32, 32),
                                                dec_channels=(32, 32, 16)))
    dynamics = DynamicsModel(DynamicsConfig(latent_channels=8, latent_height=4, latent_width=4, patch_size=2,
                                            n_layer=1, n_head=1, n_embd=32, chunk_frames=2, context_frames=8))
    world = Timed(WorldModelPredictor(dynamics, autoencoder, sample_steps=1))
    episode = record_episode(ENGINE, POLICY, 10_000, 0, 4, 3)
    runs = []
    for _ in range(2):
        world.reset(episode.prompt_frames, episode.prompt_actions, None)
        runs.append(world.run(episode.continuation))  # 3 frames from chunks of 2: the last chunk padded and cut
    assert runs[0].shape == (3, SIZE, SIZE, 3) and runs[0].dtype == np.uint8
    np.testing.assert_array_equal(runs[0], runs[1])
    # fidelity's batched rollouts: a batch of one is the plain run; a batch of three is three rollouts of those prompts
    episodes = [record_episode(ENGINE, POLICY, 10_000 + i, 2 * i, 4, 3) for i in range(3)]
    np.testing.assert_array_equal(world.run_batch(episodes[:1])[0], runs[0])
    batch = world.run_batch(episodes)
    assert batch.shape == (3, 3, SIZE, SIZE, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch, world.run_batch(episodes))
    assert not np.array_equal(batch[1], batch[2])
    # the ceiling in batches: what stepping it frame by frame gives
    ceiling = Timed(AutoencoderReconstruction(autoencoder, ENGINE))
    stepped = []
    for e in episodes:
        ceiling.world.reset(e.prompt_frames, e.prompt_actions, e.state)
        stepped.append(np.stack([ceiling.world.step(a) for a in e.continuation]))
    batched = ceiling.run_batch(episodes).astype(int)  # batched convolutions may round a level differently
    assert np.abs(batched - np.stack(stepped)).max() <= 1 and np.mean(batched != np.stack(stepped)) < 1e-3
    assert ceiling.batch_frames == 9 and ceiling.batch_fps > 0 and ceiling.fps is None
    # stability streams the batch chunk by chunk: its statistics are those of the frames one batch makes
    from worldsim.eval.harness import measure_stability
    from worldsim.eval.metrics import StatsStream
    config = tiny_config(None, stability_frames=3, batch_size=2)
    runs = [(e, np.zeros((3, len(STAT_NAMES)))) for e in episodes]
    result, arrays = measure_stability(config, runs, world, None, 20.0, None)
    assert result["collapse"]["runs"] == 3 and [r["seed"] for r in result["runs"]] == [10_000, 10_001, 10_002]
    expected = StatsStream(episodes[0].frames[3])  # the last prompt frame
    for frame in world.run_batch(episodes[:2])[0]:
        expected.add(frame)
    np.testing.assert_allclose(arrays["candidate"], expected.result())


def test_compare_two_reports_of_the_same_prompts(engine_report, copy_report, tmp_path):
    from worldsim.eval.compare import compare, load_report, main
    engine, copy = engine_report[0], copy_report[0]
    result = compare(engine, copy)
    for h in ("1", "4", "16"):
        cell = result["fidelity"]["psnr"][h]
        a, b = engine["fidelity"]["worlds"]["candidate"]["psnr"][h], copy["fidelity"]["worlds"]["candidate"]["psnr"][h]
        assert cell["mean"] == pytest.approx(a["mean"] - b["mean"]) and cell["mean"] > 0
        assert cell["a"] == pytest.approx(a["mean"]) and cell["groups"] == 2
    assert result["stability"]["a"]["collapsed_runs"] == 0 and result["stability"]["b"]["collapsed_runs"] == 2
    assert compare(copy, copy)["fidelity"]["ssim"]["4"]["mean"] == 0.0
    other, _ = evaluate(tiny_config(tmp_path, world="copy_last", seed=20_000, stability_frames=4), ENGINE, POLICY)
    with pytest.raises(ValueError, match="different prompts"):
        compare(engine, other)
    # the shipped world's report reads, and so does one of format 1 (one long run, its verdict at the top);
    # files that are not reports are named
    shipped = load_report(Path(__file__).parents[1] / "assets" / "world" / "eval")
    runs = shipped["stability"]["runs"]
    assert compare(shipped, shipped)["stability"]["a"]["runs"] == len(runs) == shipped["config"]["stability_runs"]
    old = {**shipped, "format": 1, "stability": {"frames": runs[0]["frames"], "collapse": runs[0]["collapse"]}}
    result = compare(old, shipped)["stability"]
    assert result["a"]["runs"] == 1 and result["a"]["collapsed_runs"] == int(runs[0]["collapse"]["collapsed"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_report(tmp_path / "bad.json")
    write_report(copy, tmp_path / "copy" / "report.json")
    write_report(engine, tmp_path / "engine" / "report.json")
    main([str(tmp_path / "engine"), str(tmp_path / "copy"), "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["prompts"] == 2
    with pytest.raises(SystemExit, match="no eval report"):
        main([str(tmp_path / "nowhere"), str(tmp_path / "copy")])
