"""LASeR's baselines that are routers (ALGORITHMS.md section 2; LASeR Sec. 4.1 and App. A).

- Classifier selection: a 3-layer MLP (2048-1024-K, ReLU) on the prompt embedding, trained
  once on labelled pairs whose label is the RM with the largest correct score margin
  (``best_rm_labels``, ``train_classifier``); ``classifier_router`` routes with it.
- LASeR with Exp3 / NeuralUCB (App. A, Table 9): ``laser_exp3``, ``laser_neural_ucb``, one RM
  per batch with LASeR's loss shaping (reward = -batch loss, 20/80-quantile rescaled).
- Online RM ensemble: every RM labels (``ALL_RMS``); the mixing weights follow multiplicative
  weights over the RMs, updated after each batch (``online_ensemble``).

The single-RM, random and sequential baselines are in ``fixed`` and ``bandit``.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmbandit import bandits
from rmbandit.routers import base
from rmbandit.routers.bandit import bandit_router
from rmbandit.routers.fixed import context_router

GRANULARITIES = ("item", "batch")


# ---------------------------------------------------------------- classifier selection

class RMClassifier(nn.Module):
    """LASeR App. A: "a three-layer MLP with hidden dimensions of 2048 and 1024 and an output
    dimension of K, with ReLU activation" (on the hidden layers; the last gives logits)."""

    num_rms: int
    hidden: tuple[int, ...] = (2048, 1024)

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_rms)(x)


class ClassifierParams(NamedTuple):
    """A trained classifier: the MLP's params and the input standardisation learned with it
    (prompt embeddings of an LM have norms in the hundreds; the MLP sees z-scores)."""

    net: dict
    mean: jax.Array         # [d] mean of the training embeddings
    scale: jax.Array        # [d] their standard deviation (floored)


def layer_widths(params: ClassifierParams) -> tuple[int, ...]:
    """The output width of each Dense layer (hidden..., K), read from the params."""
    layers = params.net["params"]
    return tuple(int(layers[f"Dense_{i}"]["bias"].shape[0]) for i in range(len(layers)))


def best_rm_labels(margins) -> tuple[np.ndarray, np.ndarray]:
    """LASeR's classifier labels -> (labels [N] int32, keep [N] bool).

    ``margins`` [N, K]: score(chosen) - score(rejected) of RM k on labelled pair n (NaN: the
    RM gave no score).  The label is the RM that orders the pair correctly (margin > 0)
    with the largest margin; a pair no RM orders correctly has no label (keep False)."""
    margins = np.asarray(margins, np.float64)
    if margins.ndim != 2 or margins.shape[1] < 1:
        raise ValueError(f"best_rm_labels needs margins [pairs, RMs], got shape {margins.shape}")
    correct = np.where(np.isfinite(margins) & (margins > 0), margins, -np.inf)
    return np.argmax(correct, axis=1).astype(np.int32), np.isfinite(correct).any(axis=1)


def classifier_logits(params: ClassifierParams, contexts) -> jax.Array:
    *hidden, k = layer_widths(params)
    z = (jnp.asarray(contexts, jnp.float32) - params.mean) / params.scale
    return RMClassifier(k, tuple(hidden)).apply(params.net, z)


def train_classifier(key, embeddings, labels, num_rms: int, *, hidden: tuple[int, ...] = (2048, 1024),
                     epochs: int = 20, batch_size: int = 64, learning_rate: float = 1e-3,
                     weight_decay: float = 1e-4) -> tuple[ClassifierParams, np.ndarray]:
    """Train the RM classifier with AdamW on softmax cross-entropy -> (params, loss per epoch).

    ``embeddings`` [N, d]: prompt embeddings (the same featuriser the router will see);
    ``labels`` [N]: the RM index of each (``best_rm_labels``, its kept rows).  Each epoch
    visits the examples in a fresh random order, in minibatches of ``batch_size`` (the few
    left over by the last full minibatch wait for another epoch's order)."""
    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"train_classifier needs embeddings [N, d] and labels [N] with N >= 1, got "
                         f"{x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_rms:
        raise ValueError(f"labels must be RM indices in [0, {num_rms}), got values "
                         f"{np.unique(y)[:8].tolist()} of dtype {y.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf; fix the featuriser before training the classifier")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        bandits.base.check_number(name, value, low=1, integer=True)
    bandits.base.check_number("learning_rate", learning_rate, low=0, low_open=True)
    mean, scale = x.mean(0), np.maximum(x.std(0), 1e-6)
    model = RMClassifier(num_rms, tuple(hidden))
    init_key, order_key = jax.random.split(key)
    net = model.init(init_key, jnp.zeros((1, x.shape[1])))
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
    opt_state = optimizer.init(net)
    z = jnp.asarray((x - mean) / scale)
    y = jnp.asarray(y, jnp.int32)
    batch_size = min(batch_size, x.shape[0])
    steps = x.shape[0] // batch_size

    @jax.jit
    def epoch(net, opt_state, key):
        def step(carry, rows):
            net, opt_state = carry

            def loss_fn(p):
                logits = model.apply(p, z[rows])
                return optax.softmax_cross_entropy_with_integer_labels(logits, y[rows]).mean()

            loss, grads = jax.value_and_grad(loss_fn)(net)
            updates, opt_state = optimizer.update(grads, opt_state, net)
            return (optax.apply_updates(net, updates), opt_state), loss

        order = jax.random.permutation(key, z.shape[0])[:steps * batch_size].reshape(steps, batch_size)
        (net, opt_state), losses = jax.lax.scan(step, (net, opt_state), order)
        return net, opt_state, losses.mean()

    history = []
    for epoch_key in jax.random.split(order_key, epochs):
        net, opt_state, loss = epoch(net, opt_state, epoch_key)
        history.append(float(loss))
    return ClassifierParams(net, jnp.asarray(mean), jnp.asarray(scale)), np.asarray(history)


def classifier_router(params: ClassifierParams, granularity: str = "item") -> base.Router:
    """Route with a trained RM classifier; it learns nothing online.

    LASeR: "for each input x_i, we select the RM for building preference pairs based on this
    trained classifier", so by default each item (prompt) gets the RM its classifier
    predicts ("item").  "batch" gives the whole batch the most frequent per-prompt
    prediction (ties: the lower RM index), for a loop that scores one batch with one RM;
    the mode, not the prediction on the mean embedding, since the MLP is not linear.
    ``scores`` are the classifier's probabilities per item."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    num_rms = layer_widths(params)[-1]
    dim = params.mean.shape[0]

    def check_pool(k, d):
        if (k, d) != (num_rms, dim):
            raise ValueError(f"the classifier was trained for {num_rms} RMs on embeddings of width {dim}; "
                             f"the router was initialised with num_rms={k}, dim={d}: retrain it on this pool "
                             "and featuriser")

    def route(contexts, k):
        scores = jax.nn.softmax(classifier_logits(params, contexts), axis=-1)
        rms = bandits.base.argmax_finite(scores)
        if granularity == "batch":
            rms = jnp.full_like(rms, jnp.argmax(jnp.bincount(rms, length=num_rms)))
        return rms, scores

    return context_router(route, check_pool)


# ---------------------------------------------------------------- LASeR with other bandits

def laser_with(bandit: bandits.Bandit, history: int = 4096) -> base.Router:
    """LASeR's routing and reward with any bandit: one RM per batch chosen on the batch's mean
    context, reward -(batch loss) rescaled by the 20/80 quantiles of the reward history."""
    return bandit_router(bandit, "batch", feedback="loss", rescale=(0.2, 0.8), history=history)


def laser_exp3(gamma: float = 0.1, learning_rate: float = 1.0, history: int = 4096) -> base.Router:
    """LASeR (Exp3), App. A: p = (1 - gamma) softmax(S) + gamma / K, S_k += r_hat / p_k."""
    return laser_with(bandits.exp3(gamma=gamma, learning_rate=learning_rate), history)


def laser_neural_ucb(hidden: tuple[int, ...] = (256, 128), alpha: float = 1.0, history: int = 4096,
                     **options) -> base.Router:
    """LASeR (NeuralUCB), App. A: a 3-layer MLP (hidden 256, 128) per RM predicts the reward;
    ``options`` go to ``bandits.neural_ucb`` (learning_rate, train_steps, buffer_size, ...)."""
    return laser_with(bandits.neural_ucb(hidden=tuple(hidden), alpha=alpha, **options), history)


# ---------------------------------------------------------------- online RM ensemble

def ensemble_rewards(losses) -> jax.Array:
    """Each RM's reward for one batch: -(mean DPO loss of the batch's pairs under its labels).

    ``losses`` [B, K] (``losses_under_labels``; NaN where RM k gave pair i no label) or [K].
    An RM with no loss in the batch gets the mean reward of the others, which leaves its
    mixing weight relative to the average where it was (softmax ignores a common shift)."""
    losses = jnp.asarray(losses, jnp.float32)
    if losses.ndim == 1:
        losses = losses[None]
    known = jnp.isfinite(losses)
    count = jnp.sum(known, axis=0)
    per_rm = -jnp.sum(jnp.where(known, losses, 0.0), axis=0) / jnp.maximum(count, 1)
    has = count > 0
    neutral = jnp.sum(jnp.where(has, per_rm, 0.0)) / jnp.maximum(jnp.sum(has), 1)
    return jnp.where(has, per_rm, neutral)


def online_ensemble(learning_rate: float = 1.0) -> base.Router:
    """LASeR's Online RM Ensemble: every RM labels every item, with mixing weights
    w_k proportional to exp(learning_rate * sum over past batches of RM k's reward)
    (multiplicative weights / Hedge, Arora et al. 2012), updated after each batch.

    The paper says only that the weights are "dynamically updated after each training
    batch using the multiplicative weights algorithm".  Our reward for RM k is the negative
    mean DPO loss of the batch's pairs had RM k labelled them (``ensemble_rewards``), so
    weight moves to the RMs whose labels the policy finds easier to fit, as LASeR's own
    reward does; it is full information (every RM labelled), so every RM is updated.
    ``assignment.scores`` [B, K] are the current weights: the caller labels with the
    weighted mean of the RMs' scores.  ``observe`` takes losses [B, K] or [K]."""
    mw = bandits.multiplicative_weights(learning_rate)

    def init(key, num_rms, dim):
        base.check_init(num_rms, dim)
        return base.RouterState(mw.init(key, num_rms, dim), jnp.zeros((num_rms,), jnp.int32))

    def assign(state, contexts, key):
        contexts = base.check_contexts(contexts)
        items, k = contexts.shape[0], state.counts.shape[0]
        _, weights = mw.select(state.bandit, contexts.mean(0, keepdims=True), key)
        rows = jnp.broadcast_to(contexts.mean(0), (k, contexts.shape[1]))     # one row per RM: full information
        rms = jnp.full((items,), base.ALL_RMS, jnp.int32)
        assignment = base.make_assignment(rms, jnp.broadcast_to(weights, (items, k)), rows,
                                          jnp.arange(k, dtype=jnp.int32), state.bandit.skipped)
        if bandits.base.is_concrete(state, contexts):
            base.check(assignment)
        return state._replace(counts=base.count_labels(state.counts, rms)), assignment

    def reward(state, assignment, losses):
        k = state.counts.shape[0]
        losses = jnp.asarray(losses, jnp.float32)
        if losses.shape[-1:] != (k,) or losses.ndim not in (1, 2):
            raise ValueError(f"online_ensemble observes each RM's loss: [pairs, {k}] (the pairs' DPO losses "
                             f"under each RM's labels, routers.losses_under_labels) or [{k}], got {losses.shape}")
        if bandits.base.is_concrete(losses) and not np.isfinite(np.asarray(losses)).any():
            raise ValueError("online_ensemble got no finite loss for this batch; skip observe for a batch "
                             "that formed no preference pairs")
        return ensemble_rewards(losses)

    def observe(state, assignment, losses):
        rewards = reward(state, assignment, losses)
        return state._replace(bandit=mw.update(state.bandit, assignment.rows, assignment.arms, rewards))

    return base.Router(init, assign, observe, reward)
