"""Bandit speed, side by side in one run: rmbandit's jitted LinUCB / linear Thompson sampling
vs MABWiser 2.x LinUCB / LinTS vs a naive NumPy LinUCB that calls np.linalg.inv on every arm's
A_k every batch (what the LASeR reference code does).

    PYTHONPATH=. python experiments/benchmarks/bandit_speed.py            # full run, ~1-2 min
    PYTHONPATH=. python experiments/benchmarks/bandit_speed.py --quick    # smoke run
    options: --steps N (timed steps of the fast methods), --slow-steps N (d=4096 peers),
             --out PATH (JSON, default experiments/benchmarks/results/bandit_speed.json),
             --single-thread (everything on one core: see below)

Measures wall-clock ms per step, select and update apart and their sum (median over the timed
steps), every method on the same stream: float32 contexts from a fixed-seed Generator, rewards
from a hidden linear model per arm plus noise.  One untimed warm-up batch comes first (rmbandit:
compile, reported apart as the time of the first call; MABWiser: the initial ``fit``).  The
reward lookup of the pulled arms is not timed.

  per-item     d=768,  K=8, B=64   rmbandit LinUCB and TS, MABWiser LinUCB and LinTS, naive inverse
  per-batch    d=4096, K=4, B=1    (LASeR: one mean context per 16 prompts) rmbandit LinUCB,
                                   MABWiser LinUCB, naive inverse (seconds per step: few steps)
  per-item TS  d=576,  K=8, 4096 pairs in steps of 64: rmbandit linear TS (all 64 steps) vs
                                   MABWiser LinTS (at most 10 steps; per 4096 pairs = median x 64)

On a shared machine only the ratios inside one run are claims, and only when the load average
printed at the top is low: OpenBLAS's threads (MABWiser, the naive inverse) slow down 10-50x
when another process holds a core (measured on a 2-core VM: MABWiser LinTS select 60 ms idle,
3.2 s under load; 80 ms with one BLAS thread).  ``--single-thread`` pins the process to one CPU
and OpenBLAS to one thread before JAX starts, a fair comparison on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from importlib.metadata import version

import jax
import numpy as np
from mabwiser.mab import MAB, LearningPolicy
from threadpoolctl import threadpool_limits

from rmbandit.bandits import linear


def make_stream(steps, rows, dim, arms, seed=0):
    """Contexts [steps, rows, dim] and the reward of every arm [steps, rows, arms], float32."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(arms, dim)) / np.sqrt(dim)
    x = rng.normal(size=(steps, rows, dim)).astype(np.float32)
    return x, (x @ theta.T + 0.1 * rng.normal(size=(steps, rows, arms))).astype(np.float32)


def time_steps(select, update, x, table):
    """Run select(ctx, t) -> arms and update(ctx, arms, rewards) over the stream.

    Returns per-step select and update seconds; the reward lookup between them is untimed."""
    t_sel, t_upd = [], []
    for t in range(len(x)):
        t0 = time.perf_counter()
        arms = select(x[t], t)
        t1 = time.perf_counter()
        rewards = table[t][np.arange(len(x[t])), np.asarray(arms)]
        t2 = time.perf_counter()
        update(x[t], arms, rewards)
        t3 = time.perf_counter()
        t_sel.append(t1 - t0)
        t_upd.append(t3 - t2)
    return np.array(t_sel), np.array(t_upd)


def run_rmbandit(bandit, x, table):
    """x[0] compiles (first call, timed apart); x[1:] is timed."""
    sel = jax.jit(bandit.select)
    upd = jax.jit(bandit.update, donate_argnums=0)   # the state is ~270 MB at d=4096, K=4
    state = bandit.init(jax.random.key(0), table.shape[-1], x.shape[-1])
    keys = list(jax.random.split(jax.random.key(1), len(x)))

    def select(ctx, t):
        arms, _ = jax.block_until_ready(sel(state, ctx, keys[t]))
        return arms

    def update(ctx, arms, rewards):
        nonlocal state
        state = jax.block_until_ready(upd(state, ctx, arms, rewards))

    (s0,), (u0,) = time_steps(select, update, x[:1], table[:1])
    s, u = time_steps(select, update, x[1:], table[1:])
    return s, u, {"select_first_call_s": float(s0), "update_first_call_s": float(u0)}


def run_mabwiser(policy, x, table):
    """fit on x[0] (untimed), then predict + partial_fit per step on x[1:]."""
    k = table.shape[-1]
    mab = MAB(arms=list(range(k)), learning_policy=policy, seed=0)
    warm = np.arange(len(x[0])) % k
    mab.fit(warm, table[0][np.arange(len(warm)), warm], x[0])

    def select(ctx, t):
        return np.atleast_1d(mab.predict(ctx))       # a bare arm when ctx has one row

    def update(ctx, arms, rewards):
        mab.partial_fit(arms, rewards, ctx)

    s, u = time_steps(select, update, x[1:], table[1:])
    return s, u, None


def run_naive_inverse(x, table, alpha=0.5):
    """LinUCB keeping A_k, b_k; np.linalg.inv on every arm's A_k every batch. Times x[1:]."""
    k, d = table.shape[-1], x.shape[-1]
    a = np.stack([np.eye(d, dtype=np.float32)] * k)
    b = np.zeros((k, d), np.float32)

    def select(ctx, t):
        a_inv = np.stack([np.linalg.inv(a_k) for a_k in a])      # [K, d, d]
        theta = np.einsum("kde,ke->kd", a_inv, b)                  # A^-1 b
        quad = np.einsum("kbd,bd->bk", ctx @ a_inv, ctx)           # c^T A^-1 c
        return np.argmax(ctx @ theta.T + alpha * np.sqrt(quad), axis=-1)

    def update(ctx, arms, rewards):
        for c, arm, r in zip(ctx, arms, rewards):
            a[arm] += np.outer(c, c)
            b[arm] += r * c

    s, u = time_steps(select, update, x[1:], table[1:])
    return s, u, None


def summarise(workload, method, baseline, rows, timings):
    s, u, compile_s = timings
    total = 1e3 * float(np.median(s + u))
    out = {"workload": workload, "method": method, "baseline": baseline, "steps": len(s),
           "rows_per_step": rows, "select_ms": 1e3 * float(np.median(s)),
           "update_ms": 1e3 * float(np.median(u)), "total_ms": total,
           "sum_over_steps_ms": 1e3 * float(np.sum(s + u)), "compile": compile_s}
    if rows > 1:
        out["ms_per_4096_pairs"] = total * 4096 / rows
    print(f"  done: {workload} / {method} ({len(s)} steps, {total:.2f} ms/step)", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps of the fast methods")
    p.add_argument("--slow-steps", type=int, default=3, help="timed steps of the d=4096 peers")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (smoke run)")
    p.add_argument("--out", default="experiments/benchmarks/results/bandit_speed.json")
    p.add_argument("--single-thread", action="store_true",
                   help="one CPU for XLA and one OpenBLAS thread (for a busy machine)")
    args = p.parse_args(argv)
    if args.single_thread:       # before the first JAX call: XLA's threads inherit the affinity
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        threadpool_limits(1)
    fast, slow = (3, 1) if args.quick else (args.steps, args.slow_steps)
    medium = min(fast, 10)                 # peers at d=576/768: ~0.1-0.2 s per step
    ts_steps = 4 if args.quick else 4096 // 64
    versions = {"jax": jax.__version__, "jax_backend": jax.default_backend(),
                "mabwiser": version("mabwiser"), "numpy": np.__version__,
                "cpu_count": os.cpu_count(), "cpus_used": len(os.sched_getaffinity(0)),
                "single_thread": args.single_thread, "load_average": os.getloadavg()}
    print(f"jax {jax.__version__} ({jax.default_backend()}), mabwiser {version('mabwiser')}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs ({versions['cpus_used']} used"
          f"{', one BLAS thread' if args.single_thread else ''}), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

    ucb = "rmbandit LinUCB"
    ts = "rmbandit linear TS"
    new_ucb = lambda: linear.linucb(alpha=0.5)
    new_ts = lambda: linear.linear_thompson(prior_var=1.0, noise_var=1.0)
    mw_ucb = lambda: LearningPolicy.LinUCB(alpha=0.5)
    mw_ts = lambda: LearningPolicy.LinTS(alpha=1.0)
    res = []

    w, rows = "per-item d=768 K=8 B=64", 64
    x, tab = make_stream(1 + fast, rows, 768, 8)
    res.append(summarise(w, ucb, None, rows, run_rmbandit(new_ucb(), x, tab)))
    res.append(summarise(w, ts, None, rows, run_rmbandit(new_ts(), x, tab)))
    res.append(summarise(w, "MABWiser LinUCB", ucb, rows, run_mabwiser(mw_ucb(), x[:1 + medium], tab)))
    res.append(summarise(w, "MABWiser LinTS", ts, rows, run_mabwiser(mw_ts(), x[:1 + medium], tab)))
    res.append(summarise(w, "NumPy naive inverse", ucb, rows, run_naive_inverse(x[:1 + medium], tab)))

    w, rows = "per-batch d=4096 K=4 B=1", 1
    x, tab = make_stream(1 + fast, rows, 4096, 4)
    res.append(summarise(w, ucb, None, rows, run_rmbandit(new_ucb(), x, tab)))
    res.append(summarise(w, "MABWiser LinUCB", ucb, rows, run_mabwiser(mw_ucb(), x[:1 + slow], tab)))
    res.append(summarise(w, "NumPy naive inverse", ucb, rows, run_naive_inverse(x[:1 + slow], tab)))

    w, rows = "per-item TS d=576 K=8 4096 pairs", 64
    x, tab = make_stream(1 + ts_steps, rows, 576, 8)
    res.append(summarise(w, ts, None, rows, run_rmbandit(new_ts(), x, tab)))
    res.append(summarise(w, "MABWiser LinTS", ts, rows, run_mabwiser(mw_ts(), x[:1 + medium], tab)))

    print(f"\n{'workload':33s} {'method':20s} {'steps':>5s} {'select':>9s} {'update':>9s} "
          f"{'total ms':>9s} {'ms/4096 pairs':>13s}  ratio (total)")
    for r in res:
        ratio = ""
        if r["baseline"]:
            ours = next(o for o in res if o["workload"] == r["workload"] and o["method"] == r["baseline"])
            r["ratio_to_rmbandit"] = r["total_ms"] / ours["total_ms"]
            ratio = f"{r['method']} / {r['baseline']} = {r['ratio_to_rmbandit']:.1f}x"
        pairs = f"{r['ms_per_4096_pairs']:13.1f}" if "ms_per_4096_pairs" in r else f"{'-':>13s}"
        print(f"{r['workload']:33s} {r['method']:20s} {r['steps']:5d} {r['select_ms']:9.2f} "
              f"{r['update_ms']:9.2f} {r['total_ms']:9.2f} {pairs}  {ratio}")
    print("\nrmbandit first call (compile + one step, not in the timings above):")
    for r in res:
        if r["compile"]:
            c = r["compile"]
            print(f"  {r['workload']:33s} {r['method']:20s} select {c['select_first_call_s']:.2f} s, "
                  f"update {c['update_first_call_s']:.2f} s")
    ts_runs = [r for r in res if r["workload"].startswith("per-item TS") and r["steps"] * 64 == 4096]
    if ts_runs:
        print("per-item TS, summed over all 4096 pairs (not extrapolated):")
    for r in ts_runs:
        print(f"  {r['method']:20s} {r['sum_over_steps_ms']:.0f} ms")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"versions": versions, "quick": args.quick, "results": res}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
