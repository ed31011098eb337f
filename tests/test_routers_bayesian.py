"""BayesianRouter's online router: the posterior against the paper's equations in float64 on
realistic pair features, the prior mean, the reward variants against hand-computed values,
the ablations (w/o offline, w/o online, Weighted-score), jit and checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit import bandits, routers
from rmbandit.routers import bayesian
from tests.reference import quantile_rescale_ref
from rmbandit.training.losses import dpo_loss

K, D = 4, 16


def _features(rng, rows, common=None, norm=300.0):
    """Pair features as an LM-based encoder gives them: norms in the hundreds and nearly
    collinear rows (a shared direction, cosine ~0.99 between rows)."""
    if common is None:
        common = np.ones(D) / np.sqrt(D)
    return (norm * common + 0.1 * norm * rng.normal(size=(rows, D)) / np.sqrt(D)).astype(np.float32)


def _graves(history, raw):
    """Graves et al. 2017 / the paper's App. B rescaling of each reward, from the equation."""
    return np.array([quantile_rescale_ref(history, r) for r in raw])


def _paper_update(mu, sigma, h, arms, r, noise_var):
    """Eqs. (5)-(6), per RM n over the pairs I_n routed to it, in float64:
    Sigma' = (Sigma^-1 + H^T H / s2)^-1,  mu' = Sigma' (Sigma^-1 mu + H^T r / s2)."""
    mu, sigma = mu.copy(), sigma.copy()
    for n in range(mu.shape[0]):
        rows = arms == n
        if not rows.any():
            continue
        hn, rn = h[rows].astype(np.float64), r[rows].astype(np.float64)
        precision = np.linalg.inv(sigma[n])
        new_sigma = np.linalg.inv(precision + hn.T @ hn / noise_var)
        mu[n] = new_sigma @ (precision @ mu[n] + hn.T @ rn / noise_var)
        sigma[n] = new_sigma
    return mu, sigma


def _bandit_state(state):
    return next(s for s in bandits.base.inner_states(state.bandit) if hasattr(s, "arms"))


# ---------------------------------------------------------------- posterior vs the paper

def test_posterior_and_shaped_rewards_match_the_papers_equations_on_realistic_features():
    rng = np.random.default_rng(0)
    prior = (rng.normal(size=(K, D)) / 300).astype(np.float32)
    noise_var = 0.5
    router = routers.bayesian_router(prior_mean=prior, noise_var=noise_var)
    state = router.init(jax.random.key(0), K, D)
    assign, observe, reward = jax.jit(router.assign), jax.jit(router.observe), jax.jit(router.reward)
    mu = prior.astype(np.float64)
    sigma = np.stack([np.eye(D) * bayesian.PRIOR_VAR] * K)
    history = np.zeros(0)
    for step in range(5):
        h = _features(rng, 24)
        state, a = assign(state, h, jax.random.key(step))
        losses = rng.uniform(0.2, 1.2, size=24).astype(np.float32)
        raw = losses.mean() - losses                         # App. B: r_i = mean batch loss - L_i
        want = _graves(history, raw)
        np.testing.assert_allclose(reward(state, a, losses), want, rtol=1e-5, atol=1e-6)
        state = observe(state, a, losses)
        mu, sigma = _paper_update(mu, sigma, h, np.asarray(a.arms), want, noise_var)
        history = np.concatenate([history, raw])
    arms = _bandit_state(state).arms
    assert int(np.asarray(arms.pulls).min()) > 0, "every RM should have been updated for the test to bite"
    got_sigma = np.asarray(bandits.covariance(_bandit_state(state)), np.float64)
    np.testing.assert_allclose(got_sigma, sigma, atol=1e-5 * bayesian.PRIOR_VAR)
    # what routing uses: predictive mean and variance on fresh realistic features
    fresh = _features(rng, 64).astype(np.float64)
    got_mean, got_var = bandits.moments(_bandit_state(state), jnp.asarray(fresh, jnp.float32))
    np.testing.assert_allclose(got_mean, fresh @ mu.T, rtol=1e-3, atol=1e-3)
    want_var = np.einsum("bd,kde,be->bk", fresh, sigma, fresh)
    np.testing.assert_allclose(got_var, want_var, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(arms.mean) @ np.ones(D), mu @ np.ones(D), rtol=1e-3, atol=1e-4)


def test_the_prior_mean_routes_when_the_prior_is_strong_and_nothing_was_learned():
    rng = np.random.default_rng(1)
    e_bt = rng.normal(size=(K, D)).astype(np.float32)
    h = rng.normal(size=(200, D)).astype(np.float32) * 50
    router = routers.bayesian_router(prior_mean=e_bt, prior_var=1e-8)
    state = router.init(jax.random.key(0), K, D)
    _, a = router.assign(state, h, jax.random.key(1))
    want = np.argmax(h @ e_bt.T, axis=1)
    np.testing.assert_array_equal(a.rms, want)
    assert len(set(want.tolist())) == K


def test_without_a_prior_mean_the_prior_is_zero_with_variance_one():
    state = routers.bayesian_router().init(jax.random.key(0), K, D)
    arms = _bandit_state(state).arms
    np.testing.assert_array_equal(arms.mean, np.zeros((K, D)))
    np.testing.assert_allclose(arms.prior_var, np.full(K, bayesian.NO_PRIOR_VAR))
    with_prior = routers.bayesian_router(prior_mean=np.ones((K, D))).init(jax.random.key(0), K, D)
    np.testing.assert_allclose(_bandit_state(with_prior).arms.prior_var, np.full(K, bayesian.PRIOR_VAR))
    explicit = routers.bayesian_router(prior_var=0.3).init(jax.random.key(0), K, D)
    np.testing.assert_allclose(_bandit_state(explicit).arms.prior_var, np.full(K, 0.3))


# ---------------------------------------------------------------- reward variants

def test_baseline_reward_hand_computed():
    router = routers.bayesian_router()
    state = router.init(jax.random.key(0), K, D)
    h = np.random.default_rng(2).normal(size=(4, D)).astype(np.float32)
    state, a = router.assign(state, h, jax.random.key(0))
    first = np.array([0.2, 0.8, 0.5, 0.5], np.float32)         # centred: [0.3, -0.3, 0, 0]
    np.testing.assert_allclose(router.reward(state, a, first), [0.5] * 4)   # no history yet
    state = router.observe(state, a, first)
    # history [-0.3, 0, 0, 0.3]: q20 = -0.12, q80 = 0.12; new centred rewards [0.3, -0.1, -0.2, 0]
    second = np.array([0.1, 0.5, 0.6, 0.4], np.float32)
    np.testing.assert_allclose(router.reward(state, a, second), [1.0, 1 / 12, 0.0, 0.5], atol=1e-6)


def test_advantage_rewards_hand_computed():
    nan = np.nan
    losses = np.array([[0.2, 0.5, 0.9, 0.4],     # routed 0: 0.2 <= mean 0.5        -> 1
                       [0.7, 0.4, 0.4, 0.5],     # routed 0: 0.7 >  mean 0.5        -> 0
                       [0.5, 0.5, 0.5, 0.5],     # routed 3: equal, "no greater"     -> 1
                       [0.3, nan, 0.6, nan],     # routed 0 vs RM 2 only             -> 1
                       [nan, 0.9, 0.1, nan],     # routed 1: 0.9 > mean 0.5          -> 0
                       [nan, nan, 0.4, nan],     # no other RM queried               -> NaN
                       [nan, 0.2, 0.4, nan]],    # routed loss missing               -> NaN
                      np.float32)
    got = routers.advantage_rewards(losses, np.array([0, 0, 3, 0, 1, 2, 0]))
    np.testing.assert_array_equal(got, [1, 0, 1, 1, 0, nan, nan])


@pytest.mark.parametrize("kind", ["full_advantage", "light_advantage"])
def test_advantage_routers_credit_the_thompson_posterior_with_the_advantage(kind):
    rng = np.random.default_rng(3)
    router = routers.bayesian_router(reward=kind, light_rms=2)
    state = router.init(jax.random.key(0), K, D)
    h = _features(rng, 32)
    state, a = router.assign(state, h, jax.random.key(4))
    queried = routers.advantage_queries(jax.random.key(5), a.rms, K, None if kind == "full_advantage" else 2)
    losses = np.where(queried, rng.uniform(0.1, 1.0, size=(32, K)), np.nan).astype(np.float32)
    rewards = routers.advantage_rewards(losses, a.rms)
    assert set(np.unique(rewards).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(router.reward(state, a, losses), rewards)
    # the advantage rewards go to the posterior as they are: no centring, no rescaling
    thompson = bandits.linear_thompson(prior_var=bayesian.NO_PRIOR_VAR)
    want = thompson.update(_bandit_state(state), h, a.arms, rewards)
    got = _bandit_state(router.observe(state, a, losses))
    np.testing.assert_allclose(got.arms.mean, want.arms.mean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reward", ["baseline", "full_advantage"])
def test_only_a_router_without_offline_priors_can_take_a_new_rm(reward):
    """E_bt has one row per RM of the offline router's pool: a new RM has no prior."""
    with_priors = routers.bayesian_router(prior_mean=np.ones((K, D), np.float32), reward=reward)
    assert with_priors.grow is None
    plain = routers.bayesian_router(reward=reward)
    state = plain.grow(plain.init(jax.random.key(0), K, D), jax.random.key(1), 2, D)
    assert state.counts.shape == (K + 2,) and _bandit_state(state).arms.mean.shape == (K + 2, D)


def test_advantage_routers_skip_unobserved_pairs_eagerly_as_under_jit():
    """A pair marked NO_ARM (a tie: nothing was trained on it) may have no losses at all."""
    rng = np.random.default_rng(4)
    router = routers.bayesian_router(reward="full_advantage")
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, _features(rng, 6), jax.random.key(1))
    a = a._replace(arms=a.arms.at[2].set(bandits.NO_ARM))
    losses = rng.uniform(0.1, 1.0, size=(6, K)).astype(np.float32)
    losses[2] = np.nan
    eager = router.observe(state, a, losses)
    jitted = jax.jit(router.observe)(state, a, losses)
    np.testing.assert_array_equal(_bandit_state(eager).arms.mean, _bandit_state(jitted).arms.mean)
    losses[3] = np.nan                                   # an observed pair still needs its losses
    with pytest.raises(ValueError, match=r"the routed RM's loss is NaN at pairs \[3\]"):
        router.observe(state, a, losses)


def test_advantage_queries_pick_the_routed_rm_and_distinct_random_others():
    k, rms = 6, np.arange(600) % 6
    q = np.asarray(routers.advantage_queries(jax.random.key(0), rms, k, 3))
    assert q[np.arange(600), rms].all()
    np.testing.assert_array_equal(q.sum(1), np.full(600, 4))
    np.testing.assert_array_equal(q, routers.advantage_queries(jax.random.key(0), rms, k, 3))
    assert not np.array_equal(q, routers.advantage_queries(jax.random.key(1), rms, k, 3))
    others = q & (rms[:, None] != np.arange(k))
    # each other RM is drawn 3/5 of the time for the pairs it is not routed: 300 of 500
    assert np.all(np.abs(others.sum(0) - 300) < 60), others.sum(0)
    assert np.asarray(routers.advantage_queries(jax.random.key(0), rms, k, None)).all()
    assert np.asarray(routers.advantage_queries(jax.random.key(0), rms, k, 5)).all()


def test_losses_under_labels_match_the_dpo_loss_of_the_pair_and_of_the_flipped_pair():
    rng = np.random.default_rng(4)
    pc, pr, rc, rr = (rng.normal(size=5).astype(np.float32) * 10 for _ in range(4))
    margin = (pc - rc) - (pr - rr)
    agrees = np.array([[True, False, True]] * 5)
    agrees[2] = [False, True, False]
    queried = np.ones((5, 3), bool)
    queried[4, 1] = False
    got = np.asarray(routers.losses_under_labels(margin, 0.5, agrees, queried))
    same = np.asarray(dpo_loss(pc, pr, rc, rr, beta=0.5))
    flipped = np.asarray(dpo_loss(pr, pc, rr, rc, beta=0.5))
    want = np.where(agrees, same[:, None], flipped[:, None])
    want[4, 1] = np.nan
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[:, 0][agrees[:, 0]], np.logaddexp(0, -0.5 * margin.astype(np.float64))[agrees[:, 0]],
                               rtol=1e-6)


# ---------------------------------------------------------------- ablations

def test_without_online_routes_by_the_offline_scores_and_never_changes_its_state():
    rng = np.random.default_rng(5)
    e_bt = rng.normal(size=(K, D)).astype(np.float32)
    router = routers.bayesian_router(prior_mean=e_bt, online=False)
    assert router.reward is None
    state = router.init(jax.random.key(0), K, D)
    h = rng.normal(size=(50, D)).astype(np.float32)
    state, first = router.assign(state, h, jax.random.key(1))
    np.testing.assert_array_equal(first.rms, np.argmax(h @ e_bt.T, axis=1))
    np.testing.assert_allclose(first.scores, h @ e_bt.T, rtol=1e-5, atol=1e-5)
    for step in range(3):
        observed = router.observe(state, first, rng.uniform(size=50).astype(np.float32))
        assert observed is state
    _, again = router.assign(state, h, jax.random.key(9))
    np.testing.assert_array_equal(again.rms, first.rms)


def test_weighted_score_interpolates_between_the_offline_and_the_online_router():
    rng = np.random.default_rng(6)
    e_bt = rng.normal(size=(K, D)).astype(np.float32)
    h = rng.normal(size=(300, D)).astype(np.float32)
    key = jax.random.key(7)
    offline = h @ e_bt.T
    thompson = bandits.linear_thompson(prior_var=bayesian.NO_PRIOR_VAR)
    ts_state = thompson.init(jax.random.key(0), K, D)
    ts_arms, ts_scores = thompson.select(ts_state, h, key)

    def soft(s):
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    picks = {}
    for alpha in (0.0, 0.25, 0.5, 1.0):
        router = routers.bayesian_router(prior_mean=e_bt, mix=alpha)
        state = router.init(jax.random.key(0), K, D)
        np.testing.assert_array_equal(_bandit_state(state).arms.mean, np.zeros((K, D)))   # zero-mean TS part
        _, a = router.assign(state, h, key)
        want = alpha * soft(offline) + (1 - alpha) * soft(np.asarray(ts_scores))
        np.testing.assert_allclose(a.scores, want, rtol=1e-5, atol=1e-6)
        picks[alpha] = np.asarray(a.rms)
    np.testing.assert_array_equal(picks[1.0], np.argmax(offline, 1))
    np.testing.assert_array_equal(picks[0.0], ts_arms)
    agree_off = [np.mean(picks[a] == np.argmax(offline, 1)) for a in (0.0, 0.25, 0.5, 1.0)]
    assert agree_off == sorted(agree_off) and agree_off[0] < 0.5, agree_off


# ---------------------------------------------------------------- jit and checkpoints

@pytest.mark.parametrize("options", [{}, {"reward": "light_advantage"}, {"mix": 0.5}])
def test_jitted_assign_and_observe_equal_eager_and_the_state_round_trips_through_orbax(options, tmp_path):
    rng = np.random.default_rng(8)
    e_bt = rng.normal(size=(K, D)).astype(np.float32) / 300
    router = routers.bayesian_router(prior_mean=e_bt, **options)
    advantage = "reward" in options

    def feedback(a, seed):
        r = np.random.default_rng(seed)
        if not advantage:
            return r.uniform(0.1, 1.0, size=a.rms.shape[0]).astype(np.float32)
        q = routers.advantage_queries(jax.random.key(seed), a.rms, K, 3)
        return np.where(q, r.uniform(0.1, 1.0, size=(a.rms.shape[0], K)), np.nan).astype(np.float32)

    state = router.init(jax.random.key(0), K, D)
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    eager = jitted = state
    for step in range(2):
        h = _features(rng, 16)
        eager, a = router.assign(eager, h, jax.random.key(step))
        jitted, b = assign(jitted, h, jax.random.key(step))
        np.testing.assert_array_equal(a.rms, b.rms)
        f = feedback(a, step)
        eager, jitted = router.observe(eager, a, f), observe(jitted, b, f)
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)

    path = bandits.save_state(tmp_path / "router", jitted)
    restored = bandits.restore_state(bandits.Bandit(router.init, None, None), path, K, D)
    assert type(restored) is type(jitted)
    for x, y in zip(jax.tree.leaves(jitted), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(x, y)
    h = _features(rng, 16)
    np.testing.assert_array_equal(router.assign(jitted, h, jax.random.key(9))[1].rms,
                                  router.assign(restored, h, jax.random.key(9))[1].rms)


# ---------------------------------------------------------------- bad input

def test_bad_arguments_and_feedback_get_errors_that_name_the_fix():
    with pytest.raises(ValueError, match=r"reward must be one of \('baseline'"):
        routers.bayesian_router(reward="full")
    with pytest.raises(ValueError, match="online=False .* needs prior_mean=E_bt"):
        routers.bayesian_router(online=False)
    with pytest.raises(ValueError, match="mix .* needs prior_mean=E_bt"):
        routers.bayesian_router(mix=0.5)
    with pytest.raises(ValueError, match=r"mix must be in \[0, 1\]"):
        routers.bayesian_router(prior_mean=np.zeros((K, D)), mix=1.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        routers.bayesian_router(prior_mean=np.full((K, D), np.nan))
    with pytest.raises(ValueError, match=r"shape \(3, 16\).*pass E_bt \[4, 16\]"):
        routers.bayesian_router(prior_mean=np.zeros((3, D)), online=False).init(jax.random.key(0), K, D)
    with pytest.raises(ValueError, match=r"prior_mean has shape \(3, 16\)"):
        routers.bayesian_router(prior_mean=np.zeros((3, D))).init(jax.random.key(0), K, D)

    router = routers.bayesian_router(reward="full_advantage")
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, np.ones((3, D), np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(3, 4\) \(NaN = not queried\), got \(3,\).*losses_under_labels"):
        router.observe(state, a, np.ones(3, np.float32))
    missing_routed = np.ones((3, K), np.float32)
    missing_routed[1, int(a.rms[1])] = np.nan
    with pytest.raises(ValueError, match=r"routed RM's loss is NaN at pairs \[1\]"):
        router.observe(state, a, missing_routed)
    light = routers.bayesian_router(reward="light_advantage")
    alone = np.full((3, K), np.nan, np.float32)
    alone[np.arange(3), np.asarray(a.rms)] = 0.5
    with pytest.raises(ValueError, match=r"pairs \[0, 1, 2\] have no other RM's loss.*advantage_queries"):
        light.observe(light.init(jax.random.key(0), K, D), a, alone)
    with pytest.raises(ValueError, match="agrees must be bool"):
        routers.losses_under_labels(np.zeros(3), 0.1, np.ones((3, K)))
    with pytest.raises(ValueError, match=r"beta must be > 0"):
        routers.losses_under_labels(np.zeros(3), 0.0, np.ones((3, K), bool))
    with pytest.raises(ValueError, match=r"others must be >= 1"):
        routers.advantage_queries(jax.random.key(0), np.array([0, 1]), K, 0)
    with pytest.raises(ValueError, match=r"routed RM indices must be in \[0, 4\)"):
        routers.advantage_queries(jax.random.key(0), np.array([0, 4]), K, 2)
