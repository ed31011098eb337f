"""Llama-family decoder: Llama 3/3.1/3.2 (incl. ``llama3`` RoPE scaling), SmolLM2,
Mistral (sliding window), Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm per head): pre-norm
blocks, grouped-query attention, SwiGLU MLP, RMSNorm.  The family members differ only in
options of the shared layers (``ModelConfig``); Gemma 2, whose block differs, lives in
``gemma2.py`` and reuses ``LlamaModel``'s embedding / cache / head code.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from rmbandit.models.config import ModelConfig
from rmbandit.models.layers import (MLP, RESIDUAL, Attention, KVCache, RMSNorm, attention_bias, dense, rope_tables,
                                    softcap)


class LlamaBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)).  Norm names are the HF checkpoints'
    (Llama calls its pre-MLP norm ``post_attention_layernorm``)."""
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, rope, bias, cache=None, index=None, prefix=None):
        cfg = self.config
        h, kv = Attention(cfg, self.dtype, name="self_attn")(
            RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="input_layernorm")(x),
            rope, bias, cache, index, prefix)
        x = x + h
        h = RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="post_attention_layernorm")(x)
        return x + MLP(cfg, self.dtype, name="mlp")(h), kv


class LlamaModel(nn.Module):
    """``apply({"params": p}, input_ids, attention_mask)`` -> logits [B, T, V] (float32).

    Left padding is supported: positions count only real tokens (as HF ``generate``
    does), padded keys are masked.  ``return_hidden=True`` returns the final normed
    hidden states [B, T, D] instead (embeddings, reward heads).  With ``cache`` (see
    ``init_cache``) the call appends the tokens to the cache and returns
    (logits, new cache): prefill with the prompt, then decode one token at a time.
    ``last_only=True`` projects only the last position onto the vocabulary."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    block_class: ClassVar[type] = LlamaBlock      # a family with other block maths swaps this

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, return_hidden=False, cache: KVCache | None = None,
                 last_only=False):
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        valid = attention_mask.astype(bool)
        t = input_ids.shape[1]
        if cache is None:
            positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
            # masks follow the sequence axis: for real tokens it differs from positions by the
            # row's constant padding offset, so causality and the window are the same either way
            query_index = jnp.broadcast_to(jnp.arange(t), input_ids.shape)
            key_index, key_valid = query_index, valid
        else:
            positions = cache.positions[:, None] + jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
            key_valid = jax.lax.dynamic_update_slice(cache.mask, valid, (0, cache.index))
            query_index = jnp.broadcast_to(cache.index + jnp.arange(t), input_ids.shape)
            key_index = jnp.broadcast_to(jnp.arange(key_valid.shape[1]), key_valid.shape)
        # positions stay below the sequence length, or below the cache's slots + its prefix's
        bound = t if cache is None else key_valid.shape[1] + (0 if cache.prefix is None else cache.prefix.mask.shape[1])
        rope = rope_tables(cfg, positions, bound)
        windows = cfg.layer_windows or (cfg.sliding_window,) * cfg.num_layers
        biases = {w: attention_bias(query_index, key_index, key_valid, w) for w in set(windows)}
        prefix = None if cache is None else cache.prefix
        if prefix is not None:
            # a shared prompt's slots come before slot 0; masks compare sequence slots, so
            # queries count on from the prompt's width (the same for every row of a prompt)
            width = prefix.mask.shape[1]
            prompt_query = jnp.broadcast_to(width + cache.index + jnp.arange(t), (prefix.mask.shape[0], t))
            prompt_key = jnp.broadcast_to(jnp.arange(width), prefix.mask.shape)
            prefix_biases = {w: attention_bias(prompt_query, prompt_key, prefix.mask, w) for w in set(windows)}
        embed = self.param("embed_tokens", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                       ("vocab", "embed")),
                           (cfg.vocab_size, cfg.hidden_size), self.dtype)
        x = nn.with_logical_constraint(embed[input_ids], RESIDUAL)
        if cfg.embed_scale:
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, self.dtype)
        cache_k, cache_v = [], []
        for i in range(cfg.num_layers):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i], prefix_biases[windows[i]])
            x, (k, v) = self.block_class(cfg, self.dtype, name=f"layers_{i}")(
                x, rope, biases[windows[i]], layer_cache, None if cache is None else cache.index, layer_prefix)
            x = nn.with_logical_constraint(x, RESIDUAL)
            cache_k.append(k)
            cache_v.append(v)
        x = RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="norm")(x)
        if last_only:              # prefill for sampling: the vocabulary projection of one position
            x = x[:, -1:]
        if return_hidden:
            out = x
        elif cfg.num_labels:       # sequence-classifier RM: per-position scores [B, T, num_labels]
            out = dense(cfg.num_labels, ("embed", "labels"), False, "score", self.dtype)(x).astype(jnp.float32)
        elif cfg.tie_word_embeddings:
            out = softcap(jnp.einsum("btd,vd->btv", x, embed).astype(jnp.float32), cfg.final_softcap)
        else:
            out = softcap(dense(cfg.vocab_size, ("embed", "vocab"), False, "lm_head", self.dtype)(x)
                          .astype(jnp.float32), cfg.final_softcap)
        out = nn.with_logical_constraint(out, RESIDUAL if return_hidden else (
            "activation_batch", "activation_length", None if cfg.num_labels else "activation_vocab"))
        if cache is None:
            return out
        return out, KVCache(tuple(cache_k), tuple(cache_v), key_valid, cache.index + t,
                            cache.positions + valid.sum(-1).astype(jnp.int32), prefix)
