"""Llama-family decoder: Llama 3/3.1/3.2 (incl. ``llama3`` RoPE scaling), SmolLM2,
Mistral (sliding window), Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm per head): pre-norm
blocks, grouped-query attention, SwiGLU MLP, RMSNorm.  The family members differ only in
options of the shared layers (``ModelConfig``); Gemma 2, whose block differs, lives in
``gemma2.py`` and reuses ``LlamaModel``'s embedding / cache / head code.
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmbandit.models.config import ModelConfig
from rmbandit.models.layers import (MLP, RESIDUAL, Attention, KVCache, RMSNorm, attention_bias, check_attention_kernel,
                                    dense, gather_real, real_token_index, resolve_precision, rope_tables, softcap,
                                    weight_einsum)

Array = jax.Array


class LlamaBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)).  Norm names are the HF checkpoints'
    (Llama calls its pre-MLP norm ``post_attention_layernorm``)."""
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    precision: Any = None
    attention: str = "blocked"        # layers.ATTENTION_KERNELS

    @nn.compact
    def __call__(self, x, rope, bias, cache=None, index=None, prefix=None, real=None):
        cfg = self.config
        h, kv = Attention(cfg, self.dtype, self.precision, self.attention, name="self_attn")(
            RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="input_layernorm")(x),
            rope, bias, cache, index, prefix, real)
        x = x + h
        h = RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="post_attention_layernorm")(x)
        return x + MLP(cfg, self.dtype, self.precision, name="mlp")(h), kv


class Positions(NamedTuple):
    """What every layer needs to know about where the tokens sit (``token_positions``)."""
    rope: tuple[Array, Array]        # cos, sin of each token's rotary angles [B, T, D / 2]
    biases: dict                     # window -> additive mask [B, 1, T, S] over the layer's own keys
    prefix_biases: dict | None       # window -> [Bp, 1, T, P] over a shared prefix's keys (or None)
    key_valid: Array                 # [B, S] which key slots hold real tokens (the cache's new mask)


def token_positions(cfg: ModelConfig, valid: Array, cache: KVCache | None) -> Positions:
    """RoPE positions and attention masks of the tokens marked real by ``valid`` [B, T],
    alone or appended to ``cache``.

    Positions count only real tokens (left padding gets none, as HF ``generate`` does) and
    go on from the cache's per-row positions.  Masks compare sequence slots instead: for
    real tokens a slot differs from the position by the row's constant padding offset, so
    causality and the window are the same either way."""
    b, t = valid.shape
    count = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    if cache is None:
        positions = count
        query_index = jnp.broadcast_to(jnp.arange(t), (b, t))
        key_index, key_valid = query_index, valid
    else:
        positions = cache.positions[:, None] + count
        key_valid = jax.lax.dynamic_update_slice(cache.mask, valid, (0, cache.index))
        query_index = jnp.broadcast_to(cache.index + jnp.arange(t), (b, t))
        key_index = jnp.broadcast_to(jnp.arange(key_valid.shape[1]), key_valid.shape)
    prefix = None if cache is None else cache.prefix
    # positions stay below the sequence length, or below the cache's slots + its prefix's
    bound = t if cache is None else key_valid.shape[1] + (0 if prefix is None else prefix.mask.shape[1])
    windows = set(layer_windows(cfg))
    biases = {w: attention_bias(query_index, key_index, key_valid, w) for w in windows}
    prefix_biases = None
    if prefix is not None:
        # a shared prompt's slots come before slot 0; masks compare sequence slots, so
        # queries count on from the prompt's width (the same for every row of a prompt)
        width = prefix.mask.shape[1]
        prompt_query = jnp.broadcast_to(width + cache.index + jnp.arange(t), (prefix.mask.shape[0], t))
        prompt_key = jnp.broadcast_to(jnp.arange(width), prefix.mask.shape)
        prefix_biases = {w: attention_bias(prompt_query, prompt_key, prefix.mask, w) for w in windows}
    return Positions(rope_tables(cfg, positions, bound), biases, prefix_biases, key_valid)


REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


def remat_block(block_class: type, policy: str) -> type:
    """``block_class`` wrapped in ``nn.remat`` with the named policy ("none": as it is)."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {policy!r}")
    if policy == "none":
        return block_class
    return nn.remat(block_class, policy=REMAT_POLICIES[policy])


def layer_windows(cfg: ModelConfig) -> tuple:
    """Each layer's sliding window (None: full attention)."""
    return cfg.layer_windows or (cfg.sliding_window,) * cfg.num_layers


class LlamaModel(nn.Module):
    """``apply({"params": p}, input_ids, attention_mask)`` -> logits [B, T, V] (float32).

    Left padding is supported: positions count only real tokens (as HF ``generate``
    does), padded keys are masked.  ``return_hidden=True`` returns the final normed
    hidden states [B, T, D] instead (embeddings, reward heads).  With ``cache`` (see
    ``init_cache``) the call appends the tokens to the cache and returns
    (logits, new cache): prefill with the prompt, then decode one token at a time.
    ``last_only=True`` projects only the last position onto the vocabulary.
    ``with_hidden=True`` returns (logits, final hidden states) in place of the logits.
    ``real_tokens=n`` (static) runs only the real tokens (``attention_mask``): embeddings,
    projections, MLPs and the head see [n, 1, .] arrays of at most n real tokens in order
    (``layers.real_token_index`` maps them to their slots) and only attention sees the
    padded layout, so padding costs no matmul; the outputs come back in that compact form.

    ``precision`` of every matmul: "auto" (``layers.default_precision``: HIGHEST for
    float32 parameters, the backend's default for bfloat16), a ``jax.lax.Precision`` or None.

    ``remat``: rematerialise each block in the backward pass (``REMAT_POLICIES``): "none"
    keeps every activation, "full" keeps only the blocks' inputs, "dots" also keeps the
    matmul outputs that have no batch dimension (MaxText's ``minimal``).  Set it with
    ``model.clone(remat=...)``; the params are the same.

    ``attention``: the kernel of attention over several queries (``layers.ATTENTION_KERNELS``:
    "blocked", the default; "xla" or "cudnn", ``jax.nn.dot_product_attention``'s, the
    latter cuDNN's fused attention on NVIDIA GPUs); set it with ``model.clone(attention=...)``."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    precision: Any = "auto"
    remat: str = "none"
    attention: str = "blocked"
    block_class: ClassVar[type] = LlamaBlock      # a family with other block maths swaps this

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, return_hidden=False, cache: KVCache | None = None,
                 last_only=False, with_hidden=False, real_tokens: int | None = None):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        valid = attention_mask.astype(bool)
        where = token_positions(self.config, valid, cache)
        real = None
        if real_tokens is not None:
            if last_only:
                raise ValueError("last_only and real_tokens do not combine: the last slot of a row may be padding")
            real = real_token_index(valid, real_tokens)
            input_ids = gather_real(input_ids, real)
            where = where._replace(rope=tuple(gather_real(table, real) for table in where.rope))
        embed = self.param("embed_tokens", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                       ("vocab", "embed")),
                           (self.config.vocab_size, self.config.hidden_size), self.dtype)
        x, keys, values = self._layers(self._embed(embed, input_ids), where, cache, real)
        x = RMSNorm(self.config.rms_norm_eps, self.dtype, self.config.norm_offset, name="norm")(x)
        if last_only:              # prefill for sampling: the vocabulary projection of one position
            x = x[:, -1:]
        out = nn.with_logical_constraint(x, RESIDUAL) if return_hidden else self._head(x, embed)
        if with_hidden:            # the logits and the hidden states they came from (sampling + routing)
            out = (out, x)
        if cache is None:
            return out
        return out, KVCache(keys, values, where.key_valid, cache.index + valid.shape[1],
                            cache.positions + valid.sum(-1).astype(jnp.int32), cache.prefix)

    def _embed(self, embed: Array, input_ids: Array) -> Array:
        # the table gathered over fsdp first (as FSDP gathers any weight before use): looked up
        # while sharded on embed, the rows come out split on embed, and XLA can only move them to
        # the batch split of the residual stream by replicating them whole
        table = nn.with_logical_constraint(embed, ("vocab", None))
        x = nn.with_logical_constraint(table[input_ids], RESIDUAL)
        if self.config.embed_scale:
            x = x * jnp.asarray(self.config.hidden_size ** 0.5, self.dtype)
        return x

    def _layers(self, x: Array, where: Positions, cache: KVCache | None, real: Array | None = None):
        """The block stack -> (hidden states, each layer's keys, each layer's values)."""
        cfg, precision = self.config, resolve_precision(self.precision, self.dtype)
        prefix = None if cache is None else cache.prefix
        block = remat_block(self.block_class, self.remat)
        attention = check_attention_kernel(self.attention)
        keys, values = [], []
        for i, window in enumerate(layer_windows(cfg)):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i], where.prefix_biases[window])
            x, (k, v) = block(cfg, self.dtype, precision, attention, name=f"layers_{i}")(
                x, where.rope, where.biases[window], layer_cache, None if cache is None else cache.index,
                layer_prefix, real)
            x = nn.with_logical_constraint(x, RESIDUAL)
            keys.append(k)
            values.append(v)
        return x, tuple(keys), tuple(values)

    def _head(self, x: Array, embed: Array) -> Array:
        """Final hidden states -> float32 logits [B, T, V], or a classifier's scores [B, T, num_labels]."""
        cfg, precision = self.config, resolve_precision(self.precision, self.dtype)
        if cfg.num_labels:         # sequence-classifier RM: per-position scores
            out = dense(cfg.num_labels, ("embed", "labels"), False, "score", self.dtype, precision)(x)
            return nn.with_logical_constraint(out.astype(jnp.float32),
                                              ("activation_batch", "activation_length", None))
        if cfg.tie_word_embeddings:
            logits = weight_einsum("btd,vd->btv", x, embed, precision)
        else:
            logits = dense(cfg.vocab_size, ("embed", "vocab"), False, "lm_head", self.dtype, precision)(x)
        return nn.with_logical_constraint(softcap(logits.astype(jnp.float32), cfg.final_softcap),
                                          ("activation_batch", "activation_length", "activation_vocab"))
