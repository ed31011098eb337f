"""The pool-label table: every RM on labelled pairs, saved once and replayed."""
import json

import numpy as np
import pytest

from rmbandit import data
from rmbandit.rewards import labels, pool


@pytest.fixture(scope="module")
def pairs_and_pool():
    tasks = data.load_suite("test", size_per_category=4, seed=5)
    entries = [{"name": "truth", "kind": "verifier", "verifier": "correctness"},
               {"name": "liar", "kind": "verifier", "verifier": "correctness", "invert": True},
               {"name": "numbers", "kind": "verifier", "verifier": "numeric"}]
    return data.make_pairs(tasks, seed=5), pool.build_pool(entries, tasks)


def test_table_holds_each_rms_labels_and_costs(pairs_and_pool, tmp_path):
    pairs, rms = pairs_and_pool
    table = labels.label_with_pool(rms, pairs, {"split": "test", "per_category": 4, "seed": 5})
    prompts, chosen, rejected = ([getattr(p, f) for p in pairs] for f in ("prompt", "chosen", "rejected"))
    for k, rm in enumerate(rms):
        np.testing.assert_array_equal(table.prefer[:, k], rm.prefer(prompts, chosen, rejected))
    fmt = np.array([p.task.category == "format" for p in pairs])
    # correctness abstains on format (a tie is no label: not correct); the inverted one is always wrong
    assert table.correct[~fmt, 0].all() and not table.correct[fmt, 0].any() and table.tie[fmt, 0].all()
    assert not table.correct[:, 1].any()
    assert table.calls.shape == (3,) and (table.calls > 0).all()
    assert table.cost_per_pair()["calls"] == pytest.approx(table.calls / len(pairs))

    back = labels.load(labels.save(table, tmp_path / "t.json"))
    np.testing.assert_array_equal(back.prefer, table.prefer)
    assert back.rm_names == table.rm_names and back.task_ids == table.task_ids and back.source == table.source
    labels.check_pairs(back, pairs)
    with pytest.raises(ValueError, match="do not match the pool-label table.*first difference at pair 0"):
        labels.check_pairs(back, pairs[2:])
    half = table.subset(np.arange(len(pairs) // 2))
    assert half.prefer.shape == (len(pairs) // 2, 3) and half.calls == pytest.approx(table.calls / 2, rel=0.1)
    formats = table.subset(fmt)                                   # a boolean mask: its share of the costs
    assert formats.task_ids == tuple(np.asarray(table.task_ids)[fmt])
    np.testing.assert_allclose(formats.calls, table.calls * fmt.sum() / len(pairs))


def test_dropped_scores_survive_the_file_as_ties(tmp_path):
    table = labels.PoolLabels(("a", "b"), np.array([[0.9, np.nan], [0.5, 0.2]], np.float32), np.ones(2),
                              np.ones(2), ("t1", "t2"), ("factual", "format"), {})
    back = labels.load(labels.save(table, tmp_path / "t.json"))
    assert np.isnan(back.prefer[0, 1])
    np.testing.assert_array_equal(back.tie, [[False, True], [True, False]])
    np.testing.assert_array_equal(back.correct, [[True, False], [False, False]])


def test_bad_tables_say_how_to_make_a_good_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments/pool_labels.py"):
        labels.load(tmp_path / "missing.json")
    good = labels.PoolLabels(("a",), np.ones((1, 1), np.float32), np.ones(1), np.ones(1), ("t",), ("format",), {})
    text = labels.save(good, tmp_path / "t.json").read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="truncated.*experiments/pool_labels.py"):
        labels.load(tmp_path / "cut.json")
    (tmp_path / "other.json").write_text(json.dumps({"rms": {}}))
    with pytest.raises(ValueError, match="not a pool-label table"):
        labels.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="inconsistent pool labels"):
        labels.PoolLabels(("a", "b"), np.ones((1, 1), np.float32), np.ones(2), np.ones(2), ("t",), ("x",), {})
    with pytest.raises(ValueError, match="got no pairs"):
        labels.label_with_pool([], [])
