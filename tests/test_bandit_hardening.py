"""Bandits on inputs as they really come: nearly collinear large-norm contexts (LM hidden
states share a large common direction), corrupt states, bad hyper-parameters, out-of-range
arm indices, checkpoints restored without a target, and every product at HIGHEST precision."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rmbandit import bandits
from tests.helpers import BANDITS, HIGHEST, PLAIN_BANDITS, assert_every_dot
from tests.reference import LinearGaussianRef

D, K = 64, 3


def lm_like_batches(rng, norm, rows, updates, d=D, spread=0.1):
    """Rows m + spread * N(0, I): one direction of norm ``norm`` shared by every row."""
    m = rng.normal(size=d)
    m *= norm / np.linalg.norm(m)
    return [(m + spread * rng.normal(size=(rows, d))).astype(np.float32) for _ in range(updates + 1)], m


def worst_errors(bandit, ref, rng, norm, rows, updates=4, k=K, d=D, spread=0.1):
    """Run ``updates`` batched updates on LM-like rows; return the worst relative error of the
    predictive mean (against |mean| + sd, the score's own scale) and variance vs float64."""
    batches, m = lm_like_batches(rng, norm, rows, updates, d, spread)
    weights = rng.normal(size=(k, d)) / norm
    state = bandit.init(jax.random.key(0), k, d)
    worst_mean = worst_var = 0.0
    for x in batches[:-1]:
        arms = rng.integers(0, k, size=rows).astype(np.int32)
        rewards = (np.einsum("bd,bd->b", x, weights[arms]) + 0.3 * rng.normal(size=rows)).astype(np.float32)
        state = bandit.update(state, x, arms, rewards)
        ref.update(x.astype(np.float64), arms, rewards.astype(np.float64))
        probe = (m + spread * rng.normal(size=(16, d))).astype(np.float32)
        mean, var = (np.asarray(v, np.float64) for v in bandits.moments(state, probe))
        p64 = probe.astype(np.float64)
        want_var = np.einsum("bd,kde,be->bk", p64, ref.cov(), p64)
        want_mean = p64 @ ref.mean().T
        worst_mean = max(worst_mean, np.max(np.abs(mean - want_mean) / (np.abs(want_mean) + np.sqrt(want_var))))
        worst_var = max(worst_var, np.max(np.abs(var - want_var) / want_var))
    return state, worst_mean, worst_var


@pytest.mark.parametrize("rows", [16, 64])
@pytest.mark.parametrize("norm", [10.0, 100.0, 1000.0])
def test_linucb_scores_exact_on_nearly_collinear_large_norm_batches(norm, rows):
    """The issue's reproduction grown to K=3 arms and 4 batched updates: the old block step
    (Cholesky of I + Phi^T Phi) was 100 % off at norm 100 and 5e4 at norm 1000."""
    rng = np.random.default_rng(int(norm) + rows)
    alpha = 1.0
    bandit = bandits.linucb(alpha=alpha, init_b="zero")
    ref = LinearGaussianRef(K, D)
    state, mean_err, var_err = worst_errors(bandit, ref, rng, norm, rows)
    assert mean_err < 1e-3 and var_err < 1e-3, (mean_err, var_err)
    probe = lm_like_batches(rng, norm, 8, 0)[0][0]
    _, scores = bandit.select(state, probe, jax.random.key(0))
    want = ref.ucb(probe.astype(np.float64), alpha)
    scale = np.abs(probe.astype(np.float64) @ ref.mean().T) + alpha * np.sqrt(
        np.einsum("bd,kde,be->bk", probe.astype(np.float64), ref.cov(), probe.astype(np.float64)))
    assert np.max(np.abs(np.asarray(scores, np.float64) - want) / scale) < 1e-3


@pytest.mark.parametrize("rows", [16, 64])
@pytest.mark.parametrize("norm", [10.0, 100.0, 1000.0])
def test_thompson_posterior_exact_on_nearly_collinear_large_norm_batches(norm, rows):
    rng = np.random.default_rng(7 + int(norm) + rows)
    _, mean_err, var_err = worst_errors(bandits.linear_thompson(prior_var=0.02), LinearGaussianRef(K, D, 0.02),
                                        rng, norm, rows)
    assert mean_err < 1e-3 and var_err < 1e-3, (mean_err, var_err)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), norm=st.sampled_from([10.0, 300.0, 1000.0]),
       spread=st.sampled_from([1e-2, 1e-1, 1.0]), rows=st.sampled_from([1, 5, 33]),
       which=st.sampled_from(["linucb", "thompson"]))
def test_shared_direction_contexts_stay_exact(seed, norm, spread, rows, which):
    """Hypothesis over LM-like batches: a shared direction, norm up to 1e3, spread down to 1e-2."""
    rng = np.random.default_rng(seed)
    d = 24
    bandit, ref = ((bandits.linucb(alpha=1.0, init_b="zero"), LinearGaussianRef(2, d)) if which == "linucb" else
                   (bandits.linear_thompson(prior_var=0.02), LinearGaussianRef(2, d, 0.02)))
    state, mean_err, var_err = worst_errors(bandit, ref, rng, norm, rows, updates=3, k=2, d=d, spread=spread)
    assert np.isfinite(np.asarray(state.arms.cov_sqrt)).all() and int(state.skipped) == 0
    assert mean_err < 1e-3 and var_err < 1e-3, (mean_err, var_err)


def test_thompson_at_context_scale_1e4_stays_finite_and_exact():
    """The issue's d=8, B=16, scale 1e4 case: the old step gave a NaN cov_sqrt, skipped 0.
    Norm 3e4 is 30x past the 1e3 the 1e-3 target covers; the variances stay within 2e-2
    (measured 1.1e-2 on the arm that took all 16 rows)."""
    rng = np.random.default_rng(0)
    d = 8
    x = (1e4 * (rng.normal(size=d) + 0.01 * rng.normal(size=(16, d)))).astype(np.float32)
    arms, rewards = np.zeros(16, np.int32), rng.normal(size=16).astype(np.float32)
    bandit = bandits.linear_thompson()
    state = bandit.update(bandit.init(jax.random.key(0), 2, d), x, arms, rewards)
    assert np.isfinite(np.asarray(state.arms.cov_sqrt)).all() and int(state.skipped) == 0
    ref = LinearGaussianRef(2, d)
    ref.update(x.astype(np.float64), arms, rewards.astype(np.float64))
    _, var = bandits.moments(state, x[:4])
    want = np.einsum("bd,kde,be->bk", x[:4].astype(np.float64), ref.cov(), x[:4].astype(np.float64))
    np.testing.assert_allclose(np.asarray(var, np.float64), want, rtol=2e-2)


# ---------------------------------------------------------------- non-finite states

def _corrupt(state, arm):
    """Put a NaN into arm ``arm``'s first floating statistic."""
    holder = bandits.base.arm_states(state)[-1]
    name = next(f for f in holder.arms._fields if jnp.issubdtype(
        jax.tree.leaves(getattr(holder.arms, f))[0].dtype, jnp.floating))
    bad = jax.tree.map(lambda x: x.at[arm].set(jnp.nan), getattr(holder.arms, name))
    return bandits.base.replace_innermost(state, lambda s: s is holder,
                                          lambda s: s._replace(arms=s.arms._replace(**{name: bad})))


@pytest.mark.parametrize("name", ["linucb", "thompson", "neural_ucb", "epsilon_greedy"])
def test_a_non_finite_arm_never_wins_and_eager_calls_raise(name):
    bandit = BANDITS[name]()
    rng = np.random.default_rng(0)
    state = bandit.init(jax.random.key(0), 3, 4)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    state = bandit.update(state, x, np.array([0, 1, 2, 0, 1, 2]), rng.random(6).astype(np.float32))
    broken = _corrupt(state, 1)
    with pytest.raises(FloatingPointError, match=r"arm\(s\) \[1\]"):
        bandit.select(broken, x, jax.random.key(1))
    for seed in range(5):
        arms, _ = jax.jit(bandit.select)(broken, x, jax.random.key(seed))
        assert not np.any(np.asarray(arms) == 1) or name == "epsilon_greedy"


@pytest.mark.parametrize("name", ["linucb", "thompson"])
@pytest.mark.parametrize("rows", [1, 6])
def test_contexts_whose_squares_overflow_are_invalid_rows(name, rows):
    """Norm 2e20: |x|^2 overflows float32, so such rows are dropped and counted inside jit
    (statistics bit for bit unchanged) and named eagerly."""
    bandit = BANDITS[name]()
    state = bandit.init(jax.random.key(0), 3, 4)
    x = np.full((rows, 4), 1e20, np.float32)
    arms, rewards = np.full(rows, 2, np.int32), np.ones(rows, np.float32)
    new = jax.jit(bandit.update)(state, x, arms, rewards)
    assert int(new.skipped) == rows
    for old, kept in zip(jax.tree.leaves(state.arms), jax.tree.leaves(new.arms)):
        np.testing.assert_array_equal(old, kept)
    with pytest.raises(ValueError, match="norms above 1.8e19"):
        bandit.update(state, x, arms, rewards)


@pytest.mark.parametrize("rows", [1, 6])
def test_an_update_that_overflows_keeps_the_arm_and_is_counted(rows):
    """A broad prior (variance 1e6), tiny contexts and a reward of 3e38 push the posterior
    mean past float32's range: inside jit the arm keeps its statistics bit for bit and the
    rows are counted; an eager call raises and the caller's state is untouched."""
    bandit = bandits.linear_thompson(prior_var=1e6)
    state = bandit.init(jax.random.key(0), 3, 4)
    x = np.full((rows, 4), 5e-4, np.float32)
    arms, rewards = np.full(rows, 2, np.int32), np.full(rows, 3e38, np.float32)
    new = jax.jit(bandit.update)(state, x, arms, rewards)
    assert int(new.skipped) == rows
    for old, kept in zip(jax.tree.leaves(state.arms), jax.tree.leaves(new.arms)):
        if jnp.issubdtype(old.dtype, jnp.floating):
            np.testing.assert_array_equal(old, kept)
    with pytest.raises(FloatingPointError, match=r"arm\(s\) \[2\] non-finite"):
        bandit.update(state, x, arms, rewards)


# ---------------------------------------------------------------- bad input, named

@pytest.mark.parametrize("build, message", [
    (lambda: bandits.linucb(alpha=float("nan")), "alpha must be a finite number"),
    (lambda: bandits.linucb(alpha=-1.0), "alpha must be >= 0"),
    (lambda: bandits.linucb(tile=0), "tile must be >= 1"),
    (lambda: bandits.linear_thompson(prior_var=0), r"prior_var must be > 0"),
    (lambda: bandits.linear_thompson(noise_var=-1.0), r"noise_var must be > 0"),
    (lambda: bandits.linear_thompson(prior_mean=np.array([np.nan, 0.0])), "prior_mean contains NaN"),
    (lambda: bandits.exp3(gamma=1.5), r"gamma must be in \(0, 1\]"),
    (lambda: bandits.exp3(gamma=0.0), r"gamma must be in \(0, 1\]"),
    (lambda: bandits.exp3(learning_rate=0.0), "learning_rate must be > 0"),
    (lambda: bandits.epsilon_greedy(epsilon=2.0), r"epsilon must be in \[0, 1\]"),
    (lambda: bandits.multiplicative_weights(learning_rate=-0.1), "learning_rate must be > 0"),
    (lambda: bandits.neural_ucb(hidden=()), "hidden must be a non-empty tuple"),
    (lambda: bandits.neural_ucb(buffer_size=0), "buffer_size must be >= 1"),
    (lambda: bandits.neural_ucb(train_steps=1.5), "train_steps must be an integer"),
    (lambda: bandits.quantile_rescale(bandits.linucb(), 0.8, 0.2), "low < high"),
    (lambda: bandits.quantile_rescale(bandits.linucb(), history=0), "history must be >= 1"),
    (lambda: bandits.discount(bandits.linucb(), 1.5), r"gamma must be in \(0, 1\]"),
    (lambda: bandits.discount(bandits.linucb(), 0.9, every=0), "every must be >= 1"),
    (lambda: bandits.cost_aware(bandits.linucb(), -1.0), "weight must be >= 0"),
    (lambda: bandits.linucb(alpha="0.5"), "alpha must be a finite number"),
])
def test_bad_hyper_parameters_are_named_when_the_bandit_is_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name", PLAIN_BANDITS)
def test_bad_arm_count_or_width_at_init(name):
    bandit = BANDITS[name]()
    with pytest.raises(ValueError, match="num_arms must be >= 1"):
        bandit.init(jax.random.key(0), 0, 4)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        bandit.init(jax.random.key(0), 2, 0)


@pytest.mark.parametrize("name", PLAIN_BANDITS)
def test_arm_index_outside_int32_is_out_of_range_not_wrapped(name):
    """2**32 + 2 cast to int32 is 2: it must be an error, not arm 2."""
    bandit = BANDITS[name]()
    state = bandit.init(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match=f"arm index {2**32 + 2} out of range"):
        bandit.update(state, np.ones((2, 4), np.float32), np.array([0, 2**32 + 2], np.int64), np.ones(2))


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", list(BANDITS))
def test_restore_without_a_target_rebuilds_the_state_type(name, tmp_path):
    bandit = BANDITS[name]()
    rng = np.random.default_rng(0)
    state = bandit.init(jax.random.key(0), 3, 5)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    state = bandit.update(state, x, np.array([0, 1, 2, 0]), rng.random(4).astype(np.float32))
    if name in ("linucb", "neural_ucb"):                      # a grown state restores too
        state = bandits.add_arm(bandit, state, jax.random.key(1), dim=5)
    bandits.save_state(tmp_path / "bandit", state)
    restored = bandits.restore_state(bandit, tmp_path / "bandit")
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bandit.select(state, x, jax.random.key(2))[0],
                                  bandit.select(restored, x, jax.random.key(2))[0])


@pytest.mark.parametrize("cov", [0.02, np.diag([0.5, 1.0, 2.0]).astype(np.float32)])
def test_a_bandit_with_a_prior_restores_cold_starts_and_jits(cov, tmp_path):
    """with_prior's init runs traced (eval_shape when a checkpoint restores or from_state
    starts, jit): its checks of the caller's prior must not need the state's values."""
    bandit = bandits.quantile_rescale(bandits.with_prior(bandits.linear_thompson(), mean=np.ones(3), cov=cov))
    state = bandit.update(bandit.init(jax.random.key(0), 2, 3), np.eye(3, dtype=np.float32)[:2],
                          np.array([0, 1]), np.array([0.3, 0.9], np.float32))
    bandits.save_state(tmp_path / "prior", state)
    for restored in (bandits.restore_state(bandit, tmp_path / "prior"),
                     bandits.from_state(bandit, state).init(jax.random.key(1), 2, 3)):
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
            np.testing.assert_array_equal(a, b)
    fresh = jax.jit(bandit.init, static_argnums=(1, 2))(jax.random.key(0), 2, 3)
    np.testing.assert_allclose(fresh.inner.arms.prior_mean, np.ones((2, 3)))


def test_restore_into_another_bandit_is_a_clear_error(tmp_path):
    state = bandits.linucb().init(jax.random.key(0), 3, 5)
    bandits.save_state(tmp_path / "bandit", state)
    with pytest.raises(ValueError, match="build the same bandit"):
        bandits.restore_state(bandits.quantile_rescale(bandits.linucb()), tmp_path / "bandit")
    with pytest.raises(ValueError, match="build the same bandit"):
        bandits.restore_state(bandits.exp3(), tmp_path / "bandit")
    with pytest.raises(FileNotFoundError, match="no bandit checkpoint"):
        bandits.restore_state(bandits.linucb(), tmp_path / "missing")


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("name", list(BANDITS))
@pytest.mark.parametrize("rows", [1, 7])
def test_every_product_of_select_and_update_runs_at_highest_precision(name, rows):
    """On GPU the default float32 matmul is TF32 (a sequential LinUCB update then fails 9 of
    16 float64 comparisons on collinear contexts); the bandits ask for HIGHEST themselves."""
    bandit = BANDITS[name]()
    state = bandit.init(jax.random.key(0), 3, 4)
    x = jnp.ones((rows, 4), jnp.float32)
    arms, rewards = jnp.zeros((rows,), jnp.int32), jnp.ones((rows,), jnp.float32)
    products = {"linucb": 2, "thompson": 2, "neural_ucb": 4, "rescaled_discounted_linucb": 2}.get(name, 0)
    assert_every_dot(lambda s, c, k: bandit.select(s, c, k), state, x, jax.random.key(0), want=HIGHEST,
                     at_least=products)
    assert_every_dot(bandit.update, state, x, arms, rewards, want=HIGHEST, at_least=max(1, products))


@pytest.mark.parametrize("name", list(BANDITS))
def test_a_fresh_state_can_be_donated(name):
    """The training loop donates the bandit state to its jitted update; no two leaves of a
    fresh state may share a buffer (XLA refuses to donate one buffer twice)."""
    bandit = BANDITS[name]()
    state = bandit.init(jax.random.key(0), 3, 4)
    update = jax.jit(bandit.update, donate_argnums=0)
    new = update(state, np.ones((2, 4), np.float32), np.array([0, 1], np.int32), np.ones(2, np.float32))
    assert bandits.num_arms(new) == 3


def test_set_prior_on_a_bandit_without_linear_arms_names_what_it_needs():
    state = bandits.quantile_rescale(bandits.exp3()).init(jax.random.key(0), 3, 4)
    with pytest.raises(TypeError, match=r"holds no linear-Gaussian arms \(LinUCB / linear_thompson\)"):
        bandits.set_prior(state, cov=0.02)


@pytest.mark.parametrize("name", ["linucb", "linear_thompson", "exp3", "neural_ucb"])
def test_unobserved_rows_change_nothing_and_are_not_skipped(name):
    """NO_ARM rows (a tied pair: no loss speaks for its RM) are silently left out, eager or jitted,
    whatever their reward; the observed rows update exactly as they would alone."""
    bandit = {"linucb": bandits.linucb(), "linear_thompson": bandits.linear_thompson(),
              "exp3": bandits.exp3(), "neural_ucb": bandits.neural_ucb(hidden=(8,), buffer_size=8)}[name]
    key = jax.random.key(0)
    x = jax.random.normal(key, (4, 5))
    state = bandit.init(key, 3, 5)
    alone = bandit.update(state, x[:2], jnp.array([0, 2]), jnp.array([1.0, 0.5]))
    arms, rewards = jnp.array([0, 2, bandits.NO_ARM, bandits.NO_ARM]), jnp.array([1.0, 0.5, jnp.nan, 3.0])
    for update in (bandit.update, jax.jit(bandit.update)):
        mixed = update(state, x, arms, rewards)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(mixed)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert int(mixed.skipped) == 0
