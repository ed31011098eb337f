"""Routers that learn: a bandit over the RMs, per item or per batch, with the reward shaping.

The router owns the step from training signal to bandit reward, so the training loop and
the simulation pass what they have (a loss, or a reward) and never re-implement it:

    loss  --(feedback="loss": r = -loss)-->  r  --(baseline: r - mean r of the call)-->
          --(rescale: 20/80-quantile rescaling over past r, Graves et al.)-->  bandit.update

LASeR: per batch, r = -(mean loss of the batch), quantile-rescaled (``laser``).
BayesianRouter: per pair, r_i = mean loss - L_i (``baseline=True``), then quantile-rescaled.
Both transforms are the bandit combinators ``batch_baseline`` and ``quantile_rescale``;
their state (the reward history) lives in ``RouterState.bandit`` and is checkpointed with it.
"""
from __future__ import annotations

import jax.numpy as jnp

from rmbandit import bandits
from rmbandit.routers import base

GRANULARITIES = ("item", "batch")
FEEDBACKS = ("loss", "reward")


def bandit_skipped(state) -> jnp.ndarray:
    """Sum of the ``skipped`` counters along the bandit's wrapper chain (field ``inner``)."""
    return sum((s.skipped for s in bandits.base.inner_states(state) if "skipped" in getattr(s, "_fields", ())),
               jnp.zeros((), jnp.int32))


def shaped(bandit: bandits.Bandit, rescale, history: int, baseline: bool) -> bandits.Bandit:
    """The bandit wrapped in the reward transforms; the outermost (baseline) applies first."""
    if rescale is not None:
        low, high = rescale
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"rescale must be (low, high) quantiles with 0 <= low < high <= 1, got {rescale}")
        bandit = bandits.quantile_rescale(bandit, low, high, history)
    return bandits.batch_baseline(bandit) if baseline else bandit


def bandit_router(bandit: bandits.Bandit, granularity: str, *, feedback: str = "loss",
                  rescale: tuple[float, float] | None = (0.2, 0.8), history: int = 4096,
                  baseline: bool = False) -> base.Router:
    """Route with ``bandit``: arms are RMs.

    ``granularity``: "item" gives each row of ``contexts`` its own arm and takes one
    feedback value per row (BayesianRouter, per pair); "batch" pulls one arm on the mean
    context of the rows, labels every item with it, and learns from one value per call:
    the mean of the feedback it is given (LASeR, per batch).
    ``feedback``: "loss" (reward = -loss, the training loop) or "reward" (used as is).
    ``rescale``: (low, high) quantiles for Graves et al.'s rescaling into [0, 1] over the
    last ``history`` rewards, or None for raw rewards.  ``baseline``: centre the rewards
    of each call on their mean first (per item only: one row per call would always be 0).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if feedback not in FEEDBACKS:
        raise ValueError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
    if baseline and granularity == "batch":
        raise ValueError("baseline=True centres rewards within a call; a per-batch router has one reward "
                         "per call (it would always be 0): use granularity='item' or baseline=False")
    learner = shaped(bandit, rescale, history, baseline)
    per_batch = granularity == "batch"

    def init(key, num_rms, dim):
        base.check_init(num_rms, dim)
        return base.RouterState(learner.init(key, num_rms, dim), jnp.zeros((num_rms,), jnp.int32))

    def assign(state, contexts, key):
        contexts = base.check_contexts(contexts)
        items = contexts.shape[0]
        rows = contexts.mean(0, keepdims=True) if per_batch else contexts
        arms, scores = learner.select(state.bandit, rows, key)
        rms = jnp.broadcast_to(arms, (items,))
        scores = jnp.broadcast_to(scores, (items, scores.shape[-1]))
        assignment = base.make_assignment(rms, scores, rows, arms, bandit_skipped(state.bandit))
        if bandits.base.is_concrete(state, contexts, key):
            base.check(assignment)
        return state._replace(counts=base.count_labels(state.counts, assignment.rms)), assignment

    def raw_rewards(assignment, signal):
        signal = jnp.asarray(signal, jnp.float32)
        rows = assignment.rows.shape[0]
        if per_batch:
            if signal.size == 0:
                raise ValueError(f"observe got no {feedback} for the batch (an empty array); skip observe "
                                 "for a batch that formed no preference pairs")
            signal = signal.mean(keepdims=True).reshape(1)
        elif signal.shape != (rows,):
            raise ValueError(f"observe needs one {feedback} per item, shape ({rows},), got shape {signal.shape}")
        return -signal if feedback == "loss" else signal

    def observe(state, assignment, signal):
        rewards = raw_rewards(assignment, signal)
        return state._replace(bandit=learner.update(state.bandit, assignment.rows, assignment.arms, rewards))

    def reward(state, assignment, signal):
        rewards = raw_rewards(assignment, signal)
        if baseline:         # the rows the bandit observes (not NO_ARM) set the baseline
            rewards = bandits.combinators.centred(rewards, jnp.asarray(assignment.arms) != bandits.NO_ARM)
        if rescale is not None:
            history = next(s.history for s in bandits.base.inner_states(state.bandit)
                           if isinstance(s, bandits.combinators.RescaledState))
            rewards = bandits.rescale_rewards(history, rewards, *rescale)
        return rewards

    def grow(state, key, num_new, dim):
        return base.RouterState(bandits.add_arm(learner, state.bandit, key, dim, num_new),
                                jnp.concatenate([state.counts, jnp.zeros((num_new,), state.counts.dtype)]))

    return base.Router(init, assign, observe, reward, grow)


def laser(alpha: float = 0.5, history: int = 4096) -> base.Router:
    """LASeR (Nguyen et al. 2024): LinUCB on the batch's mean prompt embedding, one RM per
    batch, reward = the batch's negative training loss rescaled by the 20/80 quantiles of
    the reward history.  ``observe`` takes the batch loss (or the per-pair losses)."""
    return bandit_router(bandits.linucb(alpha=alpha), "batch", feedback="loss", rescale=(0.2, 0.8),
                         history=history)


def uniform_random(granularity: str = "batch", **shaping) -> base.Router:
    """A uniformly random RM per batch (LASeR's baseline) or per item (BayesianRouter's)."""
    return bandit_router(bandits.uniform_random(), granularity, **shaping)


def round_robin(granularity: str = "batch", **shaping) -> base.Router:
    """RMs in a fixed cycle (LASeR's sequential baseline).  The cursor advances in
    ``observe`` (by the rows it credits), so a batch that is never observed repeats its RM."""
    return bandit_router(bandits.round_robin(), granularity, **shaping)
