"""Combinators over bandits (Bandit -> Bandit) and over states (state -> state).

Reward transforms wrap ``update``: the outermost wrapper sees the raw rewards first,
so BayesianRouter's "centre on the batch, then rescale by quantiles" is
``batch_baseline(quantile_rescale(linear_thompson(...)))``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.bandits import base, linear, simple

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
    """Centre rewards on the mean of the call's finite rewards (BayesianRouter: with
    reward -L_i the raw reward becomes mean batch loss - L_i)."""

    def update(state, contexts, arms, rewards):
        rewards = jnp.asarray(rewards, jnp.float32)
        finite = jnp.isfinite(rewards)
        mean = jnp.sum(jnp.where(finite, rewards, 0.0)) / jnp.maximum(jnp.sum(finite), 1)
        return bandit.update(state, contexts, arms, rewards - mean)

    return base.Bandit(bandit.init, bandit.select, update)


class CostArms(NamedTuple):
    cost: Array            # [K] per-arm cost (seconds, FLOPs, ... in the caller's units)


class CostState(NamedTuple):
    inner: base.State
    arms: CostArms


def cost_aware(bandit: base.Bandit, weight: float) -> base.Bandit:
    """Learn from reward - weight * cost[arm], so a cheaper RM wins when rewards tie.
    Costs start at 0; set them with ``set_costs`` (new arms also start at 0)."""

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

def _concat_arms(old, fresh):
    """Concatenate per-arm leaves (fields named 'arms'); recurse into wrappers."""
    if not hasattr(old, "_fields"):
        return old
    fields = {}
    for name in old._fields:
        a, b = getattr(old, name), getattr(fresh, name)
        fields[name] = (jax.tree.map(lambda x, y: jnp.concatenate([x, y.astype(x.dtype)]), a, b)
                        if name == "arms" else _concat_arms(a, b))
    return type(old)(**fields)


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
    return _concat_arms(state, fresh)


def _replace_linear(state, fn):
    """Apply fn to the LinearState inside any wrappers."""
    if isinstance(state, linear.LinearState):
        return fn(state)
    if "inner" in getattr(state, "_fields", ()):
        return state._replace(inner=_replace_linear(state.inner, fn))
    raise TypeError(f"{type(state).__name__} holds no linear-Gaussian arms (LinUCB / linear_thompson)")


def set_prior(state, mean=None, cov=None, arms=None):
    """Restart arms (all, or the indices in ``arms``) from the prior N(mean, cov).

    ``mean``: [d] or [n, d] (default 0).  ``cov``: a scalar or [n] for an isotropic
    prior (BayesianRouter: sigma_w^2 = 0.02), or [d, d] / [n, d, d] for a full one.
    Forgetting (``discount``) decays toward the isotropic part: for a full cov that is
    trace(cov)/d.  Statistics learned by the restarted arms are discarded."""

    def apply(s: linear.LinearState):
        k, d = s.arms.info.shape
        idx = jnp.arange(k) if arms is None else jnp.atleast_1d(jnp.asarray(arms))
        if int(jnp.max(idx)) >= k or int(jnp.min(idx)) < 0:
            raise ValueError(f"arms {idx.tolist()} out of range for {k} arms")
        n = idx.shape[0]
        mu = jnp.broadcast_to(jnp.zeros(d) if mean is None else jnp.asarray(mean, jnp.float32), (n, d))
        c = jnp.asarray(1.0 if cov is None else cov, jnp.float32)
        if c.ndim <= 1:
            var = jnp.broadcast_to(c, (n,))
            sqrt = jnp.sqrt(var)[:, None, None] * jnp.eye(d)
            info = mu / var[:, None]
        else:
            full = jnp.broadcast_to(c, (n, d, d))
            chol = jnp.linalg.cholesky(full)
            if not bool(jnp.all(jnp.isfinite(chol))):
                raise ValueError("prior covariance is not symmetric positive definite")
            sqrt = jnp.swapaxes(chol, 1, 2)                 # Sigma = L L^T = R^T R with R = L^T
            info = jnp.linalg.solve(full, mu[..., None])[..., 0]
            var = jnp.trace(full, axis1=1, axis2=2) / d
        a = s.arms
        return s._replace(arms=a._replace(
            cov_sqrt=a.cov_sqrt.at[idx].set(sqrt), info=a.info.at[idx].set(info),
            prior_mean=a.prior_mean.at[idx].set(mu), prior_var=a.prior_var.at[idx].set(var)))

    return _replace_linear(state, apply)


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

@functools.singledispatch
def forget(state, gamma):
    """Discount past evidence by gamma in (0, 1]; register new state types with
    ``@forget.register``.  Wrappers forward to their inner state."""
    if "inner" in getattr(state, "_fields", ()):
        return state._replace(inner=forget(state.inner, gamma))
    raise TypeError(f"no forgetting rule for {type(state).__name__}; register one with @forget.register")


@forget.register
def _(state: linear.LinearState, gamma):
    """Decay the precision toward the prior: A' = gamma A + (1 - gamma) A(0),
    b' = gamma b + (1 - gamma) b(0) (exact, O(d^3) per arm through an SVD of R)."""

    def one(r, info, mean0, var0):
        _, sv, vt = jnp.linalg.svd(r, full_matrices=False)       # Sigma = V diag(sv^2) V^T
        var = sv * sv
        decayed = var * var0 / (gamma * var0 + (1.0 - gamma) * var)   # 1 / (gamma/var + (1-gamma)/var0)
        return jnp.sqrt(decayed)[:, None] * vt, gamma * info + (1.0 - gamma) * mean0 / var0

    a = state.arms
    r, info = jax.vmap(one)(a.cov_sqrt, a.info, a.prior_mean, a.prior_var)
    return state._replace(arms=a._replace(cov_sqrt=r, info=info))


@forget.register
def _(state: simple.ScoreState, gamma):
    a = state.arms
    return state._replace(arms=a._replace(score=gamma * a.score, weight=gamma * a.weight))


class DiscountState(NamedTuple):
    inner: base.State
    updates: Array         # int32 number of update calls


def discount(bandit: base.Bandit, gamma: float, every: int = 1) -> base.Bandit:
    """Forget for non-stationary rewards (the policy drifts during training): every
    ``every`` updates that pull an arm, apply ``forget`` with gamma**every, so evidence
    from t updates ago weighs about gamma**t.  ``every`` > 1 amortises LinUCB/TS's O(K d^3) decay."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")

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
