"""The action schema: validation, the 25-dim model vector, and the look direction convention."""
import numpy as np
import pytest

from worldsim.engine import actions


def test_space_has_every_minerl_key_and_samples_validate():
    space = actions.action_space()
    assert set(space.spaces) == set(actions.KEYS)
    space.seed(0)
    for _ in range(20):
        actions.validate(space.sample())


def test_vector_round_trip():
    action = actions.noop()
    action.update({"forward": 1, "jump": 1, "hotbar.3": 1, "attack": 1, "camera": np.array([4.0, -7.5])})
    vec = actions.to_vector(action)
    assert vec.shape == (actions.ACTION_DIM,) and vec.dtype == np.float32
    assert vec[actions.VECTOR_ORDER.index("camera_pitch")] == pytest.approx(0.4)
    back = actions.from_vector(vec)
    assert {k: v for k, v in back.items() if k != "camera"} == {k: v for k, v in action.items() if k != "camera"}
    np.testing.assert_allclose(back["camera"], action["camera"], rtol=1e-6)


def test_vector_clips_camera_beyond_max():
    action = actions.noop()
    action["camera"] = np.array([45.0, -90.0])
    vec = actions.to_vector(action)
    assert vec[actions.VECTOR_ORDER.index("camera_pitch")] == 1.0
    assert vec[actions.VECTOR_ORDER.index("camera_yaw")] == -1.0


@pytest.mark.parametrize("bad, message", [
    ({"jumpp": 1}, "unknown action key"),
    ({"camera": [1.0, 2.0, 3.0]}, "shape"),
    ({"camera": [float("nan"), 0.0]}, "finite"),
    ({"camera": [0.0, 500.0]}, "within"),
    ({"forward": 2}, "0 or 1"),
    ([1, 2], "dict"),
])
def test_bad_actions_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        actions.validate(bad)


def test_bad_vectors_are_refused():
    with pytest.raises(ValueError, match="shape"):
        actions.from_vector(np.zeros(24))
    with pytest.raises(ValueError, match="finite"):
        actions.from_vector(np.full(25, np.nan))


def test_look_direction_follows_minecraft():
    np.testing.assert_allclose(actions.look_direction(0, 0), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(actions.look_direction(90, 0), [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(actions.look_direction(0, 90), [0, -1, 0], atol=1e-12)


def test_batched_validation_and_vectors_equal_the_per_action_ones():
    space = actions.action_space()
    space.seed(1)
    chosen = [space.sample() for _ in range(6)]
    del chosen[2]["camera"], chosen[2]["jump"]  # a key left out is 0 for every sub-env it is missing from
    batch = {k: np.stack([np.asarray(a.get(k, np.zeros(2) if k == "camera" else 0)) for a in chosen])
             for k in actions.KEYS}
    checked = actions.validate_batch(batch, 6)
    singles = [actions.validate(a) for a in chosen]
    for i, single in enumerate(singles):
        assert {k: int(checked[k][i]) for k in actions.BUTTONS} == {k: single[k] for k in actions.BUTTONS}
        np.testing.assert_array_equal(checked["camera"][i], single["camera"])
    assert checked["camera"].dtype == np.float32 and checked["forward"].dtype == np.int64
    np.testing.assert_array_equal(actions.to_vectors(checked), np.stack([actions.to_vector(a) for a in singles]))
    assert [s["forward"] for s in actions.split_batch(batch, 6)] == [s["forward"] for s in singles]
    partial = actions.validate_batch({"forward": np.ones(3)}, 3)  # missing keys are filled in
    assert set(partial) == set(actions.KEYS) and partial["jump"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("bad, message", [
    ({"jumpp": np.zeros(3)}, "unknown action key"),
    ({"forward": np.zeros(2)}, "leading dimension of num_envs=3"),
    ({"forward": np.array([0, 1, 2])}, r"'forward'\] must be 0 or 1, got 2 \(sub-env 2\)"),
    ({"forward": np.zeros((3, 2))}, "one 0 or 1 per sub-env"),
    ({"camera": np.zeros((3, 3))}, "shape"),
    ({"camera": np.array([[0, 0], [np.nan, 0], [0, 0]])}, r"finite, got \[nan, 0.0\] \(sub-env 1\)"),
    ({"camera": np.array([[0, 0], [0, 0], [0, 500]])}, r"within .*\(sub-env 2\)"),
    ([np.zeros(3)], "dict"),
])
def test_bad_batched_actions_name_the_key_and_the_sub_env(bad, message):
    with pytest.raises(ValueError, match=message):
        actions.validate_batch(bad, 3)
