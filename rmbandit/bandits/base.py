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

A row whose arm is ``NO_ARM`` (-1) was not observed (a preference pair that tied, so no
loss speaks for its RM): it changes nothing and is not an error, whatever its reward.
Bad rows (any other arm index outside [0, K), a non-finite reward or context) are a
``ValueError`` when the inputs are concrete (eager calls).  Inside ``jax.jit``
values cannot raise, so such rows are dropped — they change no statistic — and
counted in ``state.skipped``; callers that jit should check that counter (the
routers do) or call ``check_update_inputs`` on host first.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
State = Any
NO_ARM = -1         # in update's arms: the row was not observed (it updates nothing, silently)

# Bandit statistics must be exact on every backend: on GPUs JAX's default float32 matmul
# is TF32 and on TPUs bf16 passes, which breaks a sequential LinUCB update on nearly
# collinear contexts (measured on an H200: 9 of 16 float64 comparisons fail).  Every
# product in rmbandit.bandits goes through these two helpers, never through a global flag.
PRECISION = jax.lax.Precision.HIGHEST
matmul = functools.partial(jnp.matmul, precision=PRECISION)
einsum = functools.partial(jnp.einsum, precision=PRECISION)


class InitFn(Protocol):
    def __call__(self, key: Array, num_arms: int, dim: int) -> State:
        """A fresh state for ``num_arms`` arms and contexts of width ``dim``."""


class SelectFn(Protocol):
    def __call__(self, state: State, contexts: Array, key: Array) -> tuple[Array, Array]:
        """contexts [B, d] -> (arms [B] int32, scores [B, K]); the state is not changed."""


class UpdateFn(Protocol):
    def __call__(self, state: State, contexts: Array, arms: Array, rewards: Array) -> State:
        """contexts [B, d], arms [B] int, rewards [B] -> new state; only pulled arms change."""


class Bandit(NamedTuple):
    """An algorithm as pure functions; see the module docstring."""

    init: InitFn
    select: SelectFn
    update: UpdateFn


def is_concrete(*trees) -> bool:
    """True outside jit/vmap: no leaf is a tracer, so values can be checked on host."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


# ---------------------------------------------------------------- hyper-parameters

def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False):
    """A factory argument: finite, of the right kind and inside its range, else a
    ValueError naming it.  Checked when the bandit is built, not at the first NaN."""
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    v = float(value)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (f"in {lo}, {hi}" if low is not None and high is not None else
                 (f"{'>' if low_open else '>='} {low:g}" if low is not None else f"{'<' if high_open else '<='} {high:g}"))
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return value


def check_shape_args(num_arms, dim) -> tuple[int, int]:
    """``init``'s K and d: positive integers."""
    check_number("num_arms", num_arms, low=1, integer=True)
    check_number("dim", dim, low=1, integer=True)
    return int(num_arms), int(dim)


# ---------------------------------------------------------------- wrapped states

def inner_states(state: State):
    """The state and every state it wraps, outermost first (wrappers keep theirs in ``inner``)."""
    while True:
        yield state
        if "inner" not in getattr(state, "_fields", ()):
            return
        state = state.inner


def replace_innermost(state: State, match: Callable[[State], bool], fn: Callable[[State], State],
                      what: str = "state this operation applies to") -> State:
    """Apply ``fn`` to the first state (outermost first) that ``match`` accepts, rebuilding
    the wrappers around it; a TypeError naming ``what`` was looked for if none does."""
    if match(state):
        return fn(state)
    if "inner" in getattr(state, "_fields", ()):
        return state._replace(inner=replace_innermost(state.inner, match, fn, what))
    raise TypeError(f"{type(state).__name__} holds no {what}")


def arm_states(state: State):
    """The states that hold per-arm statistics (a field named ``arms``), outermost first."""
    return [s for s in inner_states(state) if "arms" in getattr(s, "_fields", ())]


def num_arms(state: State) -> int:
    """K, read from the leading axis of the first per-arm statistic."""
    holders = arm_states(state)
    if not holders:
        raise TypeError(f"{type(state).__name__} has no 'arms' field; see rmbandit.bandits.base")
    return int(jax.tree_util.tree_leaves(holders[0].arms)[0].shape[0])


@functools.singledispatch
def forget(state, gamma):
    """Discount past evidence by gamma in (0, 1].  Each state type registers its rule
    beside its definition (``@base.forget.register``); wrappers forward to ``inner``."""
    if "inner" in getattr(state, "_fields", ()):
        return state._replace(inner=forget(state.inner, gamma))
    raise TypeError(f"no forgetting rule for {type(state).__name__}; register one with @forget.register")


# ---------------------------------------------------------------- inputs

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
    if is_concrete(contexts):
        values = np.asarray(contexts)
        if not np.isfinite(values).all():
            raise ValueError("contexts contain NaN or inf; fix the featuriser (e.g. an fp16 overflow) before routing")
        with np.errstate(over="ignore"):
            squared = np.sum(np.square(values.astype(np.float32)), axis=-1)
        if not np.isfinite(squared).all():
            rows = np.flatnonzero(~np.isfinite(squared))[:8].tolist()
            raise ValueError(f"contexts at rows {rows} have norms above 1.8e19, whose squares overflow float32 "
                             "statistics; rescale the features (e.g. divide by their norm) before routing")
    return contexts


def check_update_inputs(contexts, arms, rewards, k: int, dim: int | None):
    """Shape checks always; value checks when the inputs are concrete.  Arm indices are
    range-checked before the cast to int32, so 2**32 + 2 is an error, not arm 2."""
    contexts = check_contexts(contexts, dim)
    if is_concrete(arms, rewards):
        a, r = np.asarray(arms), np.asarray(rewards)
        observed = a != NO_ARM if a.shape == (contexts.shape[0],) else np.ones(contexts.shape[0], bool)
        if a.shape == (contexts.shape[0],) and np.issubdtype(a.dtype, np.integer):
            bad = (a < NO_ARM) | (a >= k)
            if bad.any():
                raise ValueError(
                    f"arm index {int(a[bad][0])} out of range for a bandit with {k} arms "
                    f"(rows {np.flatnonzero(bad)[:8].tolist()}); use add_arm to grow the bandit first")
        if r.shape == (contexts.shape[0],) and np.issubdtype(r.dtype, np.number) and \
                not np.isfinite(r[observed]).all():
            raise ValueError(
                f"reward is NaN or inf at rows {np.flatnonzero(~np.isfinite(r) & observed)[:8].tolist()}; "
                "the training loss diverged or an RM failed — drop those rows or fix the loss")
    arms, rewards = jnp.asarray(arms), jnp.asarray(rewards)
    rows = contexts.shape[0]
    if arms.shape != (rows,) or rewards.shape != (rows,):
        raise ValueError(
            f"update needs arms [{rows}] and rewards [{rows}] to match contexts [{rows}, d], "
            f"got arms {arms.shape} and rewards {rewards.shape}")
    if not jnp.issubdtype(arms.dtype, jnp.integer):
        raise ValueError(f"arms must be integer indices, got dtype {arms.dtype}")
    return contexts, arms.astype(jnp.int32), rewards


def valid_rows(contexts: Array, arms: Array, rewards: Array, k: int) -> Array:
    """Rows that may update statistics (the traced counterpart of the checks); a row whose
    squared norm overflows float32 can only give inf statistics, so it is invalid too."""
    return ((arms >= 0) & (arms < k) & jnp.isfinite(rewards)
            & jnp.isfinite(jnp.sum(jnp.square(contexts.astype(jnp.float32)), axis=-1)))


def pulled_one_hot(arms: Array, valid: Array, k: int, dtype=jnp.float32) -> Array:
    """[B, K] indicator of the arm each valid row pulled (zero rows for invalid ones)."""
    return jax.nn.one_hot(jnp.where(valid, arms, k), k, dtype=dtype)


def count_skipped(skipped: Array, valid: Array, arms: Array) -> Array:
    """Rows that pulled an arm but could not update it (non-finite reward or context);
    NO_ARM rows were never observed, so they are not skipped."""
    return skipped + jnp.sum(~valid & (arms != NO_ARM)).astype(skipped.dtype)


# ---------------------------------------------------------------- non-finite statistics

def keep_finite_arms(old_arms, new_arms, ok: Array):
    """Per-arm statistics: arm k takes its new values only where ``ok[k]``; an arm whose
    update went non-finite keeps its previous statistics bit for bit."""
    def pick(o, n):
        mask = ok.reshape((-1,) + (1,) * (n.ndim - 1))
        return jnp.where(mask, n, o)
    return jax.tree.map(pick, old_arms, new_arms)


def finite_per_arm(arms) -> Array:
    """[K] bool: every statistic of arm k is finite."""
    leaves = [x for x in jax.tree.leaves(arms) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack([jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in leaves]).all(0)


def reject_non_finite(old_state: State, new_state: State, arms: Array, valid: Array,
                      ok: Array | None = None) -> State:
    """Keep the old statistics of any arm whose update produced NaN/inf and count that
    arm's rows in ``skipped``; eager calls raise instead (the caller's state is untouched).
    ``ok`` [K] may come from the update's small intermediates, sparing a read of every
    statistic (256 MB for LinUCB at d=4096, K=4); by default every leaf is checked."""
    ok = finite_per_arm(new_state.arms) if ok is None else ok
    if is_concrete(ok) and not bool(np.all(ok)):
        bad = np.flatnonzero(~np.asarray(ok)).tolist()
        raise FloatingPointError(
            f"the update made the statistics of arm(s) {bad} non-finite (a float32 overflow: rewards "
            "near 1e38, or a huge prior variance with tiny contexts); the state passed in is unchanged — "
            "rescale the rewards or contexts")
    kept = keep_finite_arms(old_state.arms, new_state.arms, ok)
    rejected = valid & ~ok[jnp.clip(arms, 0, ok.shape[0] - 1)]
    return new_state._replace(arms=kept, skipped=new_state.skipped + jnp.sum(rejected).astype(jnp.int32))


def argmax_finite(scores: Array) -> Array:
    """Row-wise argmax that a NaN/inf score never wins (a non-finite state would otherwise win
    every ``jnp.argmax``).  Eager calls raise, naming the arms; under jit they lose."""
    finite = jnp.isfinite(scores)
    if is_concrete(scores) and not bool(np.all(np.asarray(finite))):
        per_arm = np.asarray(finite).reshape(-1, scores.shape[-1]).all(0)
        bad = np.flatnonzero(~per_arm).tolist()
        raise FloatingPointError(
            f"scores of arm(s) {bad} are NaN or inf: the bandit state is corrupt (restored from a bad "
            "checkpoint, or built by hand); restore an earlier checkpoint or reset those arms")
    return jnp.argmax(jnp.where(finite, scores, -jnp.inf), axis=-1).astype(jnp.int32)
