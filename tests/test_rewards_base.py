"""The RM interface and its wrappers: batching and cost, prefer from scores, invalid output
policies, noise / random / inverted / cached statistics."""
import numpy as np
import pytest
from scipy import stats

from rmbandit.rewards import RewardModel, RewardModelError, cached, inverted, label_pairs, random_rm, with_noise


def length_rm(**kwargs):
    return RewardModel("length", score_fn=lambda p, r: np.array([len(x) for x in r], np.float32), **kwargs)


def test_batches_costs_and_prefer_from_scores():
    rm = length_rm(batch_size=3)
    prompts = ["q"] * 7
    np.testing.assert_array_equal(rm.score(prompts, ["a" * i for i in range(7)]), np.arange(7))
    assert (rm.cost.calls, rm.cost.items) == (3, 7)
    p = rm.prefer(["q", "q", "q"], ["aaa", "a", "aa"], ["a", "aaa", "aa"])
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2)), 0.5], rtol=1e-6)
    a_wins, keep, _ = label_pairs(rm, ["q"] * 3, ["aaa", "a", "aa"], ["a", "aaa", "aa"])
    assert a_wins.tolist()[:2] == [True, False] and keep.tolist() == [True, True, False]   # a tie is no pair


def test_non_finite_scores_raise_or_are_dropped():
    def flaky(prompts, responses):
        return np.array([np.nan if r == "bad" else 1.0 for r in responses])

    with pytest.raises(RewardModelError, match="RM 'flaky'.*non-finite score for 1 of 3 items.*index 1"):
        RewardModel("flaky", score_fn=flaky).score(["q"] * 3, ["ok", "bad", "ok"])
    rm = RewardModel("flaky", score_fn=flaky, on_invalid="drop")
    _, keep, p = label_pairs(rm, ["q"] * 2, ["ok", "bad"], ["ok2", "ok"])
    assert keep.tolist() == [False, False] and np.isnan(p[1])   # tie, dropped NaN
    _, keep, _ = label_pairs(rm, ["q"], ["bad"], ["ok"])
    assert not keep[0] and rm.cost.invalid == 2


def test_an_rm_that_raises_is_named_and_wrong_shapes_are_errors():
    def broken(prompts, responses):
        raise KeyError("tokenizer lost")

    with pytest.raises(RewardModelError, match="RM 'broken' \\(custom\\) failed: KeyError"):
        RewardModel("broken", score_fn=broken).score(["q"], ["a"])
    with pytest.raises(RewardModelError, match="returned 1 values for a batch of 2"):
        RewardModel("short", score_fn=lambda p, r: np.zeros(1)).score(["q", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="differ in length"):
        length_rm().score(["q"], ["a", "b"])
    with pytest.raises(TypeError, match="one string"):
        length_rm().score("q", "a")
    with pytest.raises(ValueError, match="score_fn .* or a prefer_fn"):
        RewardModel("nothing")


def test_noise_wrapper_has_the_requested_standard_deviation():
    base = RewardModel("zero", score_fn=lambda p, r: np.zeros(len(p)))
    noisy = with_noise(base, sigma=0.7, seed=3)
    draws = noisy.score(["q"] * 20000, ["a"] * 20000)
    assert abs(draws.std() - 0.7) < 0.02 and abs(draws.mean()) < 0.02
    assert stats.kstest(draws / 0.7, "norm").pvalue > 1e-3
    assert not np.array_equal(noisy.score(["q"] * 5, ["a"] * 5), noisy.score(["q"] * 5, ["a"] * 5))
    assert noisy.name == "zero+noise0.7" and base.cost.items == 20010


def test_random_rm_is_balanced_and_independent_of_input():
    rm = random_rm(seed=1)
    a_wins, keep, _ = label_pairs(rm, ["q"] * 20000, ["good"] * 20000, ["bad"] * 20000)
    assert abs(keep.mean() - 0.5) < 0.02                   # P(tie) = 1/2 for a 0/1 scorer
    assert abs(a_wins[keep].mean() - 0.5) < 0.02
    assert stats.binomtest(int(a_wins[keep].sum()), int(keep.sum())).pvalue > 1e-3


def test_inverted_reverses_scores_and_judges():
    rm = inverted(length_rm())
    np.testing.assert_array_equal(rm.score(["q", "q"], ["a", "aaa"]), [-1, -3])
    judge = RewardModel("judge", prefer_fn=lambda p, a, b: np.full(len(p), 0.8))
    np.testing.assert_allclose(inverted(judge).prefer(["q"], ["a"], ["b"]), [0.2], rtol=1e-6)


def test_cache_scores_each_pair_once():
    base = length_rm(batch_size=2)
    rm = cached(base)
    np.testing.assert_array_equal(rm.score(["q", "q", "r"], ["aa", "aa", "b"]), [2, 2, 1])
    assert base.cost.items == 2                            # the repeated pair was scored once
    np.testing.assert_array_equal(rm.score(["r", "q", "q"], ["b", "aa", "ccc"]), [1, 2, 3])
    assert base.cost.items == 3 and len(rm.cache) == 3
    assert rm.cost.calls == base.cost.calls == 2            # [aa, b] then [ccc]
    rm.score(["q"], ["aa"])
    assert rm.cost.calls == 2                              # a pure cache hit calls no model
    assert ("length", "q", "ccc") in rm.cache
    with pytest.raises(TypeError, match="pairwise judge"):
        cached(RewardModel("judge", prefer_fn=lambda p, a, b: np.full(len(p), 0.5)))
