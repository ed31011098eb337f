"""The controlled simulation on the real default pool (BayesianRouter's Table 3, on our suite).

Replays the suite's TEST pairs: every router picks an RM per pair (and, LASeR-style, per
batch of one category) and the label that RM gave is looked up in the pool-label table
written by ``experiments/pool_labels.py``; the TRAIN table is the leaderboard (best single
RM) and the offline prior.  Writes experiments/results/controlled_simulation.{json,md} and
controlled_simulation_tradeoff.png (accuracy vs RM seconds, the cost-aware sweep).

    python experiments/pool_labels.py            # once: the tables
    python experiments/controlled_simulation.py [--seeds 5] [--labels-dir experiments/results]
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from rmbandit import bandits, replay
from rmbandit import routers as routing

# the per-batch rows: the routers that can use a batch's mean context
BATCH_ROUTERS = ("linucb", "linear_thompson", "thompson_offline_prior", "exp3", "uniform_random", "round_robin")
# BayesianRouter and its ablations, on the offline router's pair features h
BAYESIAN_ROUTERS = ("bayesian_router", "bayesian_wo_offline", "bayesian_wo_online", "bayesian_weighted_0.5",
                    "linucb", "thompson_offline_prior", "uniform_random", "best_single_rm", "majority_vote", "oracle")


def register_bayesian(directory, rm_names) -> None:
    """The offline router's features as a featuriser, and BayesianRouter's online router (prior
    N(E_bt, 0.02 I), sigma^2 = 1) with its ablations as replay routers, learning from label
    correctness like every router here.  The replay appends a bias feature: E_bt gets a 0 for it."""
    from rmbandit.training import offline_router
    router = offline_router.load(directory, rm_names=rm_names)
    replay.register_featuriser("offline_router", lambda: router.features)
    prior = np.concatenate([router.prior_mean(), np.zeros((len(rm_names), 1), np.float32)], axis=1)

    def learning(bandit):
        return lambda s: routing.bandit_router(bandit, s.granularity, feedback="reward", rescale=None)

    replay.register_router("bayesian_router", learning(bandits.linear_thompson(prior_var=0.02, noise_var=1.0,
                                                                               prior_mean=prior)))
    replay.register_router("bayesian_wo_offline", learning(bandits.linear_thompson(prior_var=1.0, noise_var=1.0)))
    replay.register_router("bayesian_wo_online", lambda s: routing.offline_router(prior))
    replay.register_router("bayesian_weighted_0.5", learning(routing.bayesian.weighted_score(
        bandits.linear_thompson(prior_var=1.0, noise_var=1.0), prior, 0.5)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels-dir", default="experiments/results",
                        help="where pool_labels_{train,test}.json are")
    parser.add_argument("--features-dir", default=None, help="the MiniLM contexts' cache (default: beside the tables)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lambdas", default=",".join(f"{v:g}" for v in replay.LAMBDAS))
    parser.add_argument("--offline-router", default="experiments/results/offline_router",
                        help="the trained offline router (experiments/offline_router.py); '' skips its section")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    labels_dir, out = pathlib.Path(args.labels_dir), pathlib.Path(args.out)
    test_path = labels_dir / "pool_labels_test.json"
    if not test_path.exists():                 # (load_replay would label the pairs with the pool instead)
        raise SystemExit(f"no {test_path}: run `python experiments/pool_labels.py` first")
    pairs, table = replay.load_replay("suite", test_path)
    offline = replay.offline_from_table(labels_dir / "pool_labels_train.json", table.rm_names,
                                        cache_dir=args.features_dir)
    contexts = replay.pair_features(pairs, cache=replay.feature_cache_path(test_path, directory=args.features_dir))
    lambdas = tuple(float(v) for v in args.lambdas.split(","))
    run = dict(seeds=range(args.seeds), batch_size=args.batch_size, offline=offline)
    item = replay.replay(table, contexts, lambdas=lambdas, granularity="item", **run)
    batch = replay.replay(table, contexts, routers=BATCH_ROUTERS, granularity="batch", **run)
    timings = {"item": item.pop("timings"), "batch": batch.pop("timings")}
    bayes = None
    if args.offline_router:
        register_bayesian(args.offline_router, table.rm_names)
        h_offline = replay.offline_from_table(labels_dir / "pool_labels_train.json", table.rm_names,
                                              featuriser="offline_router", cache_dir=args.features_dir)
        h = replay.pair_features(pairs, "offline_router",
                                 replay.feature_cache_path(test_path, "offline_router", args.features_dir))
        bayes = replay.replay(table, h, routers=BAYESIAN_ROUTERS, granularity="item", seeds=range(args.seeds),
                              batch_size=args.batch_size, offline=h_offline)
        timings["bayesian"] = bayes.pop("timings")
    item["tradeoff"] = replay.tradeoff(item)
    out.mkdir(parents=True, exist_ok=True)
    (out / "controlled_simulation.json").write_text(json.dumps({"item": item, "batch": batch, "bayesian": bayes,
                                                                "timings": timings}, indent=1) + "\n")
    text = ("# Controlled simulation: the suite's test pairs replayed through the default pool\n\n"
            "Annotation accuracy = how often the routed RM's label agrees with the ground truth (mean ± sd over "
            f"{args.seeds} seeds; a seed shuffles the pairs and the router keys).  Contexts: MiniLM embeddings "
            "e, e' of prompt+chosen and prompt+rejected as [e + e'; |e - e'|] (blind to which side is chosen).  "
            "thompson_offline_prior's prior is a ridge regression of each RM's correctness on the TRAIN pairs' "
            "contexts, standing in for BayesianRouter's offline router; best_single_rm is the best RM on the "
            "TRAIN table; oracle takes the cheapest RM that is right on each pair.  Cost = each RM's measured "
            "seconds and model calls per pair (from the table) times how often it was asked; majority_vote asks "
            "every RM.  Written by `python experiments/controlled_simulation.py`.\n\n## One RM per pair\n\n" + replay.markdown(item)
            + "\n## One RM per batch of one category (LASeR-style)\n\n" + replay.markdown(batch).split("\n\nEach RM")[0]
            + "\n\n## Cost-aware Thompson sampling: reward = correct - lambda * RM seconds per pair\n\n"
            "| lambda | accuracy | RM s / 1k pairs | model calls / 1k pairs |\n|---|---|---|---|\n"
            + "".join(f"| {p['lambda']:g} | {p['accuracy']:.3f} ± {p['accuracy_sd']:.3f} | {p['seconds_per_1000']:.3g} "
                      f"| {p['calls_per_1000']:.3g} |\n" for p in item["tradeoff"]))
    if bayes is not None:
        text += ("\n## BayesianRouter on the offline router's pair features\n\n"
                 f"Contexts: h of the offline router in {args.offline_router} (frozen SmolLM2-135M encoder, trained on "
                 "the TRAIN table; experiments/offline_router.py).  bayesian_router: Thompson sampling with prior "
                 "N(E_bt, 0.02 I), sigma^2 = 1; w/o offline: zero prior, variance 1; w/o online: argmax h.E_bt, no "
                 "learning; weighted 0.5: 0.5 softmax(h.E_bt) + 0.5 softmax(w/o-offline Thompson scores).  All "
                 "learn from label correctness.\n\n" + replay.markdown(bayes).split("\n\nEach RM")[0] + "\n")
    (out / "controlled_simulation.md").write_text(text)
    replay.plot_tradeoff(item, out / "controlled_simulation_tradeoff.png")
    print(text)


if __name__ == "__main__":
    main()
