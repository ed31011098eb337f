"""LASeR's baselines that are routers: classifier selection, LASeR with Exp3 / NeuralUCB, and
the online RM ensemble, each doing what the paper says."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rmbandit import bandits, routers
from rmbandit.routers import baselines
from tests.reference import Exp3Ref, quantile_rescale_ref

K, D = 3, 16


def _graves(history, raw):
    """Graves et al. 2017 / the paper's App. B rescaling of each reward, from the equation."""
    return np.array([quantile_rescale_ref(history, r) for r in raw])


def _prompts(rng, rows, category, centres):
    """Prompt embeddings as an LM gives them: norms in the hundreds, a shared direction, and
    a smaller per-category offset."""
    shared = np.ones(D) * 60.0
    return (shared + 8.0 * centres[category] + rng.normal(size=(rows, D))).astype(np.float32)


# ---------------------------------------------------------------- classifier selection

def test_best_rm_labels_pick_the_largest_correct_margin():
    nan = np.nan
    margins = np.array([[0.5, 2.0, -3.0],      # RM 1: the largest correct margin
                        [-1.0, -0.2, nan],     # no RM correct: no label
                        [nan, 0.1, 0.1],       # a tie: the lower index
                        [-5.0, 0.0, 0.3]])     # margin 0 is a tie, not correct
    labels, keep = routers.best_rm_labels(margins)
    np.testing.assert_array_equal(keep, [True, False, True, True])
    np.testing.assert_array_equal(labels[keep], [1, 1, 2])


def test_classifier_learns_a_synthetic_prompt_to_rm_mapping_and_the_router_follows_it():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K, D))
    category = rng.integers(0, K, 600)
    x = np.concatenate([_prompts(rng, 1, c, centres) for c in category])
    # per-RM margins: RM c is the most confident correct RM on category c, others are weaker or wrong
    margins = rng.normal(0.3, 0.2, size=(600, K))
    margins[np.arange(600), category] = 2.0
    labels, keep = routers.best_rm_labels(margins)
    assert keep.all()
    np.testing.assert_array_equal(labels, category)
    params, losses = routers.train_classifier(jax.random.key(1), x[:400], labels[:400], K, hidden=(64, 32),
                                              epochs=15, batch_size=32)
    assert losses[-1] < 0.1 * losses[0], losses
    held_out = x[400:]
    router = routers.classifier_router(params)
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, held_out, jax.random.key(2))
    assert np.mean(np.asarray(a.rms) == category[400:]) > 0.95
    logits = np.asarray(baselines.classifier_logits(params, held_out))
    np.testing.assert_array_equal(a.rms, np.argmax(logits, 1))          # the RM the classifier predicts
    np.testing.assert_array_equal(state.counts, np.bincount(np.argmax(logits, 1), minlength=K))
    assert router.observe(state, a, np.ones(200, np.float32)) is state    # nothing learned online

    batch = routers.classifier_router(params, "batch")
    mixed = held_out[:9]
    _, b = batch.assign(batch.init(jax.random.key(0), K, D), mixed, jax.random.key(2))
    mode = np.argmax(np.bincount(np.argmax(logits[:9], 1), minlength=K))
    np.testing.assert_array_equal(b.rms, np.full(9, mode))


def test_the_default_classifier_is_the_papers_2048_1024_k_mlp_and_checkpoints(tmp_path):
    rng = np.random.default_rng(3)
    params, _ = routers.train_classifier(jax.random.key(0), rng.normal(size=(8, D)), np.arange(8) % K, K,
                                         epochs=1, batch_size=8)
    assert baselines.layer_widths(params) == (2048, 1024, K)
    path = bandits.save_state(tmp_path / "classifier", params)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
    restored = ocp.StandardCheckpointer().restore(path, target)
    x = rng.normal(size=(5, D)).astype(np.float32)
    np.testing.assert_array_equal(baselines.classifier_logits(params, x), baselines.classifier_logits(
        baselines.ClassifierParams(*restored), x))


def test_classifier_bad_inputs_name_the_problem():
    x = np.zeros((4, D), np.float32)
    with pytest.raises(ValueError, match=r"labels must be RM indices in \[0, 3\)"):
        routers.train_classifier(jax.random.key(0), x, np.array([0, 1, 2, 3]), K)
    with pytest.raises(ValueError, match=r"embeddings \[N, d\] and labels \[N\]"):
        routers.train_classifier(jax.random.key(0), x, np.array([0, 1]), K)
    params, _ = routers.train_classifier(jax.random.key(0), x, np.array([0, 1, 2, 0]), K, hidden=(4,), epochs=1)
    with pytest.raises(ValueError, match="trained for 3 RMs on embeddings of width 16.*retrain"):
        routers.classifier_router(params).init(jax.random.key(0), 4, D)
    with pytest.raises(ValueError, match="granularity must be one of"):
        routers.classifier_router(params, "pair")


# ---------------------------------------------------------------- LASeR with Exp3 / NeuralUCB

def test_laser_exp3_follows_the_papers_update_and_moves_to_the_rm_with_lower_loss():
    rng = np.random.default_rng(4)
    router = routers.laser_exp3(gamma=0.1)
    observe = jax.jit(router.observe)
    state = router.init(jax.random.key(0), K, D)
    ref, history = Exp3Ref(K, 0.1), np.zeros(0)
    centres = rng.normal(size=(K, D))
    for step in range(40):
        x = _prompts(rng, 8, step % K, centres)
        state, a = router.assign(state, x, jax.random.key(step))
        arm = int(a.arms[0])
        np.testing.assert_array_equal(a.rms, np.full(8, arm))           # one RM per batch
        np.testing.assert_allclose(a.scores[0], ref.probs(), rtol=1e-5)
        losses = rng.normal(0.3 if arm == 2 else 0.9, 0.05, size=16).astype(np.float32)
        raw = -losses.mean()                                            # LASeR: r = -(batch loss)
        ref.update([arm], _graves(history, np.array([raw])))
        history = np.append(history, raw)
        state = observe(state, a, losses)
    inner = next(s for s in bandits.base.inner_states(state.bandit) if hasattr(s, "arms"))
    np.testing.assert_allclose(inner.arms.score, ref.S, rtol=1e-4)
    assert np.argmax(ref.probs()) == 2 and ref.probs()[2] > 0.6


def test_laser_neural_ucb_learns_which_rm_suits_which_category():
    rng = np.random.default_rng(5)
    router = routers.laser_neural_ucb(hidden=(16, 8), alpha=0.5, train_steps=20, learning_rate=0.05,
                                      buffer_size=64)
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    state = router.init(jax.random.key(0), 2, D)
    centres = rng.normal(size=(2, D))
    picks = []
    for step in range(60):
        category = step % 2
        x = _prompts(rng, 8, category, centres) / 60.0
        state, a = assign(state, x, jax.random.key(step))
        arm = int(a.arms[0])
        assert len(set(np.asarray(a.rms).tolist())) == 1
        good = arm == category                                          # RM c suits category c
        state = observe(state, a, np.full(8, 0.2 if good else 1.0, np.float32))
        picks.append(good)
    assert np.mean(picks[-20:]) >= 0.8, picks       # chance: 0.5


# ---------------------------------------------------------------- online RM ensemble

def test_online_ensemble_labels_with_every_rm_and_moves_weight_to_the_rm_with_lower_loss():
    rng = np.random.default_rng(6)
    router = routers.online_ensemble(learning_rate=2.0)
    state = router.init(jax.random.key(0), K, D)
    cumulative = np.zeros(K)
    for step in range(6):
        x = rng.normal(size=(5, D)).astype(np.float32)
        state, a = router.assign(state, x, jax.random.key(step))
        np.testing.assert_array_equal(a.rms, np.full(5, routers.ALL_RMS))
        weights = np.exp(2.0 * (cumulative - cumulative.max()))
        np.testing.assert_allclose(a.scores, np.broadcast_to(weights / weights.sum(), (5, K)), rtol=1e-5)
        # per-pair DPO losses under each RM's labels: RM 1's labels are the easiest to fit
        losses = rng.uniform(0.5, 1.0, size=(8, K)).astype(np.float32)
        losses[:, 1] -= 0.3
        losses[0, 2] = np.nan                                            # RM 2 gave pair 0 no label
        np.testing.assert_allclose(router.reward(state, a, losses), -np.nanmean(losses, 0), rtol=1e-6)
        cumulative += -np.nanmean(losses, 0)
        state = router.observe(state, a, losses)
    np.testing.assert_array_equal(state.counts, np.full(K, 30))
    _, a = router.assign(state, x, jax.random.key(9))
    assert np.argmax(a.scores[0]) == 1 and a.scores[0, 1] > 0.9


def test_online_ensemble_gives_an_rm_without_labels_the_mean_reward_and_rejects_bad_losses():
    losses = np.array([[0.2, 0.6, np.nan], [0.4, 0.8, np.nan]], np.float32)
    np.testing.assert_allclose(baselines.ensemble_rewards(losses), [-0.3, -0.7, -0.5], rtol=1e-6)
    np.testing.assert_allclose(baselines.ensemble_rewards(np.array([0.1, 0.2, 0.3])), [-0.1, -0.2, -0.3])
    router = routers.online_ensemble()
    state = router.init(jax.random.key(0), K, D)
    state, a = router.assign(state, np.ones((2, D), np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[pairs, 3\] .*losses_under_labels.* or \[3\], got \(2, 4\)"):
        router.observe(state, a, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="no finite loss for this batch; skip observe"):
        router.observe(state, a, np.full((2, K), np.nan, np.float32))


@pytest.mark.parametrize("make", [routers.online_ensemble, routers.laser_exp3])
def test_baseline_states_round_trip_through_orbax(make, tmp_path):
    router = make()
    state = router.init(jax.random.key(0), K, D)
    x = np.random.default_rng(7).normal(size=(4, D)).astype(np.float32)
    state, a = router.assign(state, x, jax.random.key(1))
    state = router.observe(state, a, np.random.default_rng(8).uniform(size=(4, K)).astype(np.float32))
    path = bandits.save_state(tmp_path / "router", state)
    restored = bandits.restore_state(bandits.Bandit(router.init, None, None), path, K, D)
    assert type(restored) is type(state)
    for x_, y_ in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(x_, y_)
