"""Combinators over bandits (Bandit -> Bandit) and over states (state -> state).

Reward transforms wrap ``update``: the outermost wrapper sees the raw rewards first,
so BayesianRouter's "centre on the batch, then rescale by quantiles" is
``batch_baseline(quantile_rescale(linear_thompson(...)))``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.bandits import base
from rmbandit.bandits.base import forget
from rmbandit.bandits.linear import set_prior

Array = jax.Array


# ---------------------------------------------------------------- reward transforms

class RescaledState(NamedTuple):
    inner: base.State
    history: Array         # [H] past raw rewards, NaN where empty (ring buffer)
    count: Array           # int32 rewards ever recorded


def rescale_rewards(history: Array, rewards: Array, low: float = 0.2, high: float = 0.8) -> Array:
    """Graves et al. (2017) / LASeR App. A: with q_lo, q_hi the low/high quantiles of
    the past rewards, 0 below q_lo, 1 above q_hi, linear in between.  With no or
    a degenerate history (q_hi == q_lo) a reward at the quantile maps to 0.5."""
    q_lo, q_hi = jnp.nanquantile(history, jnp.array([low, high]))
    span = q_hi - q_lo
    inside = (rewards - q_lo) / jnp.where(span > 0, span, 1.0)
    degenerate = jnp.where(rewards > q_hi, 1.0, jnp.where(rewards < q_lo, 0.0, 0.5))
    scaled = jnp.where(span > 0, jnp.clip(inside, 0.0, 1.0), degenerate)
    scaled = jnp.where(jnp.isnan(span), 0.5, scaled)     # empty history
    return jnp.where(jnp.isfinite(rewards), scaled, rewards)


def quantile_rescale(bandit: base.Bandit, low: float = 0.2, high: float = 0.8,
                     history: int = 4096) -> base.Bandit:
    """Rescale rewards by the quantiles of the last ``history`` raw rewards (before this
    call's rewards join the history, as in LASeR); invalid rows (non-finite reward,
    arm out of range) pass through untouched for the inner bandit to reject or skip,
    and never enter the history."""
    base.check_number("low", low, low=0, high=1)
    base.check_number("high", high, low=0, high=1)
    if not low < high:
        raise ValueError(f"quantile_rescale needs low < high, got low={low}, high={high}")
    base.check_number("history", history, low=1, integer=True)

    def init(key, num_arms, dim):
        return RescaledState(bandit.init(key, num_arms, dim),
                             jnp.full((history,), jnp.nan, jnp.float32), jnp.zeros((), jnp.int32))

    def update(state, contexts, arms, rewards):
        rewards = jnp.asarray(rewards, jnp.float32)
        scaled = rescale_rewards(state.history, rewards, low, high)
        valid = base.valid_rows(jnp.asarray(contexts), jnp.asarray(arms), rewards, base.num_arms(state.inner))
        slot = state.count + jnp.cumsum(valid) - 1
        hist = state.history.at[jnp.where(valid, slot % history, history)].set(rewards, mode="drop")
        return RescaledState(bandit.update(state.inner, contexts, arms, scaled), hist,
                             state.count + jnp.sum(valid).astype(jnp.int32))

    return base.Bandit(init, lambda s, c, k: bandit.select(s.inner, c, k), update)


def batch_baseline(bandit: base.Bandit) -> base.Bandit:
    """Centre rewards on the mean of the call's finite rewards of observed rows (BayesianRouter:
    with reward -L_i the raw reward becomes mean batch loss - L_i); a NO_ARM row's reward
    changes nothing, the baseline included."""

    def update(state, contexts, arms, rewards):
        arms_ = jnp.asarray(arms)
        observed = (arms_ >= 0) & (arms_ < base.num_arms(state))
        return bandit.update(state, contexts, arms, centred(rewards, observed))

    return base.Bandit(bandit.init, bandit.select, update)


def centred(rewards: Array, observed: Array | None = None) -> Array:
    """Rewards minus the mean of the finite ones (of the ``observed`` rows, when given);
    non-finite ones stay as they are."""
    rewards = jnp.asarray(rewards, jnp.float32)
    counted = jnp.isfinite(rewards) if observed is None else jnp.isfinite(rewards) & observed
    return rewards - jnp.sum(jnp.where(counted, rewards, 0.0)) / jnp.maximum(jnp.sum(counted), 1)


class CostArms(NamedTuple):
    cost: Array            # [K] per-arm cost (seconds, FLOPs, ... in the caller's units)


class CostState(NamedTuple):
    inner: base.State
    arms: CostArms


def cost_aware(bandit: base.Bandit, weight: float) -> base.Bandit:
    """Learn from reward - weight * cost[arm], so a cheaper RM wins when rewards tie.
    Costs start at 0; set them with ``set_costs`` (new arms also start at 0)."""
    base.check_number("weight", weight, low=0)

    def init(key, num_arms, dim):
        return CostState(bandit.init(key, num_arms, dim), CostArms(jnp.zeros((num_arms,), jnp.float32)))

    def update(state, contexts, arms, rewards):
        k = state.arms.cost.shape[0]
        penalty = weight * state.arms.cost[jnp.clip(jnp.asarray(arms), 0, k - 1)]
        return state._replace(inner=bandit.update(state.inner, contexts, arms, jnp.asarray(rewards) - penalty))

    return base.Bandit(init, lambda s, c, k: bandit.select(s.inner, c, k), update)


def set_costs(state: CostState, costs) -> CostState:
    costs = jnp.asarray(costs, jnp.float32)
    if costs.shape != state.arms.cost.shape:
        raise ValueError(f"costs has shape {costs.shape}; this bandit has {state.arms.cost.shape[0]} arms")
    return state._replace(arms=CostArms(costs))


# ---------------------------------------------------------------- arms and priors

def is_per_arm(path) -> bool:
    return any(getattr(key, "name", None) == "arms" for key in path)


def add_arm(bandit: base.Bandit, state, key: Array, dim: int, num_new: int = 1):
    """A new RM joins mid-run: its statistics come from ``bandit.init`` (LinUCB: A = I),
    every existing arm keeps its statistics bit for bit.  Arm indices of the new RMs
    are K, K+1, ...  Shared, non-per-arm state (counters, reward history) is kept."""
    fresh = bandit.init(key, num_new, dim)
    if jax.tree.structure(fresh) != jax.tree.structure(state):
        raise ValueError("state was not produced by this bandit (pytree structures differ)")
    for old_leaf, new_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(fresh)):
        if old_leaf.shape[1:] != new_leaf.shape[1:] and old_leaf.ndim > 1:
            raise ValueError(f"dim={dim} does not match the state's context width "
                             f"(leaf shapes {old_leaf.shape} vs {new_leaf.shape})")
    return jax.tree_util.tree_map_with_path(
        lambda path, old, new: jnp.concatenate([old, new.astype(old.dtype)]) if is_per_arm(path) else old,
        state, fresh)


def with_prior(bandit: base.Bandit, mean=None, cov=None) -> base.Bandit:
    """A bandit whose ``init`` starts every arm from N(mean, cov) (see ``set_prior``)."""
    return bandit._replace(init=lambda key, k, d: set_prior(bandit.init(key, k, d), mean, cov))


def from_state(bandit: base.Bandit, trained) -> base.Bandit:
    """Cold start (LASeR's CS-LASeR): ``init`` returns a copy of a trained state, after
    checking it has the requested number of arms and width."""

    def init(key, num_arms, dim):
        expected = jax.eval_shape(lambda k: bandit.init(k, num_arms, dim), key)
        got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trained)
        if jax.tree.structure(expected) != jax.tree.structure(got) or any(
                e.shape != g.shape for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got))):
            raise ValueError(f"the trained state does not fit init(num_arms={num_arms}, dim={dim}); "
                             "reuse a state from the same bandit, arm count and featuriser")
        return jax.tree.map(jnp.array, trained)

    return bandit._replace(init=init)


# ---------------------------------------------------------------- forgetting

class DiscountState(NamedTuple):
    inner: base.State
    updates: Array         # int32 number of update calls


def discount(bandit: base.Bandit, gamma: float, every: int = 1) -> base.Bandit:
    """Forget for non-stationary rewards (the policy drifts during training): every
    ``every`` updates that pull an arm, apply ``forget`` with gamma**every, so evidence
    from t updates ago weighs about gamma**t.  ``every`` > 1 amortises LinUCB/TS's O(K d^3) decay."""
    base.check_number("gamma", gamma, low=0, low_open=True, high=1)
    base.check_number("every", every, low=1, integer=True)

    def init(key, num_arms, dim):
        return DiscountState(bandit.init(key, num_arms, dim), jnp.zeros((), jnp.int32))

    def update(state, contexts, arms, rewards):
        inner = bandit.update(state.inner, contexts, arms, rewards)
        # time advances only with evidence: an update that pulls nothing is a no-op
        pulled = jnp.any(base.valid_rows(jnp.asarray(contexts), jnp.asarray(arms), jnp.asarray(rewards),
                                         base.num_arms(state.inner)))
        updates = state.updates + pulled.astype(jnp.int32)
        due = pulled & (updates % every == 0)
        inner = jax.lax.cond(due, lambda s: forget(s, gamma ** every), lambda s: s, inner)
        return DiscountState(inner, updates)

    return base.Bandit(init, lambda s, c, k: bandit.select(s.inner, c, k), update)
