"""NeuralUCB (Zhou et al. 2020), LASeR's ablation: one MLP per arm (d -> 256 -> 128 -> 1,
ReLU) predicts the reward; exploration uses gradient features g = d f / d theta:

    score_k(c) = f_k(c) + alpha * sqrt(sum_j g_j^2 / Z_kj),   Z_k <- Z_k + g^2 per pulled row

with the diagonal approximation of Z = lambda I + sum g g^T used by the reference
implementation (a full P x P matrix is out of reach at P ~ 2e5).  After each update the
pulled arms take ``train_steps`` full-batch gradient steps on their (bounded) replay
buffer of (context, reward), loss 0.5 mean (f - r)^2 + 0.5 weight_decay |theta - theta_0|^2.
All per-arm parameters are stacked on the arm axis and trained with vmap over arms.
Contexts enter the MLP scaled to unit norm, as Zhou et al. assume (||x|| = 1): LM hidden
states have norms in the hundreds, and on those a fixed-step gradient descent diverges in
one update.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.bandits import base

Array = jax.Array


class NeuralArms(NamedTuple):
    params: dict           # MLP weights, each leaf [K, ...]
    init_params: dict      # theta_0 (regularisation target)
    z_diag: dict           # diagonal of Z, same structure as params
    buffer_x: Array        # [K, H, d] replay buffer of contexts (ring)
    buffer_r: Array        # [K, H]
    pulls: Array           # [K] int32 (also the ring cursor)


class NeuralState(NamedTuple):
    arms: NeuralArms
    skipped: Array


def init_mlp(key: Array, sizes: tuple[int, ...]) -> dict:
    """He-normal hidden layers, 1/fan_in output layer, zero biases."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        scale = jnp.sqrt((2.0 if i < len(sizes) - 2 else 1.0) / fan_in)
        params[f"w{i}"] = scale * jax.random.normal(keys[i], (fan_in, fan_out))
        params[f"b{i}"] = jnp.zeros((fan_out,))
    return params


def mlp(params: dict, x: Array) -> Array:
    """Scalar prediction for one context x [d]."""
    layers = len(params) // 2
    for i in range(layers):
        x = base.matmul(x, params[f"w{i}"]) + params[f"b{i}"]
        if i < layers - 1:
            x = jax.nn.relu(x)
    return x[0]


def unit_rows(contexts: Array) -> Array:
    """Each context row scaled to norm 1 (a zero row stays zero)."""
    norm = jnp.linalg.norm(contexts, axis=-1, keepdims=True)
    return contexts / jnp.where(norm > 0, norm, 1.0)


def _ucb_one_arm(params, z_diag, contexts, alpha, chunk):
    def one(x):
        value, grads = jax.value_and_grad(mlp)(params, x)
        var = sum(jnp.sum(g * g / z) for g, z in zip(jax.tree.leaves(grads), jax.tree.leaves(z_diag)))
        return value, var

    value, var = jax.lax.map(one, contexts, batch_size=chunk)
    return value + alpha * jnp.sqrt(var), value


def neural_ucb(hidden: tuple[int, ...] = (256, 128), alpha: float = 1.0, reg: float = 1.0,
               learning_rate: float = 0.01, train_steps: int = 10, buffer_size: int = 256,
               weight_decay: float = 1e-3, chunk: int = 8) -> base.Bandit:
    """NeuralUCB; ``scores`` are the UCBs, ``chunk`` rows are differentiated at once
    (memory K * chunk * P floats)."""
    if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty tuple of positive layer widths, got {hidden!r}")
    base.check_number("alpha", alpha, low=0)
    base.check_number("reg", reg, low=0, low_open=True)
    base.check_number("learning_rate", learning_rate, low=0, low_open=True)
    base.check_number("train_steps", train_steps, low=0, integer=True)
    base.check_number("buffer_size", buffer_size, low=1, integer=True)
    base.check_number("weight_decay", weight_decay, low=0)
    base.check_number("chunk", chunk, low=1, integer=True)

    def init(key, num_arms, dim):
        num_arms, dim = base.check_shape_args(num_arms, dim)
        params = jax.vmap(lambda k: init_mlp(k, (dim, *hidden, 1)))(jax.random.split(key, num_arms))
        return NeuralState(
            arms=NeuralArms(
                params=params, init_params=jax.tree.map(jnp.array, params),   # no aliasing: donatable
                z_diag=jax.tree.map(lambda p: jnp.full_like(p, reg), params),
                buffer_x=jnp.zeros((num_arms, buffer_size, dim)),
                buffer_r=jnp.zeros((num_arms, buffer_size)),
                pulls=jnp.zeros((num_arms,), jnp.int32)),
            skipped=jnp.zeros((), jnp.int32))

    def select(state, contexts, key):
        del key
        a = state.arms
        contexts = unit_rows(base.check_contexts(contexts, a.buffer_x.shape[2]).astype(jnp.float32))
        ucb, _ = jax.vmap(_ucb_one_arm, in_axes=(0, 0, None, None, None))(
            a.params, a.z_diag, contexts, alpha, chunk)
        return base.argmax_finite(ucb.T), ucb.T

    def train_arm(params, init_params, xs, rs, count, pulled):
        n = jnp.minimum(count, buffer_size)
        mask = (jnp.arange(buffer_size) < n).astype(jnp.float32)

        def loss(p):
            err = jax.vmap(mlp, in_axes=(None, 0))(p, xs) - rs
            drift = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(init_params)))
            return 0.5 * jnp.sum(mask * err ** 2) / jnp.maximum(n, 1) + 0.5 * weight_decay * drift

        def step(p, _):
            return jax.tree.map(lambda w, g: w - learning_rate * g, p, jax.grad(loss)(p)), None

        trained, _ = jax.lax.scan(step, params, None, length=train_steps)
        return jax.tree.map(lambda t, p: jnp.where(pulled, t, p), trained, params)

    def update(state, contexts, arms, rewards):
        a = state.arms
        k, h, d = a.buffer_x.shape
        contexts, arms, rewards = base.check_update_inputs(contexts, arms, rewards, k, d)
        contexts = contexts.astype(jnp.float32)
        valid = base.valid_rows(contexts, arms, rewards, k)
        contexts = unit_rows(contexts)
        onehot = base.pulled_one_hot(arms, valid, k)
        safe_arm = jnp.clip(arms, 0, k - 1)
        row_params = jax.tree.map(lambda p: p[safe_arm], a.params)
        grads = jax.vmap(jax.grad(mlp))(row_params, jnp.where(valid[:, None], contexts, 0.0))
        z_diag = jax.tree.map(lambda z, g: z + base.einsum("bk,b...->k...", onehot, g * g), a.z_diag, grads)
        # ring-buffer slot of each row: the arm's pull count plus its rank among this call's rows
        rank = jnp.sum(jnp.cumsum(onehot, axis=0) * onehot, axis=1).astype(jnp.int32) - 1
        slot = (a.pulls[safe_arm] + rank) % h
        row_arm = jnp.where(valid, safe_arm, k)                  # out of bounds -> dropped
        buffer_x = a.buffer_x.at[row_arm, slot].set(contexts, mode="drop")
        buffer_r = a.buffer_r.at[row_arm, slot].set(rewards.astype(jnp.float32), mode="drop")
        pulls = a.pulls + jnp.sum(onehot, 0).astype(jnp.int32)
        params = jax.vmap(train_arm)(a.params, a.init_params, buffer_x, buffer_r, pulls, pulls > a.pulls)
        new = NeuralState(
            arms=a._replace(params=params, z_diag=z_diag, buffer_x=buffer_x, buffer_r=buffer_r, pulls=pulls),
            skipped=base.count_skipped(state.skipped, valid, arms))
        return base.reject_non_finite(state, new, arms, valid)

    return base.Bandit(init, select, update)
