"""Reward transforms, add_arm, priors, cold start, forgetting and costs."""
import jax
import numpy as np
import pytest

from rmbandit import bandits
from tests.reference import LinearGaussianRef, quantile_rescale_ref

SUMS = bandits.epsilon_greedy(0.0)      # its per-arm score is the sum of the rewards it was given


def test_quantile_rescale_matches_graves_reference_with_bounded_history():
    rng = np.random.default_rng(0)
    bandit = bandits.quantile_rescale(SUMS, low=0.2, high=0.8, history=16)
    state = bandit.init(jax.random.key(0), 3, 2)
    history, sums = [], np.zeros(3)
    for step in range(30):
        rows = 1 + step % 4
        arms, raw = rng.integers(0, 3, rows), rng.normal(size=rows) * (1 + step)
        state = bandit.update(state, np.zeros((rows, 2), np.float32), arms, raw)
        past = history[-16:]
        for a, r in zip(arms, raw):
            sums[a] += quantile_rescale_ref(past, r)
        history.extend(raw.tolist())
        np.testing.assert_allclose(state.inner.arms.score, sums, rtol=1e-5, atol=1e-5)
    assert int(state.count) == len(history)
    np.testing.assert_allclose(np.sort(state.history), np.sort(history[-16:]), rtol=1e-6)


def test_quantile_rescale_keeps_nan_out_of_the_history():
    bandit = bandits.quantile_rescale(SUMS, history=8)
    state = bandit.init(jax.random.key(0), 2, 1)
    state = jax.jit(bandit.update)(state, np.zeros((3, 1), np.float32), np.array([0, 1, 0]),
                                   np.array([1.0, np.nan, 2.0]))
    assert int(state.count) == 2 and int(state.inner.skipped) == 1
    assert np.isfinite(np.asarray(state.inner.arms.score)).all()


def test_batch_baseline_centres_then_rescale_sees_centred_rewards():
    rewards = np.array([-1.0, -3.0, -2.0, -6.0])      # negative losses
    arms = np.array([0, 1, 0, 1])
    centred = bandits.batch_baseline(SUMS)
    state = centred.update(centred.init(jax.random.key(0), 2, 1), np.zeros((4, 1), np.float32), arms, rewards)
    mean = rewards.mean()
    np.testing.assert_allclose(state.arms.score, [rewards[[0, 2]].sum() - 2 * mean, rewards[[1, 3]].sum() - 2 * mean])
    chained = bandits.batch_baseline(bandits.quantile_rescale(SUMS))
    state = chained.init(jax.random.key(0), 2, 1)
    for _ in range(2):
        state = chained.update(state, np.zeros((4, 1), np.float32), arms, rewards)
    np.testing.assert_allclose(np.sort(state.history[:8]), np.sort(np.tile(rewards - mean, 2)))
    # a NO_ARM row changes nothing, whatever its reward: not the baseline either
    fresh = centred.init(jax.random.key(0), 2, 1)
    without = centred.update(fresh, np.zeros((4, 1), np.float32), arms, rewards)
    unobserved = centred.update(fresh, np.zeros((5, 1), np.float32), np.append(arms, bandits.NO_ARM),
                                np.append(rewards, 100.0))
    np.testing.assert_allclose(unobserved.arms.score, without.arms.score)


def test_add_arm_keeps_old_arms_and_starts_new_one_fresh():
    base = bandits.quantile_rescale(bandits.discount(bandits.linucb(init_b="zero"), 0.99, every=5))
    state = base.init(jax.random.key(0), 3, 4)
    rng = np.random.default_rng(0)
    for _ in range(4):
        state = base.update(state, rng.normal(size=(6, 4)).astype(np.float32), rng.integers(0, 3, 6), rng.random(6))
    grown = bandits.add_arm(base, state, jax.random.key(1), dim=4)
    old, new = state.inner.inner.arms, grown.inner.inner.arms
    for a, b in zip(old, new):
        np.testing.assert_array_equal(b[:3], a)
    np.testing.assert_allclose(new.cov_sqrt[3], np.eye(4))
    np.testing.assert_array_equal(new.mean[3], 0.0)
    np.testing.assert_array_equal(grown.history, state.history)
    assert bandits.num_arms(grown) == 4
    x = rng.normal(size=(2, 4)).astype(np.float32)
    grown = base.update(grown, x, np.array([3, 3]), np.array([1.0, 1.0]))
    assert int(grown.inner.inner.arms.pulls[3]) == 2
    with pytest.raises(ValueError, match="dim"):
        bandits.add_arm(base, state, jax.random.key(1), dim=5)


def test_set_prior_isotropic_equals_factory_prior_and_full_cov_matches_reference():
    k, d = 3, 4
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(k, d)).astype(np.float32)
    direct = bandits.linear_thompson(prior_var=0.02, prior_mean=mean).init(jax.random.key(0), k, d)
    via = bandits.with_prior(bandits.linear_thompson(), mean=mean, cov=0.02).init(jax.random.key(0), k, d)
    for a, b in zip(direct.arms, via.arms):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    m = rng.normal(size=(d, d))
    cov = (m @ m.T + np.eye(d)).astype(np.float32)
    state = bandits.set_prior(bandits.linear_thompson().init(jax.random.key(0), k, d), mean=mean[1], cov=cov, arms=[1])
    ref = LinearGaussianRef(k, d)
    ref.A[1] = np.linalg.inv(cov)
    ref.b[1] = ref.A[1] @ mean[1]
    x, arms, r = rng.normal(size=(20, d)), rng.integers(0, k, 20), rng.normal(size=20)
    state = bandits.linear_thompson().update(state, x.astype(np.float32), arms, r)
    ref.update(x, arms, r)
    np.testing.assert_allclose(bandits.covariance(state), ref.cov(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(bandits.posterior_mean(state.arms), ref.mean(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="positive definite"):
        bandits.set_prior(state, cov=-np.eye(d))
    with pytest.raises(ValueError, match="out of range"):
        bandits.set_prior(state, cov=1.0, arms=[7])


def test_from_state_cold_start_and_mismatch():
    bandit = bandits.linucb()
    trained = bandit.update(bandit.init(jax.random.key(0), 2, 3), np.ones((1, 3), np.float32), np.array([1]), np.array([1.0]))
    warm = bandits.from_state(bandit, trained).init(jax.random.key(5), 2, 3)
    for a, b in zip(jax.tree.leaves(warm), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        bandits.from_state(bandit, trained).init(jax.random.key(5), 3, 3)


def test_discount_linear_decays_precision_toward_prior():
    k, d, gamma = 2, 3, 0.8
    rng = np.random.default_rng(2)
    bandit = bandits.discount(bandits.linear_thompson(prior_var=0.5), gamma)
    state = bandit.init(jax.random.key(0), k, d)
    ref = LinearGaussianRef(k, d, prior_var=0.5)
    a0, b0 = ref.A.copy(), ref.b.copy()
    for _ in range(5):
        x, arms, r = rng.normal(size=(4, d)), rng.integers(0, k, 4), rng.normal(size=4)
        state = bandit.update(state, x.astype(np.float32), arms, r)
        ref.update(x, arms, r)
        ref.A = gamma * ref.A + (1 - gamma) * a0
        ref.b = gamma * ref.b + (1 - gamma) * b0
    np.testing.assert_allclose(bandits.covariance(state.inner), ref.cov(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(bandits.posterior_mean(state.inner.arms), ref.mean(), rtol=1e-4, atol=1e-5)


def test_discount_every_n_and_score_states():
    bandit = bandits.discount(bandits.epsilon_greedy(0.0), 0.5, every=2)
    state = bandit.init(jax.random.key(0), 2, 1)
    x = np.zeros((1, 1), np.float32)
    state = bandit.update(state, x, np.array([0]), np.array([4.0]))
    np.testing.assert_allclose(state.inner.arms.score, [4.0, 0.0])            # not yet
    state = bandit.update(state, x, np.array([0]), np.array([4.0]))
    np.testing.assert_allclose(state.inner.arms.score, [8.0 * 0.25, 0.0])     # gamma ** every
    np.testing.assert_allclose(state.inner.arms.weight, [2.0 * 0.25, 0.0])
    with pytest.raises(ValueError, match="gamma"):
        bandits.discount(bandits.exp3(), 1.5)
    with pytest.raises(TypeError, match="forgetting"):
        bandits.forget(bandits.neural_ucb(hidden=(2, 2)).init(jax.random.key(0), 2, 2), 0.9)


def test_discount_tracks_a_switch_in_the_best_arm():
    """Rewards flip halfway; the forgetting bandit follows, the plain one lags."""
    x = np.ones((1, 1), np.float32)

    def late_choices(bandit):
        state = bandit.init(jax.random.key(0), 2, 1)
        update, select = jax.jit(bandit.update), jax.jit(bandit.select)
        picks = []
        for t in range(400):
            arm, _ = select(state, x, jax.random.key(t))
            reward = float((int(arm[0]) == 0) == (t < 200))
            state = update(state, x, arm, np.array([reward]))
            picks.append(int(arm[0]))
        return np.mean(np.array(picks[250:]) == 1)

    plain = late_choices(bandits.linucb(alpha=0.2, init_b="zero"))
    forgetting = late_choices(bandits.discount(bandits.linucb(alpha=0.2, init_b="zero"), 0.9))
    assert forgetting > 0.9 and forgetting > plain + 0.2, (forgetting, plain)


def test_cost_aware_prefers_the_cheap_arm_on_ties():
    bandit = bandits.cost_aware(bandits.linucb(alpha=0.1, init_b="zero"), weight=0.5)
    state = bandits.set_costs(bandit.init(jax.random.key(0), 2, 2), [1.0, 0.1])
    rng = np.random.default_rng(0)

    def contexts(n):                        # a bias feature, so a constant penalty is learnable
        return np.stack([np.ones(n), rng.normal(size=n)], 1).astype(np.float32)

    for _ in range(40):                     # both arms pay the same
        x = contexts(8)
        state = bandit.update(state, x, np.array([0, 1] * 4), 0.5 + 0.3 * x[:, 1])
    arms, _ = bandit.select(state, contexts(200), jax.random.key(0))
    assert np.mean(np.asarray(arms) == 1) > 0.95
    with pytest.raises(ValueError, match="arms"):
        bandits.set_costs(state, [1.0, 2.0, 3.0])
