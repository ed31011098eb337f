"""Context-free bandits: Exp3, epsilon-greedy, uniform random, round robin and
multiplicative weights.  They accept contexts [B, d] for a uniform interface and
use only their row count B; ``dim`` at init is recorded for the width check.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.bandits import base

Array = jax.Array


class ScoreArms(NamedTuple):
    score: Array           # [K] float: cumulative score / log-weight / reward sum
    weight: Array          # [K] float: number of rewards summed (discounted by ``discount``)
    pulls: Array           # [K] int32


class ScoreState(NamedTuple):
    arms: ScoreArms
    position: Array        # int32: rows routed so far (round robin's cursor)
    context_mean: Array    # [d] running mean of valid contexts; its shape carries the width check
    skipped: Array


def _init(key, num_arms, dim):
    del key
    num_arms, dim = base.check_shape_args(num_arms, dim)
    return ScoreState(ScoreArms(jnp.zeros((num_arms,), jnp.float32), jnp.zeros((num_arms,), jnp.float32),
                                jnp.zeros((num_arms,), jnp.int32)),
                      jnp.zeros((), jnp.int32), jnp.zeros((dim,), jnp.float32), jnp.zeros((), jnp.int32))


@base.forget.register
def _(state: ScoreState, gamma):
    a = state.arms
    return state._replace(arms=a._replace(score=gamma * a.score, weight=gamma * a.weight))


def _rows(state: ScoreState, contexts) -> int:
    return base.check_contexts(contexts, state.context_mean.shape[0]).shape[0]


def _accumulate(state: ScoreState, contexts, arms, rewards, gain) -> ScoreState:
    """score[a] += sum over valid rows pulling a of gain(reward, a)."""
    k = state.arms.score.shape[0]
    contexts, arms, rewards = base.check_update_inputs(
        contexts, arms, rewards, k, state.context_mean.shape[0])
    valid = base.valid_rows(contexts, arms, rewards, k)
    onehot = base.pulled_one_hot(arms, valid, k)
    safe_r = jnp.where(valid, rewards, 0.0).astype(jnp.float32)
    a = state.arms
    seen = jnp.sum(a.pulls) + jnp.sum(valid)
    safe_x = jnp.where(valid[:, None], contexts, 0.0).astype(jnp.float32)
    context_mean = state.context_mean + (jnp.sum(safe_x, 0) - jnp.sum(valid) * state.context_mean) / jnp.maximum(seen, 1)
    new = state._replace(
        arms=ScoreArms(a.score + base.matmul(onehot.T, gain(safe_r, jnp.clip(arms, 0, k - 1))),
                       a.weight + jnp.sum(onehot, 0),
                       a.pulls + jnp.sum(onehot, 0).astype(jnp.int32)),
        position=state.position + jnp.sum(arms != base.NO_ARM).astype(jnp.int32),   # rows observed
        context_mean=context_mean,
        skipped=base.count_skipped(state.skipped, valid, arms))
    return base.reject_non_finite(state, new, arms, valid)


def _sample(probs: Array, rows: int, key: Array) -> Array:
    return jax.random.categorical(key, jnp.log(probs), shape=(rows,)).astype(jnp.int32)


def exp3(gamma: float = 0.1, learning_rate: float = 1.0) -> base.Bandit:
    """Exp3 as in LASeR App. A: p = (1 - gamma) softmax(lr * S) + gamma / K,
    sample an arm per row, S_k += r / p_k for the pulled arm (p before the update).
    Rewards are expected in [0, 1] (wrap with ``quantile_rescale``).
    ``scores`` are the probabilities p, the same for every row.
    """
    base.check_number("gamma", gamma, low=0, low_open=True, high=1)
    base.check_number("learning_rate", learning_rate, low=0, low_open=True)

    def probs(state):
        k = state.arms.score.shape[0]
        return (1.0 - gamma) * jax.nn.softmax(learning_rate * state.arms.score) + gamma / k

    def select(state, contexts, key):
        rows = _rows(state, contexts)
        p = probs(state)
        return _sample(p, rows, key), jnp.broadcast_to(p, (rows, p.shape[0]))

    def update(state, contexts, arms, rewards):
        p = probs(state)
        return _accumulate(state, contexts, arms, rewards, lambda r, a: r / p[a])

    return base.Bandit(_init, select, update)


def epsilon_greedy(epsilon: float = 0.1) -> base.Bandit:
    """Context-free epsilon-greedy on running mean rewards (MABWiser's EpsilonGreedy):
    per row, with probability epsilon a uniform arm, else the best mean (untried
    arms have mean 0).  ``scores`` are the means.
    """
    base.check_number("epsilon", epsilon, low=0, high=1)

    def select(state, contexts, key):
        rows = _rows(state, contexts)
        k = state.arms.score.shape[0]
        # score / weight as long as the weight is positive: a discounted arm's weight shrinks
        # with its score, and a floor would pull its mean toward 0
        weight = state.arms.weight
        means = jnp.where(weight > 0, state.arms.score / jnp.where(weight > 0, weight, 1.0), 0.0)
        explore_key, arm_key = jax.random.split(key)
        explore = jax.random.uniform(explore_key, (rows,)) < epsilon
        random_arms = jax.random.randint(arm_key, (rows,), 0, k, jnp.int32)
        arms = jnp.where(explore, random_arms, base.argmax_finite(means))
        return arms, jnp.broadcast_to(means, (rows, k))

    def update(state, contexts, arms, rewards):
        return _accumulate(state, contexts, arms, rewards, lambda r, a: r)

    return base.Bandit(_init, select, update)


def uniform_random() -> base.Bandit:
    """Random RM per row (both papers' random baseline).  ``scores`` are 1/K."""

    def select(state, contexts, key):
        rows = _rows(state, contexts)
        k = state.arms.score.shape[0]
        return jax.random.randint(key, (rows,), 0, k, jnp.int32), jnp.full((rows, k), 1.0 / k)

    def update(state, contexts, arms, rewards):
        return _accumulate(state, contexts, arms, rewards, lambda r, a: r)

    return base.Bandit(_init, select, update)


def round_robin() -> base.Bandit:
    """LASeR's sequential baseline: row i of a call gets arm (position + i) mod K and
    ``update`` advances the cursor by the number of rows, so per-batch routing (one
    row per call) cycles through the RMs in a fixed order.  ``scores`` one-hot.
    """

    def select(state, contexts, key):
        del key
        rows = _rows(state, contexts)
        k = state.arms.score.shape[0]
        arms = ((state.position + jnp.arange(rows)) % k).astype(jnp.int32)
        return arms, jax.nn.one_hot(arms, k)

    def update(state, contexts, arms, rewards):
        return _accumulate(state, contexts, arms, rewards, lambda r, a: r)

    return base.Bandit(_init, select, update)


def multiplicative_weights(learning_rate: float = 0.1) -> base.Bandit:
    """Hedge / multiplicative weights (LASeR's online RM-ensemble baseline):
    w_k proportional to exp(lr * sum of rewards of k).  For full information,
    update with one row per RM (arms = arange(K)); ``scores`` are the normalised
    weights (the ensemble's mixing weights) and ``select`` samples from them.
    """
    base.check_number("learning_rate", learning_rate, low=0, low_open=True)

    def select(state, contexts, key):
        rows = _rows(state, contexts)
        w = jax.nn.softmax(learning_rate * state.arms.score)
        return _sample(w, rows, key), jnp.broadcast_to(w, (rows, w.shape[0]))

    def update(state, contexts, arms, rewards):
        return _accumulate(state, contexts, arms, rewards, lambda r, a: r)

    return base.Bandit(_init, select, update)
