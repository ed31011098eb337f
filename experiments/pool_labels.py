"""Label the bundled suite's preference pairs with every RM of the default pool, once.

The offline router (BayesianRouter) learns from the train table and the controlled
simulation replays the test table; both read these files instead of running the LM RMs
again.  The pairs are rebuilt from each table's ``source`` (split, tasks per category, seed).

    python experiments/pool_labels.py [--train-per-category 100] [--test-per-category 50]
"""
from __future__ import annotations

import argparse

from rmbandit import data
from rmbandit.replay import suite_pairs
from rmbandit.rewards import labels
from rmbandit.rewards.pool import DEFAULT_POOL, build_pool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-category", type=int, default=100)
    parser.add_argument("--test-per-category", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args(argv)
    sources = [{"split": "train", "per_category": args.train_per_category, "seed": args.seed},
               {"split": "test", "per_category": args.test_per_category, "seed": args.seed}]
    tasks = [t for s in sources for t in data.load_suite(s["split"], size_per_category=s["per_category"],
                                                         seed=s["seed"])]
    pool = build_pool(DEFAULT_POOL, tasks)
    for source in sources:
        pairs = suite_pairs(source)
        table = labels.label_with_pool(pool, pairs, source, log=print)
        path = labels.save(table, f"{args.out}/pool_labels_{source['split']}.json")
        print(f"{path}: {len(pairs)} pairs; accuracy per RM "
              + ", ".join(f"{n} {a:.2f}" for n, a in zip(table.rm_names, table.correct.mean(0))), flush=True)


if __name__ == "__main__":
    main()
