"""Linear-Gaussian bandits: LinUCB (LASeR) and Bayesian linear Thompson sampling
(BayesianRouter's online router).  Both keep, per arm k, a Gaussian posterior over
the weights of r = w_k^T c + eps, eps ~ N(0, noise_var):

    precision  A_k = Sigma_k^{-1} = A_k(0) + (1/noise_var) sum c c^T
    information vector  b_k = A_k mu_k = b_k(0) + (1/noise_var) sum r c

LinUCB is the special case noise_var = 1, A_k(0) = I (Li et al. 2010):
theta_k = A_k^{-1} b_k, score = c^T theta_k + alpha sqrt(c^T A_k^{-1} c).

Numerics.  A float32 inverse updated by Sherman-Morrison loses positive
definiteness once cond(A) passes ~1e7 (measured: NaN after ~12k rank-1 steps of
anisotropic LM-like contexts, symmetrising does not help).  We therefore keep a
square root R_k with Sigma_k = R_k^T R_k and update it with a blocked Potter
(square-root Kalman) step: cond(R) = sqrt(cond(Sigma)) and Sigma stays symmetric
positive semi-definite by construction, at the cost of one GEMM more than
Woodbury.  No d x d inverse is ever formed during select or update.

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

from rmbandit.bandits import base

Array = jax.Array


class LinearArms(NamedTuple):
    cov_sqrt: Array        # [K, d, d]  R with Sigma = R^T R
    info: Array            # [K, d]     b = Sigma^{-1} mu (LinUCB's b_k)
    prior_mean: Array      # [K, d]     mu(0), kept for forgetting toward the prior
    prior_var: Array       # [K]        isotropic prior variance, Sigma(0) = prior_var * I
    pulls: Array           # [K] int32


class LinearState(NamedTuple):
    arms: LinearArms
    skipped: Array         # int32 count of rows dropped as invalid inside jit


def covariance(state: LinearState) -> Array:
    """Sigma_k = R_k^T R_k, [K, d, d] (for inspection and tests; O(K d^3))."""
    r = state.arms.cov_sqrt
    return jnp.einsum("kij,kil->kjl", r, r)


def posterior_mean(arms: LinearArms) -> Array:
    """mu_k = Sigma_k b_k = R^T (R b), [K, d]."""
    return jax.vmap(lambda r, b: (r @ b) @ r)(arms.cov_sqrt, arms.info)


def _arm_moments(cov_sqrt: Array, info: Array, contexts: Array) -> tuple[Array, Array]:
    """One arm: predictive mean c^T mu and variance c^T Sigma c for every row.

    Both come from R applied to the rows and to b: c^T Sigma c = |R c|^2 and
    c^T mu = c^T R^T R b = (R c) . (R b), so R is never transposed.  With few rows the
    products are memory-bound, so b rides along as one more column (R is read once:
    d=4096, one row, 7 ms vs 11 ms); with many rows they are compute-bound and R c is
    kept apart, since contexts shared by all arms let XLA run one flat GEMM
    (d=768, 64 rows: 1.7 ms vs 2.5 ms).
    """
    if contexts.shape[0] < 8:
        both = jnp.einsum("de,be->db", cov_sqrt, jnp.concatenate([contexts, info[None]]))
        rc, rb = both[:, :-1], both[:, -1]
    else:
        rc, rb = jnp.einsum("de,be->db", cov_sqrt, contexts), cov_sqrt @ info
    return rb @ rc, jnp.sum(rc * rc, axis=0)


def moments(state: LinearState, contexts: Array) -> tuple[Array, Array]:
    """Predictive mean and variance of every arm for every row, each [B, K]."""
    mean, var = jax.vmap(_arm_moments, in_axes=(0, 0, None))(
        state.arms.cov_sqrt, state.arms.info, contexts)
    return mean.T, var.T


def init_linear(key: Array, num_arms: int, dim: int, prior_var: float = 1.0,
                prior_mean: Array | None = None, dtype=jnp.float32) -> LinearState:
    """Posterior = prior N(prior_mean, prior_var * I) for every arm."""
    del key
    if prior_mean is None:
        prior_mean = jnp.zeros((num_arms, dim), dtype)
    prior_mean = jnp.broadcast_to(jnp.asarray(prior_mean, dtype), (num_arms, dim))
    var = jnp.full((num_arms,), prior_var, dtype)
    eye = jnp.eye(dim, dtype=dtype)
    return LinearState(
        arms=LinearArms(
            cov_sqrt=jnp.sqrt(var)[:, None, None] * eye,
            info=prior_mean / var[:, None],
            prior_mean=prior_mean,
            prior_var=var,
            pulls=jnp.zeros((num_arms,), jnp.int32)),
        skipped=jnp.zeros((), jnp.int32))


def sqrt_update(cov_sqrt: Array, x: Array) -> Array:
    """Blocked Potter step for one arm: rows x [n, d] (noise-scaled), R -> R'.

    With Phi = R x^T, G = Phi^T Phi and the Cholesky factor I + G = L L^T,
    R' = (I + Phi W Phi^T) R with W = -(L^T + I)^{-1} L^{-1}.  Then
    R'^T R' = Sigma - Sigma x^T (I + x Sigma x^T)^{-1} x Sigma, the posterior
    covariance (W + W^T + W^T G W = -(I + G)^{-1}; for n = 1, W = -1/(s(s+1)),
    s = sqrt(1 + |Phi|^2), Potter's rank-1 form).  Zero rows of x (padding) leave R
    unchanged.  An n x n Cholesky is a third of the cost of the eigh it replaces.
    """
    n = x.shape[0]
    eye = jnp.eye(n, dtype=cov_sqrt.dtype)
    phi_t = jnp.einsum("de,ne->nd", cov_sqrt, x)              # Phi^T, [n, d]
    chol = jnp.linalg.cholesky(eye + phi_t @ phi_t.T)
    l_inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    w = -jax.scipy.linalg.solve_triangular(chol.T + eye, l_inv, lower=False)   # [n, n]
    y = phi_t @ cov_sqrt                                       # Phi^T R, [n, d]
    return cov_sqrt + phi_t.T @ (w @ y)


def grouped_sqrt_update(cov_sqrt: Array, x: Array, arms: Array, valid: Array, tile: int) -> Array:
    """Apply each arm's rows to that arm's R only, ``tile`` rows at a time.

    Rows are sorted by arm; each arm's rows are cut into ceil(n_k / tile) tiles and a
    while loop visits just the tiles that exist, so unpulled arms cost nothing.
    Sequential tiles of one arm compose exactly (Bayesian updates are associative).
    """
    k, d, _ = cov_sqrt.shape
    key = jnp.where(valid, arms, k)                 # invalid rows sort past the last arm
    order = jnp.argsort(key, stable=True)
    rows = jnp.concatenate([x[order], jnp.zeros((tile, d), x.dtype)])
    counts = jnp.bincount(key, length=k + 1)[:k]
    row_start = jnp.cumsum(counts) - counts
    tiles = (counts + tile - 1) // tile
    tile_end = jnp.cumsum(tiles)
    tile_start = tile_end - tiles

    def visit(j, r):
        arm = jnp.searchsorted(tile_end, j, side="right")
        local = j - tile_start[arm]
        n_rows = counts[arm] - local * tile
        block = jax.lax.dynamic_slice_in_dim(rows, row_start[arm] + local * tile, tile)
        block = jnp.where((jnp.arange(tile) < n_rows)[:, None], block, 0.0)
        return r.at[arm].set(sqrt_update(r[arm], block))

    return jax.lax.fori_loop(0, tile_end[-1], visit, cov_sqrt)


def single_row_sqrt_update(cov_sqrt: Array, x: Array, arm: Array, valid: Array) -> Array:
    """The rank-1 Potter step for one row (per-batch routing), without slicing an arm out.

    XLA:CPU copies a dynamically sliced d x d arm before a matvec (measured 43 ms at
    d=4096) but reads the whole stack in 5.5 ms, so: R x for every arm, pick the
    pulled one; u^T R as one vector-matrix product over the flattened stack with u
    placed in the pulled arm's block; then one fused masked pass adds the update.
    """
    k, d, _ = cov_sqrt.shape
    u = jnp.einsum("kde,e->kd", cov_sqrt, x)[jnp.clip(arm, 0, k - 1)]
    hot = jnp.where(valid, jax.nn.one_hot(arm, k, dtype=cov_sqrt.dtype), 0.0)
    y = (hot[:, None] * u[None]).reshape(-1) @ cov_sqrt.reshape(k * d, d)
    s = jnp.sqrt(1.0 + u @ u)
    w = -1.0 / (s * (s + 1.0))
    delta = (hot * w)[:, None, None] * (u[:, None] * y[None, :])[None]
    return cov_sqrt + jnp.where(hot[:, None, None] > 0, delta, 0.0)   # other arms stay bit-exact


def update_linear(state: LinearState, contexts: Array, arms: Array, rewards: Array,
                  noise_var: float = 1.0, tile: int = 16) -> LinearState:
    k, d = state.arms.info.shape
    contexts, arms, rewards = base.check_update_inputs(contexts, arms, rewards, k, d)
    dtype = state.arms.info.dtype
    contexts = contexts.astype(dtype)
    valid = base.valid_rows(contexts, arms, rewards, k)
    onehot = base.pulled_one_hot(arms, valid, k, dtype)
    safe_x = jnp.where(valid[:, None], contexts, 0.0)
    safe_r = jnp.where(valid, rewards, 0.0).astype(dtype)
    scale = 1.0 / jnp.sqrt(jnp.asarray(noise_var, dtype))
    tile = max(1, min(tile, contexts.shape[0]))
    a = state.arms
    return LinearState(
        arms=a._replace(
            cov_sqrt=(single_row_sqrt_update(a.cov_sqrt, safe_x[0] * scale, arms[0], valid[0])
                      if contexts.shape[0] == 1 else
                      grouped_sqrt_update(a.cov_sqrt, safe_x * scale, arms, valid, tile)),
            info=a.info + onehot.T @ (safe_x * safe_r[:, None]) / noise_var,
            pulls=a.pulls + jnp.sum(onehot, axis=0).astype(jnp.int32)),
        skipped=base.count_skipped(state.skipped, valid))


def linucb(alpha: float = 0.5, init_b: str = "random", tile: int = 16) -> base.Bandit:
    """LinUCB with disjoint arms, A_k(0) = I (LASeR, Sec. 3.2).

    ``init_b``: "random" draws b_k(0) ~ N(0, 1/d) as the paper's random
    initialisation (it breaks the first ties between arms), "zero" starts at 0.
    ``scores`` are the UCBs c^T theta_k + alpha sqrt(c^T A_k^{-1} c).
    """
    if init_b not in ("random", "zero"):
        raise ValueError(f"init_b must be 'random' or 'zero', got {init_b!r}")

    def init(key, num_arms, dim):
        mean = (jax.random.normal(key, (num_arms, dim)) / jnp.sqrt(dim)
                if init_b == "random" else None)
        return init_linear(key, num_arms, dim, 1.0, mean)

    def select(state, contexts, key):
        del key
        contexts = base.check_contexts(contexts, state.arms.info.shape[1])
        mean, var = moments(state, contexts.astype(state.arms.info.dtype))
        scores = mean + alpha * jnp.sqrt(jnp.maximum(var, 0.0))
        return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores

    def update(state, contexts, arms, rewards):
        return update_linear(state, contexts, arms, rewards, 1.0, tile)

    return base.Bandit(init, select, update)


def linear_thompson(prior_var: float = 1.0, noise_var: float = 1.0,
                    prior_mean: Array | None = None, tile: int = 16) -> base.Bandit:
    """Bayesian linear Thompson sampling (BayesianRouter, Sec. 3 online router).

    Prior w_k ~ N(prior_mean[k], prior_var I) (paper: prior_mean = E_bt, prior_var
    0.02, noise_var 1; without the offline router: zero mean, prior_var 1).
    ``select`` draws a fresh w_k per row and arm and returns h^T w_k as ``scores``.
    Only the scalar h^T w_k is ever used, and for w ~ N(mu, Sigma) it is distributed
    N(h^T mu, h^T Sigma h), so we sample that scalar directly: the same law as
    sampling w, without a d x d Cholesky per arm and row.
    """

    def init(key, num_arms, dim):
        if prior_mean is not None and jnp.shape(prior_mean) not in ((num_arms, dim), (dim,)):
            raise ValueError(f"prior_mean has shape {jnp.shape(prior_mean)}; expected "
                             f"({num_arms}, {dim}) or ({dim},)")
        return init_linear(key, num_arms, dim, prior_var, prior_mean)

    def select(state, contexts, key):
        contexts = base.check_contexts(contexts, state.arms.info.shape[1])
        mean, var = moments(state, contexts.astype(state.arms.info.dtype))
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        scores = mean + jnp.sqrt(jnp.maximum(var, 0.0)) * noise
        return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores

    def update(state, contexts, arms, rewards):
        return update_linear(state, contexts, arms, rewards, noise_var, tile)

    return base.Bandit(init, select, update)
