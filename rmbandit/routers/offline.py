"""BayesianRouter's offline router, as arrays: the pair head, its multi-task loss, and
how well its picks do.

A labelled pair's two encodings e = Enc(x || y), e' = Enc(x || y') [N, D] become one
feature h = MLP([e + e'; |e - e'|]) [N, d] (one Dense layer and a GELU: the paper's
single-layer MLP; symmetric in y and y', so the router need not know which response is
better).  Two heads read h:

- BT head E_bt [K, d]: s^n = <h, E_bt[n]>, the ability of RM n on this pair.  On every
  disagreement sample (delta^n = 1, delta^n' = 0) L_bt = -mean log sigmoid(s^n - s^n').
- CLS head E_cls [K, d]: z^n = <h, E_cls[n]>, L_cls = BCE(sigmoid(z^n), delta^n) over all
  (i, n).

The loss is L_bt + lambda L_cls (lambda = 0.2).  The router picks argmax_n s^n; E_bt is
the online router's prior mean, h its context.

The Dense layer's input is standardised per feature with the training pairs' mean and
std (``input_norm``, a variable collection outside ``params``, so no gradient or weight
decay touches it).  An LM's hidden states have norms in the hundreds and share a large
common direction; standardising removes it, so a freshly initialised layer starts with
O(1) pre-activations.  It is an affine map the Dense layer could absorb, so the model is
the paper's; only the optimisation is better conditioned.

    variables = init_head(key, e, e2, num_rms=K, dim=64)   # input_norm fitted on (e, e2)
    loss, metrics = head_loss(variables, e, e2, delta)
    h, s = features(variables, e, e2), bt_scores(variables, e, e2)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
LAMBDA_CLS = 0.2


def pair_input(e: Array, e2: Array) -> Array:
    """[e + e'; |e - e'|] [N, 2D]: the same for (y, y') and (y', y)."""
    return jnp.concatenate([e + e2, jnp.abs(e - e2)], axis=-1)


class PairHead(nn.Module):
    """h = gelu(Dense((pair_input - mean) / std)); BT and CLS embeddings per RM."""
    embed_dim: int           # D of e and e'
    num_rms: int
    dim: int = 64

    def setup(self):
        self.mean = self.variable("input_norm", "mean", jnp.zeros, (2 * self.embed_dim,), jnp.float32)
        self.std = self.variable("input_norm", "std", jnp.ones, (2 * self.embed_dim,), jnp.float32)
        self.fuse = nn.Dense(self.dim, name="fuse")
        init = nn.initializers.normal(self.dim ** -0.5)          # s, z start O(1) for O(1) h
        self.bt = self.param("bt", init, (self.num_rms, self.dim))
        self.cls = self.param("cls", init, (self.num_rms, self.dim))

    def features(self, e: Array, e2: Array) -> Array:
        return nn.gelu(self.fuse((pair_input(e, e2) - self.mean.value) / self.std.value))

    def __call__(self, e: Array, e2: Array) -> tuple[Array, Array, Array]:
        """(h [N, d], BT scores s [N, K], CLS logits z [N, K])."""
        h = self.features(e, e2)
        return h, h @ self.bt.T, h @ self.cls.T


def input_norm(e, e2) -> dict:
    """Per-feature mean and std of ``pair_input`` over the training pairs, computed in
    float64 (a float32 mean of values in the hundreds loses the small spread)."""
    x = np.concatenate([np.asarray(e, np.float64) + np.asarray(e2, np.float64),
                        np.abs(np.asarray(e, np.float64) - np.asarray(e2, np.float64))], axis=-1)
    std = x.std(0)
    std = np.where(std > 1e-6 * max(float(std.max(initial=0.0)), 1e-30), std, 1.0)   # constant features: as they are
    return {"mean": jnp.asarray(x.mean(0), jnp.float32), "std": jnp.asarray(std, jnp.float32)}


def init_head(key: Array, e, e2, num_rms: int, dim: int = 64) -> dict:
    """The head's variables {"params", "input_norm"}, the norm fitted on the training
    embeddings ``e``, ``e2`` [N, D]."""
    if num_rms < 2:
        raise ValueError(f"the offline router picks among RMs: it needs at least 2, got {num_rms}")
    embed_dim = np.shape(e)[-1]
    dummy = jnp.zeros((1, embed_dim), jnp.float32)
    variables = PairHead(embed_dim, num_rms, dim).init(key, dummy, dummy)
    return {"params": variables["params"], "input_norm": input_norm(e, e2)}


def head_module(variables) -> PairHead:
    num_rms, dim = variables["params"]["bt"].shape
    return PairHead(variables["input_norm"]["mean"].shape[0] // 2, num_rms, dim)


def apply_head(variables, e: Array, e2: Array) -> tuple[Array, Array, Array]:
    return head_module(variables).apply(variables, e, e2)


def features(variables, e: Array, e2: Array) -> Array:
    """h [N, d]: what the online router routes on."""
    return head_module(variables).apply(variables, e, e2, method=PairHead.features)


def bt_scores(variables, e: Array, e2: Array) -> Array:
    """s [N, K]: each RM's ability on each pair; the router picks the argmax."""
    return apply_head(variables, e, e2)[1]


def prior_mean(variables) -> Array:
    """E_bt [K, d]: the online router's prior mean (mu_n(0) = E_bt[n])."""
    return variables["params"]["bt"]


def bt_loss(scores: Array, delta: Array, weights: Array | None = None) -> tuple[Array, Array]:
    """(-mean log sigmoid(s^n - s^n') over disagreement samples, their count).  0, not
    NaN, when the batch has none (every RM right, or every RM wrong, on every pair)."""
    delta = delta.astype(scores.dtype)
    mask = delta[:, :, None] * (1 - delta[:, None, :])            # [N, n, n']: n right, n' wrong
    if weights is not None:
        mask = mask * weights[:, None, None]
    count = jnp.sum(mask)
    nll = -jax.nn.log_sigmoid(scores[:, :, None] - scores[:, None, :])
    return jnp.sum(nll * mask) / jnp.maximum(count, 1.0), count


def cls_loss(logits: Array, delta: Array, weights: Array | None = None) -> Array:
    """Mean BCE(sigmoid(z^n), delta^n) over all (i, n) (rows weighted by ``weights``)."""
    per = optax.sigmoid_binary_cross_entropy(logits, delta.astype(logits.dtype))
    if weights is None:
        return jnp.mean(per)
    return jnp.sum(per * weights[:, None]) / jnp.maximum(jnp.sum(weights) * per.shape[1], 1.0)


def head_loss(variables, e: Array, e2: Array, delta: Array, weights: Array | None = None,
              lambda_cls: float = LAMBDA_CLS) -> tuple[Array, dict]:
    """L_bt + lambda L_cls for embeddings [N, D] and behaviour labels delta [N, K] (1: RM
    n labels pair i as the ground truth does); ``weights`` [N] (0 for padding rows).
    Returns (loss, metrics)."""
    _, scores, logits = apply_head(variables, e, e2)
    l_bt, pairs = bt_loss(scores, delta, weights)
    l_cls = cls_loss(logits, delta, weights)
    return l_bt + lambda_cls * l_cls, {"l_bt": l_bt, "l_cls": l_cls, "bt_pairs": pairs}


# ---- how good the picks are (NumPy) ---------------------------------------------------

def routing_accuracy(choice, delta, solvable_only: bool = True) -> float:
    """Share of pairs whose picked RM ``choice`` [N] labels them correctly; with
    ``solvable_only`` only pairs some RM gets right count (the paper's ID/OOD table)."""
    delta = np.asarray(delta, bool)
    rows = delta.any(1) if solvable_only else np.ones(len(delta), bool)
    if not rows.any():
        return float("nan")
    return float(delta[np.arange(len(delta)), np.asarray(choice)][rows].mean())


def baseline_accuracies(train_delta, delta, solvable_only: bool = True) -> dict[str, float]:
    """The routers the offline router must beat: ``best_rm`` (always the RM most often
    right on the training pairs), ``random`` (a uniformly random RM per pair: the mean over
    RMs of delta), ``oracle`` (an RM that is right whenever one is)."""
    delta = np.asarray(delta, bool)
    rows = delta.any(1) if solvable_only else np.ones(len(delta), bool)
    best = int(np.argmax(np.asarray(train_delta, bool).mean(0)))
    if not rows.any():
        return {"best_rm": float("nan"), "random": float("nan"), "oracle": float("nan")}
    return {"best_rm": float(delta[rows, best].mean()), "random": float(delta[rows].mean()),
            "oracle": float(delta[rows].any(1).mean())}
