"""Controlled routing simulation (BayesianRouter's idea, on synthetic data).

K simulated reward models label preference pairs; each RM's chance of labelling a pair
correctly depends on the pair's category and on a region inside the category (the side
of a hyperplane), so no single RM is best everywhere.  Routers pick an RM per pair (or
per batch, LASeR-style) from the pair's context vector and learn from whether the label
was correct.  In real training the bandit reward is the DPO-loss signal; here it is the
label correctness that the simulation knows.

Every router sees the same stream and the same pre-drawn RM outcomes (common random
numbers), so differences between routers are not sampling noise of the world.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from rmbandit import bandits

CATEGORIES = ("arithmetic", "multiple_choice", "format", "factual")
RM_NAMES = ("rm_arith", "rm_choice", "rm_format", "rm_fact", "rm_general")
# Accuracy of each RM (rows) per category (columns): four specialists and a generalist.
ACCURACY = ((0.92, 0.62, 0.55, 0.66),
            (0.60, 0.90, 0.58, 0.68),
            (0.56, 0.61, 0.93, 0.58),
            (0.63, 0.66, 0.57, 0.89),
            (0.77, 0.76, 0.74, 0.77))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    categories: tuple[str, ...] = CATEGORIES
    rm_names: tuple[str, ...] = RM_NAMES
    accuracy: tuple[tuple[float, ...], ...] = ACCURACY
    region_bump: float = 0.08      # +/- accuracy on either side of a hyperplane inside a category
    dim: int = 32                  # context width (the last feature is a constant 1)
    context_noise: float = 0.5
    offline_pairs: int = 256       # labelled pairs for the offline prior (all RMs observed)


@dataclasses.dataclass(frozen=True)
class Stream:
    contexts: np.ndarray           # [T, B, d]
    category: np.ndarray           # [T, B] int
    accuracy: np.ndarray           # [T, B, K] each RM's probability of a correct label
    correct: np.ndarray            # [T, B, K] bool, pre-drawn outcome of every RM


@dataclasses.dataclass(frozen=True)
class World:
    config: WorldConfig
    centroids: np.ndarray          # [C, d]
    region_axes: np.ndarray        # [C, d]
    region_signs: np.ndarray       # [K, C] which side of the hyperplane helps each RM


def make_world(config: WorldConfig, rng: np.random.Generator) -> World:
    acc = np.asarray(config.accuracy)
    if acc.shape != (len(config.rm_names), len(config.categories)):
        raise ValueError(f"accuracy table has shape {acc.shape}; expected (num RMs, num categories) = "
                         f"({len(config.rm_names)}, {len(config.categories)})")
    c, d = len(config.categories), config.dim
    centroids = rng.normal(size=(c, d)) / np.sqrt(d) * 2.0
    return World(config, centroids, rng.normal(size=(c, d)) / np.sqrt(d),
                 rng.choice([-1.0, 1.0], size=acc.shape))


def draw_pairs(world: World, category: np.ndarray, rng: np.random.Generator):
    """Contexts, per-RM accuracies and pre-drawn correctness for pairs of given categories."""
    cfg = world.config
    x = world.centroids[category] + cfg.context_noise * rng.normal(size=category.shape + (cfg.dim,)) / np.sqrt(cfg.dim)
    x[..., -1] = 1.0
    region = np.sign(np.einsum("...d,...d->...", x, world.region_axes[category]))
    acc = np.asarray(cfg.accuracy).T[category] + cfg.region_bump * region[..., None] * world.region_signs.T[category]
    acc = np.clip(acc, 0.5, 0.99)
    return x.astype(np.float32), acc, rng.random(acc.shape) < acc


def make_stream(world: World, pairs: int, batch_size: int, granularity: str, rng: np.random.Generator) -> Stream:
    steps, c = pairs // batch_size, len(world.config.categories)
    if steps == 0:
        raise ValueError(f"--pairs {pairs} is smaller than one batch of {batch_size}")
    if granularity == "batch":     # LASeR's batches come from one task
        category = np.repeat(rng.integers(0, c, size=(steps, 1)), batch_size, axis=1)
    else:
        category = rng.integers(0, c, size=(steps, batch_size))
    x, acc, correct = draw_pairs(world, category, rng)
    return Stream(x, category, acc, correct)


def offline_set(world: World, rng: np.random.Generator):
    """Labelled pairs where every RM's label was checked (BayesianRouter's offline data)."""
    category = rng.integers(0, len(world.config.categories), size=world.config.offline_pairs)
    x, _, correct = draw_pairs(world, category, rng)
    return x, correct


def ridge_prior(x: np.ndarray, correct: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """The offline router in miniature: per-RM ridge regression of label correctness on
    the context; its weights become the Thompson prior means [K, d]."""
    gram = x.T @ x + ridge * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ correct.astype(np.float64)).T.astype(np.float32)


def majority_accuracy(acc: np.ndarray) -> np.ndarray:
    """P(more than half of independent RMs are right), exactly, by dynamic programming."""
    k = acc.shape[-1]
    dist = np.zeros(acc.shape[:-1] + (k + 1,))
    dist[..., 0] = 1.0
    for j in range(k):
        p = acc[..., j:j + 1]
        dist = dist * (1 - p) + np.concatenate([np.zeros_like(p), dist[..., :-1]], -1) * p
    return dist[..., k // 2 + 1:].sum(-1)


# ---------------------------------------------------------------- routers

def bandit_routers(prior_mean: np.ndarray) -> dict[str, Callable[[], bandits.Bandit]]:
    return {
        "linucb": lambda: bandits.linucb(alpha=0.5),
        "linear_thompson": lambda: bandits.linear_thompson(prior_var=1.0, noise_var=0.25),
        "thompson_offline_prior": lambda: bandits.linear_thompson(prior_var=0.02, noise_var=0.25,
                                                                  prior_mean=prior_mean),
        "neural_ucb": lambda: bandits.neural_ucb(hidden=(32, 16), alpha=0.5, learning_rate=0.05,
                                                 train_steps=5, buffer_size=256),
        "exp3": lambda: bandits.exp3(gamma=0.1, learning_rate=0.05),
        "epsilon_greedy": lambda: bandits.epsilon_greedy(0.1),
        "uniform_random": bandits.uniform_random,
        "round_robin": bandits.round_robin,
    }


REFERENCE_ROUTERS = ("best_single_rm", "majority_vote")


def run_bandit(bandit: bandits.Bandit, stream: Stream, key: jax.Array, granularity: str,
               progress: Callable = lambda it: it) -> np.ndarray:
    """Route the stream; return the chosen RM per pair [T, B]."""
    steps, rows, k = stream.correct.shape
    state = bandit.init(key, k, stream.contexts.shape[-1])
    select, update = jax.jit(bandit.select), jax.jit(bandit.update)
    chosen = np.zeros((steps, rows), np.int32)
    for t in progress(range(steps)):
        x, step_key = stream.contexts[t], jax.random.fold_in(key, t)
        if granularity == "batch":
            context = x.mean(0, keepdims=True)
            arm, _ = select(state, context, step_key)
            chosen[t] = int(arm[0])
            reward = stream.correct[t, :, chosen[t, 0]].mean(keepdims=True)
            state = update(state, context, arm, reward.astype(np.float32))
        else:
            arms, _ = select(state, x, step_key)
            chosen[t] = np.asarray(arms)
            reward = stream.correct[t, np.arange(rows), chosen[t]]
            state = update(state, x, arms, reward.astype(np.float32))
    return chosen


def evaluate(name: str, chosen: np.ndarray | None, stream: Stream, world: World, seconds: float) -> dict:
    """Accuracy, expected regret curve, utilisation per category and RM calls of one router."""
    steps, rows, k = stream.accuracy.shape
    best = stream.accuracy.max(-1).reshape(-1)
    if chosen is None:                              # majority vote: every RM labels every pair
        correct = stream.correct.sum(-1) > k / 2
        expected = majority_accuracy(stream.accuracy).reshape(-1)
        calls, utilisation = steps * rows * k, np.full((len(world.config.categories), k), 1.0 / k)
    else:
        flat = chosen.reshape(-1)
        correct = np.take_along_axis(stream.correct.reshape(-1, k), flat[:, None], 1)[:, 0]
        expected = np.take_along_axis(stream.accuracy.reshape(-1, k), flat[:, None], 1)[:, 0]
        calls = steps * rows
        cats = stream.category.reshape(-1)
        utilisation = np.stack([np.bincount(flat[cats == c], minlength=k) / max((cats == c).sum(), 1)
                                for c in range(len(world.config.categories))])
    regret = np.cumsum(best - expected)
    return {"router": name, "accuracy": float(np.mean(correct)), "expected_accuracy": float(expected.mean()),
            "final_regret": float(regret[-1]), "regret_curve": regret[:: max(1, len(regret) // 256)].tolist(),
            "utilisation": utilisation.tolist(), "rm_calls": int(calls), "seconds": seconds}


def simulate(seed: int = 0, pairs: int = 4096, batch_size: int = 64, dim: int = 32,
             granularity: str = "item", routers: tuple[str, ...] | None = None,
             progress: Callable[[str], Callable] | None = None) -> dict:
    """Run every requested router on one world and stream; return JSON-ready results."""
    if granularity not in ("item", "batch"):
        raise ValueError(f"granularity must be 'item' or 'batch', got {granularity!r}")
    config = WorldConfig(dim=dim)
    rng = np.random.default_rng(seed)
    world = make_world(config, rng)
    offline_x, offline_correct = offline_set(world, rng)
    stream = make_stream(world, pairs, batch_size, granularity, rng)
    available = {**bandit_routers(ridge_prior(offline_x, offline_correct)), **{r: None for r in REFERENCE_ROUTERS}}
    routers = tuple(available) if routers is None else tuple(routers)
    unknown = [r for r in routers if r not in available]
    if unknown:
        raise ValueError(f"unknown router(s) {', '.join(unknown)}; available: {', '.join(available)}")
    best_rm = int(np.argmax(offline_correct.mean(0)))     # "top of the leaderboard" on the offline pairs
    results = []
    for i, name in enumerate(routers):
        start = time.perf_counter()
        if name == "majority_vote":
            chosen = None
        elif name == "best_single_rm":
            chosen = np.full(stream.category.shape, best_rm, np.int32)
        else:
            bar = progress(name) if progress else (lambda it: it)
            chosen = run_bandit(available[name](), stream, jax.random.key(seed * 1000 + i), granularity, bar)
        results.append(evaluate(name, chosen, stream, world, time.perf_counter() - start))
    return {"config": {**dataclasses.asdict(config), "seed": seed, "pairs": stream.category.size,
                       "batch_size": batch_size, "granularity": granularity, "best_single_rm": config.rm_names[best_rm]},
            "routers": results}
