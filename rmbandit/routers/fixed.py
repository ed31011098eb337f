"""Routers that do not learn: one fixed RM, or every RM with a majority vote."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit.routers import base


def context_router(route, check_pool=lambda num_rms, dim: None) -> base.Router:
    """A router that learns nothing: ``route(contexts, num_rms)`` -> (rms [B], scores [B, K])
    decides from the contexts alone (or ignores them); ``check_pool(num_rms, dim)`` raises at
    ``init`` if the pool or the feature width do not fit.  ``observe`` returns the state as
    it was; ``reward`` is None."""

    def init(key, num_rms, dim):
        del key
        base.check_init(num_rms, dim)
        check_pool(num_rms, dim)
        return base.RouterState((), jnp.zeros((num_rms,), jnp.int32))

    def assign(state, contexts, key):
        del key
        contexts = base.check_contexts(contexts)
        rms, scores = route(contexts, state.counts.shape[0])
        assignment = base.make_assignment(rms, scores, jnp.zeros((0, contexts.shape[1]), jnp.float32),
                                          jnp.zeros((0,), jnp.int32))
        return state._replace(counts=base.count_labels(state.counts, rms)), assignment

    def observe(state, assignment, signal):
        del assignment, signal
        return state

    return base.Router(init, assign, observe)


def _fixed(choose, score) -> base.Router:
    """A router whose decision ignores the contexts and the feedback (``choose(K)`` also
    validates the pool size, eagerly at init)."""

    def route(contexts, num_rms):
        items = contexts.shape[0]
        return (jnp.full((items,), choose(num_rms), jnp.int32),
                jnp.broadcast_to(score(num_rms), (items, num_rms)))

    return context_router(route, lambda num_rms, dim: choose(num_rms))


def single_rm(index: int) -> base.Router:
    """Always RM ``index`` (each single-RM baseline; the "best RM" of a leaderboard)."""
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"single_rm needs a non-negative RM index, got {index!r}")

    def choose(k):
        if index >= k:
            raise ValueError(f"single_rm({index}) needs a pool of at least {index + 1} RMs, this one has {k}")
        return int(index)

    return _fixed(choose, lambda k: jax.nn.one_hot(index, k))


def majority_vote() -> base.Router:
    """Every RM labels every item (``rms`` = ALL_RMS); combine their labels with ``majority``.
    K RM calls per item: the cost routing avoids (both papers' ensemble baseline)."""
    return _fixed(lambda k: base.ALL_RMS, lambda k: jnp.full((k,), 1.0 / k))


def majority(a_wins, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of K RMs' pair labels -> (a_wins [N] bool, keep [N] bool).

    ``a_wins`` [N, K]: RM k prefers response a of pair n; ``keep`` [N, K]: RM k gave a
    label at all (``rewards.label_pairs``' keep: False for its ties and dropped scores;
    default all True).  a wins when more RMs that labelled the pair prefer a than b, b
    when fewer; a tie (including no labels) keeps no pair, as an RM's own tie does.
    """
    a_wins = np.asarray(a_wins, bool)
    keep = np.ones_like(a_wins) if keep is None else np.asarray(keep, bool)
    if keep.shape != a_wins.shape or a_wins.ndim != 2:
        raise ValueError(f"majority needs a_wins and keep of one shape [pairs, RMs], got {a_wins.shape} "
                         f"and {keep.shape}")
    for_a = np.sum(a_wins & keep, axis=1)
    for_b = np.sum(~a_wins & keep, axis=1)
    return for_a > for_b, for_a != for_b
