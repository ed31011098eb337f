"""Ensemble labelling (score / weighted score / agreement ensembles, majority vote, UWO)
against straightforward NumPy versions of each rule: ties, NaN scores, RMs that disagree."""
import itertools

import jax
import numpy as np
import pytest
from scipy import stats

from rmbandit.routers import majority
from rmbandit.training import ensembles, sample_pairs


# ---- NumPy references ------------------------------------------------------------------------

def np_zscore(scores):
    """Per RM and prompt, over the finite samples; a constant row -> 0."""
    out = np.full(scores.shape, np.nan, np.float64)
    for k, p in np.ndindex(scores.shape[:2]):
        row = scores[k, p].astype(np.float64)
        ok = np.isfinite(row)
        if ok.any():
            std = row[ok].std()
            out[k, p, ok] = (row[ok] - row[ok].mean()) / std if std > 0 else 0.0
    return out


def np_weighted_mean(scores, weights):
    """Weighted mean over the RMs that scored each sample; weights [K]."""
    num_rms, prompts, n = scores.shape
    out = np.full((prompts, n), np.nan)
    for p, j in np.ndindex(prompts, n):
        ok = np.isfinite(scores[:, p, j]) & (np.asarray(weights) > 0)
        if ok.any():
            out[p, j] = np.sum(np.asarray(weights)[ok] * scores[ok, p, j]) / np.sum(np.asarray(weights)[ok])
    return out


def np_votes(scores, p):
    """{(i, j): (i_wins_majority, majority_fraction)} for the labelled pairs of prompt p,
    labelled with routers.majority (the label rule the rest of the project uses)."""
    num_rms, _, n = scores.shape
    pairs = list(itertools.combinations(range(n), 2))
    a = np.array([[scores[k, p, i] for k in range(num_rms)] for i, _ in pairs])
    b = np.array([[scores[k, p, j] for k in range(num_rms)] for _, j in pairs])
    keep = np.isfinite(a) & np.isfinite(b) & (a != b)
    a_wins, labelled = majority(a > b, keep)
    fraction = np.maximum((keep & (a > b)).sum(1), (keep & (a < b)).sum(1)) / num_rms
    return {pair: (bool(w), float(f)) for pair, w, ok, f in zip(pairs, a_wins, labelled, fraction) if ok}


def slots_of(pairs, weight, p):
    pairs = [np.asarray(x) for x in pairs]
    mine = (pairs[0] == p) & pairs[3]
    return list(zip(pairs[1][mine].tolist(), pairs[2][mine].tolist(), np.asarray(weight)[mine].tolist()))


def coarse_scores(rng, num_rms, prompts, n):
    """Integer scores (many ties), 10% NaN, one RM dropping a whole prompt."""
    scores = rng.integers(0, 3, size=(num_rms, prompts, n)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = np.nan
    scores[0, 1] = np.nan
    return scores


# ---- normalisation and score mixing ----------------------------------------------------------

def test_zscore_matches_numpy_with_nan_and_constant_rows():
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(3, 4, 6)) * [[[1.0]], [[100.0]], [[0.01]]]).astype(np.float32)
    scores[0, 0, 2] = np.nan
    scores[1, 2] = 7.0                                   # one RM ties a prompt's samples
    scores[2, 3] = np.nan                                # one RM drops a whole prompt
    got = np.asarray(ensembles.normalise_scores(scores))
    np.testing.assert_allclose(got, np_zscore(scores), rtol=1e-5, atol=1e-6)
    assert np.isnan(got[0, 0, 2]) and (got[1, 2] == 0).all() and np.isnan(got[2, 3]).all()
    np.testing.assert_array_equal(ensembles.normalise_scores(scores, "none"), scores)


def test_an_rm_scoring_a_prompt_alike_has_no_opinion_even_off_by_an_ulp():
    """The float32 mean of n equal scores (0.1, 0.3, -2.2) can be one ulp off them; those
    rows must still be 0 (no opinion), and the other RM alone orders a sample it dropped."""
    for value, n in [(0.1, 7), (0.3, 6), (-2.2, 30), (1e4 / 3, 13)]:
        constant = np.full((1, 1, n), value, np.float32)
        np.testing.assert_array_equal(ensembles.normalise_scores(constant), 0.0)
    scores = np.array([[[0.3] * 6], [[0, 1, 2, 3, 4, np.nan]]], np.float32)     # RM 0 alike, RM 1 dropped 5
    mixed = np.asarray(ensembles.weighted_scores(scores, np.ones(2)))[0]
    z = np_zscore(scores[1:])[0, 0]
    np.testing.assert_allclose(mixed, np.where(np.isnan(z), 0.0, z / 2), atol=1e-6)        # sample 5: RM 0's 0


@pytest.mark.parametrize("normalise", ["zscore", "none"])
def test_score_ensemble_is_sample_pairs_on_the_numpy_mean(normalise):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(3, 5, 7)).astype(np.float32) * 10
    scores[rng.random(scores.shape) < 0.1] = np.nan
    scores[:, 4, 0] = np.nan                             # a sample every RM dropped
    mixed = np_weighted_mean(np_zscore(scores) if normalise == "zscore" else scores, np.ones(3))
    key = jax.random.key(2)
    got, weight = ensembles.score_ensemble(scores, 4, key, normalise)
    want = sample_pairs(mixed.astype(np.float32), 4, key)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(weight, np.asarray(got.valid, np.float32))
    assert not np.isin(np.asarray(got.chosen)[np.asarray(got.valid) & (np.asarray(got.prompt) == 4)], 0).any()
    assert not np.isin(np.asarray(got.rejected)[np.asarray(got.valid) & (np.asarray(got.prompt) == 4)], 0).any()


def test_zscore_stops_one_rms_scale_from_deciding_the_ensemble():
    """RM 0 (scale 1000) orders the samples one way, RMs 1 and 2 (scale 1) the other way:
    the raw mean follows RM 0, the z-scored mean the two others."""
    up = np.arange(4, dtype=np.float32)
    scores = np.stack([1000 * up, -up, -up])[:, None, :]
    for normalise, best in (("none", 3), ("zscore", 0)):
        pairs, _ = ensembles.score_ensemble(scores, 6, jax.random.key(0), normalise)
        chosen = np.asarray(pairs.chosen)[np.asarray(pairs.valid)]
        assert (np.asarray(pairs.valid).sum(), np.bincount(chosen, minlength=4)[best]) == (6, 3), normalise


def test_weighted_scores_match_numpy_and_zero_weight_mutes_an_rm():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3, 4, 5)).astype(np.float32)
    scores[1, 0, :2] = np.nan
    weights = np.array([0.2, 0.5, 0.3], np.float32)
    np.testing.assert_allclose(ensembles.weighted_scores(scores, weights), np_weighted_mean(np_zscore(scores), weights),
                               rtol=1e-5, atol=1e-6)
    # all the weight on RM 2: its own (normalised) ranking
    only = np.asarray(ensembles.weighted_scores(scores, np.array([0.0, 0.0, 1.0])))
    np.testing.assert_allclose(only, np_zscore(scores)[2], rtol=1e-5, atol=1e-6)
    # per-prompt weights [P, K] (a per-item router's Assignment.scores)
    per_prompt = rng.random((4, 3)).astype(np.float32)
    got = np.asarray(ensembles.weighted_scores(scores, per_prompt))
    for p in range(4):
        np.testing.assert_allclose(got[p], np_weighted_mean(np_zscore(scores)[:, p:p + 1], per_prompt[p])[0],
                                   rtol=1e-5, atol=1e-6)
    # a sample scored only by a zero-weight RM has no ensemble score
    lonely = np.full((2, 1, 3), np.nan, np.float32)
    lonely[0, 0] = [1.0, 2.0, 3.0]
    lonely[1, 0, :2] = [5.0, 1.0]
    assert np.isnan(np.asarray(ensembles.weighted_scores(lonely, np.array([0.0, 1.0])))[0, 2])
    pairs, weight = ensembles.weighted_score_ensemble(scores, weights, 3, jax.random.key(1))
    assert np.asarray(pairs.valid).all() and (np.asarray(weight) == 1.0).all()


# ---- majority vote and UWO -------------------------------------------------------------------

@pytest.mark.parametrize("num_rms, n, per_prompt", [(3, 6, 4), (4, 5, 10), (1, 4, 2), (5, 30, 10)])
def test_majority_vote_and_uwo_label_like_numpy(num_rms, n, per_prompt):
    rng = np.random.default_rng(num_rms * 100 + n)
    scores = coarse_scores(rng, num_rms, 6, n)
    key = jax.random.key(n)
    vote_pairs, vote_weight = ensembles.majority_vote(scores, per_prompt, key)
    uwo_pairs, uwo_weight = ensembles.uwo(scores, per_prompt, key)
    for a, b in zip(vote_pairs, uwo_pairs):                              # the same pairs, other weights
        np.testing.assert_array_equal(a, b)
    for p in range(6):
        want = np_votes(scores, p)
        got = slots_of(vote_pairs, vote_weight, p)
        assert len(got) == min(per_prompt, len(want)), (p, got, want)
        assert len({frozenset(s[:2]) for s in got}) == len(got)          # no pair twice
        for (chosen, rejected, weight), (_, _, uwo_w) in zip(got, slots_of(uwo_pairs, uwo_weight, p)):
            pair = (min(chosen, rejected), max(chosen, rejected))
            first_wins, fraction = want[pair]
            assert (chosen == pair[0]) == first_wins, (p, pair)
            assert weight == 1.0
            np.testing.assert_allclose(uwo_w, fraction, rtol=1e-6)
    invalid = ~np.asarray(vote_pairs.valid)
    assert (np.asarray(vote_weight)[invalid] == 0).all() and (np.asarray(uwo_weight)[invalid] == 0).all()


def test_rms_that_cancel_out_give_no_pair_and_a_three_way_cycle_gives_two_thirds():
    up = np.arange(4, dtype=np.float32)
    opposite = np.stack([up, -up])[:, None, :]                           # 2 RMs, every pair 1 vs 1
    for fn in (ensembles.majority_vote, ensembles.uwo, ensembles.agreement_ensemble):
        pairs, weight = fn(opposite, 3, jax.random.key(0))
        assert not np.asarray(pairs.valid).any() and not np.asarray(weight).any(), fn.__name__
    pairs, _ = ensembles.score_ensemble(opposite, 3, jax.random.key(0))          # z-scores cancel: all tie
    assert not np.asarray(pairs.valid).any()
    # rankings 0>1>2, 1>2>0, 2>0>1: every pair wins 2 to 1, and the majority is a cycle
    cycle = np.array([[3, 2, 1], [1, 3, 2], [2, 1, 3]], np.float32)[:, None, :]
    pairs, weight = ensembles.uwo(cycle, 3, jax.random.key(0))
    assert sorted(zip(np.asarray(pairs.chosen).tolist(), np.asarray(pairs.rejected).tolist())) == [(0, 1), (1, 2),
                                                                                                   (2, 0)]
    np.testing.assert_allclose(weight, 2 / 3, rtol=1e-6)


def test_abstaining_rms_count_against_the_uwo_weight_and_nan_everywhere_gives_nothing():
    scores = np.full((4, 1, 3), np.nan, np.float32)
    scores[0, 0] = [1, 2, 3]                    # one RM orders all three
    scores[1, 0] = [1, 1, 5]                    # ties 0 and 1
    pairs, weight = ensembles.uwo(scores, 3, jax.random.key(0))
    got = {(c, r): w for c, r, w in slots_of(pairs, weight, 0)}
    assert got.keys() == {(1, 0), (2, 0), (2, 1)}
    np.testing.assert_allclose([got[(1, 0)], got[(2, 0)], got[(2, 1)]], [0.25, 0.5, 0.5])
    pairs, weight = ensembles.uwo(np.full((3, 2, 4), np.nan, np.float32), 2, jax.random.key(0))
    assert not np.asarray(pairs.valid).any()


def test_majority_vote_draws_uniformly_among_labelled_pairs():
    """n = 4 with pair (0, 3) tied 1-1 by two RMs: the other 5 pairs, one drawn per prompt."""
    a = np.array([0.1, 0.7, 0.9, 0.3], np.float32)
    b = np.array([0.3, 0.7, 0.9, 0.1], np.float32)                       # only 0 vs 3 reversed
    scores = np.tile(np.stack([a, b])[:, None, :], (1, 6000, 1))
    pairs, _ = ensembles.majority_vote(scores, 1, jax.random.key(3))
    valid = np.asarray(pairs.valid)
    assert valid.all()
    drawn = [frozenset(x) for x in zip(np.asarray(pairs.chosen), np.asarray(pairs.rejected))]
    assert frozenset((0, 3)) not in drawn
    counts = [drawn.count(frozenset(p)) for p in itertools.combinations(range(4), 2) if p != (0, 3)]
    assert stats.chisquare(counts).pvalue > 1e-3, counts


# ---- agreement ensemble ----------------------------------------------------------------------

@pytest.mark.parametrize("num_rms, n, keep", [(4, 6, 5), (5, 8, 10), (3, 32, 10)])
def test_agreement_with_every_pair_a_candidate_keeps_the_most_agreed_on(num_rms, n, keep):
    rng = np.random.default_rng(n)
    scores = coarse_scores(rng, num_rms, 5, n)
    every = n * (n - 1) // 2
    pairs, weight = ensembles.agreement_ensemble(scores, keep, jax.random.key(0), candidates=every)
    if every < 100:                                  # fewer pairs than the default: all are candidates
        for a, b in zip(pairs, ensembles.agreement_ensemble(scores, keep, jax.random.key(0))[0]):
            np.testing.assert_array_equal(a, b)
    assert np.asarray(pairs.chosen).shape == (5 * keep,)
    for p in range(5):
        want = np_votes(scores, p)
        got = slots_of(pairs, weight, p)
        assert len(got) == min(keep, len(want))
        kept = []
        for chosen, rejected, w in got:
            pair = (min(chosen, rejected), max(chosen, rejected))
            assert (chosen == pair[0]) == want[pair][0] and w == 1.0
            kept.append(want[pair][1])
        best = sorted((f for _, f in want.values()), reverse=True)[:keep]
        np.testing.assert_allclose(sorted(kept, reverse=True), best)


def test_agreement_keeps_only_among_its_random_candidates():
    """4 samples, every pair unanimous; 1 candidate, 1 kept: each pair equally likely; with
    3 candidates and 3 kept: always 3 distinct pairs."""
    scores = np.tile(np.array([0.1, 0.7, 0.3, 0.9], np.float32)[None, None], (2, 6000, 1))
    pairs, _ = ensembles.agreement_ensemble(scores, 1, jax.random.key(5), candidates=1)
    assert np.asarray(pairs.valid).all()
    drawn = [frozenset(x) for x in zip(np.asarray(pairs.chosen), np.asarray(pairs.rejected))]
    counts = [drawn.count(frozenset(p)) for p in itertools.combinations(range(4), 2)]
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    # one labelled pair in 6: found only when it is among the candidates (3 of 6: half the time)
    lonely = np.tile(np.array([0.0, np.nan, np.nan, 1.0], np.float32), (2, 4000, 1))   # only (0, 3) scored
    pairs, _ = ensembles.agreement_ensemble(lonely, 3, jax.random.key(6), candidates=3)
    found = np.asarray(pairs.valid).reshape(4000, 3).any(1).mean()
    assert abs(found - 0.5) < 0.04, found


# ---- jit and bad input -----------------------------------------------------------------------

def test_jit_equals_eager():
    scores = coarse_scores(np.random.default_rng(9), 3, 4, 8)
    key = jax.random.key(1)
    weights = np.array([0.5, 0.25, 0.25], np.float32)
    calls = {"score": (ensembles.score_ensemble, (scores, 4, key), (1,)),
             "weighted": (ensembles.weighted_score_ensemble, (scores, weights, 4, key), (2,)),
             "majority": (ensembles.majority_vote, (scores, 4, key), (1,)),
             "uwo": (ensembles.uwo, (scores, 4, key), (1,)),
             "agreement": (ensembles.agreement_ensemble, (scores, 4, key, 20), (1, 3))}
    for name, (fn, args, static) in calls.items():
        eager = fn(*args)
        jitted = jax.jit(fn, static_argnums=static)(*args)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_bad_input_is_named():
    scores = np.zeros((2, 3, 4), np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"\[RMs, prompts, samples\]"):
        ensembles.majority_vote(np.zeros((3, 4)), 2, key)
    with pytest.raises(ValueError, match="only 6 distinct pairs"):
        ensembles.uwo(scores, 7, key)
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        ensembles.agreement_ensemble(scores, 2, key, candidates=0)
    with pytest.raises(ValueError, match=r"pairs_per_prompt \(the pairs kept\) must be .* \[1, candidates=3\]"):
        ensembles.agreement_ensemble(scores, 4, key, candidates=3)
    with pytest.raises(ValueError, match="normalise must be one of zscore, none"):
        ensembles.score_ensemble(scores, 2, key, normalise="rank")
    with pytest.raises(ValueError, match=r"weights must be \[RMs\] = \(2,\)"):
        ensembles.weighted_scores(scores, np.ones(3))
    with pytest.raises(ValueError, match="finite and >= 0"):
        ensembles.weighted_scores(scores, np.array([1.0, -0.5]))
