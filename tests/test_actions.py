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
