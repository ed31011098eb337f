"""NeuralUCB against a NumPy MLP with hand-written backprop."""
import jax
import numpy as np

from rmbandit import bandits
from tests.reference import MLPRef


def _arm_params(state, arm):
    return {k: np.asarray(v[arm]) for k, v in state.arms.params.items()}


def test_neural_ucb_matches_numpy_reference_step_by_step():
    k, d, alpha, reg, lr, steps, wd, buf = 3, 5, 0.7, 1.0, 0.05, 4, 1e-2, 6
    bandit = bandits.neural_ucb(hidden=(7, 4), alpha=alpha, reg=reg, learning_rate=lr,
                                train_steps=steps, buffer_size=buf, weight_decay=wd, chunk=2)
    state = bandit.init(jax.random.key(0), k, d)
    refs = [MLPRef(_arm_params(state, a)) for a in range(k)]
    init = [MLPRef(_arm_params(state, a)).p for a in range(k)]
    z = [{n: np.full_like(v, reg) for n, v in r.p.items()} for r in refs]
    buffers = [[] for _ in range(k)]
    rng = np.random.default_rng(0)
    for step in range(6):
        x = rng.normal(size=(4, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)          # the MLP sees unit contexts, whatever their scale
        arms, ucb = bandit.select(state, 300.0 * x, jax.random.key(step))
        want = np.zeros((4, k))
        for i in range(4):
            for a in range(k):
                g = refs[a].grad(x[i].astype(np.float64))
                var = sum(np.sum(g[n] ** 2 / z[a][n]) for n in g)
                want[i, a] = refs[a].forward(x[i].astype(np.float64))[0] + alpha * np.sqrt(var)
        np.testing.assert_allclose(ucb, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(arms, np.argmax(want, -1))
        rewards = rng.random(4)
        state = bandit.update(state, 300.0 * x, arms, rewards)
        # reference update: Z with gradients at the pre-update params, buffer, then GD
        for i, a in enumerate(np.asarray(arms)):
            g = refs[a].grad(x[i].astype(np.float64))
            for n in g:
                z[a][n] += g[n] ** 2
            buffers[a] = (buffers[a] + [(x[i].astype(np.float64), rewards[i])])[-buf:]
        for a in set(np.asarray(arms).tolist()):
            for _ in range(steps):
                grads = {n: wd * (refs[a].p[n] - init[a][n]) for n in refs[a].p}
                for xb, rb in buffers[a]:
                    err = refs[a].forward(xb)[0] - rb
                    for n, g in refs[a].grad(xb).items():
                        grads[n] += err * g / len(buffers[a])
                for n in grads:
                    refs[a].p[n] -= lr * grads[n]
        for a in range(k):
            for n, v in _arm_params(state, a).items():
                np.testing.assert_allclose(v, refs[a].p[n].reshape(v.shape), rtol=1e-4, atol=1e-5)


def test_neural_ucb_stays_finite_on_contexts_like_lm_hidden_states():
    """Norms in the hundreds around one shared direction (LASeR's prompt embeddings), the
    paper's 256-128 MLP: raw, one update took the weights to 1e16 and the next overflowed."""
    rng = np.random.default_rng(0)
    d, k = 64, 3
    common = rng.normal(size=d)
    bandit = bandits.neural_ucb()
    state = bandit.init(jax.random.key(0), k, d)
    for step in range(30):
        x = (300.0 * common / np.linalg.norm(common) + 20.0 * rng.normal(size=(1, d))).astype(np.float32)
        arms, ucb = bandit.select(state, x, jax.random.key(step))
        assert np.isfinite(np.asarray(ucb)).all()
        state = bandit.update(state, x, arms, rng.random(1).astype(np.float32))
    assert int(state.skipped) == 0 and int(np.asarray(state.arms.pulls).sum()) == 30
    assert max(float(np.abs(np.asarray(w)).max()) for w in jax.tree.leaves(state.arms.params)) < 10.0


def test_neural_ucb_untouched_arms_keep_parameters():
    bandit = bandits.neural_ucb(hidden=(8, 4), train_steps=2, buffer_size=4)
    state = bandit.init(jax.random.key(1), 3, 4)
    new = bandit.update(state, np.ones((2, 4), np.float32), np.array([1, 1]), np.array([0.2, 0.4]))
    for name in state.arms.params:
        before, after = np.asarray(state.arms.params[name]), np.asarray(new.arms.params[name])
        np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
        if name.startswith("w"):
            assert not np.allclose(after[1], before[1]), name
    np.testing.assert_array_equal(new.arms.pulls, [0, 2, 0])
