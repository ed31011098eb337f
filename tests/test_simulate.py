"""The routing simulation and the `rmbandit simulate` command."""
import json

import numpy as np
import pytest

from rmbandit import cli, simulate

FAST = dict(pairs=1024, batch_size=64, dim=16)


@pytest.fixture(scope="module")
def item_results():
    return simulate.simulate(seed=0, **FAST)


def _by_name(results):
    return {r["router"]: r for r in results["routers"]}


def test_same_seed_same_results_and_other_seed_differs(item_results):
    routers = ("linucb", "uniform_random", "neural_ucb")
    a = simulate.simulate(seed=0, routers=routers, **FAST)
    b = simulate.simulate(seed=0, routers=routers, **FAST)
    c = simulate.simulate(seed=1, routers=routers, **FAST)
    strip = lambda res: [{k: v for k, v in r.items() if k != "seconds"} for r in res["routers"]]
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)
    assert strip(a)[0] == {k: v for k, v in _by_name(item_results)["linucb"].items() if k != "seconds"}


def test_linear_bandits_beat_random_and_round_robin(item_results):
    r = _by_name(item_results)
    for learner in ("linucb", "linear_thompson", "thompson_offline_prior"):
        for baseline in ("uniform_random", "round_robin"):
            assert r[learner]["final_regret"] < 0.6 * r[baseline]["final_regret"], (learner, baseline)
            assert r[learner]["accuracy"] > r[baseline]["accuracy"] + 0.04, (learner, baseline)


def test_offline_prior_helps_early(item_results):
    r = _by_name(item_results)
    early = lambda name: r[name]["regret_curve"][len(r[name]["regret_curve"]) // 4]
    assert early("thompson_offline_prior") < early("linear_thompson")


def test_metrics_are_consistent(item_results):
    cfg = item_results["config"]
    for r in item_results["routers"]:
        util = np.asarray(r["utilisation"])
        assert util.shape == (len(cfg["categories"]), len(cfg["rm_names"]))
        np.testing.assert_allclose(util.sum(1), 1.0)
        assert 0.5 <= r["expected_accuracy"] <= 1.0
        assert np.all(np.diff(r["regret_curve"]) >= -1e-9)          # regret vs the best RM never shrinks
    r = _by_name(item_results)
    assert r["majority_vote"]["rm_calls"] == len(cfg["rm_names"]) * r["linucb"]["rm_calls"]
    assert r["best_single_rm"]["utilisation"][0][cfg["rm_names"].index(cfg["best_single_rm"])] == 1.0


def test_majority_accuracy_matches_enumeration():
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.5, 1.0, size=(7, 5))
    outcomes = np.array(np.meshgrid(*[[0, 1]] * 5, indexing="ij")).reshape(5, -1).T     # all 32 label patterns
    prob = np.prod(np.where(outcomes[None], acc[:, None], 1 - acc[:, None]), axis=-1)
    want = (prob * (outcomes.sum(1) >= 3)).sum(1)
    np.testing.assert_allclose(simulate.majority_accuracy(acc), want, rtol=1e-12)


def test_batch_granularity_linucb_beats_random():
    res = _by_name(simulate.simulate(seed=0, granularity="batch", routers=("linucb", "uniform_random"),
                                     pairs=2048, batch_size=16, dim=16))
    assert res["linucb"]["final_regret"] < 0.7 * res["uniform_random"]["final_regret"]


def test_cli_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "sim"
    code = cli.main(["simulate", "--pairs", "512", "--dim", "16", "--routers", "linucb,majority_vote",
                     "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "linucb" in printed and "every RM labels every pair" in printed
    data = json.loads((out / "results.json").read_text())
    assert [r["router"] for r in data["routers"]] == ["linucb", "majority_vote"]
    assert (out / "regret.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_router_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["simulate", "--routers", "linucb,oracle9", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown router(s) oracle9" in err and "available: linucb" in err
    with pytest.raises(ValueError, match="smaller than one batch"):
        simulate.simulate(pairs=10, batch_size=64)
