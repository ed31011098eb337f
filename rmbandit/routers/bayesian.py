"""BayesianRouter's online router (ALGORITHMS.md section 3): one RM per preference pair.

Per RM n a Bayesian linear regression r = w_n^T h + eps, eps ~ N(0, noise_var), over the
offline router's pair feature h [d]; Thompson sampling routes pair i to argmax_n h_i^T w_n
with w_n drawn from the posterior, and after the step each RM's posterior takes the pairs it
labelled (``bandits.linear_thompson``, exact square-root updates).  The prior mean is the
offline router's BT embeddings E_bt [K, d] (built elsewhere; this module only takes arrays).

    router = bayesian_router(prior_mean=E_bt)                 # the paper's BayesianRouter
    state = router.init(key, K, d)
    state, assignment = router.assign(state, h, key)          # h [B, d]: one row per pair
    state = router.observe(state, assignment, pair_losses)    # [B] DPO losses (reward="baseline")

Variants (the paper's Sec. 4 ablations and App. C reward designs):

    prior_mean=None        "w/o offline": mu = 0 and prior_var 1 (unless prior_var is given)
    online=False           "w/o online": argmax_n h^T E_bt, observe learns nothing
    mix=alpha              "Weighted-score": argmax alpha softmax(h E_bt^T) + (1 - alpha) softmax(TS
                           scores), the TS part from a zero-mean prior as in the paper
    reward="baseline"      r_i = mean batch loss - L_i, then 20/80-quantile rescaling (App. B)
    reward="full_advantage"   every RM labels every pair; r_i = 1 if the routed RM's loss <= the
                           mean loss over the RMs, else 0; observe takes losses [B, K] (NaN: an
                           RM that gave the pair no label, a tie; it stays out of the mean)
    reward="light_advantage"  the same against ``light_rms`` random other RMs (``advantage_queries``
                           says which; the other entries are NaN)

The losses of a pair under other RMs' labels need no extra forward pass: see
``losses_under_labels``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit import bandits
from rmbandit.routers import base
from rmbandit.routers.bandit import bandit_router
from rmbandit.routers.fixed import context_router

PRIOR_VAR = 0.02          # sigma_w^2 around the offline prior E_bt (the paper's setting)
NO_PRIOR_VAR = 1.0        # sigma_w^2 around a zero mean ("w/o offline", and the Weighted-score TS part)
REWARDS = ("baseline", "full_advantage", "light_advantage")


# ---------------------------------------------------------------- losses and advantage rewards

def losses_under_labels(margin, beta: float, agrees, queried=None) -> jax.Array:
    """The DPO loss of each pair under each RM's label, [B, K], from one forward pass.

    ``margin`` [B]: the policy's log-ratio margin h = (log pi(y_w) - log ref(y_w)) -
    (log pi(y_l) - log ref(y_l)) of the pair as trained, i.e. oriented as the routed RM
    labelled it.  ``agrees`` [B, K] bool: RM k orders the pair as that label does.  An RM
    that agrees gives the same pair, loss -log sigmoid(beta h); one that flips it swaps
    y_w and y_l, which negates h: loss -log sigmoid(-beta h).  ``queried`` [B, K] bool
    (default all): entries not queried are NaN, as the advantage rewards expect.
    """
    bandits.base.check_number("beta", beta, low=0, low_open=True)
    margin = jnp.asarray(margin, jnp.float32)
    agrees = jnp.asarray(agrees)
    if margin.ndim != 1 or agrees.ndim != 2 or agrees.shape[0] != margin.shape[0]:
        raise ValueError(f"losses_under_labels needs margin [pairs] and agrees [pairs, RMs], got "
                         f"{margin.shape} and {agrees.shape}")
    if agrees.dtype != jnp.bool_:
        raise ValueError(f"agrees must be bool (RM k orders the pair like the trained label), got dtype "
                         f"{agrees.dtype}; mark RMs that gave no label with queried=False instead")
    signed = jnp.where(agrees, margin[:, None], -margin[:, None])
    losses = -jax.nn.log_sigmoid(beta * signed)
    if queried is None:
        return losses
    queried = jnp.asarray(queried, bool)
    if queried.shape != agrees.shape:
        raise ValueError(f"queried has shape {queried.shape}, agrees {agrees.shape}; they must match")
    return jnp.where(queried, losses, jnp.nan)


def advantage_queries(key, rms, num_rms: int, others: int | None = None) -> jax.Array:
    """[B, K] bool: which RMs label pair i for the advantage rewards.

    The routed RM ``rms[i]`` always; with ``others`` = None (full advantage) every RM, else
    ``others`` distinct random RMs besides it (light advantage: C = 3 in the paper).  The
    draw depends only on ``key``, so the training loop and the simulation that pass the same
    key query the same RMs."""
    if others is not None:
        bandits.base.check_number("others", others, low=1, integer=True)
    rms = jnp.asarray(rms)
    if rms.ndim != 1 or not jnp.issubdtype(rms.dtype, jnp.integer):
        raise ValueError(f"advantage_queries needs the routed RMs as integers [pairs], got {rms.dtype} {rms.shape}")
    if bandits.base.is_concrete(rms) and (np.any(np.asarray(rms) < 0) or np.any(np.asarray(rms) >= num_rms)):
        raise ValueError(f"routed RM indices must be in [0, {num_rms}), got {np.unique(np.asarray(rms)).tolist()}")
    if others is None or others >= num_rms - 1:
        return jnp.ones((rms.shape[0], num_rms), bool)
    routed = rms[:, None] == jnp.arange(num_rms)
    draw = jnp.where(routed, jnp.inf, jax.random.uniform(key, routed.shape))     # the routed RM sorts last
    rank = jnp.argsort(jnp.argsort(draw, axis=1), axis=1)
    return routed | (rank < others)


def advantage_rewards(losses, rms) -> jax.Array:
    """r_i = 1 if the routed RM's loss is <= the mean loss over the queried RMs (the finite
    entries of row i of ``losses`` [B, K]), else 0.  The mean may include the routed RM or
    not: L_r <= (L_r + S) / (C + 1) exactly when L_r <= S / C.  A row whose routed loss is
    missing, or with no other RM to compare with, gives NaN (the bandit skips it)."""
    losses = jnp.asarray(losses, jnp.float32)
    rms = jnp.asarray(rms, jnp.int32)
    known = jnp.isfinite(losses)
    routed = jnp.take_along_axis(losses, rms[:, None], axis=1)[:, 0]
    mean = jnp.sum(jnp.where(known, losses, 0.0), axis=1) / jnp.maximum(jnp.sum(known, axis=1), 1)
    usable = jnp.isfinite(routed) & (jnp.sum(known, axis=1) >= 2)
    return jnp.where(usable, (routed <= mean).astype(jnp.float32), jnp.nan)


def check_advantage_losses(losses, rms, num_rms: int, arms=None) -> None:
    """Eager checks of the [B, K] losses an advantage router observes (value checks skipped
    under jit).  NaN marks an RM that was not queried or gave the pair no label (a tie):
    allowed, except for the routed RM, and each pair needs one other RM to compare with.
    Rows whose ``arms`` entry is ``NO_ARM`` are not observed and not checked."""
    losses = jnp.asarray(losses)
    want = (rms.shape[0], num_rms)
    if losses.shape != want:
        raise ValueError(f"an advantage router observes the loss of every pair under each queried RM's label, "
                         f"shape {want} (NaN = not queried), got {losses.shape}; build it with "
                         "routers.losses_under_labels(margin, beta, agrees, queried)")
    if not bandits.base.is_concrete(losses, rms, *([] if arms is None else [arms])):
        return
    values, rows = np.asarray(losses, np.float64), np.asarray(rms)
    observed = np.ones(len(rows), bool) if arms is None else np.asarray(arms) != bandits.NO_ARM
    known = np.isfinite(values)
    missing = ~known[np.arange(len(rows)), rows] & observed
    if missing.any():
        raise ValueError(f"the routed RM's loss is NaN at pairs {np.flatnonzero(missing)[:8].tolist()}: the pair "
                         "was trained on its label, so that loss must be given")
    alone = (known.sum(1) < 2) & observed
    if alone.any():
        raise ValueError(f"pairs {np.flatnonzero(alone)[:8].tolist()} have no other RM's loss to compare with; "
                         "query them as routers.advantage_queries says")


def advantage(router: base.Router) -> base.Router:
    """A per-item router with feedback='reward' that observes losses [B, K] instead, turned
    into 0/1 advantage rewards.  Full and light advantage learn alike; they differ in which
    RMs the caller queries (``advantage_queries`` with others=None or C)."""

    def rewards(state, assignment, losses):
        check_advantage_losses(losses, assignment.rms, state.counts.shape[0], assignment.arms)
        return advantage_rewards(losses, assignment.rms)

    return router._replace(observe=lambda s, a, f: router.observe(s, a, rewards(s, a, f)),
                           reward=lambda s, a, f: router.reward(s, a, rewards(s, a, f)))


# ---------------------------------------------------------------- offline scores

def offline_scores(contexts, prior_mean) -> jax.Array:
    """The offline router's BT scores s^n = <h, E_bt[n]>, [B, K]."""
    return bandits.base.matmul(contexts, prior_mean.T)


def weighted_score(bandit: bandits.Bandit, prior_mean, alpha: float) -> bandits.Bandit:
    """The paper's Weighted-score ablation as a bandit: choose argmax of
    alpha softmax(offline BT scores) + (1 - alpha) softmax(``bandit``'s scores); ``update``
    is the bandit's, credited with the arm the mixture chose."""
    prior_mean = jnp.asarray(prior_mean, jnp.float32)

    def init(key, num_arms, dim):
        check_prior_shape(prior_mean, num_arms, dim)
        return bandit.init(key, num_arms, dim)

    def select(state, contexts, key):
        _, online = bandit.select(state, contexts, key)
        scores = (alpha * jax.nn.softmax(offline_scores(contexts, prior_mean), axis=-1)
                  + (1.0 - alpha) * jax.nn.softmax(online, axis=-1))
        return bandits.base.argmax_finite(scores), scores

    return bandits.Bandit(init, select, bandit.update)


def offline_router(prior_mean) -> base.Router:
    """BayesianRouter "w/o online": pair i goes to argmax_n h_i^T E_bt[n]; nothing is learned."""
    prior_mean = jnp.asarray(prior_mean, jnp.float32)

    def route(contexts, num_rms):
        scores = offline_scores(contexts, prior_mean)
        return bandits.base.argmax_finite(scores), scores

    return context_router(route, lambda k, d: check_prior_shape(prior_mean, k, d))


def check_prior_shape(prior_mean, num_rms: int, dim: int) -> None:
    if prior_mean.shape != (num_rms, dim):
        raise ValueError(f"prior_mean (the offline router's E_bt) has shape {prior_mean.shape}, but the router "
                         f"was initialised with {num_rms} RMs and pair features of width {dim}: pass E_bt "
                         f"[{num_rms}, {dim}] from the offline router trained on this RM pool")


# ---------------------------------------------------------------- the router

def bayesian_router(prior_mean=None, prior_var: float | None = None, noise_var: float = 1.0,
                    reward: str = "baseline", light_rms: int = 3, online: bool = True,
                    mix: float | None = None, history: int = 4096) -> base.Router:
    """BayesianRouter's online router, per preference pair; see the module docstring.

    ``prior_mean``: E_bt [K, d] of the offline router, or None for the paper's "w/o offline"
    ablation (mu_n(0) = 0).  ``prior_var``: sigma_w^2; None picks the paper's value for the
    prior in use: ``PRIOR_VAR`` = 0.02 around E_bt, ``NO_PRIOR_VAR`` = 1 around zero.
    ``noise_var``: sigma^2 of r = w^T h + eps (paper: 1).  ``reward``: one of ``REWARDS``;
    ``light_rms``: C, the other RMs each pair is compared with under "light_advantage": the
    caller queries ``advantage_queries(key, assignment.rms, K, light_rms)`` (None for
    "full_advantage") and passes their losses, ``losses_under_labels``, to ``observe``.
    ``online=False``: the offline router alone (needs ``prior_mean``).  ``mix``: alpha of the
    Weighted-score ablation (needs ``prior_mean``; the Thompson part then starts from zero
    mean, as in the paper).  ``history``: rewards kept for the quantile rescaling.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    bandits.base.check_number("light_rms", light_rms, low=1, integer=True)
    if prior_var is not None:
        bandits.base.check_number("prior_var", prior_var, low=0, low_open=True)
    if prior_mean is not None:
        prior_mean = np.asarray(prior_mean, np.float32)
        if prior_mean.ndim != 2:
            raise ValueError(f"prior_mean must be the offline router's E_bt [RMs, dim], got shape {prior_mean.shape}")
        if not np.isfinite(prior_mean).all():
            raise ValueError("prior_mean (E_bt) contains NaN or inf; check the offline router's BT head")
    if not online:
        if prior_mean is None:
            raise ValueError("online=False routes by the offline router alone (argmax h.E_bt) and needs "
                             "prior_mean=E_bt; without it there is nothing to route by")
        if mix is not None:
            raise ValueError("mix mixes the offline scores with the online router's; it cannot be used with "
                             "online=False")
        return offline_router(prior_mean)
    if mix is not None:
        bandits.base.check_number("mix", mix, low=0, high=1)
        if prior_mean is None:
            raise ValueError("mix (the Weighted-score ablation) mixes the offline BT scores h.E_bt in and needs "
                             "prior_mean=E_bt")
        thompson = weighted_score(bandits.linear_thompson(NO_PRIOR_VAR if prior_var is None else prior_var,
                                                          noise_var), prior_mean, mix)
    else:
        default_var = NO_PRIOR_VAR if prior_mean is None else PRIOR_VAR
        thompson = bandits.linear_thompson(default_var if prior_var is None else prior_var, noise_var, prior_mean)
    if reward == "baseline":
        router = bandit_router(thompson, "item", feedback="loss", rescale=(0.2, 0.8), history=history, baseline=True)
    else:
        router = advantage(bandit_router(thompson, "item", feedback="reward", rescale=None))
    # E_bt has a row per RM the offline router was trained with: a new RM has none
    return router if prior_mean is None else router._replace(grow=None)
