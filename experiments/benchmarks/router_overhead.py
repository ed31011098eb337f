"""The router's share of a training batch: BayesianRouter's per-pair assign + observe next to
LASeR's per-batch assign + observe, side by side in one run.

    PYTHONPATH=. python experiments/benchmarks/router_overhead.py            # ~1 min on 2 cores
    options: --pairs 160 --dim 576 --rms 6 --prompts 16 --repeats 30 --warmup 3
             --out PATH (default experiments/benchmarks/results/router_overhead.json)

Workloads (the issue's): BayesianRouter (``routers.bayesian_router``, E_bt prior, baseline
reward with quantile rescaling) routes 160 pairs of width d = 576 (SmolLM2-135M's hidden size,
the offline encoder's) among K = 6 RMs, then observes their 160 DPO losses.  LASeR
(``routers.laser``) routes one batch of 16 prompt embeddings (d = 576) and observes the batch
loss.  Each function is jitted once, warmed up on ``--warmup`` batches (compiles excluded),
then timed on ``--repeats`` fresh batches with ``block_until_ready``; we report medians.
The state evolves over the stream as in training, so later updates see learned posteriors.

Pair features are realistic for an LM encoder: norms in the hundreds and nearly collinear rows
(cosine ~0.99), the case the square-root updates exist for.

Target: BayesianRouter's select + update for 160 pairs under 1 % of a training batch, against
the measured CPU batch in ``results/train_batch.json`` (rmbandit median batch seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from rmbandit import routers

RESULTS = pathlib.Path(__file__).parent / "results"


def features(rng, rows: int, dim: int) -> np.ndarray:
    common = np.ones(dim) / np.sqrt(dim)
    return (300.0 * common + 30.0 * rng.normal(size=(rows, dim)) / np.sqrt(dim)).astype(np.float32)


def time_router(router, num_rms: int, dim: int, rows: int, feedback, warmup: int, repeats: int, seed: int) -> dict:
    """Median seconds of the jitted assign, observe and their sum over a stream of batches."""
    rng = np.random.default_rng(seed)
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    state = router.init(jax.random.key(seed), num_rms, dim)
    times = {"assign": [], "observe": [], "total": []}
    compile_s = None
    for step in range(warmup + repeats):
        x, key, signal = features(rng, rows, dim), jax.random.key(step), feedback(rng)
        t0 = time.perf_counter()
        state, assignment = assign(state, x, key)
        jax.block_until_ready(assignment)
        t1 = time.perf_counter()
        state = observe(state, assignment, signal)
        jax.block_until_ready(state)
        t2 = time.perf_counter()
        if step == 0:
            compile_s = t2 - t0
        if step >= warmup:
            times["assign"].append(t1 - t0)
            times["observe"].append(t2 - t1)
            times["total"].append(t2 - t0)
    return {"median_s": {k: statistics.median(v) for k, v in times.items()},
            "min_total_s": min(times["total"]), "first_call_s": compile_s, "repeats": repeats}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=160)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--rms", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=str(RESULTS / "router_overhead.json"))
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    e_bt = (rng.normal(size=(args.rms, args.dim)) / 300.0).astype(np.float32)
    pair_losses = lambda r: r.uniform(0.2, 1.2, size=args.pairs).astype(np.float32)     # noqa: E731
    batch_loss = lambda r: np.float32(r.uniform(0.2, 1.2))                               # noqa: E731
    results = {
        "bayesian_router": time_router(routers.bayesian_router(prior_mean=e_bt), args.rms, args.dim, args.pairs,
                                       pair_losses, args.warmup, args.repeats, 1),
        "laser": time_router(routers.laser(), args.rms, args.dim, args.prompts, batch_loss, args.warmup,
                             args.repeats, 2),
    }
    bayes = results["bayesian_router"]["median_s"]["total"]
    results["bayesian_router"]["per_pair_s"] = bayes / args.pairs

    batch_file = RESULTS / "train_batch.json"
    batch_s = json.loads(batch_file.read_text())["rmbandit"]["median_seconds"]["batch"]
    share = bayes / batch_s
    out = {
        "workload": {"pairs": args.pairs, "prompts_per_laser_batch": args.prompts, "dim": args.dim,
                     "rms": args.rms, "warmup": args.warmup, "repeats": args.repeats},
        "host": {"machine": platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
                 "backend": jax.default_backend(), "load_average_before": LOAD_BEFORE,
                 "load_average_after": os.getloadavg()},
        "results": results,
        "training_batch": {"source": str(batch_file.relative_to(RESULTS.parent.parent.parent)),
                           "median_batch_s": batch_s},
        "bayesian_share_of_batch": share,
        "target_share": 0.01,
        "meets_target": share < 0.01,
    }
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for name, r in results.items():
        m = r["median_s"]
        print(f"{name:16s} assign {1e3 * m['assign']:7.2f} ms  observe {1e3 * m['observe']:7.2f} ms  "
              f"total {1e3 * m['total']:7.2f} ms  (first call {r['first_call_s']:.2f} s)")
    print(f"BayesianRouter, {args.pairs} pairs: {100 * share:.3f} % of a {batch_s:.2f} s training batch "
          f"(target < 1 %: {'met' if share < 0.01 else 'MISSED'}); load average {os.getloadavg()}")


LOAD_BEFORE = os.getloadavg()

if __name__ == "__main__":
    main()
