"""Bandit speed, side by side in one run: rmbandit (jitted, after warm-up) vs MABWiser 2.x
LinUCB / LinTS vs a naive NumPy LinUCB that inverts every arm's A each batch (what the
LASeR reference code does).

    python experiments/benchmarks/bandit_speed.py            # full run, a few minutes
    python experiments/benchmarks/bandit_speed.py --quick    # smoke run

Workloads (ms per select + update step, median over steps):
  per-item   d=768,  K=8, B=64   (BayesianRouter: one RM per pair)
  per-batch  d=4096, K=4, B=1    (LASeR: one mean context per batch of 16 prompts)
  per-item TS d=576, K=8, 4096 pairs in steps of 64
Only ratios measured in the same run mean anything on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np
from importlib.metadata import version

from mabwiser.mab import MAB, LearningPolicy

from rmbandit import bandits


def make_stream(steps, rows, dim, arms, seed=0):
    """Contexts and rewards from a hidden linear model per arm plus noise."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(arms, dim)) / np.sqrt(dim)
    x = rng.normal(size=(steps, rows, dim)).astype(np.float32)
    return x, (x @ theta.T + 0.1 * rng.normal(size=(steps, rows, arms))).astype(np.float32)


def timed_steps(select, update, x, table):
    """Run the stream; return per-step select and update seconds (arrays)."""
    t_sel, t_upd = [], []
    for t in range(len(x)):
        t0 = time.perf_counter()
        arms = select(x[t], t)
        t1 = time.perf_counter()
        update(x[t], arms, table[t][np.arange(len(arms)), arms])
        t2 = time.perf_counter()
        t_sel.append(t1 - t0)
        t_upd.append(t2 - t1)
    return np.array(t_sel), np.array(t_upd)


def run_rmbandit(bandit, x, table, warmup=2):
    k = table.shape[-1]
    select = jax.jit(bandit.select)
    update = jax.jit(bandit.update, donate_argnums=0)
    holder = {"state": bandit.init(jax.random.key(0), k, x.shape[-1])}
    key = jax.random.key(1)

    def sel(ctx, t):
        arms, _ = select(holder["state"], ctx, jax.random.fold_in(key, t))
        return np.asarray(arms)                        # blocks: arms go back to the host

    def upd(ctx, arms, rewards):
        holder["state"] = update(holder["state"], ctx, arms, rewards)
        jax.block_until_ready(holder["state"])

    t0 = time.perf_counter()
    timed_steps(sel, upd, x[:warmup], table[:warmup])   # compile
    compile_s = time.perf_counter() - t0
    s, u = timed_steps(sel, upd, x[warmup:], table[warmup:])
    return s, u, compile_s


def run_mabwiser(policy, x, table):
    k = table.shape[-1]
    mab = MAB(arms=list(range(k)), learning_policy=policy, seed=0)
    mab.fit(np.arange(len(x[0])) % k, table[0][np.arange(len(x[0])), np.arange(len(x[0])) % k], x[0])

    def sel(ctx, t):
        return np.atleast_1d(np.asarray(mab.predict(ctx)))

    def upd(ctx, arms, rewards):
        mab.partial_fit(arms, rewards, ctx)

    s, u = timed_steps(sel, upd, x[1:], table[1:])
    return s, u, 0.0


def run_naive_inverse(x, table, alpha=0.5):
    """LinUCB keeping A_k, b_k and calling np.linalg.inv on every arm every batch."""
    k, d = table.shape[-1], x.shape[-1]
    a = np.stack([np.eye(d, dtype=np.float32)] * k)
    b = np.zeros((k, d), np.float32)

    def sel(ctx, t):
        a_inv = np.stack([np.linalg.inv(m) for m in a])
        theta = np.einsum("kde,ke->kd", a_inv, b)
        quad = np.einsum("bd,kde,be->bk", ctx, a_inv, ctx, optimize=True)
        return np.argmax(ctx @ theta.T + alpha * np.sqrt(quad), axis=-1)

    def upd(ctx, arms, rewards):
        for c, arm, r in zip(ctx, arms, rewards):
            a[arm] += np.outer(c, c)
            b[arm] += r * c

    s, u = timed_steps(sel, upd, x, table)
    return s, u, 0.0


def summarise(name, method, s, u, compile_s, pairs_per_step, compare_to=None):
    return {"workload": name, "method": method, "compare_to": compare_to, "steps": int(len(s)),
            "select_ms": 1e3 * float(np.median(s)), "update_ms": 1e3 * float(np.median(u)),
            "total_ms": 1e3 * float(np.median(s + u)), "compile_s": compile_s,
            "ms_per_4096_pairs": 1e3 * float(np.median(s + u)) * 4096 / pairs_per_step}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps for fast methods")
    parser.add_argument("--slow-steps", type=int, default=3, help="timed steps for the naive inverse / MABWiser at d=4096")
    parser.add_argument("--quick", action="store_true", help="few steps, for a smoke run")
    parser.add_argument("--out", default="experiments/benchmarks/results/bandit_speed.json")
    args = parser.parse_args(argv)
    steps, slow = (4, 2) if args.quick else (args.steps, args.slow_steps)
    print(f"jax {jax.__version__} ({jax.default_backend()}), mabwiser {version('mabwiser')}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    results = []
    lin, ts = "rmbandit linucb", "rmbandit linear_thompson"

    x, table = make_stream(steps + 2, 64, 768, 8)
    name = "per-item d=768 K=8 B=64"
    results.append(summarise(name, lin, *run_rmbandit(bandits.linucb(0.5), x, table), 64))
    results.append(summarise(name, ts, *run_rmbandit(bandits.linear_thompson(), x, table), 64))
    results.append(summarise(name, "mabwiser LinUCB", *run_mabwiser(LearningPolicy.LinUCB(alpha=0.5), x[:slow * 2 + 1], table), 64, lin))
    results.append(summarise(name, "mabwiser LinTS", *run_mabwiser(LearningPolicy.LinTS(alpha=1.0), x[:slow * 2 + 1], table), 64, ts))
    results.append(summarise(name, "numpy naive inverse", *run_naive_inverse(x[:slow * 2], table), 64, lin))

    x, table = make_stream(steps + 2, 1, 4096, 4)
    name = "per-batch d=4096 K=4 B=1"
    results.append(summarise(name, lin, *run_rmbandit(bandits.linucb(0.5), x, table), 1))
    results.append(summarise(name, "mabwiser LinUCB", *run_mabwiser(LearningPolicy.LinUCB(alpha=0.5), x[:slow + 1], table), 1, lin))
    results.append(summarise(name, "numpy naive inverse", *run_naive_inverse(x[:slow], table), 1, lin))

    pairs_steps = 8 if args.quick else 4096 // 64
    x, table = make_stream(pairs_steps + 2, 64, 576, 8)
    name = "per-item TS d=576 K=8 (4096 pairs)"
    results.append(summarise(name, ts, *run_rmbandit(bandits.linear_thompson(), x, table), 64))
    results.append(summarise(name, "mabwiser LinTS", *run_mabwiser(LearningPolicy.LinTS(alpha=1.0), x[:slow * 2 + 1], table), 64, ts))

    print(f"\n{'workload':36s} {'method':26s} {'select':>9s} {'update':>9s} {'total ms':>9s} {'/4096 pairs':>12s}  ratio")
    for r in results:
        ratio = ""
        if r["compare_to"]:
            ours = next(o for o in results if o["workload"] == r["workload"] and o["method"] == r["compare_to"])
            r["ratio_to_rmbandit"] = r["total_ms"] / ours["total_ms"]
            ratio = f"{r['ratio_to_rmbandit']:.1f}x the time of {r['compare_to']}"
        print(f"{r['workload']:36s} {r['method']:26s} {r['select_ms']:9.2f} {r['update_ms']:9.2f} "
              f"{r['total_ms']:9.2f} {r['ms_per_4096_pairs']:12.1f}  {ratio}")
    compile_line = ", ".join(f"{r['method']} {r['workload'].split()[0]} {r['compile_s']:.1f}s"
                             for r in results if r["method"].startswith("rmbandit"))
    print(f"\ncompile + warm-up (not in the timings): {compile_line}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"versions": {"jax": jax.__version__, "mabwiser": version("mabwiser"),
                                            "numpy": np.__version__}, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
