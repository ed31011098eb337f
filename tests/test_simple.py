"""Exp3, epsilon-greedy, uniform random, round robin, multiplicative weights vs NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit import bandits
from tests.reference import Exp3Ref


def test_exp3_probabilities_and_scores_match_reference():
    k, d, gamma = 4, 3, 0.2
    rng = np.random.default_rng(0)
    bandit = bandits.exp3(gamma=gamma, learning_rate=0.7)
    state = bandit.init(jax.random.key(0), k, d)
    ref = Exp3Ref(k, gamma, lr=0.7)
    for step in range(30):
        rows = 1 + step % 5
        arms, probs = bandit.select(state, np.zeros((rows, d), np.float32), jax.random.key(step))
        np.testing.assert_allclose(probs, np.broadcast_to(ref.probs(), (rows, k)), rtol=1e-5)
        rewards = rng.random(rows)
        state = bandit.update(state, np.zeros((rows, d), np.float32), arms, rewards)
        ref.update(np.asarray(arms), rewards)
        np.testing.assert_allclose(state.arms.score, ref.S, rtol=1e-4)


def test_exp3_samples_follow_its_probabilities():
    bandit = bandits.exp3(gamma=0.3)
    state = bandit.init(jax.random.key(0), 3, 2)
    state = state._replace(arms=state.arms._replace(score=jnp.array([2.0, 0.0, -1.0])))
    arms, probs = bandit.select(state, np.zeros((20000, 2), np.float32), jax.random.key(1))
    freq = np.bincount(np.asarray(arms), minlength=3) / 20000
    np.testing.assert_allclose(freq, probs[0], atol=0.015)


def test_epsilon_greedy_exploits_best_mean_and_explores_at_rate():
    eps = 0.2
    bandit = bandits.epsilon_greedy(epsilon=eps)
    state = bandit.init(jax.random.key(0), 3, 2)
    x = np.zeros((3, 2), np.float32)
    state = bandit.update(state, x, np.array([0, 1, 2]), np.array([0.1, 0.9, 0.5]))
    state = bandit.update(state, x[:1], np.array([1]), np.array([0.3]))
    arms, means = bandit.select(state, np.zeros((20000, 2), np.float32), jax.random.key(2))
    np.testing.assert_allclose(means[0], [0.1, 0.6, 0.5], rtol=1e-6)
    freq = np.bincount(np.asarray(arms), minlength=3) / 20000
    np.testing.assert_allclose(freq, [eps / 3, 1 - eps + eps / 3, eps / 3], atol=0.015)


def test_a_long_discounted_arm_keeps_its_mean():
    """Under discount an arm's score and weight shrink together: their ratio, its mean, stays
    -0.4 however small the weight gets (a 1e-6 floor pulled it toward 0 after 20 updates)."""
    bandit = bandits.discount(bandits.epsilon_greedy(0.0), 0.5)
    state = bandit.init(jax.random.key(0), 2, 1)
    x = np.zeros((1, 1), np.float32)
    state = bandit.update(state, x, np.array([0]), np.array([-0.4]))
    for _ in range(40):                                   # only arm 1 (mean -0.3) is pulled
        state = bandit.update(state, x, np.array([1]), np.array([-0.3]))
    assert float(state.inner.arms.weight[0]) < 1e-9
    arms, means = bandit.select(state, x, jax.random.key(1))
    np.testing.assert_allclose(means[0], [-0.4, -0.3], rtol=1e-5)
    assert int(arms[0]) == 1


def test_uniform_random_is_uniform_and_counts_pulls():
    bandit = bandits.uniform_random()
    state = bandit.init(jax.random.key(0), 5, 4)
    arms, scores = bandit.select(state, np.zeros((50000, 4), np.float32), jax.random.key(0))
    freq = np.bincount(np.asarray(arms), minlength=5) / 50000
    np.testing.assert_allclose(freq, 0.2, atol=0.01)
    np.testing.assert_allclose(scores, 0.2)
    state = bandit.update(state, np.zeros((4, 4), np.float32), np.array([0, 0, 3, 4]), np.ones(4))
    np.testing.assert_array_equal(state.arms.pulls, [2, 0, 0, 1, 1])


@pytest.mark.parametrize("rows", [1, 3])
def test_round_robin_cycles_in_fixed_order(rows):
    k = 4
    bandit = bandits.round_robin()
    state = bandit.init(jax.random.key(0), k, 2)
    seen = []
    for _ in range(6):
        x = np.zeros((rows, 2), np.float32)
        arms, scores = bandit.select(state, x, jax.random.key(0))
        np.testing.assert_array_equal(np.argmax(scores, -1), arms)
        seen.extend(np.asarray(arms).tolist())
        state = bandit.update(state, x, arms, np.zeros(rows))
    assert seen == [i % k for i in range(6 * rows)]


def test_multiplicative_weights_is_hedge():
    lr, k = 0.5, 3
    bandit = bandits.multiplicative_weights(learning_rate=lr)
    state = bandit.init(jax.random.key(0), k, 2)
    rng = np.random.default_rng(0)
    total = np.zeros(k)
    for _ in range(10):           # full information: one row per RM
        r = rng.random(k)
        state = bandit.update(state, np.zeros((k, 2), np.float32), np.arange(k), r)
        total += r
    _, weights = bandit.select(state, np.zeros((1, 2), np.float32), jax.random.key(0))
    want = np.exp(lr * total) / np.exp(lr * total).sum()
    np.testing.assert_allclose(weights[0], want, rtol=1e-5)
