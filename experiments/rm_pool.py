"""The default RM pool on labelled pairs of the bundled task suite: pairwise accuracy per
category, agreement between RMs (F1, LASeR Fig. 3) and cost per 1,000 pairs.

Pairs: ``rmbandit.data.make_pairs`` on the suite's test split: for every task a correct
response (chosen) and an incorrect one (rejected), written in the styles a small chat model
uses and wrong in the ways it is (off-by-one numbers, a distractor option, the negated
yes/no, a fluent answer that breaks the format).  An RM gets a pair right when it prefers
the chosen response, half right on a tie (it would give no training pair).

    python experiments/rm_pool.py [--per-category 50] [--out experiments/results/rm_pool]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from rmbandit import data
from rmbandit.rewards.pool import DEFAULT_POOL, build_pool


def f1(reference: np.ndarray, other: np.ndarray) -> float:
    """F1 of ``other``'s "chosen wins" labels against ``reference``'s (ties count as not)."""
    tp = np.sum(reference & other)
    precision = tp / max(other.sum(), 1)
    recall = tp / max(reference.sum(), 1)
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def evaluate(pool, pairs):
    prompts = [p.task.prompt for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    categories = np.array([p.task.category for p in pairs])
    rows, wins = {}, {}
    for rm in pool:
        before_s, before_calls = rm.cost.seconds, rm.cost.calls
        start = time.perf_counter()
        prob = rm.prefer(prompts, chosen, rejected)
        wall = time.perf_counter() - start
        credit = np.where(prob > 0.5, 1.0, np.where(prob == 0.5, 0.5, 0.0))
        credit[np.isnan(prob)] = 0.5
        wins[rm.name] = prob > 0.5
        rows[rm.name] = {
            "kind": rm.kind,
            "accuracy": {c: float(credit[categories == c].mean()) for c in sorted(set(categories))},
            "overall": float(credit.mean()),
            "ties": float(np.mean(prob == 0.5)),
            "seconds_per_1000_pairs": 1000 * wall / len(pairs),
            "model_calls_per_1000_pairs": 1000 * (rm.cost.calls - before_calls) / len(pairs),
            "rm_seconds": rm.cost.seconds - before_s,
        }
        print(f"{rm.name:22s} {rows[rm.name]['overall']:.3f}  {wall:7.1f} s", flush=True)
    names = [rm.name for rm in pool]
    agreement = {a: {b: f1(wins[a], wins[b]) for b in names} for a in names}
    return rows, agreement


def markdown(rows, agreement, pairs) -> str:
    categories = list(next(iter(rows.values()))["accuracy"])
    counts = {c: sum(p.task.category == c for p in pairs) for c in categories}
    best = {c: max(rows, key=lambda n: rows[n]["accuracy"][c]) for c in categories}
    lines = ["| RM | kind | " + " | ".join(f"{c} ({counts[c]})" for c in categories)
             + " | all | ties | s / 1k pairs | model calls / 1k pairs |",
             "|---" * (len(categories) + 6) + "|"]
    for name, row in rows.items():
        cells = [f"**{row['accuracy'][c]:.2f}**" if best[c] == name else f"{row['accuracy'][c]:.2f}"
                 for c in categories]
        lines.append(f"| {name} | {row['kind']} | " + " | ".join(cells)
                     + f" | {row['overall']:.2f} | {row['ties']:.2f} | {row['seconds_per_1000_pairs']:.1f} | "
                     f"{row['model_calls_per_1000_pairs']:.0f} |")
    names = list(rows)
    lines += ["", "Agreement (F1 of the column RM's \"chosen wins\" labels against the row RM's):", "",
              "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(f"{agreement[a][b]:.2f}" for b in names) + " |")
    winners = sorted(set(best.values()))
    lines += ["", "Best per category: " + ", ".join(f"{c}: {best[c]}" for c in categories)
              + f" ({len(winners)} different RMs)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results/rm_pool")
    args = parser.parse_args(argv)
    tasks = data.load_suite("test", size_per_category=args.per_category, seed=args.seed)
    pairs = data.make_pairs(tasks, seed=args.seed)
    pool = build_pool(DEFAULT_POOL, tasks)
    rows, agreement = evaluate(pool, pairs)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, agreement, pairs)
    print(table)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"pairs": len(pairs), "per_category": args.per_category,
                                                    "seed": args.seed, "rms": rows, "agreement_f1": agreement},
                                                   indent=2))


if __name__ == "__main__":
    main()
