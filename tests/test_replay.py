"""The controlled simulation on real labels: replay sources, metrics, CLI (hand-built tables, no models)."""
import json

import datasets
import numpy as np
import pytest

from rmbandit import cli, replay, routers
from rmbandit.rewards import labels as pool_labels

RM_NAMES = ("cheap", "mid", "dear")
SECONDS = np.array([0.024, 2.4, 24.0])      # per 24 pairs: 0.001, 0.1, 1 s per pair
CALLS = np.array([0.0, 24.0, 48.0])


def make_table(n=24, seed=0, categories=("arith", "facts")) -> pool_labels.PoolLabels:
    """Random labels with ties (0.5) and dropped pairs (NaN); "dear" is right most often."""
    rng = np.random.default_rng(seed)
    right = rng.random((n, 3)) < np.array([0.5, 0.7, 0.9])
    prefer = np.where(right, 0.8, 0.2).astype(np.float32)
    prefer[rng.random((n, 3)) < 0.1] = 0.5
    prefer[3, 0] = np.nan
    cats = tuple(categories[i % len(categories)] for i in range(n))
    return pool_labels.PoolLabels(RM_NAMES, prefer, SECONDS * n / 24, CALLS * n / 24,
                                  tuple(f"{c}/t{i}" for i, c in enumerate(cats)), cats, {"hand": "built"})


@pytest.fixture(scope="module")
def table():
    return make_table()


@pytest.fixture(scope="module")
def contexts(table):
    x = np.random.default_rng(1).normal(size=(len(table.task_ids), 5)).astype(np.float32)
    x[:, -1] = 1.0
    return x


def by_name(results):
    return {r["router"]: r for r in results["routers"]}


# ---------------------------------------------------------------- metrics against NumPy

def reference_metrics(chosen, prefer, seconds, calls, category):
    """The metrics from their definitions, pair by pair."""
    n, k = prefer.shape
    right, asked = np.zeros(n, bool), np.zeros(k)
    for i, c in enumerate(chosen):
        if c == routers.ALL_RMS:
            votes_for = np.sum(prefer[i] > 0.5)
            votes_against = np.sum(prefer[i] < 0.5)          # NaN and 0.5 vote for neither
            right[i] = votes_for > votes_against
            asked += 1
        else:
            right[i] = prefer[i, c] > 0.5
            asked[c] += 1
    util = []
    for cat in sorted(set(category)):
        rows = [i for i in range(n) if category[i] == cat]
        count = np.zeros(k)
        for i in rows:
            count += 1 if chosen[i] == routers.ALL_RMS else np.eye(k)[chosen[i]]
        util.append(count / count.sum())
    return {"accuracy": right.mean(), "utilisation": np.array(util),
            "seconds_per_1000": 1000 * asked @ (seconds / n) / n, "calls_per_1000": 1000 * asked @ (calls / n) / n}


@pytest.mark.parametrize("name", ["linucb", "uniform_random", "majority_vote", "single:mid"])
def test_metrics_match_a_numpy_reference(name, table, contexts):
    setting = replay.Setting(replay.Offline(contexts, table.correct), RM_NAMES, table.cost_per_pair()["seconds"],
                             "item")
    order = replay.batches(np.array(table.categories), 5, "item", np.random.default_rng(0))
    chosen = replay.replay_once(replay.builder(name, RM_NAMES)(setting), table, contexts, order,
                                replay.router_key(0, name))
    got = replay.evaluate(name, chosen, table)
    want = reference_metrics(chosen, table.prefer, table.seconds, table.calls, table.categories)
    assert got["accuracy"] == pytest.approx(want["accuracy"])
    np.testing.assert_allclose(got["utilisation"], want["utilisation"])
    assert got["seconds_per_1000"] == pytest.approx(want["seconds_per_1000"])
    assert got["calls_per_1000"] == pytest.approx(want["calls_per_1000"])


def test_a_router_that_always_picks_rm_j_gets_rm_js_accuracy(table, contexts):
    res = by_name(replay.replay(table, contexts, routers=[f"single:{n}" for n in RM_NAMES], seeds=[0, 1]))
    for j, name in enumerate(RM_NAMES):
        r = res[f"single:{name}"]
        assert r["accuracy"] == np.mean(table.prefer[:, j] > 0.5) and r["accuracy_sd"] == 0.0
        assert r["seconds_per_1000"] == pytest.approx(1000 * SECONDS[j] / 24)
        assert r["utilisation"] == [list(np.eye(3)[j])] * 2


def test_summary_over_seeds_is_mean_and_sample_sd(table, contexts):
    res = replay.replay(table, contexts, routers=["uniform_random", "oracle"], seeds=[0, 1, 2])
    r = by_name(res)["uniform_random"]
    seeds = np.array(r["accuracy_per_seed"])
    assert len(seeds) == 3 and len(set(seeds)) > 1                       # the seed changes the keys
    assert r["accuracy"] == pytest.approx(seeds.mean()) and r["accuracy_sd"] == pytest.approx(seeds.std(ddof=1))
    assert res["oracle_rate"] == by_name(res)["oracle"]["accuracy"] == np.mean((table.prefer > 0.5).any(1))
    np.testing.assert_allclose(res["rm_accuracy"], np.mean(table.prefer > 0.5, 0))


def test_oracle_takes_the_cheapest_right_rm():
    correct = np.array([[True, True, True], [False, True, True], [False, False, True], [False, False, False]])
    np.testing.assert_array_equal(replay.oracle_choice(correct, np.array([1.0, 0.1, 5.0])), [1, 1, 2, 1])


def test_majority_vote_ties_and_abstentions_give_no_right_label():
    prefer = np.array([[0.9, 0.8, 0.1, 0.2],     # 2 vs 2: tie, no label
                       [0.9, 0.1, 0.5, np.nan],  # 1 vs 1, two abstain: tie
                       [0.9, 0.5, 0.5, np.nan],  # 1 vs 0: right
                       [0.9, 0.9, 0.1, 0.5],     # 2 vs 1: right
                       [0.1, 0.2, 0.9, 0.5],     # 1 vs 2: wrong
                       [0.5, 0.5, 0.5, 0.5]],    # nobody labels: no label
                      np.float32)
    table = pool_labels.PoolLabels(tuple("abcd"), prefer, np.ones(4), np.full(4, 6.0), tuple(map(str, range(6))),
                                   ("x",) * 6, {})
    r = replay.evaluate("majority_vote", np.full(6, routers.ALL_RMS), table)
    assert r["accuracy"] == pytest.approx(2 / 6)
    assert r["rm_calls"] == 24 and r["calls_per_1000"] == pytest.approx(4 * 1000)   # every RM asked for every pair


def test_same_seed_same_results_and_independent_of_the_other_routers(table, contexts):
    names = ["uniform_random", "exp3"]
    a, b = (replay.replay(table, contexts, routers=names, seeds=[3], batch_size=8) for _ in range(2))
    c = replay.replay(table, contexts, routers=names, seeds=[5], batch_size=8)
    for res in (a, b, c):
        assert set(res.pop("timings")) == set(names)
    assert a == b and a["routers"] != c["routers"]
    alone = replay.replay(table, contexts, routers=["exp3"], seeds=[3], batch_size=8)
    assert alone["routers"][0] == by_name(a)["exp3"]


def test_batches_cover_every_pair_once_and_batch_mode_keeps_one_category(table):
    category = np.array(table.categories)
    for granularity in ("item", "batch"):
        order = replay.batches(category, 5, granularity, np.random.default_rng(0))
        np.testing.assert_array_equal(np.sort(np.concatenate(order)), np.arange(len(category)))
        assert max(map(len, order)) == 5
        if granularity == "batch":
            assert all(len(set(category[b])) == 1 for b in order)
    assert not all(len(set(category[b])) == 1 for b in replay.batches(category, 5, "item", np.random.default_rng(0)))


def test_batch_granularity_gives_one_rm_per_batch(table, contexts):
    setting = replay.Setting(replay.Offline(contexts, table.correct), RM_NAMES, np.zeros(3), "batch")
    order = replay.batches(np.array(table.categories), 4, "batch", np.random.default_rng(0))
    chosen = replay.replay_once(replay.builder("linucb", RM_NAMES)(setting), table, contexts, order,
                                replay.router_key(0, "linucb"))
    assert all(len(set(chosen[b])) == 1 for b in order)


def test_cost_aware_routers_trade_accuracy_for_cost():
    # "dear" is always right, "cheap" right on half the pairs: a high lambda moves labels to cheap RMs
    n = 64
    prefer = np.stack([np.tile([0.9, 0.1], n // 2), np.full(n, 0.1), np.full(n, 0.9)], 1).astype(np.float32)
    table = pool_labels.PoolLabels(RM_NAMES, prefer, np.array([0.0, 0.0, 1.0]) * n, np.ones(3) * n,
                                   tuple(map(str, range(n))), ("x",) * n, {})
    x = np.ones((n, 2), np.float32)
    res = replay.replay(table, x, routers=["cost_aware@0", "cost_aware@10"], seeds=[0], batch_size=16)
    sweep = {p["lambda"]: p for p in replay.tradeoff(res)}
    assert set(sweep) == {0.0, 10.0}
    assert sweep[10.0]["seconds_per_1000"] < 0.5 * sweep[0.0]["seconds_per_1000"]
    assert sweep[0.0]["accuracy"] > sweep[10.0]["accuracy"] + 0.2
    assert res["config"]["leaderboard"].startswith("replayed pairs (in-sample")
    setting = replay.Setting(replay.Offline(x, table.correct), RM_NAMES, table.cost_per_pair()["seconds"], "item")
    state = replay.builder("cost_aware@10", RM_NAMES)(setting).init(replay.router_key(0, "x"), 3, 2)
    np.testing.assert_allclose(state.bandit.arms.cost, [0.0, 0.0, 1.0])      # the bandit pays seconds per pair


def test_bad_settings_name_the_parameter(table, contexts):
    with pytest.raises(ValueError, match=r"routers: unknown router 'single:nobody'; valid: .*single:cheap"):
        replay.replay(table, contexts, routers=["single:nobody"])
    with pytest.raises(ValueError, match="unknown router 'cost_aware@-1'"):
        replay.replay(table, contexts, routers=["cost_aware@-1"])
    with pytest.raises(ValueError, match="seeds: need at least one seed"):
        replay.replay(table, contexts, seeds=[])
    with pytest.raises(ValueError, match=r"contexts: need one row per pair of the table \(24\)"):
        replay.replay(table, contexts[:5])


def test_registered_routers_join_the_table(table, contexts, monkeypatch):
    monkeypatch.setitem(replay.ROUTERS, "always_mid", lambda setting: routers.single_rm(1))
    assert "always_mid" in replay.router_names(RM_NAMES)
    res = replay.replay(table, contexts, routers=["always_mid"], seeds=[0])
    assert res["routers"][0]["accuracy"] == np.mean(table.prefer[:, 1] > 0.5)


# ---------------------------------------------------------------- pair sources

def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_pairs(tmp_path):
    path = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5",
                                                    "category": "math", "id": 7}),
                                        "",
                                        json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": ["Go", "No"]})])
    pairs = replay.read_jsonl(path)
    assert [(p.prompt, p.chosen, p.rejected, p.task.category) for p in pairs] == [
        ("2+2?", "4", "5", "math"), ("Hi", "Hello", "Go", "all"), ("Hi", "Hello", "No", "all")]
    assert len({p.task.id for p in pairs}) == 3
    bom = tmp_path / "bom.jsonl"                          # as Notepad and PowerShell save UTF-8
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert replay.read_jsonl(bom) == pairs


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "chosen": "b", "rej', "line 2: not valid JSON (Unterminated string starting at: column 32): "
                                            "the line is truncated or malformed; each line must be one object like"),
    ('["a", "b", "c"]', "line 2: expected a JSON object like"),
    ('{"prompt": "a", "chosen": "b"}', "line 2: missing field(s) rejected; each pair needs"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}', "line 2: field 'chosen' must be a string or a list of "
                                                      "strings, got 3"),
    ('{"prompt": "a", "chosen": "b", "rejected": []}', "line 2: field 'rejected' must be a string or a list"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "category": 5}', "line 2: field 'category' must be a string"),
])
def test_bad_jsonl_lines_name_the_file_the_line_and_the_fix(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", ['{"prompt": "p", "chosen": "c", "rejected": "r"}', line])
    with pytest.raises(ValueError) as err:
        replay.read_jsonl(path)
    assert str(err.value).startswith(f"{path} line 2: ") and message in str(err.value)


def test_empty_or_missing_jsonl(tmp_path):
    with pytest.raises(ValueError, match="holds no pairs; write one"):
        replay.read_jsonl(write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(FileNotFoundError, match="no pairs file at .*nope.jsonl; --pairs takes 'suite'"):
        replay.read_jsonl(tmp_path / "nope.jsonl")


def test_hf_dataset_columns_map_rewardbench2():
    rows = datasets.Dataset.from_dict({"id": ["1", "2"], "prompt": ["p1", "p2"], "chosen": [["c1"], ["c2", "c2b"]],
                                       "rejected": [["r1", "r1b", "r1c"], ["r2"]], "subset": ["Math", "Focus"]})
    pairs = replay.pairs_from_dataset(rows)
    assert [(p.prompt, p.chosen, p.rejected, p.task.category) for p in pairs] == [
        ("p1", "c1", "r1", "Math"), ("p1", "c1", "r1b", "Math"), ("p1", "c1", "r1c", "Math"),
        ("p2", "c2", "r2", "Focus")]
    flat = datasets.Dataset.from_dict({"question": ["q"], "good": ["g"], "bad": ["b"]})
    pairs = replay.pairs_from_dataset(flat, {"prompt": "question", "chosen": "good", "rejected": "bad",
                                             "category": None})
    assert [(p.prompt, p.chosen, p.rejected, p.task.category) for p in pairs] == [("q", "g", "b", "all")]
    with pytest.raises(ValueError, match=r"ds has no column\(s\) 'subset' \(for category\); its columns: question, "
                                         r"good, bad; pass columns="):
        replay.pairs_from_dataset(flat, {"prompt": "question", "chosen": "good", "rejected": "bad"}, "ds")


def test_hf_spec_loads_the_named_dataset_and_split(monkeypatch):
    asked = []

    def fake_load_dataset(name, split):             # never downloads: the column mapping is what is tested
        asked.append((name, split))
        return datasets.Dataset.from_dict({"prompt": ["p"], "chosen": [["c"]], "rejected": [["r1", "r2"]],
                                           "subset": ["Safety"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs = replay.load_pairs("hf:allenai/reward-bench-2", hf_split="filtered")
    assert asked == [("allenai/reward-bench-2", "filtered")] and len(pairs) == 2
    assert replay.pairs_source("hf:allenai/reward-bench-2", "filtered") == {"hf": "allenai/reward-bench-2",
                                                                           "split": "filtered"}


def labelled_jsonl(tmp_path, n=12):
    """A JSONL file of n pairs and a saved table for exactly those pairs."""
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "category": "ab"[i % 2]}
            for i in range(n)]
    path = write(tmp_path / "pairs.jsonl", [json.dumps(r) for r in rows])
    pairs = replay.read_jsonl(path)
    base = make_table(n)
    table = pool_labels.PoolLabels(RM_NAMES, base.prefer, base.seconds, base.calls, tuple(p.task.id for p in pairs),
                                   tuple(p.task.category for p in pairs), replay.pairs_source(str(path)))
    return path, pool_labels.save(table, tmp_path / "table.json"), rows


def test_load_replay_checks_the_table_against_the_pairs(tmp_path):
    path, table_path, rows = labelled_jsonl(tmp_path)
    pairs, table = replay.load_replay(str(path), table_path)
    assert table.task_ids == tuple(p.task.id for p in pairs)
    rows[4]["rejected"] = "edited"
    write(path, [json.dumps(r) for r in rows])
    with pytest.raises(ValueError, match="do not match the pool-label table .* first difference at pair 4"):
        replay.load_replay(str(path), table_path)
    with pytest.raises(ValueError, match="does not describe suite pairs"):
        replay.load_replay("suite", table_path)


def fake_encoder(texts):
    """A deterministic 'embedding': character counts of a few letters."""
    return np.array([[t.count(ch) for ch in "aeiou "] for t in texts], np.float32)


def test_pair_features_are_symmetric_and_cached(tmp_path, monkeypatch):
    calls = []

    def build():
        calls.append(1)
        return replay.embedding_pair_features(fake_encoder)

    monkeypatch.setitem(replay.FEATURISERS, "fake", build)
    pairs = [replay.external_pair("say hi", "hello there", "no"), replay.external_pair("pick", "a", "eeee")]
    swapped = [replay.external_pair(p.prompt, p.rejected, p.chosen) for p in pairs]
    cache = tmp_path / "f.npz"
    x = replay.pair_features(pairs, "fake", cache)
    e, e2 = fake_encoder(["say hi\n\nhello there", "pick\n\na"]), fake_encoder(["say hi\n\nno", "pick\n\neeee"])
    np.testing.assert_array_equal(x, np.concatenate([e + e2, np.abs(e - e2), np.ones((2, 1))], 1))
    np.testing.assert_array_equal(replay.pair_features(pairs, "fake", cache), x)
    assert len(calls) == 1                                            # read back from the cache
    np.testing.assert_array_equal(replay.pair_features(swapped, "fake", cache), x)    # no hint of the chosen side
    assert len(calls) == 2                                            # other texts: computed again
    with pytest.raises(ValueError, match="unknown featuriser 'nope'; registered: minilm, fake"):
        replay.pair_features(pairs, "nope")


def test_an_unwritable_feature_cache_warns_and_the_features_still_come(tmp_path, monkeypatch):
    monkeypatch.setitem(replay.FEATURISERS, "fake", lambda: replay.embedding_pair_features(fake_encoder))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    pairs = [replay.external_pair("p", "yes", "no")]
    with pytest.warns(RuntimeWarning, match="could not cache the pair features at .*: pass a writable --features-dir"):
        x = replay.pair_features(pairs, "fake", blocker / "f.npz")
    assert x.shape == (1, 13)


# ---------------------------------------------------------------- the command

def test_cli_replays_a_jsonl_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(replay.FEATURISERS, "fake", lambda: replay.embedding_pair_features(fake_encoder))
    path, table_path, _ = labelled_jsonl(tmp_path, n=20)
    out = tmp_path / "out"
    args = ["simulate", "--pairs", str(path), "--labels", str(table_path), "--featuriser", "fake", "--seeds", "2",
            "--routers", "single:dear,majority_vote,cost_aware@0,cost_aware@3,oracle", "--batch-size", "4",
            "--quiet", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "| single:dear |" in printed and "oracle rate" in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["router"] for r in results["routers"]][:2] == ["single:dear", "majority_vote"]
    assert results["config"]["seeds"] == [0, 1] and [p["lambda"] for p in results["tradeoff"]] == [0.0, 3.0]
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "table.fake.npz").exists()
    assert (out / "results.md").read_text().startswith("20 pairs")


@pytest.mark.parametrize("flags, message", [
    (["--pairs", "suite", "--dim", "8"], "--dim: only for the synthetic mode (--pairs <number>)"),
    (["--pairs", "64", "--seeds", "3"], "--seeds: only for the replay mode"),
    (["--pairs", "64", "--labels", "t.json"], "--labels: only for the replay mode"),
    (["--pairs", "suite", "--seeds", "0"], "--seeds: must be at least 1, got 0"),
    (["--pairs", "suite", "--lambdas", "0,x"], "--lambdas: '0,x' is not a comma-separated list of numbers"),
    (["--pairs", "suite", "--lambdas", "-1"], "--lambdas: every lambda must be >= 0"),
    (["--pairs", "suite", "--featuriser", "bert"], "--featuriser: unknown 'bert'; registered: minilm"),
    (["--pairs", "missing.jsonl", "--labels", "also-missing.json", "--pool", "nope.json"],
     "--pool: cannot read nope.json"),
])
def test_bad_replay_flags_name_the_flag(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(replay, "replay", lambda *a, **kw: pytest.fail("the run started"))
    assert cli.main(["simulate", *flags, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_without_a_table_the_pool_labels_the_pairs_and_the_table_is_saved(tmp_path):
    path, _, _ = labelled_jsonl(tmp_path)
    pool = [{"name": "longer", "kind": "verifier", "verifier": "length"}, {"name": "coin", "kind": "random"}]
    pairs, table = replay.load_replay(str(path), tmp_path / "new.json", pool)
    assert table.rm_names == ("longer", "coin") and table.source["jsonl"] == str(path)
    np.testing.assert_array_equal(table.correct[:, 0], [len(p.chosen) < len(p.rejected) for p in pairs])
    again = replay.load_replay(str(path), tmp_path / "new.json")[1]          # read back, not labelled again
    np.testing.assert_array_equal(again.prefer, table.prefer)
    assert replay.load_replay(str(path), tmp_path / "new.json", pool)[1].rm_names == table.rm_names
    with pytest.raises(ValueError, match="holds the labels of RMs longer, coin, not of the pool asked for \\(coin, "
                                         "other\\); label with that pool into another --out"):
        replay.load_replay(str(path), tmp_path / "new.json", [pool[1], {"name": "other", "kind": "random"}])
    with pytest.raises(ValueError, match="is a directory, not a pool-label table"):
        replay.load_replay(str(path), tmp_path)


def test_cli_bad_router_and_bad_pairs_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(replay.FEATURISERS, "fake", lambda: replay.embedding_pair_features(fake_encoder))
    path, table_path, _ = labelled_jsonl(tmp_path)
    base = ["simulate", "--pairs", str(path), "--labels", str(table_path), "--featuriser", "fake", "--quiet",
            "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--routers", "linucb,single:nobody"]) == 2
    assert "--routers: unknown router 'single:nobody'; valid: linucb" in capsys.readouterr().err
    assert cli.main(base + ["--routers", ""]) == 2
    assert "--routers: no router named; valid: linucb" in capsys.readouterr().err
    assert cli.main(base + ["--routers", "oracle,exp3,oracle"]) == 2
    assert "--routers: oracle named more than once" in capsys.readouterr().err
    path.write_text(path.read_text()[:-20])                          # truncated mid-line
    assert cli.main(base) == 2
    assert f"{path} line 12: not valid JSON" in capsys.readouterr().err
