"""Properties over random inputs: numerics, no-op updates, jit/vmap equality, checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import given, settings, strategies as st

from rmbandit import bandits
from tests.helpers import BANDITS

ALL = BANDITS


def _trained(name, seed=0, k=3, d=4, steps=3, rows=5):
    bandit = ALL[name]()
    state = bandit.init(jax.random.key(seed), k, d)
    rng = np.random.default_rng(seed)
    for t in range(steps):
        x = rng.normal(size=(rows, d)).astype(np.float32)
        arms, _ = bandit.select(state, x, jax.random.key(t))
        state = bandit.update(state, x, arms, rng.random(rows))
    return bandit, state


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1.0, 30.0, 1e3]), rows=st.sampled_from([1, 8]))
def test_covariance_stays_spd_and_finite_over_long_float32_runs(seed, scale, rows):
    k, d, steps = 2, 16, 400
    rng = np.random.default_rng(seed)
    # LM-like contexts: a large shared offset plus anisotropic noise
    basis = rng.normal(size=(d, d)) * np.logspace(0, -2, d)[None]
    x = ((rng.normal(size=(steps, rows, d)) @ basis.T + rng.normal(size=d) * 3) * scale).astype(np.float32)
    arms = rng.integers(0, k, size=(steps, rows)).astype(np.int32)
    rewards = rng.random((steps, rows)).astype(np.float32)
    bandit = bandits.linucb()

    def step(state, inputs):
        return bandit.update(state, *inputs), None

    state, _ = jax.lax.scan(step, bandit.init(jax.random.key(0), k, d), (x, arms, rewards))
    assert np.isfinite(np.asarray(state.arms.cov_sqrt)).all() and np.isfinite(np.asarray(state.arms.mean)).all()
    cov = np.asarray(bandits.covariance(state), np.float64)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-5, atol=1e-12 + 1e-6 * np.abs(cov).max())
    for c in cov:
        assert np.linalg.eigvalsh((c + c.T) / 2).min() > 0
    _, var = bandits.moments(state, x[-1])
    assert (np.asarray(var) >= 0).all()


@pytest.mark.parametrize("name", list(ALL))
def test_update_with_no_pulled_rows_is_a_no_op(name):
    bandit, state = _trained(name)
    d = 4
    def statistics(s):   # per-arm statistics and the reward history; row counters may move
        node, leaves = s, []
        while "inner" in getattr(node, "_fields", ()):
            leaves += [getattr(node, f) for f in ("history", "count") if f in node._fields]
            node = node.inner
        return jax.tree.leaves(node.arms) + leaves

    empty = bandit.update(state, np.zeros((0, d), np.float32), np.zeros((0,), np.int32), np.zeros((0,)))
    masked = jax.jit(bandit.update)(state, np.ones((2, d), np.float32), np.array([-1, 99]), np.array([1.0, np.nan]))
    for new in (empty, masked):
        for a, b in zip(statistics(new), statistics(state)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(ALL))
def test_jit_and_vmap_equal_eager(name):
    bandit, state = _trained(name)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    key = jax.random.key(3)
    eager_arms, eager_scores = bandit.select(state, x, key)
    jit_arms, jit_scores = jax.jit(bandit.select)(state, x, key)
    np.testing.assert_array_equal(eager_arms, jit_arms)
    np.testing.assert_allclose(eager_scores, jit_scores, rtol=1e-5, atol=1e-6)
    rewards = rng.random(6)
    eager = bandit.update(state, x, eager_arms, rewards)
    jitted = jax.jit(bandit.update)(state, x, eager_arms, rewards)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # vmap over independent replicas (e.g. seeds) equals running them one by one
    states = [_trained(name, seed=s)[1] for s in (0, 1)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    xs = jnp.stack([x, x[::-1]])
    arms = jnp.stack([eager_arms, eager_arms[::-1]])
    batched = jax.vmap(bandit.update)(stacked, xs, arms, jnp.stack([rewards, rewards[::-1]]))
    for i, s in enumerate(states):
        single = bandit.update(s, xs[i], arms[i], jnp.stack([rewards, rewards[::-1]])[i])
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(ALL))
def test_state_survives_orbax_save_restore(name, tmp_path):
    bandit, state = _trained(name)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "bandit", state)
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = checkpointer.restore(tmp_path / "bandit", abstract)
    assert type(restored) is type(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(bandit.select(state, x, jax.random.key(0))[0],
                                  bandit.select(restored, x, jax.random.key(0))[0])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), name=st.sampled_from(["linucb", "thompson", "exp3", "neural_ucb"]))
def test_add_arm_leaves_existing_arms_untouched(seed, name):
    bandit, state = _trained(name, seed=seed)
    grown = bandits.add_arm(bandit, state, jax.random.key(seed), dim=4)
    for old, new in zip(jax.tree.leaves(state.arms), jax.tree.leaves(grown.arms)):
        assert new.shape[0] == old.shape[0] + 1
        np.testing.assert_array_equal(new[:-1], old)


@pytest.mark.parametrize("name", ["linucb", "thompson", "exp3"])
def test_sharded_over_a_mesh_equals_single_device(name):
    """Rows sharded over the 8 fake devices ('data' axis), per-arm statistics sharded on the
    arm axis where it divides, otherwise replicated: same arms, scores and state."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    devices = np.array(jax.devices())
    assert devices.size == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = Mesh(devices.reshape(4, 2), ("data", "tensor"))
    bandit, state = _trained(name, k=2, d=4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    rewards = rng.random(16).astype(np.float32)
    key = jax.random.key(1)
    want_arms, want_scores = bandit.select(state, x, key)
    want_state = bandit.update(state, x, want_arms, rewards)

    def arm_sharding(leaf):
        spec = P("tensor") if leaf.ndim >= 1 and leaf.shape[0] == 2 else P()
        return NamedSharding(mesh, spec)

    state_sharding = jax.tree.map(arm_sharding, state)
    rows = NamedSharding(mesh, P("data"))
    sharded_state = jax.device_put(state, state_sharding)
    xs, rs = jax.device_put(x, NamedSharding(mesh, P("data", None))), jax.device_put(rewards, rows)
    select = jax.jit(bandit.select, out_shardings=(rows, NamedSharding(mesh, P("data", None))))
    update = jax.jit(bandit.update, out_shardings=state_sharding)
    arms, scores = select(sharded_state, xs, key)
    new = update(sharded_state, xs, arms, rs)
    np.testing.assert_array_equal(arms, want_arms)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(arms.sharding.device_set) == 8
