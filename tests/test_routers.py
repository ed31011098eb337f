"""Routers: each does what it says, reward shaping matches the equations, jit = eager,
states checkpoint, and broken statistics are surfaced."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rmbandit import bandits, routers

K, D, B = 4, 6, 5


def _contexts(seed, rows=B, dim=D):
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def _graves(history, r, low=0.2, high=0.8):
    """LASeR App. A / Graves et al. 2017, from the equation: 0 below the low quantile of the
    past rewards, 1 above the high one, linear between; 0.5 with no or a degenerate history."""
    if len(history) == 0:
        return np.full_like(r, 0.5)
    q_lo, q_hi = np.quantile(history, [low, high])
    if q_hi > q_lo:
        return np.clip((r - q_lo) / (q_hi - q_lo), 0.0, 1.0)
    return np.where(r > q_hi, 1.0, np.where(r < q_lo, 0.0, 0.5))


def _score(state):
    """The uniform-random bandit's per-arm reward sums, under the rescaling wrapper if any."""
    inner = state.bandit
    while not hasattr(inner, "arms"):
        inner = inner.inner
    return np.asarray(inner.arms.score), np.asarray(inner.arms.pulls)


# ---------------------------------------------------------------- what each router does

def test_per_batch_router_gives_one_rm_and_credits_one_arm_with_the_batch_reward():
    router = routers.bandit_router(bandits.linucb(alpha=0.5), "batch", feedback="reward", rescale=None)
    state = router.init(jax.random.key(0), K, D)
    x = _contexts(1)
    state, a = router.assign(state, x, jax.random.key(2))
    arm = int(a.arms[0])
    np.testing.assert_array_equal(a.rms, np.full(B, arm))
    np.testing.assert_allclose(a.rows, x.mean(0, keepdims=True), rtol=1e-6)
    want_arm = np.argmax(np.asarray(bandits.linucb(alpha=0.5).select(
        router.init(jax.random.key(0), K, D).bandit, x.mean(0, keepdims=True), jax.random.key(2))[1]))
    assert arm == want_arm
    np.testing.assert_array_equal(state.counts, np.eye(K, dtype=int)[arm] * B)

    per_item = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    before = state.bandit.arms
    after = router.observe(state, a, per_item).bandit.arms
    # LinUCB (A = I): the pulled arm's posterior mean after one row c (the mean context) with
    # reward r (the batch mean) is (I + c c^T)^{-1} (mu0 + r c); no other arm moves
    c = x.mean(0).astype(np.float64)
    want = np.linalg.solve(np.eye(D) + np.outer(c, c), np.asarray(before.mean[arm], np.float64) + per_item.mean() * c)
    np.testing.assert_allclose(after.mean[arm], want, rtol=1e-5, atol=1e-6)
    others = np.arange(K) != arm
    np.testing.assert_array_equal(np.asarray(after.mean)[others], np.asarray(before.mean)[others])
    np.testing.assert_array_equal(np.asarray(after.cov_sqrt)[others], np.asarray(before.cov_sqrt)[others])
    np.testing.assert_array_equal(after.pulls, np.eye(K, dtype=int)[arm])


def test_per_item_router_gives_one_arm_per_row_and_credits_each():
    router = routers.uniform_random("item", feedback="reward", rescale=None)
    state = router.init(jax.random.key(0), K, D)
    x = _contexts(3, rows=64)
    state, a = router.assign(state, x, jax.random.key(4))
    want, _ = bandits.uniform_random().select(bandits.uniform_random().init(None, K, D), x, jax.random.key(4))
    np.testing.assert_array_equal(a.rms, want)
    np.testing.assert_array_equal(a.arms, want)
    assert len(set(np.asarray(a.rms).tolist())) > 1
    np.testing.assert_array_equal(state.counts, np.bincount(want, minlength=K))
    rewards = np.random.default_rng(5).random(64).astype(np.float32)
    score, pulls = _score(router.observe(state, a, rewards))
    np.testing.assert_allclose(score, np.bincount(want, weights=rewards, minlength=K), rtol=1e-6)
    np.testing.assert_array_equal(pulls, np.bincount(want, minlength=K))


def test_per_item_linucb_decides_and_learns_on_each_items_own_context():
    router = routers.bandit_router(bandits.linucb(alpha=0.0), "item", feedback="reward", rescale=None)
    state = router.init(jax.random.key(0), K, D)
    x = _contexts(6, rows=32)
    state, a = router.assign(state, x, jax.random.key(1))
    bandit_state = state.bandit
    want, _ = bandits.linucb(alpha=0.0).select(bandit_state, x, jax.random.key(1))
    np.testing.assert_array_equal(a.rms, want)
    assert len(set(np.asarray(want).tolist())) > 1
    rewards = np.random.default_rng(7).random(32).astype(np.float32)
    mean = np.asarray(router.observe(state, a, rewards).bandit.arms.mean)
    # arm k's posterior from the rows that pulled it: (I + X_k^T X_k)^{-1} (mu0_k + X_k^T r_k)
    for k in range(K):
        xk, rk = x[np.asarray(want) == k].astype(np.float64), rewards[np.asarray(want) == k]
        mu0 = np.asarray(bandit_state.arms.mean[k], np.float64)
        np.testing.assert_allclose(mean[k], np.linalg.solve(np.eye(D) + xk.T @ xk, mu0 + xk.T @ rk), rtol=1e-5, atol=1e-5)


def test_single_rm_always_its_index():
    router = routers.single_rm(2)
    state = router.init(jax.random.key(0), K, D)
    for t in range(3):
        state, a = router.assign(state, _contexts(t, rows=3 + t), jax.random.key(t))
        np.testing.assert_array_equal(a.rms, 2)
        assert np.asarray(a.scores).argmax(1).tolist() == [2] * (3 + t)
        state = router.observe(state, a, np.ones(3 + t))
    np.testing.assert_array_equal(state.counts, [0, 0, 3 + 4 + 5, 0])
    with pytest.raises(ValueError, match=r"single_rm\(4\) needs a pool of at least 5 RMs, this one has 4"):
        routers.single_rm(4).init(jax.random.key(0), K, D)
    with pytest.raises(ValueError, match="non-negative RM index"):
        routers.single_rm(-1)


def test_round_robin_per_batch_cycles_through_the_rms():
    router = routers.round_robin("batch", feedback="loss")
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    state, seen = router.init(jax.random.key(0), 3, D), []
    for t in range(7):
        state, a = assign(state, _contexts(t), jax.random.key(t))
        seen.append(int(a.rms[0]))
        state = observe(state, a, np.float32(0.5 + t))
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_majority_vote_asks_every_rm_and_takes_the_majority():
    router = routers.majority_vote()
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, _contexts(0), jax.random.key(1))
    np.testing.assert_array_equal(a.rms, routers.ALL_RMS)
    np.testing.assert_array_equal(state.counts, [B] * K)
    assert routers.rm_mask(a.rms, K).all()
    assert router.observe(state, a, np.ones(B)) is state

    rng = np.random.default_rng(0)
    for k in (3, 4, 5):                      # even K has ties
        a_wins, keep = rng.random((200, k)) < 0.5, rng.random((200, k)) < 0.8
        got_a, got_keep = routers.majority(a_wins, keep)
        for n in range(200):
            votes_a = sum(1 for j in range(k) if keep[n, j] and a_wins[n, j])
            votes_b = sum(1 for j in range(k) if keep[n, j] and not a_wins[n, j])
            assert got_keep[n] == (votes_a != votes_b)           # a tie keeps no pair
            if got_keep[n]:
                assert got_a[n] == (votes_a > votes_b)
        assert (~got_keep).any()
    np.testing.assert_array_equal(routers.majority([[True, False]])[1], [False])
    np.testing.assert_array_equal(routers.majority([[True, True, False]])[0], [True])
    with pytest.raises(ValueError, match="one shape"):
        routers.majority(np.ones((3, 2)), np.ones((3, 3)))


def test_rm_mask_marks_one_rm_or_all():
    np.testing.assert_array_equal(routers.rm_mask([2, routers.ALL_RMS], 3),
                                  [[False, False, True], [True, True, True]])


# ---------------------------------------------------------------- reward shaping

def test_per_batch_losses_reach_the_bandit_as_rescaled_negative_loss():
    """LASeR: r = -(mean loss of the batch), rescaled by the 20/80 quantiles of the past r."""
    router = routers.uniform_random("batch", feedback="loss")          # rescale=(0.2, 0.8) by default
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    state = router.init(jax.random.key(0), K, D)
    rng, history = np.random.default_rng(7), []
    for t in range(30):
        state, a = assign(state, _contexts(t), jax.random.key(t))
        losses = rng.gamma(2.0, 0.3, size=8).astype(np.float32)   # the batch's pair losses
        before, _ = _score(state)
        shaped = router.reward(state, a, losses)       # what observe will hand the bandit, not learnt
        state = observe(state, a, losses)
        after, _ = _score(state)
        raw = -np.float32(losses.mean())
        want = _graves(np.asarray(history), np.array([raw]))[0]
        np.testing.assert_allclose(shaped, [want], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose((after - before)[int(a.arms[0])], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.delete(after - before, int(a.arms[0])), 0.0)
        history.append(raw)


def test_per_item_losses_with_baseline_are_centred_then_rescaled():
    """BayesianRouter: r_i = mean batch loss - L_i, then rescaled over the history of past r."""
    router = routers.uniform_random("item", feedback="loss", baseline=True)
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    state = router.init(jax.random.key(0), K, D)
    rng, history = np.random.default_rng(8), np.zeros(0)
    for t in range(6):
        state, a = assign(state, _contexts(t, rows=16), jax.random.key(t))
        losses = rng.gamma(2.0, 0.3, size=16).astype(np.float32)
        before, _ = _score(state)
        shaped = router.reward(state, a, losses)
        state = observe(state, a, losses)
        raw = losses.mean() - losses
        np.testing.assert_allclose(shaped, _graves(history, raw), rtol=1e-5, atol=1e-5)
        want = np.bincount(np.asarray(a.arms), weights=_graves(history, raw), minlength=K)
        np.testing.assert_allclose(_score(state)[0] - before, want, rtol=1e-5, atol=1e-5)
        history = np.concatenate([history, raw])


def test_reward_feedback_without_rescaling_is_used_as_is():
    router = routers.uniform_random("batch", feedback="reward", rescale=None)
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, _contexts(0), jax.random.key(0))
    np.testing.assert_allclose(router.reward(state, a, np.array([3.0, 5.0], np.float32)), [4.0])
    assert routers.single_rm(0).reward is None and routers.majority_vote().reward is None   # they learn nothing
    score, _ = _score(router.observe(state, a, np.array([3.0, 5.0], np.float32)))
    assert score[int(a.arms[0])] == 4.0


# ---------------------------------------------------------------- jit, checkpoints, health

ROUTERS = {
    "laser": routers.laser,
    "thompson_item_baseline": lambda: routers.bandit_router(
        bandits.linear_thompson(prior_var=0.5), "item", feedback="loss", baseline=True),
    "exp3_item_reward": lambda: routers.bandit_router(bandits.exp3(), "item", feedback="reward"),
    "round_robin": routers.round_robin,
    "single_rm": lambda: routers.single_rm(1),
    "majority_vote": routers.majority_vote,
}


def _run(router, assign, observe, steps=2):
    state = router.init(jax.random.key(0), K, D)
    trace = []
    for t in range(steps):
        state, a = assign(state, _contexts(t), jax.random.key(10 + t))
        state = observe(state, a, np.random.default_rng(t).random(B).astype(np.float32))
        trace.append(a)
    return state, trace


def _assert_trees_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ROUTERS)
def test_jit_equals_eager(name):
    router = ROUTERS[name]()
    eager = _run(router, router.assign, router.observe)
    jitted = _run(router, jax.jit(router.assign), jax.jit(router.observe))
    _assert_trees_close(eager, jitted)


@pytest.mark.parametrize("name", ["laser", "thompson_item_baseline", "majority_vote"])
def test_state_survives_orbax_save_restore(name, tmp_path):
    router = ROUTERS[name]()
    state, _ = _run(router, router.assign, router.observe)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "router", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "router", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert type(restored) is type(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = _contexts(99)
    _assert_trees_close(router.assign(state, x, jax.random.key(5)), router.assign(restored, x, jax.random.key(5)))


def _nan_arm(state, arm):
    linear = state.bandit.inner
    return state._replace(bandit=state.bandit._replace(
        inner=linear._replace(arms=linear.arms._replace(mean=linear.arms.mean.at[arm].set(np.nan)))))


def test_non_finite_statistics_are_an_error_eagerly_and_flagged_under_jit():
    router = routers.laser()
    state = _nan_arm(router.init(jax.random.key(0), K, D), 2)
    with pytest.raises(FloatingPointError, match=r"arm\(s\) \[2\] are NaN or inf.*restore"):
        router.assign(state, _contexts(0), jax.random.key(0))
    _, a = jax.jit(router.assign)(state, _contexts(0), jax.random.key(0))
    assert not bool(a.finite)
    with pytest.raises(FloatingPointError, match=r"\[2\]"):
        routers.check(a)
    _, healthy = jax.jit(router.assign)(router.init(jax.random.key(0), K, D), _contexts(0), jax.random.key(0))
    assert bool(healthy.finite) and routers.check(healthy) is healthy


def test_rows_dropped_under_jit_are_reported():
    router = routers.bandit_router(bandits.linucb(), "item", feedback="loss")
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, _contexts(0), jax.random.key(0))
    losses = np.array([0.3, np.nan, 0.2, np.inf, 0.1], np.float32)
    with pytest.raises(ValueError, match="NaN or inf"):          # eager: the bandit refuses
        router.observe(state, a, losses)
    state = jax.jit(router.observe)(state, a, losses)           # jit: dropped and counted
    _, a = jax.jit(router.assign)(state, _contexts(1), jax.random.key(1))
    assert int(a.skipped) == 2
    with pytest.warns(RuntimeWarning, match=r"dropped 2 invalid row\(s\)"):
        router.assign(state, _contexts(1), jax.random.key(1))


# ---------------------------------------------------------------- bad input

def test_bad_input_is_a_clear_error():
    router = routers.bandit_router(bandits.linucb(), "item", feedback="loss")
    state = router.init(jax.random.key(0), K, D)
    with pytest.raises(ValueError, match=r"contexts \[items, dim\].*shape \(6,\)"):
        router.assign(state, np.ones(D, np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match="at least one item"):
        router.assign(state, np.ones((0, D), np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match="width 5 but the bandit state was initialised with dim=6"):
        router.assign(state, np.ones((2, 5), np.float32), jax.random.key(0))
    state, a = router.assign(state, _contexts(0), jax.random.key(0))
    with pytest.raises(ValueError, match=r"one loss per item, shape \(5,\), got shape \(4,\)"):
        router.observe(state, a, np.ones(4))
    batch = routers.laser()
    s, a = batch.assign(batch.init(jax.random.key(0), K, D), _contexts(0), jax.random.key(0))
    with pytest.raises(ValueError, match="no loss for the batch.*skip observe"):
        batch.observe(s, a, np.zeros(0))
    with pytest.raises(ValueError, match="num_rms >= 1 and dim >= 1"):
        batch.init(jax.random.key(0), 0, D)
    for kwargs, message in [(dict(granularity="pair"), "granularity must be one of"),
                            (dict(granularity="item", feedback="accuracy"), "feedback must be one of"),
                            (dict(granularity="batch", baseline=True), "baseline=True centres rewards"),
                            (dict(granularity="item", rescale=(0.8, 0.2)), "0 <= low < high <= 1")]:
        with pytest.raises(ValueError, match=message):
            routers.bandit_router(bandits.linucb(), **kwargs)


def test_assignment_shapes_are_static():
    """Assignments have static shapes: [B] rms, [B, K] scores, whatever the router."""
    for name, make in ROUTERS.items():
        router = make()
        state = router.init(jax.random.key(0), K, D)
        for rows in (1, 7):
            _, a = jax.jit(router.assign)(state, _contexts(0, rows=rows), jax.random.key(0))
            assert a.rms.shape == (rows,) and a.scores.shape == (rows, K), name
            assert a.rows.shape[0] == a.arms.shape[0] and a.rows.shape[0] in (0, 1, rows), name



def test_a_new_rm_joins_mid_run_with_fresh_statistics_and_the_others_keep_theirs():
    router = routers.laser(alpha=0.5)
    key = jax.random.key(0)
    contexts = jax.random.normal(key, (4, 6))
    state = router.init(key, 2, 6)
    for t in range(3):
        state, assignment = router.assign(state, contexts + t, jax.random.key(t))
        state = router.observe(state, assignment, 0.5 + 0.1 * t)
    grown = router.grow(state, jax.random.key(9), 1, 6)
    fresh = router.init(jax.random.key(9), 1, 6)
    old_arms = bandits.base.arm_states(state.bandit)[-1].arms
    new_arms = bandits.base.arm_states(grown.bandit)[-1].arms
    for old, new, init in zip(jax.tree.leaves(old_arms), jax.tree.leaves(new_arms),
                              jax.tree.leaves(bandits.base.arm_states(fresh.bandit)[-1].arms)):
        np.testing.assert_array_equal(np.asarray(new)[:2], np.asarray(old))       # kept, bit for bit
        np.testing.assert_array_equal(np.asarray(new)[2:], np.asarray(init))      # A = I, as a new run
    np.testing.assert_array_equal(grown.counts, np.append(np.asarray(state.counts), 0))
    state, assignment = router.assign(grown, contexts, key)
    assert assignment.scores.shape == (4, 3)
    assert routers.single_rm(0).grow is None                # fixed routers cannot take new RMs
