"""The RM interface and its wrappers: batching and cost, prefer from scores, invalid output
policies, noise / random / inverted / cached statistics."""
import json

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
    with pytest.raises(TypeError, match="one str"):
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
    assert base.cost.items == 3 and len(rm.parts["cache"]) == 3
    assert rm.cost.calls == base.cost.calls == 2            # [aa, b] then [ccc]
    rm.score(["q"], ["aa"])
    assert rm.cost.calls == 2                              # a pure cache hit calls no model
    assert ("q", "ccc") in rm.parts["cache"]
    with pytest.raises(TypeError, match="pairwise judge"):
        cached(RewardModel("judge", prefer_fn=lambda p, a, b: np.full(len(p), 0.5)))


def test_drop_covers_an_rm_that_raises_and_drops_only_the_failing_items():
    def picky(prompts, responses):
        if "bad" in responses:
            raise KeyError("no task for this prompt")
        return np.array([len(r) for r in responses], np.float32)

    rm = RewardModel("picky", score_fn=picky, on_invalid="drop", batch_size=3)
    scores = rm.score(["q"] * 4, ["ok", "bad", "okay", "o"])
    np.testing.assert_array_equal(scores[[0, 2, 3]], [2, 4, 1])      # the batch was re-scored item by item
    assert np.isnan(scores[1]) and rm.cost.invalid == 1
    _, keep, p = label_pairs(rm, ["q"] * 2, ["bad", "ok"], ["ok", "okay"])
    assert keep.tolist() == [False, True] and np.isnan(p[0])
    with pytest.raises(RewardModelError, match="RM 'picky' \\(custom\\) failed: KeyError"):
        RewardModel("picky", score_fn=picky).score(["q"] * 2, ["ok", "bad"])
    with pytest.raises(RewardModelError, match="returned 1 values"):     # a broken RM is never dropped
        RewardModel("short", score_fn=lambda p, r: np.zeros(1), on_invalid="drop").score(["q"] * 2, ["a", "b"])


def test_bad_inputs_are_named():
    rm = length_rm()
    with pytest.raises(ValueError, match="RM 'length': empty batch \\(0 prompts / responses\\)"):
        rm.score([], [])
    with pytest.raises(ValueError, match="differ in length \\{'prompts': 1, 'a': 2, 'b': 2\\}"):
        rm.prefer(["q"], ["a", "b"], ["c", "d"])
    with pytest.raises(TypeError, match="RM 'length': responses\\[1\\] is NoneType \\(None\\), not str"):
        rm.score(["q", "q"], ["a", None])
    with pytest.raises(TypeError, match="prompts\\[0\\] is int"):
        RewardModel("drops", score_fn=lambda p, r: np.zeros(len(p)), on_invalid="drop").score([3], ["a"])


def test_the_cache_never_stores_a_failed_or_non_finite_score():
    seen = []

    def flaky(prompts, responses):          # NaN the first time it sees "late", then 5
        out = [np.nan if r == "late" and r not in seen else float(len(r)) for r in responses]
        seen.extend(responses)
        return np.array(out, np.float32)

    base = RewardModel("flaky", score_fn=flaky, on_invalid="drop")
    rm = cached(base)
    first = rm.score(["q", "q"], ["late", "ab"])
    assert np.isnan(first[0]) and first[1] == 2 and len(rm.parts["cache"]) == 1
    np.testing.assert_array_equal(rm.score(["q", "q"], ["late", "ab"]), [4, 2])     # asked again, now cached
    assert ("q", "late") in rm.parts["cache"] and all(np.isfinite(rm.parts["cache"].state_dict()["scores"]))

    def broken(prompts, responses):
        raise RuntimeError("out of memory")

    failing = cached(RewardModel("broken", score_fn=broken))
    with pytest.raises(RewardModelError, match="out of memory"):
        failing.score(["q"], ["a"])
    assert len(failing.parts["cache"]) == 0


def _stateful_rms(seed):
    """Every stateful kind of RM: random draws, noise on scores and on a judge, a cache."""
    judge = RewardModel("judge", prefer_fn=lambda p, a, b: np.full(len(p), 0.7))
    return [random_rm(seed=seed), with_noise(length_rm(batch_size=2), 0.5, seed=seed),
            with_noise(judge, 1.0, seed=seed), cached(with_noise(length_rm(), 1.0, seed=seed))]


def _label(rm, step):
    prompts = [f"q{step}"] * 4
    a, b = ["a" * (step % 3), "bb", "ccc", "d"], ["e", "ff" * step, "g", "hh"]
    return label_pairs(rm, prompts, a, b)[2]


def test_state_dict_resumes_the_exact_labels():
    for rm, fresh in zip(_stateful_rms(7), _stateful_rms(7)):
        for step in (1, 2, 3):
            _label(rm, step)
        saved = json.loads(json.dumps(rm.state_dict()))               # JSON as it is
        want = [_label(rm, step) for step in (4, 5, 6)]
        assert not np.array_equal(want[0], _label(fresh, 4)), rm.name   # the state matters
        fresh.load_state_dict(saved)
        got = [_label(fresh, step) for step in (4, 5, 6)]
        np.testing.assert_array_equal(np.array(got), np.array(want), err_msg=rm.name)
        assert fresh.cost.items == rm.cost.items


def test_a_state_from_another_rm_is_refused():
    noisy, other = with_noise(length_rm(), 1.0, seed=1), with_noise(length_rm(), 1.0, seed=2)
    with pytest.raises(ValueError, match="saved noise RNG has seed 1, this RM was built with seed 2"):
        other.load_state_dict(noisy.state_dict())
    with pytest.raises(ValueError, match="RM 'length' \\(custom\\): the state to restore has keys "
                                         "\\['cost', 'inner', 'rng'\\], this RM has \\['cost'\\]"):
        length_rm().load_state_dict(noisy.state_dict())
