"""Exploration policies: seeded, valid, with momentum, and they break, place and change slots."""
import numpy as np
import pytest

from worldsim.data.policies import (ActionStats, ExplorationPolicy, PolicyConfig, RandomPolicy, make_policy)
from worldsim.engine import actions
from worldsim.engine.env import EngineConfig, VoxelEnv

TINY = EngineConfig(width=32, height=32, view_distance=16)


def rollout(policy, ticks: int, seed: int = 3):
    """Actions a policy takes driving a tiny engine world, and the infos it saw."""
    env = VoxelEnv(TINY)
    obs, info = env.reset(seed=seed)
    taken, infos = [], []
    for _ in range(ticks):
        action = policy.act(obs, info)
        taken.append(action)
        infos.append(info)
        obs, _, _, _, info = env.step(action)
    infos.append(info)
    return taken, infos


def same_actions(a: list[dict], b: list[dict]) -> bool:
    return all(all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in x) and x.keys() == y.keys()
               for x, y in zip(a, b))


@pytest.fixture(scope="module")
def explore_run():
    return rollout(ExplorationPolicy(PolicyConfig(), seed=11), 400)


def test_deterministic_for_a_seed():
    first, _ = rollout(ExplorationPolicy(PolicyConfig(), seed=5), 80)
    second, _ = rollout(ExplorationPolicy(PolicyConfig(), seed=5), 80)
    other, _ = rollout(ExplorationPolicy(PolicyConfig(), seed=6), 80)
    assert same_actions(first, second)
    assert not same_actions(first, other)
    policy = ExplorationPolicy(PolicyConfig(), seed=5)
    rollout(policy, 30)
    policy.reset(seed=5)
    assert same_actions(rollout(policy, 80)[0], first)
    assert same_actions(rollout(RandomPolicy(seed=2), 20)[0], rollout(RandomPolicy(seed=2), 20)[0])


def test_actions_are_valid(explore_run):
    for action in explore_run[0] + rollout(RandomPolicy(seed=1), 40)[0]:
        assert set(action) == set(actions.KEYS)
        checked = actions.validate(action)
        assert np.all(np.abs(checked["camera"]) <= actions.CAMERA_MAX_DEGREES)


def test_random_policy_presses_fair_buttons_and_turns_by_its_camera_std():
    """RandomPolicy's counter-based draws: each button pressed half the time, the camera std as configured, and
    another seed another stream."""
    taken = rollout(RandomPolicy(PolicyConfig(random_camera_std=2.0), seed=4), 800)[0]
    buttons = np.array([[a[b] for b in actions.BUTTONS] for a in taken])
    camera = np.array([a["camera"] for a in taken])
    assert np.all(np.abs(buttons.mean(axis=0) - 0.5) < 0.07), buttons.mean(axis=0)
    assert np.all(np.abs(camera.std(axis=0) - 2.0) < 0.15) and np.all(np.abs(camera.mean(axis=0)) < 0.2)
    assert not same_actions(taken[:20], rollout(RandomPolicy(seed=5), 20)[0])


def run_lengths(values) -> list[int]:
    """Lengths of the runs of 1s in a 0/1 sequence."""
    runs, current = [], 0
    for v in list(values) + [0]:
        if v:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_momentum_keys_held_and_camera_smooth(explore_run):
    taken = explore_run[0]
    forward = run_lengths(a["forward"] for a in taken)
    assert forward and np.mean(forward) >= 10, forward
    camera = np.array([a["camera"] for a in taken])
    random_camera = np.array([a["camera"] for a in rollout(RandomPolicy(seed=1), 400)[0]])
    jerk = np.abs(np.diff(camera, axis=0)).mean()
    random_jerk = np.abs(np.diff(random_camera, axis=0)).mean()
    assert jerk < 0.3 * random_jerk, (jerk, random_jerk)
    pitch = np.array([info["pitch"] for info in explore_run[1]])
    assert np.median(np.abs(pitch)) < 45  # mostly near the horizon, not staring at the ground


def test_breaks_places_and_changes_hotbar():
    config = PolicyConfig(weights={"walk": 1.0, "mine": 1.0, "build": 1.0})
    taken, infos = rollout(ExplorationPolicy(config, seed=4), 400)
    stats = ActionStats()
    for action, info in zip(taken, infos[1:]):
        stats.add(action, info)
    summary = stats.summary()
    assert summary["blocks_broken"] >= 1 and summary["blocks_placed"] >= 1, summary
    assert summary["hotbar_changes"] >= 1
    assert summary["frames"] == 400
    assert sum(map(sum, summary["camera"]["histogram_pitch_yaw"])) == 400


def test_jumps_when_blocked():
    """Walking into a wall with keys held makes the policy jump within a few ticks."""
    policy = ExplorationPolicy(PolicyConfig(weights={"walk": 1.0}, jump_rate=0.0), seed=0)
    info = {"pos": (0.0, 50.0, 0.0), "on_ground": True, "pitch": 0.0}
    jumps = [policy.act(None, info)["jump"] for _ in range(20)]
    assert any(jumps)


def test_stats_merge_and_round_trip():
    taken, infos = rollout(RandomPolicy(seed=3), 30)
    whole, first, second = ActionStats(), ActionStats(), ActionStats()
    for t, (action, info) in enumerate(zip(taken, infos)):
        whole.add(action, info)
        (first if t < 15 else second).add(action, info)
    merged = ActionStats.from_dict(first.to_dict()).merge(second)
    assert merged.summary()["key_fraction"] == whole.summary()["key_fraction"]
    assert merged.camera_hist.tolist() == whole.camera_hist.tolist()
    whole.print_table()


def test_make_policy_names_and_import_paths():
    assert isinstance(make_policy("explore", PolicyConfig(), 0), ExplorationPolicy)
    assert isinstance(make_policy("random", None, 0), RandomPolicy)
    assert isinstance(make_policy("worldsim.data.policies:RandomPolicy", PolicyConfig(), 0), RandomPolicy)
    with pytest.raises(ValueError, match="no_such_module"):
        make_policy("no_such_module.sub:Policy")
    with pytest.raises(ValueError, match="worldsim.data.policies:Missing"):
        make_policy("worldsim.data.policies:Missing")
    with pytest.raises(ValueError, match="unknown policy 'wander'"):
        make_policy("wander")
    with pytest.raises(ValueError, match="act"):
        make_policy("builtins:slice")  # callable, but what it makes cannot act


def test_config_checks_behaviour_names():
    with pytest.raises(ValueError, match="swim"):
        PolicyConfig(weights={"swim": 1.0})
    with pytest.raises(ValueError, match="durations.walk"):
        PolicyConfig(durations={"walk": [10, 5]})
    with pytest.raises(ValueError, match="still_rate"):
        PolicyConfig(still_rate=1.5)


def test_still_idle_spells_stand_still():
    """With still_rate 1 every idle spell is a still stretch: no keys and an exactly still camera, as a player who
    lets go of the controls; the camera then starts again from rest. still_rate 0 leaves the policy as it was."""
    weights = {"walk": 1.0, "idle": 1.0}
    config = PolicyConfig(weights=weights, durations={"walk": [10, 20], "idle": [10, 20]}, still_rate=1.0)
    policy = ExplorationPolicy(config, seed=4)
    taken, _ = rollout(policy, 300)
    still = [all(not np.any(v) for v in a.values()) for a in taken]
    assert 0.2 < np.mean(still) < 0.8, np.mean(still)  # both behaviours happened
    assert min(run_lengths(still)) >= 10  # whole idle spells, not stray ticks
    after = [i + 1 for i in range(len(still) - 1) if still[i] and not still[i + 1]]
    assert after and all(np.abs(taken[i]["camera"]).max() < 1.0 for i in after)  # from rest, no jerk
    # the default never stands still (the camera drifts even while idle), and 0 keeps its actions unchanged
    plain, _ = rollout(ExplorationPolicy(PolicyConfig(weights=weights, durations=config.durations), seed=4), 300)
    assert not any(all(not np.any(v) for v in a.values()) for a in plain)
    zero = PolicyConfig(weights=weights, durations=config.durations, still_rate=0.0)
    assert same_actions(rollout(ExplorationPolicy(zero, seed=4), 300)[0], plain)
