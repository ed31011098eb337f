"""Controlled routing simulation (BayesianRouter's idea, on synthetic data).

K simulated reward models label preference pairs; each RM's chance of labelling a pair
correctly depends on the pair's category and on a region inside the category (the side
of a hyperplane), so no single RM is best everywhere.  Routers pick an RM per pair (or
per batch, LASeR-style) from the pair's context vector and learn from whether the label
was correct.  In real training the bandit reward is the DPO-loss signal; here it is the
label correctness that the simulation knows.

Every router sees the same stream and the same pre-drawn RM outcomes (common random
numbers), so differences between routers are not sampling noise of the world.  Routing
goes through ``rmbandit.routers`` (assign, then observe with the labels' correctness as
an unshaped reward), the same code the training loop uses with losses.

``rmbandit.replay`` runs the same routers on real labels: labelled pairs replayed through
a real RM pool (``route`` is shared).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from rmbandit import bandits
from rmbandit import routers as routing     # `routers` is simulate()'s list of names

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
        raise ValueError(f"pairs={pairs} is smaller than one batch (batch_size={batch_size})")
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

ROUTERS = ("linucb", "linear_thompson", "thompson_offline_prior", "neural_ucb", "exp3", "epsilon_greedy",
           "uniform_random", "round_robin", "best_single_rm", "majority_vote")
GRANULARITIES = routing.GRANULARITIES
MAX_SEED = (2**32 - 1000) // 1000      # router keys are seed * 1000 + router index: 32 bits


def make_routers(prior_mean: np.ndarray, best_rm: int, granularity: str) -> dict[str, Callable[[], routing.Router]]:
    """Every router of the simulation by name.  The bandits learn from label correctness
    (a reward in {0, 1}, averaged over the batch per batch), unshaped."""
    unshaped = dict(feedback="reward", rescale=None)

    def learn(bandit):
        return routing.bandit_router(bandit, granularity, **unshaped)

    return {
        "linucb": lambda: learn(bandits.linucb(alpha=0.5)),
        "linear_thompson": lambda: learn(bandits.linear_thompson(prior_var=1.0, noise_var=0.25)),
        "thompson_offline_prior": lambda: learn(bandits.linear_thompson(prior_var=0.02, noise_var=0.25,
                                                                        prior_mean=prior_mean)),
        "neural_ucb": lambda: learn(bandits.neural_ucb(hidden=(32, 16), alpha=0.5, learning_rate=0.05,
                                                       train_steps=5, buffer_size=256)),
        "exp3": lambda: learn(bandits.exp3(gamma=0.1, learning_rate=0.05)),
        "epsilon_greedy": lambda: learn(bandits.epsilon_greedy(0.1)),
        "uniform_random": lambda: routing.uniform_random(granularity, **unshaped),
        "round_robin": lambda: routing.round_robin(granularity, **unshaped),
        "best_single_rm": lambda: routing.single_rm(best_rm),
        "majority_vote": routing.majority_vote,
    }


def check_settings(seed: int, pairs: int, batch_size: int, dim: int, granularity: str,
                   names: tuple[str, ...] | None, spell: Callable[[str], str] = lambda p: p) -> None:
    """Raise ValueError naming the first bad setting; ``spell`` turns a parameter name
    into what the user typed (the CLI passes its flag names)."""
    def need(ok, param, message):
        if not ok:
            raise ValueError(f"{spell(param)}: {message}")

    for param, value in (("seed", seed), ("pairs", pairs), ("batch_size", batch_size), ("dim", dim)):
        need(isinstance(value, (int, np.integer)) and not isinstance(value, bool), param,
             f"must be an integer, got {value!r}")
    need(0 <= seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}] (router keys are seed * 1000 + router "
                                        f"index and must fit in 32 bits), got {seed}")
    need(batch_size >= 1, "batch_size", f"must be at least 1, got {batch_size}")
    need(pairs >= 1, "pairs", f"must be at least 1, got {pairs}")
    need(pairs >= batch_size, "pairs", f"{pairs} pairs make no full batch of {spell('batch_size')} {batch_size}; "
                                       f"use at least {batch_size} (pairs are cut to whole batches)")
    need(dim >= 2, "dim", f"must be at least 2 (the last feature is a constant 1), got {dim}")
    need(granularity in GRANULARITIES, "granularity",
         f"must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if names is not None:
        valid = f"valid names: {', '.join(ROUTERS)}"
        need(len(names) > 0, "routers", f"no router named; {valid}")
        unknown = [n for n in names if n not in ROUTERS]
        need(not unknown, "routers", f"unknown router(s) {', '.join(map(repr, unknown))}; {valid}")
        twice = sorted({n for n in names if names.count(n) > 1})
        need(not twice, "routers", f"{', '.join(twice)} named more than once")


def route(router: routing.Router, contexts, correct, key: jax.Array, keep=None,
          progress: Callable = lambda it: it) -> list[np.ndarray]:
    """Route batches in order, feeding back label correctness: ``contexts[t]`` [B_t, d],
    ``correct[t]`` [B_t, K] (every RM's label right or not), ``keep[t]`` [B_t, K] (the RM gave
    a label at all; None: all did).  Batches may differ in size.  Returns the RM that
    labelled each item of each batch (routing.ALL_RMS where every RM did)."""
    state = router.init(key, correct[0].shape[-1], contexts[0].shape[-1])
    assign, observe = jax.jit(router.assign), jax.jit(router.observe)
    chosen = []
    for t in progress(range(len(contexts))):
        state, assignment = assign(state, contexts[t], jax.random.fold_in(key, t))
        chosen.append(np.asarray(routing.check(assignment).rms, np.int32))
        right = routed_correct(correct[t], chosen[-1], None if keep is None else keep[t])
        state = observe(state, assignment, right.astype(np.float32))
    return chosen


def run_router(router: routing.Router, stream: Stream, key: jax.Array,
               progress: Callable = lambda it: it) -> np.ndarray:
    """Route the synthetic stream; return the RM that labelled each pair [T, B]."""
    return np.stack(route(router, stream.contexts, stream.correct, key, progress=progress))


def routed_correct(correct: np.ndarray, chosen: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Whether each pair's label is right: its RM's label, or the majority of all RMs'
    that gave one (``keep``; default all did).  A tie keeps no pair, so it is not a right label."""
    single = np.take_along_axis(correct, np.maximum(chosen, 0)[..., None], -1)[..., 0]
    k = correct.shape[-1]
    a_wins, kept = routing.majority(correct.reshape(-1, k), None if keep is None else np.reshape(keep, (-1, k)))
    voted = (a_wins & kept).reshape(chosen.shape)
    return np.where(chosen == routing.ALL_RMS, voted, single)


def utilisation(chosen: np.ndarray, category: np.ndarray, num_categories: int, num_rms: int) -> np.ndarray:
    """[C, K]: the share of category c's labels that RM k gave (an ensemble pair counts for every RM)."""
    labels = routing.rm_mask(np.reshape(chosen, -1), num_rms)
    category = np.reshape(category, -1)
    return np.stack([labels[category == c].sum(0) / max(labels[category == c].sum(), 1)
                     for c in range(num_categories)])


def evaluate(name: str, chosen: np.ndarray, stream: Stream, world: World) -> dict:
    """Accuracy, expected regret curve, utilisation per category and RM calls of one router."""
    k = stream.accuracy.shape[-1]
    flat = chosen.reshape(-1)
    acc = stream.accuracy.reshape(-1, k)
    best = acc.max(-1)
    correct = routed_correct(stream.correct.reshape(-1, k), flat)
    single = np.take_along_axis(acc, np.maximum(flat, 0)[:, None], 1)[:, 0]
    expected = np.where(flat == routing.ALL_RMS, majority_accuracy(acc), single)
    regret = np.cumsum(best - expected)
    return {"router": name, "accuracy": float(np.mean(correct)), "expected_accuracy": float(expected.mean()),
            "final_regret": float(regret[-1]), "regret_curve": regret[:: max(1, len(regret) // 256)].tolist(),
            "utilisation": utilisation(flat, stream.category, len(world.config.categories), k).tolist(),
            "rm_calls": int(routing.rm_mask(flat, k).sum())}


def simulate(seed: int = 0, pairs: int = 4096, batch_size: int = 64, dim: int = 32,
             granularity: str = "item", routers: tuple[str, ...] | None = None,
             progress: Callable[[str], Callable] | None = None) -> dict:
    """Run every requested router (default: all) on one world and stream.

    Returns JSON-ready results: ``config`` and ``routers`` depend only on the arguments
    (the same seed gives the same bytes); ``timings`` (seconds per router) is wall-clock.
    A router's results do not depend on which other routers run (its key comes from its
    place in ROUTERS)."""
    names = ROUTERS if routers is None else tuple(routers)
    check_settings(seed, pairs, batch_size, dim, granularity, names)
    config = WorldConfig(dim=dim)
    rng = np.random.default_rng(seed)
    world = make_world(config, rng)
    offline_x, offline_correct = offline_set(world, rng)
    stream = make_stream(world, pairs, batch_size, granularity, rng)
    best_rm = int(np.argmax(offline_correct.mean(0)))     # "top of the leaderboard" on the offline pairs
    table = make_routers(ridge_prior(offline_x, offline_correct), best_rm, granularity)
    results, timings = [], {}
    for name in names:
        start = time.perf_counter()
        bar = progress(name) if progress else (lambda it: it)
        chosen = run_router(table[name](), stream, jax.random.key(seed * 1000 + ROUTERS.index(name)), bar)
        results.append(evaluate(name, chosen, stream, world))
        timings[name] = time.perf_counter() - start
    return {"config": {**dataclasses.asdict(config), "seed": seed, "pairs": stream.category.size,
                       "batch_size": batch_size, "granularity": granularity, "best_single_rm": config.rm_names[best_rm]},
            "routers": results, "timings": timings}
