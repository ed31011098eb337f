"""The bandit interface and the input checks every algorithm shares.

A bandit is a triple of pure functions over a state pytree, like an optax
``GradientTransformation``::

    bandit = rmbandit.bandits.linucb(alpha=0.5)
    state = bandit.init(key, num_arms, dim)
    arms, scores = bandit.select(state, contexts, key)      # [B, d] -> [B], [B, K]
    state = bandit.update(state, contexts, arms, rewards)   # only pulled arms change

Per-item and per-batch routing use the same functions:

* per item (BayesianRouter: one RM per preference pair): pass one context row
  per item, ``contexts`` [B, d]; each row gets its own arm and one reward.
* per batch (LASeR: one RM per batch of prompts): pass the mean context of the
  batch as a single row, ``contexts.mean(0, keepdims=True)`` [1, d]; the one arm
  labels the whole batch and ``update`` gets that row with the batch's reward.

State convention: every state is a NamedTuple whose per-arm statistics live in
a field named ``arms`` (a NamedTuple of arrays with a leading arm axis K);
wrappers keep the wrapped state in a field named ``inner``.  Combinators such as
``add_arm`` rely on this to find per-arm leaves without knowing the algorithm.

Bad rows (an arm index outside [0, K), a non-finite reward or context) are a
``ValueError`` when the inputs are concrete (eager calls).  Inside ``jax.jit``
values cannot raise, so such rows are dropped — they change no statistic — and
counted in ``state.skipped``; callers that jit should check that counter (the
routers do) or call ``check_update_inputs`` on host first.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
State = Any


class Bandit(NamedTuple):
    """An algorithm as pure functions; see the module docstring."""

    init: Callable[[Array, int, int], State]
    select: Callable[[State, Array, Array], tuple[Array, Array]]
    update: Callable[[State, Array, Array, Array], State]


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def num_arms(state: State) -> int:
    """K, read from the leading axis of the first per-arm statistic."""
    node = state
    while "arms" not in getattr(node, "_fields", ()):
        if "inner" not in getattr(node, "_fields", ()):
            raise TypeError(f"{type(state).__name__} has no 'arms' field; see rmbandit.bandits.base")
        node = node.inner
    return int(jax.tree_util.tree_leaves(node.arms)[0].shape[0])


def check_contexts(contexts: Array, dim: int | None) -> Array:
    contexts = jnp.asarray(contexts)
    if contexts.ndim != 2:
        raise ValueError(
            f"contexts must be a 2-D array [rows, dim], got shape {contexts.shape}; "
            "for per-batch routing pass contexts.mean(0, keepdims=True)")
    if dim is not None and contexts.shape[1] != dim:
        raise ValueError(
            f"contexts have width {contexts.shape[1]} but the bandit state was initialised with "
            f"dim={dim}; use the same featuriser as at init, or init a new state with dim={contexts.shape[1]}")
    if _is_concrete(contexts) and not np.isfinite(np.asarray(contexts)).all():
        raise ValueError("contexts contain NaN or inf; fix the featuriser (e.g. an fp16 overflow) before routing")
    return contexts


def check_update_inputs(contexts, arms, rewards, k: int, dim: int | None):
    """Shape checks always; value checks when the inputs are concrete."""
    contexts = check_contexts(contexts, dim)
    arms, rewards = jnp.asarray(arms), jnp.asarray(rewards)
    rows = contexts.shape[0]
    if arms.shape != (rows,) or rewards.shape != (rows,):
        raise ValueError(
            f"update needs arms [{rows}] and rewards [{rows}] to match contexts [{rows}, d], "
            f"got arms {arms.shape} and rewards {rewards.shape}")
    if not jnp.issubdtype(arms.dtype, jnp.integer):
        raise ValueError(f"arms must be integer indices, got dtype {arms.dtype}")
    if _is_concrete(arms, rewards):
        a, r = np.asarray(arms), np.asarray(rewards)
        bad = (a < 0) | (a >= k)
        if bad.any():
            raise ValueError(
                f"arm index {int(a[bad][0])} out of range for a bandit with {k} arms "
                f"(rows {np.flatnonzero(bad)[:8].tolist()}); use add_arm to grow the bandit first")
        if not np.isfinite(r).all():
            raise ValueError(
                f"reward is NaN or inf at rows {np.flatnonzero(~np.isfinite(r))[:8].tolist()}; "
                "the training loss diverged or an RM failed — drop those rows or fix the loss")
    return contexts, arms.astype(jnp.int32), rewards


def valid_rows(contexts: Array, arms: Array, rewards: Array, k: int) -> Array:
    """Rows that may update statistics (the traced counterpart of the checks)."""
    return ((arms >= 0) & (arms < k) & jnp.isfinite(rewards)
            & jnp.all(jnp.isfinite(contexts), axis=-1))


def pulled_one_hot(arms: Array, valid: Array, k: int, dtype=jnp.float32) -> Array:
    """[B, K] indicator of the arm each valid row pulled (zero rows for invalid ones)."""
    return jax.nn.one_hot(jnp.where(valid, arms, k), k, dtype=dtype)


def count_skipped(skipped: Array, valid: Array) -> Array:
    return skipped + jnp.sum(~valid).astype(skipped.dtype)
