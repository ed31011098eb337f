"""The router interface: which reward model labels which item, learned from the training signal.

Like a bandit (and an optax ``GradientTransformation``), a router is a NamedTuple of pure
functions over an explicit state pytree, so it jits, vmaps and checkpoints::

    router = rmbandit.routers.laser(alpha=0.5)
    state = router.init(key, num_rms, dim)
    state, assignment = router.assign(state, contexts, key)   # contexts [B, d], one row per item
    ...                                                       # label item i with RM assignment.rms[i]
    state = router.observe(state, assignment, losses)         # the training signal of those labels

An *item* is whatever the caller routes: a prompt (LASeR: contexts are the policy's prompt
embeddings) or a preference pair (BayesianRouter: pair features).  ``assignment.rms[i]``
is the RM that labels item i, or ``ALL_RMS`` when every RM labels it (ensembles, majority
vote).  ``observe`` takes the assignment back, so the caller never re-derives what the
bandit decided on (the batch's mean context, the pulled arms).
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ALL_RMS = -1        # in Assignment.rms: every RM labels this item


class RouterState(NamedTuple):
    """Everything a resume needs (an orbax-checkpointable pytree)."""

    bandit: Any         # the (reward-shaping-wrapped) bandit's state; () for routers without one
    counts: Array       # [K] int32: items each RM has been asked to label (an ensemble asks all K)


class Assignment(NamedTuple):
    """One ``assign`` call's decision and what ``observe`` needs to credit it (a pytree)."""

    rms: Array          # [B] int32: the RM that labels item i, or ALL_RMS (every RM labels it)
    scores: Array       # [B, K] float32: the router's score of each RM for item i
    rows: Array         # [R, d] float32: the contexts the bandit chose on: the items (R = B) per
                        # item, their mean (R = 1) per batch, none (R = 0) without a bandit
    arms: Array         # [R] int32: the arm pulled for each row; ``observe`` rewards these
    skipped: Array      # int32: rows the bandit has dropped so far as invalid (non-finite
                        # reward or context inside jit; eager calls raise instead)
    finite: Array       # bool: every score is finite (NaN/inf statistics of an arm reach its scores)


class InitFn(Protocol):
    def __call__(self, key: Array, num_rms: int, dim: int) -> RouterState:
        """A fresh state for a pool of ``num_rms`` RMs and contexts of width ``dim``."""


class AssignFn(Protocol):
    def __call__(self, state: RouterState, contexts: Array, key: Array) -> tuple[RouterState, Assignment]:
        """``contexts`` [B, d], one row per item -> (state with updated counts, Assignment).

        Eager calls (concrete inputs) run ``check`` on the assignment: a non-finite score
        raises, dropped rows warn.  Under ``jax.jit`` the caller reads ``assignment.finite``
        and ``assignment.skipped`` (or calls ``check`` on host)."""


class ObserveFn(Protocol):
    def __call__(self, state: RouterState, assignment: Assignment, feedback: Array) -> RouterState:
        """Learn from the training signal of an assignment's labels.

        ``feedback`` is a loss (lower is better) or a reward, as the router was built
        (``bandit_router(feedback=...)``): [B] per item, or per batch a scalar or any vector
        (its mean is the batch's signal, e.g. the per-pair DPO losses of the batch)."""


class RewardFn(Protocol):
    def __call__(self, state: RouterState, assignment: Assignment, feedback: Array) -> Array:
        """The rewards ``observe`` would hand the bandit for this feedback, after shaping
        (one per row of ``assignment.rows``), without changing the state: for logging."""


class GrowFn(Protocol):
    def __call__(self, state: RouterState, key: Array, num_new: int, dim: int) -> RouterState:
        """``num_new`` RMs join the pool (arms K, K+1, ...): theirs start fresh, every other
        arm keeps its statistics (LASeR: a new RM mid-run)."""


class Router(NamedTuple):
    init: InitFn
    assign: AssignFn
    observe: ObserveFn
    reward: RewardFn | None = None      # None: the router learns nothing (fixed baselines)
    grow: GrowFn | None = None          # None: the router cannot take new RMs mid-run


def check_contexts(contexts) -> Array:
    """[B, d] float32 with B >= 1 (shape checks hold under jit too)."""
    contexts = jnp.asarray(contexts)
    if contexts.ndim != 2 or contexts.shape[0] == 0:
        raise ValueError(f"router.assign needs contexts [items, dim] with at least one item, got shape "
                         f"{contexts.shape}; per-batch routers take the items' rows too (they average them)")
    return contexts.astype(jnp.float32)


def check_init(num_rms: int, dim: int) -> None:
    if int(num_rms) < 1 or int(dim) < 1:
        raise ValueError(f"router.init needs num_rms >= 1 and dim >= 1, got num_rms={num_rms}, dim={dim}")


def make_assignment(rms: Array, scores: Array, rows: Array, arms: Array,
                    skipped: Array = None) -> Assignment:
    skipped = jnp.zeros((), jnp.int32) if skipped is None else jnp.asarray(skipped, jnp.int32)
    scores = jnp.asarray(scores, jnp.float32)
    return Assignment(jnp.asarray(rms, jnp.int32), scores, rows, jnp.asarray(arms, jnp.int32),
                      skipped, jnp.all(jnp.isfinite(scores)))


def count_labels(counts: Array, rms: Array) -> Array:
    """counts [K] + one per item for its RM (every RM for ALL_RMS items)."""
    k = counts.shape[0]
    every = jnp.sum(rms == ALL_RMS).astype(jnp.int32)
    return counts + jnp.bincount(jnp.where(rms == ALL_RMS, k, rms), length=k + 1)[:k].astype(jnp.int32) + every


def check(assignment: Assignment) -> Assignment:
    """Host check of an assignment (eager ``assign`` calls it; call it after a jitted one).

    Raises ``FloatingPointError`` when a score is NaN/inf: the decision came from broken
    statistics and every later one would too.  Warns when the bandit has dropped invalid
    rows (once per new count)."""
    if not bool(assignment.finite):
        bad = np.flatnonzero(~np.isfinite(np.asarray(assignment.scores)).all(0)).tolist()
        raise FloatingPointError(
            f"router scores are NaN/inf for RM(s) {bad}: the bandit's statistics for those arms are not "
            "finite (a diverged loss or overflowing contexts reached them); restore the router state "
            "from the last checkpoint and check the losses and contexts fed to observe")
    skipped = int(assignment.skipped)
    if skipped:
        warnings.warn(f"the router's bandit has dropped {skipped} invalid row(s) so far (NaN/inf loss or "
                      "context inside jit); those labels taught it nothing — check the losses passed to "
                      "observe", RuntimeWarning, stacklevel=2)
    return assignment


def rm_mask(rms, num_rms: int) -> np.ndarray:
    """[..., K] bool: which RMs label each item (one, or all for ALL_RMS)."""
    rms = np.asarray(rms)
    return (rms[..., None] == np.arange(num_rms)) | (rms[..., None] == ALL_RMS)
