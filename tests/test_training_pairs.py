"""Preference pairs from scored samples, against a NumPy count of the valid pairs."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rmbandit.training import ipo_loss, sample_pairs
from rmbandit.training.pairs import candidate_pairs, labelled


def _scores_with_ties_and_drops(rng, prompts, n):
    """Coarse scores (many ties), some NaN (responses an RM dropped), one prompt all tied."""
    scores = rng.integers(0, 3, size=(prompts, n)).astype(np.float32)
    scores[rng.random((prompts, n)) < 0.1] = np.nan
    scores[0] = 1.0
    return scores


@pytest.mark.parametrize("n, per_prompt", [(6, 4), (30, 10), (3, 3)])
def test_pairs_have_a_strict_gap_no_duplicates_and_as_many_as_exist(n, per_prompt):
    rng = np.random.default_rng(n)
    scores = _scores_with_ties_and_drops(rng, 12, n)
    pairs = jax.tree.map(np.asarray, sample_pairs(scores, per_prompt, jax.random.key(0)))
    assert pairs.chosen.shape == (12 * per_prompt,)
    for p in range(12):
        mine = (pairs.prompt == p) & pairs.valid
        c, r = pairs.chosen[mine], pairs.rejected[mine]
        assert (scores[p, c] > scores[p, r]).all()                       # strict gap, chosen wins
        assert len({frozenset(x) for x in zip(c, r)}) == len(c)          # no pair twice
        s = scores[p]
        available = sum(1 for i, j in itertools.combinations(range(n), 2)
                        if np.isfinite(s[i]) and np.isfinite(s[j]) and s[i] != s[j])
        assert len(c) == min(per_prompt, available), (p, len(c), available)
    assert not pairs.valid[pairs.prompt == 0].any()                     # all tied: no pair


def test_a_batch_that_ties_everywhere_has_no_pair():
    pairs = sample_pairs(np.full((4, 5), 0.5, np.float32), 3, jax.random.key(0))
    assert not bool(pairs.valid.any())
    nan = sample_pairs(np.full((2, 5), np.nan, np.float32), 3, jax.random.key(0))
    assert not bool(nan.valid.any())


def test_pairs_are_uniform_among_the_valid_ones():
    """n = 4 distinct scores: 6 pairs, one drawn per prompt over 6,000 prompts."""
    scores = np.tile(np.array([[0.1, 0.7, 0.3, 0.9]], np.float32), (6000, 1))
    pairs = jax.tree.map(np.asarray, sample_pairs(scores, 1, jax.random.key(3)))
    assert pairs.valid.all()
    which = [frozenset(x) for x in zip(pairs.chosen, pairs.rejected)]
    counts = [which.count(frozenset(p)) for p in itertools.combinations(range(4), 2)]
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_jit_equals_eager_and_bad_input_is_named():
    scores = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    eager = sample_pairs(scores, 4, jax.random.key(1))
    jitted = jax.jit(sample_pairs, static_argnums=1)(scores, 4, jax.random.key(1))
    for a, b in zip(eager, jitted):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_pairs(np.zeros((3, 1)), 1, jax.random.key(0))
    with pytest.raises(ValueError, match="only 3 distinct pairs"):
        sample_pairs(np.zeros((2, 3)), 4, jax.random.key(0))
    with pytest.raises(ValueError, match="positive integer"):
        sample_pairs(np.zeros((2, 3)), 0, jax.random.key(0))


def test_ipo_loss_matches_the_formula():
    rng = np.random.default_rng(1)
    pc, pr, rc, rr = (rng.normal(size=6) * 5 for _ in range(4))
    beta = 0.2
    want = (((pc - rc) - (pr - rr)) - 1 / (2 * beta)) ** 2
    np.testing.assert_allclose(ipo_loss(pc, pr, rc, rr, beta), want, rtol=1e-5)
    # the gradient moves the margin toward 1 / (2 beta) from either side
    grad = jax.grad(lambda c: ipo_loss(c, jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta).sum())
    assert float(grad(jnp.array([0.0]))[0]) < 0 < float(grad(jnp.array([10.0]))[0])
    with pytest.raises(ValueError, match="beta > 0"):
        ipo_loss(pc, pr, rc, rr, 0.0)


def test_candidate_pairs_are_distinct_and_uniform_and_labels_order_them():
    first, second = map(np.asarray, candidate_pairs(3000, 4, 2, jax.random.key(2)))
    assert first.shape == (3000, 2) and (first < second).all()
    assert (first[:, 0] * 4 + second[:, 0] != first[:, 1] * 4 + second[:, 1]).all()      # no pair twice
    counts = [int(np.sum((first == i) & (second == j))) for i, j in itertools.combinations(range(4), 2)]
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    prefer = np.array([[0.9, 0.5], [np.nan, 0.2]], np.float32)          # first wins / tie / dropped / second wins
    pairs = jax.tree.map(np.asarray, labelled(first[:2], second[:2], prefer))
    np.testing.assert_array_equal(pairs.valid, [True, False, False, True])
    assert (pairs.chosen[0], pairs.rejected[0]) == (first[0, 0], second[0, 0])
    assert (pairs.chosen[3], pairs.rejected[3]) == (second[1, 1], first[1, 1])
    np.testing.assert_array_equal(pairs.prompt, [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"in \[1, 6\] for 4 samples"):
        candidate_pairs(2, 4, 7, jax.random.key(0))
    with pytest.raises(ValueError, match="one shape"):
        labelled(first[:2], second[:2], prefer[:1])
