"""The routing simulation and the `rmbandit simulate` command."""
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from rmbandit import cli, routers, simulate

FAST = dict(pairs=1024, batch_size=64, dim=16)


@pytest.fixture(scope="module")
def item_results():
    return simulate.simulate(seed=0, **FAST)


def _by_name(results):
    return {r["router"]: r for r in results["routers"]}


def test_same_seed_same_results_and_other_seed_differs(item_results):
    routers = ("exp3", "linucb")                               # not in ROUTERS' order
    a = simulate.simulate(seed=0, routers=routers, **FAST)
    b = simulate.simulate(seed=0, routers=routers, **FAST)
    c = simulate.simulate(seed=1, routers=routers, **FAST)
    assert set(a.pop("timings")) == set(routers)            # wall-clock lives apart from the results
    b.pop("timings"), c.pop("timings")
    assert a == b
    assert a["routers"] != c["routers"]
    full = _by_name(item_results)
    assert a["routers"] == [full[name] for name in routers]   # a router's results do not depend on the others run


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


def test_simulation_routes_through_the_routers():
    rng = np.random.default_rng(0)
    world = simulate.make_world(simulate.WorldConfig(dim=8), rng)
    stream = simulate.make_stream(world, 256, 32, "batch", rng)
    table = simulate.make_routers(np.zeros((5, 8), np.float32), 2, "batch")
    assert tuple(table) == simulate.ROUTERS                    # the order that gives each router its key
    chosen = simulate.run_router(table["linucb"](), stream, jax.random.key(0))
    assert (chosen == chosen[:, :1]).all() and len(np.unique(chosen)) > 1      # one RM per batch, learned
    assert (simulate.run_router(table["best_single_rm"](), stream, jax.random.key(0)) == 2).all()
    every = simulate.run_router(table["majority_vote"](), stream, jax.random.key(0))
    assert (every == routers.ALL_RMS).all()
    np.testing.assert_array_equal(simulate.routed_correct(stream.correct, every),
                                  stream.correct.sum(-1) > 2.5)


def test_cli_writes_table_json_timings_and_png(tmp_path, capsys):
    out = tmp_path / "new" / "sim"
    code = cli.main(["simulate", "--pairs", "512", "--dim", "16", "--routers", "linucb, majority_vote",
                     "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "linucb" in printed and "every RM labels every pair" in printed
    data = json.loads((out / "results.json").read_text())
    assert [r["router"] for r in data["routers"]] == ["linucb", "majority_vote"]
    assert "timings" not in data and all("seconds" not in r for r in data["routers"])
    seconds = json.loads((out / "timings.json").read_text())["seconds"]
    assert set(seconds) == {"linucb", "majority_vote"} and all(s > 0 for s in seconds.values())
    assert (out / "regret.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_results_json_is_byte_identical_for_a_seed(tmp_path):
    args = ["simulate", "--pairs", "256", "--batch-size", "32", "--dim", "8", "--routers", "exp3,best_single_rm",
            "--quiet", "--seed", "3"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()


VALID_NAMES = "valid names: linucb, linear_thompson, thompson_offline_prior"


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--dim", "0"], "--dim: must be at least 2 (the last feature is a constant 1), got 0"),
    (["--dim", "1"], "--dim: must be at least 2"),
    (["--pairs", "-5"], "--pairs: must be at least 1, got -5"),
    (["--pairs", "10"], "--pairs: 10 pairs make no full batch of --batch-size 64; use at least 64"),
    (["--seed", "-1"], "--seed: must be in [0, 4294966]"),
    (["--seed", "4294967"], "--seed: must be in [0, 4294966]"),
    (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    (["--granularity", "pair"], "argument --granularity: invalid choice: 'pair'"),
    (["--routers", ""], "--routers: no router named; " + VALID_NAMES),
    (["--routers", " , "], "--routers: no router named; " + VALID_NAMES),
    (["--routers", "linucb,oracle9"], "--routers: unknown router(s) 'oracle9'; " + VALID_NAMES),
    (["--routers", "exp3,linucb,exp3"], "--routers: exp3 named more than once"),
])
def test_bad_flags_name_the_flag_and_nothing_runs(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(simulate, "simulate", lambda **kw: pytest.fail("the run started"))
    out = tmp_path / "sim"
    assert cli.main(["simulate", *flags, "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()                                  # flags are checked before the directory is made


def _unwritable_dirs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [(a_file, "exists and is not a directory"), (a_file / "sub", "cannot create"),
             (pathlib.Path("/proc/rmbandit-test"), "cannot create")]
    blocked = tmp_path / "blocked"
    (blocked / "results.json").mkdir(parents=True)
    cases.append((blocked, "results.json is a directory"))
    return cases


def test_unwritable_out_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(simulate, "simulate", lambda **kw: pytest.fail("the run started"))
    for out, message in _unwritable_dirs(tmp_path):
        if str(out).startswith("/proc") and not pathlib.Path("/proc/self").exists():
            continue
        assert cli.main(["simulate", "--pairs", "64", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"rmbandit simulate: error: --out: " in err and message in err, (out, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(simulate, "simulate", lambda **kw: pytest.fail("the run started"))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    assert cli.main(["simulate", "--out", str(read_only / "sim"), "--quiet"]) == 2
    assert cli.main(["simulate", "--out", str(read_only), "--quiet"]) == 2
    assert "choose a writable --out" in capsys.readouterr().err


def test_library_settings_are_checked_by_parameter_name():
    with pytest.raises(ValueError, match="pairs: 10 pairs make no full batch of batch_size 64"):
        simulate.simulate(pairs=10, batch_size=64)
    with pytest.raises(ValueError, match="routers: unknown router"):
        simulate.simulate(routers=("oracle9",))
    with pytest.raises(ValueError, match="granularity: must be one of item, batch"):
        simulate.simulate(granularity="pair")
    with pytest.raises(ValueError, match="batch_size: must be an integer, got 8.0"):
        simulate.simulate(batch_size=8.0)
