"""Linear-Gaussian bandits: LinUCB (LASeR) and Bayesian linear Thompson sampling
(BayesianRouter's online router).  Both keep, per arm k, a Gaussian posterior over
the weights of r = w_k^T c + eps, eps ~ N(0, noise_var):

    precision  A_k = Sigma_k^{-1} = A_k(0) + (1/noise_var) sum c c^T
    mean  mu_k = Sigma_k b_k,  b_k = b_k(0) + (1/noise_var) sum r c

LinUCB is the special case noise_var = 1, A_k(0) = I (Li et al. 2010):
theta_k = A_k^{-1} b_k, score = c^T theta_k + alpha sqrt(c^T A_k^{-1} c).

Numerics.  A float32 inverse updated by Sherman-Morrison loses positive
definiteness once cond(A) passes ~1e7 (measured: NaN after ~12k rank-1 steps of
anisotropic LM-like contexts, symmetrising does not help).  We therefore keep a
square root R_k with Sigma_k = R_k^T R_k and update it with a blocked Potter
(square-root Kalman) step: cond(R) = sqrt(cond(Sigma)) and Sigma stays symmetric
positive semi-definite by construction, at the cost of one GEMM more than
Woodbury.  No d x d inverse is ever formed during select or update.

The rows of one block are nearly collinear in practice (LM hidden states share a
large common direction, norms in the hundreds), so the block step never forms the
n x n normal matrix I + Phi^T Phi of Phi = R x^T: its Cholesky loses every direction
but the common one (LinUCB scores off by 100 % at norm 100, NaN at 1e4).  Phi is
orthogonalised first (Householder QR) and the small factor comes from a second QR;
see ``sqrt_update``.  The state stores the posterior mean mu, not b = A mu: on such
contexts b is huge along the common direction and (R c).(R b) cancels, so even the exact
posterior rounded once to float32 predicts c^T mu 2e-2 off at norm 1e3 in the b form and
1e-5 off in the mu form.  mu moves by the Kalman gain applied to the residual r - X mu.
Every product runs at HIGHEST precision (``base.matmul``).

Cost.  Rows are grouped by arm (a stable sort) and processed in tiles of at most
``tile`` rows belonging to one arm, in a dynamic-length loop: an update touches
only the pulled arms and costs O(rows * d^2), where masking every row for every
arm under vmap would cost K times that.  Scores for all arms are computed with
``jax.vmap`` over the arm axis.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit.bandits import base

Array = jax.Array


class LinearArms(NamedTuple):
    cov_sqrt: Array        # [K, d, d]  R with Sigma = R^T R
    mean: Array            # [K, d]     mu = Sigma b (LinUCB's theta_k = A_k^{-1} b_k)
    prior_mean: Array      # [K, d]     mu(0), kept for forgetting toward the prior
    prior_var: Array       # [K]        isotropic prior variance, Sigma(0) = prior_var * I
    pulls: Array           # [K] int32


class LinearState(NamedTuple):
    arms: LinearArms
    skipped: Array         # int32 count of rows dropped as invalid inside jit


def covariance(state: LinearState) -> Array:
    """Sigma_k = R_k^T R_k, [K, d, d] (for inspection and tests; O(K d^3))."""
    r = state.arms.cov_sqrt
    return base.einsum("kij,kil->kjl", r, r)


def posterior_mean(arms: LinearArms) -> Array:
    """mu_k, [K, d]."""
    return arms.mean


def moments(state: LinearState, contexts: Array) -> tuple[Array, Array]:
    """Predictive mean c^T mu_k and variance c^T Sigma_k c = |R_k c|^2 of every arm for
    every row, each [B, K].  The contexts are shared by all arms, so R c is one GEMM over
    the stacked arms."""
    rc = base.einsum("kde,be->kdb", state.arms.cov_sqrt, contexts)
    return base.matmul(contexts, state.arms.mean.T), jnp.sum(rc * rc, axis=1).T


def init_linear(key: Array, num_arms: int, dim: int, prior_var: float = 1.0,
                prior_mean: Array | None = None, dtype=jnp.float32) -> LinearState:
    """Posterior = prior N(prior_mean, prior_var * I) for every arm."""
    del key
    num_arms, dim = base.check_shape_args(num_arms, dim)
    if prior_mean is None:
        prior_mean = jnp.zeros((num_arms, dim), dtype)
    prior_mean = jnp.broadcast_to(jnp.asarray(prior_mean, dtype), (num_arms, dim))
    var = jnp.full((num_arms,), prior_var, dtype)
    eye = jnp.eye(dim, dtype=dtype)
    return LinearState(
        arms=LinearArms(
            cov_sqrt=jnp.sqrt(var)[:, None, None] * eye,
            mean=jnp.array(prior_mean),         # its own buffer: a donated state may not alias
            prior_mean=prior_mean,
            prior_var=var,
            pulls=jnp.zeros((num_arms,), jnp.int32)),
        skipped=jnp.zeros((), jnp.int32))


def _positive_definite(cov: np.ndarray) -> bool:
    """Symmetric with a Cholesky factor (float64, on host)."""
    if not np.allclose(cov, np.swapaxes(cov, -1, -2), rtol=1e-5, atol=1e-8):
        return False
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return False
    return True


def set_prior(state, mean=None, cov=None, arms=None):
    """Restart arms (all, or the indices in ``arms``) from the prior N(mean, cov).

    ``mean``: [d] or [n, d] (default 0).  ``cov``: a scalar or [n] for an isotropic
    prior (BayesianRouter: sigma_w^2 = 0.02), or [d, d] / [n, d, d] for a full one.
    Forgetting (``discount``) decays toward the isotropic part: for a full cov that is
    trace(cov)/d.  Statistics learned by the restarted arms are discarded.  ``state``
    may be wrapped (quantile_rescale, discount, ...)."""

    # the arms and the prior are the caller's values: checked on host, so that the state may
    # be traced (jit, and eval_shape when a checkpoint is restored or from_state starts it)
    if base.is_concrete(arms, cov):
        if cov is not None:
            host = np.asarray(cov, np.float64)
            if host.ndim <= 1 and not (np.all(host > 0) and np.all(np.isfinite(host))):
                raise ValueError(f"prior variance must be finite and > 0, got {host.tolist()}")
            if host.ndim > 1 and not _positive_definite(host):
                raise ValueError("prior covariance is not symmetric positive definite")

    def apply(s: LinearState):
        k, d = s.arms.mean.shape
        if arms is None:
            idx = jnp.arange(k)
        else:
            if base.is_concrete(arms):
                host = np.atleast_1d(np.asarray(arms))
                if host.size and (host.max() >= k or host.min() < 0):
                    raise ValueError(f"arms {host.tolist()} out of range for {k} arms")
            idx = jnp.atleast_1d(jnp.asarray(arms))
        n = idx.shape[0]
        mu = jnp.broadcast_to(jnp.zeros(d) if mean is None else jnp.asarray(mean, jnp.float32), (n, d))
        c = jnp.asarray(1.0 if cov is None else cov, jnp.float32)
        if c.ndim <= 1:
            var = jnp.broadcast_to(c, (n,))
            sqrt = jnp.sqrt(var)[:, None, None] * jnp.eye(d)
        else:
            full = jnp.broadcast_to(c, (n, d, d))
            sqrt = jnp.swapaxes(jnp.linalg.cholesky(full), 1, 2)   # Sigma = L L^T = R^T R with R = L^T
            var = jnp.trace(full, axis1=1, axis2=2) / d
        a = s.arms
        return s._replace(arms=a._replace(
            cov_sqrt=a.cov_sqrt.at[idx].set(sqrt), mean=a.mean.at[idx].set(mu),
            prior_mean=a.prior_mean.at[idx].set(mu), prior_var=a.prior_var.at[idx].set(var)))

    return base.replace_innermost(state, lambda s: isinstance(s, LinearState), apply,
                                  "linear-Gaussian arms (LinUCB / linear_thompson)")


@base.forget.register
def _(state: LinearState, gamma):
    """Decay the precision toward the prior: A' = gamma A + (1 - gamma) A(0),
    b' = gamma b + (1 - gamma) b(0) with b = A mu (exact, O(d^3) per arm through an SVD
    of R; the isotropic prior is diagonal in the SVD's basis, so mu' is solved there)."""

    def one(r, mean, mean0, var0):
        _, sv, vt = jnp.linalg.svd(r, full_matrices=False)       # Sigma = V diag(sv^2) V^T
        var = sv * sv
        precision = gamma / var + (1.0 - gamma) / var0
        b = gamma * base.matmul(vt, mean) / var + (1.0 - gamma) * base.matmul(vt, mean0) / var0
        return jnp.sqrt(1.0 / precision)[:, None] * vt, base.matmul(b / precision, vt)

    a = state.arms
    r, mean = jax.vmap(one)(a.cov_sqrt, a.mean, a.prior_mean, a.prior_var)
    return state._replace(arms=a._replace(cov_sqrt=r, mean=mean))


def sqrt_update(cov_sqrt: Array, mean: Array, x: Array, r: Array) -> tuple[Array, Array, Array]:
    """Blocked Potter step for one arm: rows x [n, d] and rewards r [n] (both noise-scaled),
    (R, mu) -> (R', mu').

    With Phi = R x^T = Q T (thin QR, Q [d, m] orthonormal) and C^T C = I + T T^T (the R
    factor of the QR of [I; T^T], never a Cholesky of the normal matrix),
    R' = (I + Q (C^{-T} - I) Q^T) R.  Then R'^T R' = R^T (I - Q Q^T + Q (I + T T^T)^{-1} Q^T) R
    = R^T (I - Phi (I + Phi^T Phi)^{-1} Phi^T) R = Sigma - Sigma x^T (I + x Sigma x^T)^{-1} x Sigma,
    the posterior covariance.  The mean moves by the gain on the residual e = r - x mu:
    Sigma x^T (I + x Sigma x^T)^{-1} e = R^T Phi (I + Phi^T Phi)^{-1} e = R^T Q C^{-1} C^{-T} T e.
    Nearly collinear rows only make T ill-conditioned, and Householder QR is backward
    stable whatever its conditioning (float64 check: 2e-4 at norm 1e3, 64 rows).
    C's diagonal is made positive, so zero rows of x (tile padding) change nothing.
    A step that is not finite (a float32 overflow) is not applied; the flag says so.
    """
    eye = jnp.eye(min(x.shape), dtype=cov_sqrt.dtype)                  # rank of Phi <= min(n, d)
    q, t = jnp.linalg.qr(base.einsum("de,ne->dn", cov_sqrt, x))       # Phi = Q T, Q [d, m], T [m, n]
    c = jnp.linalg.qr(jnp.concatenate([eye, t.T]), mode="r")            # C^T C = I + T T^T, [m, m]
    c = c * jnp.where(jnp.diagonal(c) < 0, -1.0, 1.0)[:, None]
    c_inv_t = jax.scipy.linalg.solve_triangular(c, eye, lower=False).T  # C^{-T}
    y = base.matmul(q.T, cov_sqrt)                                      # Q^T R, [m, d]
    residual = r - base.matmul(x, mean)
    gain = base.matmul(c_inv_t.T, base.matmul(c_inv_t, base.matmul(t, residual)))   # C^{-1} C^{-T} T e
    mean_step = base.matmul(gain, y)
    finite = jnp.all(jnp.isfinite(y)) & jnp.all(jnp.isfinite(c_inv_t)) & jnp.all(jnp.isfinite(mean + mean_step))
    # a non-finite step is dropped inside the same fused pass that adds it (no extra read of R)
    step = jnp.where(finite, base.matmul(q, base.matmul(c_inv_t - eye, y)), 0.0)
    return cov_sqrt + step, jnp.where(finite, mean + mean_step, mean), finite


def grouped_sqrt_update(cov_sqrt: Array, mean: Array, x: Array, r: Array, arms: Array, valid: Array,
                        tile: int) -> tuple[Array, Array, Array]:
    """Apply each arm's rows to that arm's (R, mu) only, ``tile`` rows at a time.

    Rows are sorted by arm; each arm's rows are cut into ceil(n_k / tile) tiles and a
    while loop visits just the tiles that exist, so unpulled arms cost nothing.
    Sequential tiles of one arm compose exactly (Bayesian updates are associative).
    A tile costs a fixed ~1 ms at d=768 (three passes over the arm's R, its slice and
    write-back) plus compute that grows with its rows, padding included; 8 rows per tile
    was the fastest at d=768, K=8, B=64 (update 13 ms balanced / 12 ms with 80 % of the rows
    on one arm, against 15 / 16 ms at 16 and 21 / 20 ms at 32).  Updating every arm at once
    with ``vmap`` was slower still (22 ms).
    Returns R', mu' and [K] bool: no tile of that arm went non-finite (such a tile is not applied).
    """
    k, d, _ = cov_sqrt.shape
    key = jnp.where(valid, arms, k)                 # invalid rows sort past the last arm
    order = jnp.argsort(key, stable=True)
    rows = jnp.concatenate([x[order], jnp.zeros((tile, d), x.dtype)])
    targets = jnp.concatenate([r[order], jnp.zeros((tile,), r.dtype)])
    counts = jnp.bincount(key, length=k + 1)[:k]
    row_start = jnp.cumsum(counts) - counts
    tiles = (counts + tile - 1) // tile
    tile_end = jnp.cumsum(tiles)
    tile_start = tile_end - tiles

    def visit(j, carry):
        sqrt, mu, ok = carry
        arm = jnp.searchsorted(tile_end, j, side="right")
        local = j - tile_start[arm]
        inside = jnp.arange(tile) < counts[arm] - local * tile
        start = row_start[arm] + local * tile
        block = jnp.where(inside[:, None], jax.lax.dynamic_slice_in_dim(rows, start, tile), 0.0)
        block_r = jnp.where(inside, jax.lax.dynamic_slice_in_dim(targets, start, tile), 0.0)
        new_sqrt, new_mu, finite = sqrt_update(sqrt[arm], mu[arm], block, block_r)
        return sqrt.at[arm].set(new_sqrt), mu.at[arm].set(new_mu), ok.at[arm].set(ok[arm] & finite)

    return jax.lax.fori_loop(0, tile_end[-1], visit, (cov_sqrt, mean, jnp.ones((k,), bool)))


def single_row_sqrt_update(cov_sqrt: Array, mean: Array, x: Array, r: Array, arm: Array,
                           valid: Array) -> tuple[Array, Array, Array]:
    """The rank-1 Potter step for one row (per-batch routing), without slicing an arm out.

    XLA:CPU copies a dynamically sliced d x d arm before a matvec (measured 43 ms at
    d=4096) but reads the whole stack in 5.5 ms, so: R x for every arm, pick the
    pulled one; y = R^T u as one vector-matrix product over the flattened stack with u
    placed in the pulled arm's block; then one fused masked pass adds the update.
    One row has no collinearity to lose, so Potter's rank-1 form is exact here; the
    mean moves by Sigma x e / (1 + x Sigma x) = y e / s^2.
    Returns R', mu' and [K] bool: the step was finite (else the arm is left as it was).
    """
    k, d, _ = cov_sqrt.shape
    pulled = jnp.clip(arm, 0, k - 1)
    u = base.einsum("kde,e->kd", cov_sqrt, x)[pulled]
    hot = jnp.where(valid, jax.nn.one_hot(arm, k, dtype=cov_sqrt.dtype), 0.0)
    y = base.matmul((hot[:, None] * u[None]).reshape(-1), cov_sqrt.reshape(k * d, d))
    s2 = 1.0 + base.matmul(u, u)
    s = jnp.sqrt(s2)
    w = -1.0 / (s * (s + 1.0))
    step_mean = y * ((r - base.matmul(x, mean[pulled])) / s2)
    finite = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(y)) & jnp.all(jnp.isfinite(step_mean))
    hot = jnp.where(finite, hot, 0.0)
    delta = (hot * w)[:, None, None] * (u[:, None] * y[None, :])[None]
    ok = jnp.where(jnp.arange(k) == arm, finite, True)
    return (cov_sqrt + jnp.where(hot[:, None, None] > 0, delta, 0.0),    # other arms stay bit-exact
            mean + jnp.where(hot[:, None] > 0, step_mean[None], 0.0), ok)


def update_linear(state: LinearState, contexts: Array, arms: Array, rewards: Array,
                  noise_var: float = 1.0, tile: int = 8) -> LinearState:
    k, d = state.arms.mean.shape
    contexts, arms, rewards = base.check_update_inputs(contexts, arms, rewards, k, d)
    dtype = state.arms.mean.dtype
    contexts = contexts.astype(dtype)
    valid = base.valid_rows(contexts, arms, rewards, k)
    onehot = base.pulled_one_hot(arms, valid, k, dtype)
    scale = 1.0 / jnp.sqrt(jnp.asarray(noise_var, dtype))     # r = w.x + N(0, s2)  <=>  r/s = w.(x/s) + N(0, 1)
    safe_x = jnp.where(valid[:, None], contexts, 0.0) * scale
    safe_r = jnp.where(valid, rewards, 0.0).astype(dtype) * scale
    tile = max(1, min(tile, contexts.shape[0]))
    a = state.arms
    cov_sqrt, mean, ok = (
        single_row_sqrt_update(a.cov_sqrt, a.mean, safe_x[0], safe_r[0], arms[0], valid[0])
        if contexts.shape[0] == 1 else
        grouped_sqrt_update(a.cov_sqrt, a.mean, safe_x, safe_r, arms, valid, tile))
    new = LinearState(
        arms=a._replace(cov_sqrt=cov_sqrt, mean=mean, pulls=a.pulls + jnp.sum(onehot, axis=0).astype(jnp.int32)),
        skipped=base.count_skipped(state.skipped, valid, arms))
    return base.reject_non_finite(state, new, arms, valid, ok)


def linucb(alpha: float = 0.5, init_b: str = "random", tile: int = 8) -> base.Bandit:
    """LinUCB with disjoint arms, A_k(0) = I (LASeR, Sec. 3.2).

    ``init_b``: "random" draws b_k(0) ~ N(0, 1/d) as the paper's random
    initialisation (it breaks the first ties between arms), "zero" starts at 0.
    ``scores`` are the UCBs c^T theta_k + alpha sqrt(c^T A_k^{-1} c).
    """
    base.check_number("alpha", alpha, low=0)
    base.check_number("tile", tile, low=1, integer=True)
    if init_b not in ("random", "zero"):
        raise ValueError(f"init_b must be 'random' or 'zero', got {init_b!r}")

    def init(key, num_arms, dim):
        num_arms, dim = base.check_shape_args(num_arms, dim)
        mean = (jax.random.normal(key, (num_arms, dim)) / jnp.sqrt(dim)
                if init_b == "random" else None)
        return init_linear(key, num_arms, dim, 1.0, mean)

    def select(state, contexts, key):
        del key
        contexts = base.check_contexts(contexts, state.arms.mean.shape[1])
        mean, var = moments(state, contexts.astype(state.arms.mean.dtype))
        scores = mean + alpha * jnp.sqrt(jnp.maximum(var, 0.0))
        return base.argmax_finite(scores), scores

    def update(state, contexts, arms, rewards):
        return update_linear(state, contexts, arms, rewards, 1.0, tile)

    return base.Bandit(init, select, update)


def linear_thompson(prior_var: float = 1.0, noise_var: float = 1.0,
                    prior_mean: Array | None = None, tile: int = 8) -> base.Bandit:
    """Bayesian linear Thompson sampling (BayesianRouter, Sec. 3 online router).

    Prior w_k ~ N(prior_mean[k], prior_var I) (paper: prior_mean = E_bt, prior_var
    0.02, noise_var 1; without the offline router: zero mean, prior_var 1).
    ``select`` draws a fresh w_k per row and arm and returns h^T w_k as ``scores``.
    Only the scalar h^T w_k is ever used, and for w ~ N(mu, Sigma) it is distributed
    N(h^T mu, h^T Sigma h), so we sample that scalar directly: the same law as
    sampling w, without a d x d Cholesky per arm and row.
    """
    base.check_number("prior_var", prior_var, low=0, low_open=True)
    base.check_number("noise_var", noise_var, low=0, low_open=True)
    base.check_number("tile", tile, low=1, integer=True)
    if prior_mean is not None and not np.all(np.isfinite(np.asarray(prior_mean))):
        raise ValueError("prior_mean contains NaN or inf; check the offline router's BT head")

    def init(key, num_arms, dim):
        num_arms, dim = base.check_shape_args(num_arms, dim)
        if prior_mean is not None and jnp.shape(prior_mean) not in ((num_arms, dim), (dim,)):
            raise ValueError(f"prior_mean has shape {jnp.shape(prior_mean)}; expected "
                             f"({num_arms}, {dim}) or ({dim},)")
        return init_linear(key, num_arms, dim, prior_var, prior_mean)

    def select(state, contexts, key):
        contexts = base.check_contexts(contexts, state.arms.mean.shape[1])
        mean, var = moments(state, contexts.astype(state.arms.mean.dtype))
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        scores = mean + jnp.sqrt(jnp.maximum(var, 0.0)) * noise
        return base.argmax_finite(scores), scores

    def update(state, contexts, arms, rewards):
        return update_linear(state, contexts, arms, rewards, noise_var, tile)

    return base.Bandit(init, select, update)
