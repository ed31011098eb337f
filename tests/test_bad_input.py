"""Bad input is a clear error (eager) or a counted skip (inside jit) — never a corrupted state."""
import jax
import numpy as np
import pytest

from rmbandit import bandits
from tests.helpers import BANDITS, PLAIN_BANDITS

@pytest.fixture(params=PLAIN_BANDITS)
def bandit_and_state(request):
    bandit = BANDITS[request.param]()
    return bandit, bandit.init(jax.random.key(0), 3, 4)


def test_wrong_context_width_names_the_widths(bandit_and_state):
    bandit, state = bandit_and_state
    with pytest.raises(ValueError, match="width 5 .*dim=4"):
        bandit.select(state, np.zeros((2, 5), np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match="width 5 .*dim=4"):
        bandit.update(state, np.zeros((2, 5), np.float32), np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match="width 5 .*dim=4"):        # a shape error inside jit too
        jax.jit(bandit.select)(state, np.zeros((2, 5), np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match="2-D"):
        bandit.select(state, np.zeros(4, np.float32), jax.random.key(0))


def test_arm_out_of_range_is_an_error_eagerly_and_a_counted_skip_in_jit(bandit_and_state):
    bandit, state = bandit_and_state
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="arm index 3 out of range .*3 arms"):
        bandit.update(state, x, np.array([0, 3]), np.ones(2))
    with pytest.raises(ValueError, match="arm index -2"):          # -1 is NO_ARM: a row not observed
        bandit.update(state, x, np.array([-2, 0]), np.ones(2))
    new = jax.jit(bandit.update)(state, x, np.array([0, 3]), np.ones(2))
    assert int(new.skipped) == 1
    assert int(new.arms.pulls.sum()) == 1


def test_nan_or_inf_reward_is_an_error_eagerly_and_a_counted_skip_in_jit(bandit_and_state):
    bandit, state = bandit_and_state
    x = np.ones((3, 4), np.float32)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or inf at rows \\[1\\]"):
            bandit.update(state, x, np.array([0, 1, 2]), np.array([1.0, bad, 0.0]))
    new = jax.jit(bandit.update)(state, x, np.array([0, 1, 2]), np.array([1.0, np.nan, 0.0]))
    assert int(new.skipped) == 1
    np.testing.assert_array_equal(new.arms.pulls, [1, 0, 1])
    for leaf in jax.tree.leaves(new):
        if np.issubdtype(leaf.dtype, np.floating):
            assert np.isfinite(np.asarray(leaf)).all()


def test_nan_context_and_shape_mismatches(bandit_and_state):
    bandit, state = bandit_and_state
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="contexts contain NaN"):
        bandit.update(state, x, np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match="arms \\[2\\] and rewards \\[2\\]"):
        bandit.update(state, np.ones((2, 4), np.float32), np.array([0]), np.ones(2))
    with pytest.raises(ValueError, match="integer"):
        bandit.update(state, np.ones((2, 4), np.float32), np.array([0.0, 1.0]), np.ones(2))


def test_bad_factory_arguments():
    with pytest.raises(ValueError, match="init_b"):
        bandits.linucb(init_b="ones")
    with pytest.raises(ValueError, match="prior_mean has shape"):
        bandits.linear_thompson(prior_mean=np.zeros((2, 3))).init(jax.random.key(0), 4, 3)
