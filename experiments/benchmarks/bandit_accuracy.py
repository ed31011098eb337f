"""Accuracy of the float32 linear bandits on LM-like contexts against a float64 reference.

LM hidden states share a large common direction, so the rows of one update batch are nearly
collinear with large norms: rows m + 0.1 N(0, I) with |m| = norm, d = 64, K = 3 arms, rewards
from a hidden linear model plus noise.  After each batched ``update`` the predictive mean
c^T mu_k and variance c^T Sigma_k c of 16 fresh rows are compared with float64 Bayesian linear
regression on the same float32 inputs; the table gives the worst relative error over
``--updates`` updates and ``--seeds`` seeds (the mean against |mean| + sd, the score's own
scale; the variance against itself).  Uses only the public API (``bandits.moments``), so the
same script measures any version of the code.

    PYTHONPATH=. python experiments/benchmarks/bandit_accuracy.py [--updates 4] [--seeds 3] [--tile N]
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from rmbandit import bandits


def reference_moments(xs, arms, rewards, probes, k, prior_var):
    """float64 posterior of every arm from all rows so far, then the probes' moments."""
    d = probes.shape[1]
    mean, var = np.zeros((len(probes), k)), np.zeros((len(probes), k))
    for arm in range(k):
        x, r = xs[arms == arm], rewards[arms == arm]
        precision = np.eye(d) / prior_var + x.T @ x
        cov = np.linalg.inv(precision)
        mean[:, arm] = probes @ (cov @ (x.T @ r))
        var[:, arm] = np.einsum("bd,de,be->b", probes, cov, probes)
    return mean, var


def worst_errors(kind, norm, rows, updates, seed, tile=None, d=64, k=3):
    rng = np.random.default_rng(seed)
    prior_var = 1.0 if kind == "linucb" else 0.02
    extra = {} if tile is None else {"tile": tile}
    bandit = (bandits.linucb(alpha=1.0, init_b="zero", **extra) if kind == "linucb"
              else bandits.linear_thompson(prior_var=prior_var, **extra))
    state = bandit.init(jax.random.key(0), k, d)
    m = rng.normal(size=d)
    m *= norm / np.linalg.norm(m)
    weights = rng.normal(size=(k, d)) / norm
    xs, arms_all, rewards_all = np.zeros((0, d)), np.zeros(0, int), np.zeros(0)
    worst_mean = worst_var = 0.0
    for _ in range(updates):
        x = (m + 0.1 * rng.normal(size=(rows, d))).astype(np.float32)
        arms = rng.integers(0, k, size=rows).astype(np.int32)
        rewards = (np.einsum("bd,bd->b", x, weights[arms]) + 0.3 * rng.normal(size=rows)).astype(np.float32)
        state = bandit.update(state, x, arms, rewards)
        xs = np.concatenate([xs, x.astype(np.float64)])
        arms_all = np.concatenate([arms_all, arms])
        rewards_all = np.concatenate([rewards_all, rewards.astype(np.float64)])
        probes = (m + 0.1 * rng.normal(size=(16, d))).astype(np.float32)
        mean, var = (np.asarray(v, np.float64) for v in bandits.moments(state, probes))
        want_mean, want_var = reference_moments(xs, arms_all, rewards_all, probes.astype(np.float64), k, prior_var)
        with np.errstate(invalid="ignore", divide="ignore"):
            worst_mean = max(worst_mean, float(np.nanmax(np.abs(mean - want_mean) / (np.abs(want_mean) + np.sqrt(want_var)))))
            worst_var = max(worst_var, float(np.nanmax(np.abs(var - want_var) / want_var)))
        if not (np.isfinite(mean).all() and np.isfinite(var).all()):
            worst_mean = worst_var = float("nan")
    return worst_mean, worst_var


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tile", type=int, default=None, help="rows per block step (default: the bandit's)")
    args = p.parse_args(argv)
    print(f"worst relative error vs float64 over {args.updates} updates x {args.seeds} seeds (d=64, K=3, spread 0.1)")
    print(f"{'norm':>6} {'rows':>5}   {'LinUCB mean':>11} {'LinUCB var':>10}   {'TS mean':>9} {'TS var':>9}")
    for norm in (10.0, 100.0, 1000.0):
        for rows in (16, 64):
            cells = []
            for kind in ("linucb", "thompson"):
                errs = np.array([worst_errors(kind, norm, rows, args.updates, s, args.tile) for s in range(args.seeds)])
                cells += [np.max(errs[:, 0]), np.max(errs[:, 1])]
            print(f"{norm:>6g} {rows:>5}   {cells[0]:>11.1e} {cells[1]:>10.1e}   {cells[2]:>9.1e} {cells[3]:>9.1e}")


if __name__ == "__main__":
    main()
