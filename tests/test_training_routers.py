"""The loop with the routers beyond LASeR: one RM per pair, RMs joining mid-run, and a
router cold-started from another run (CS-LASeR).  Same tiny policy and pool as
test_training_loop."""
import pathlib

import jax
import numpy as np
import pytest

pytest.importorskip("torch")

from rmbandit import bandits  # noqa: E402
from rmbandit.training import report  # noqa: E402
from tests.test_training_loop import (POOL, compilation_cache, load, policy_dir, quiet_trainer,  # noqa: E402,F401
                                      write_config)


def test_one_rm_per_pair_labels_each_pair_with_its_own_rm(tmp_path, policy_dir):
    path = write_config(tmp_path, policy_dir, router={"name": "random_pair", "empty_batch_loss": None},
                        train={"iterations": 1}, sampling={"num_samples": 4, "pairs_per_prompt": 3})
    trainer = quiet_trainer(load(path))
    state = trainer.fresh_state()
    state, row = trainer.train_batch(state, 0)
    # numbers ties on every sample of this tiny policy: only the noisy RM's pairs can form
    assert row["rm"] == "mixed" and row["rm_pairs"]["numbers"] == 0
    assert row["pairs"] == row["rm_pairs"]["noisy"] > 0
    counts = np.asarray(state["router"].counts)
    assert counts.sum() == 4 * 3 and (counts > 0).all()          # each of 12 candidate pairs got one RM


def test_an_rm_joins_mid_run_and_a_cold_started_run_reuses_the_router(tmp_path, policy_dir):
    for run in "abcd":
        (tmp_path / run).mkdir()
    path = write_config(tmp_path / "a", policy_dir, router={"join": ["numbers"], "join_batch": 2})
    trainer = quiet_trainer(load(path))
    trainer.run()
    rows = report.read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    assert [r["rm"] for r in rows[:2]] == ["noisy", "noisy"]       # the only arm before batch 2
    router = trainer.state["router"]
    assert np.asarray(router.counts).shape == (2,)
    assert bandits.num_arms(router.bandit) == 2
    # arm 0 is noisy (there from the start), arm 1 numbers (joined): rows 0-1 credited arm 0 only
    pulls = np.asarray(bandits.base.arm_states(router.bandit)[-1].arms.pulls)
    assert pulls[0] >= 2 and pulls.sum() == sum(not r["skipped"] or r["bandit_reward"] is not None for r in rows)

    # a resume after the join restores the grown router
    assert quiet_trainer(load(path)).run()["batches"] == 4

    cold = write_config(tmp_path / "b", policy_dir, router={"cold_start": str(tmp_path / "a" / "run")})
    warm_trainer = quiet_trainer(load(cold))
    start = warm_trainer.fresh_state()["router"]
    learnt = bandits.base.arm_states(router.bandit)[-1].arms
    got = bandits.base.arm_states(start.bandit)[-1].arms
    for mine, theirs in zip(jax.tree.leaves(got), jax.tree.leaves(learnt)):
        np.testing.assert_array_equal(np.asarray(mine)[[1, 0]], np.asarray(theirs))    # pool order vs arm order
    assert not np.asarray(start.counts).any()

    wrong = write_config(tmp_path / "c", policy_dir, pool=POOL[:1], router={"cold_start": str(tmp_path / "a" / "run")})
    with pytest.raises(ValueError, match="router.cold_start=.*same router.name, pool"):
        quiet_trainer(load(wrong)).fresh_state()
    empty = write_config(tmp_path / "d", policy_dir, router={"cold_start": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        quiet_trainer(load(empty)).fresh_state()


@pytest.mark.parametrize("router, message", [
    ({"join": ["judge"], "join_batch": 1}, "router.join names RM.*'judge'.*not in the pool"),
    ({"join": ["numbers"], "join_batch": 9}, r"router.join_batch must be a batch of the run, in \[1, 3\]"),
    ({"join": ["numbers", "noisy"], "join_batch": 1}, "at least one must be there from the start"),
    ({"name": "single_rm", "rm": "noisy", "join": ["numbers"], "join_batch": 1}, "cannot take new RMs"),
    ({"name": "bayesian", "empty_batch_loss": None}, "router.offline to its directory"),
    ({"name": "random_pair"}, "empty_batch_loss is for per-batch routers"),
])
def test_routing_config_errors_name_the_key(tmp_path, policy_dir, router, message):
    path = write_config(tmp_path, policy_dir, router=router)
    with pytest.raises(ValueError, match=message):
        quiet_trainer(load(path))


@pytest.mark.parametrize("name", ["score_ensemble", "agreement_ensemble", "majority_vote", "uwo", "online_ensemble"])
def test_ensembles_ask_every_rm_and_train_on_the_combined_labels(tmp_path, policy_dir, name):
    path = write_config(tmp_path, policy_dir, router={"name": name, "empty_batch_loss": None, "candidates": 3},
                        sampling={"num_samples": 4, "pairs_per_prompt": 2})
    trainer = quiet_trainer(load(path))
    before = trainer.fresh_state()
    calls = [rm.cost.items for rm in trainer.pool]
    after, row = trainer.train_batch(before, 0)
    # every RM scored every sample; each pair counts for every RM
    assert [rm.cost.items - c for rm, c in zip(trainer.pool, calls)] == [16, 16]
    assert row["rm"] == "mixed" and row["rm_pairs"] == {"numbers": row["pairs"], "noisy": row["pairs"]}
    assert row["pairs"] > 0 and np.isfinite(row["loss"])
    if name == "online_ensemble":
        # two noisy RMs disagree on some pairs: the one whose labels the policy fits better gains
        # weight (from the second batch: on the first, pi = pi_ref and every pair's margin is 0)
        path = write_config(tmp_path, policy_dir, router={"name": name, "empty_batch_loss": None},
                            pool=NOISY_POOL)
        trainer = quiet_trainer(load(path))
        before, _ = trainer.train_batch(trainer.fresh_state(), 0)
        after, row = trainer.train_batch(before, 1)

        def weights(state):
            contexts = np.ones((1, trainer.context_dim), np.float32)
            return np.asarray(trainer.router.assign(state["router"], contexts, jax.random.key(0))[1].scores[0])

        assert not np.allclose(weights(after), weights(before)) and row["bandit_reward"] is not None
    else:
        assert row["bandit_reward"] is None


def test_uwo_weighs_each_pair_by_the_share_of_rms_agreeing(tmp_path, policy_dir, monkeypatch):
    """numbers abstains on every pair of this policy: the majority is noisy's label alone, so
    every UWO pair weighs 1/2, and the step's loss is still the weighted mean of the pair losses."""
    path = write_config(tmp_path, policy_dir, router={"name": "uwo", "empty_batch_loss": None})
    trainer = quiet_trainer(load(path))
    seen = {}
    step = trainer._step

    def spy(state, base, batch, **static):
        seen["valid"] = np.asarray(batch.valid)
        return step(state, base, batch, **static)

    monkeypatch.setattr(trainer, "_step", spy)
    trainer.train_batch(trainer.fresh_state(), 0)
    assert set(np.unique(seen["valid"])) <= {0.0, 0.5} and (seen["valid"] == 0.5).any()


def test_the_classifier_router_learns_from_a_pool_label_table(tmp_path, policy_dir):
    from rmbandit import data
    from rmbandit.rewards import labels, pool
    source = {"split": "train", "per_category": 3, "seed": 0}
    tasks = data.load_suite("train", size_per_category=3, seed=0)
    table = labels.label_with_pool(pool.build_pool(POOL, tasks), data.make_pairs(tasks, seed=0), source)
    labels.save(table, tmp_path / "table.json")
    path = write_config(tmp_path, policy_dir, router={"name": "classifier", "labels": str(tmp_path / "table.json")})
    trainer = quiet_trainer(load(path))
    state, row = trainer.train_batch(trainer.fresh_state(), 0)
    assert row["rm"] in ("numbers", "noisy") and np.asarray(state["router"].counts).sum() == 4

    other = write_config(tmp_path, policy_dir, pool=POOL[::-1], router={"name": "classifier",
                                                                       "labels": str(tmp_path / "table.json")})
    with pytest.raises(ValueError, match="labels pairs with RMs.*label the pairs with this pool"):
        quiet_trainer(load(other))


# two RMs that both label this policy's samples (the numeric verifier ties on all of them)
NOISY_POOL = [POOL[1], {**POOL[1], "name": "noisier", "seed": 1}]


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory, policy_dir):
    """An offline router for NOISY_POOL whose encoder is the tiny policy (frozen, head width 8)."""
    from rmbandit import data
    from rmbandit.rewards import labels, pool
    from rmbandit.training import offline_router
    tasks = data.load_suite("train", size_per_category=3, seed=0)
    pairs = data.make_pairs(tasks, seed=0)
    table = labels.label_with_pool(pool.build_pool(NOISY_POOL, tasks), pairs,
                                   {"split": "train", "per_category": 3, "seed": 0})
    config = offline_router.OfflineRouterConfig(encoder=str(policy_dir), head_dim=8, max_tokens=64, epochs=2)
    directory = tmp_path_factory.mktemp("offline") / "router"
    offline_router.save(offline_router.train_offline_router(config, pairs, table), directory)
    return directory


@pytest.mark.parametrize("reward", ["baseline", "light_advantage"])
def test_bayesian_router_routes_pairs_on_the_offline_features_and_learns_from_their_losses(
        tmp_path, policy_dir, offline_dir, reward):
    path = write_config(tmp_path, policy_dir, sampling={"num_samples": 4, "pairs_per_prompt": 2}, pool=NOISY_POOL,
                        router={"name": "bayesian", "offline": str(offline_dir), "empty_batch_loss": None,
                                "reward": reward, "light_rms": 1})
    trainer = quiet_trainer(load(path))
    assert trainer.context_dim == 8
    prior = np.asarray(bandits.base.arm_states(trainer.fresh_state()["router"].bandit)[-1].arms.mean)
    np.testing.assert_allclose(prior, trainer.offline.prior_mean(), rtol=1e-6)       # mu_n(0) = E_bt[n]
    state, rows = trainer.fresh_state(), []
    for step in range(2):
        state, row = trainer.train_batch(state, step)
        rows.append(row)
    assert np.asarray(state["router"].counts).sum() == 2 * 4 * 2                      # one RM per candidate pair
    arms = bandits.base.arm_states(state["router"].bandit)[-1].arms
    learnt = int(np.asarray(arms.pulls).sum())
    # baseline: every pair that formed teaches its RM; light advantage: those another RM also labelled
    assert 0 < learnt <= sum(r["pairs"] for r in rows)
    assert int(bandits.base.arm_states(state["router"].bandit)[-1].skipped) == 0     # ties are not "skipped"
    assert not np.allclose(np.asarray(arms.mean), prior)


def test_a_cost_aware_laser_learns_reward_minus_the_rms_cost(tmp_path, policy_dir):
    """router.cost_weight: the bandit is a ``bandits.cost_aware`` one (reward - weight x cost,
    tested in test_combinators) whose costs are each RM's model calls per item so far."""
    path = write_config(tmp_path, policy_dir, router={"cost_weight": 0.5})
    trainer = quiet_trainer(load(path))
    state, rows = trainer.fresh_state(), []
    for step in range(3):
        state, row = trainer.train_batch(state, step)
        rows.append(row)
    cost_state = next(s for s in bandits.base.inner_states(state["router"].bandit)
                      if isinstance(s, bandits.combinators.CostState))
    want = [rm.cost.calls / max(rm.cost.items, 1) for rm in trainer.pool]
    np.testing.assert_allclose(np.asarray(cost_state.arms.cost), want, rtol=1e-6)
    assert any(want) and any(r["bandit_reward"] is not None for r in rows)
    with pytest.raises(ValueError, match="router.cost_weight is for the LASeR bandits"):
        quiet_trainer(load(write_config(tmp_path, policy_dir, router={"name": "random", "cost_weight": 0.5})))
