"""Gemma 2 decoder (e.g. the GRM-gemma2 reward models).

What differs from Llama, and where it lives:
- the block (here): four norms, "sandwiching" attention and the MLP (x + norm(attn(norm(x))),
  then x + norm(mlp(norm(x))));
- options of the shared layers, set by ``ModelConfig`` for ``model_type="gemma2"``: RMSNorm
  scales by (1 + w) in float32, GELU-tanh MLP, queries scaled by query_pre_attn_scalar^-1/2,
  attention logits soft-capped, sliding windows on alternating layers, embeddings times
  sqrt(hidden_size), final logits soft-capped.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from rmbandit.models.config import ModelConfig
from rmbandit.models.layers import MLP, Attention, RMSNorm
from rmbandit.models.llama import LlamaModel


class Gemma2Block(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    precision: Any = None
    attention: str = "blocked"        # soft-capped logits: every kernel runs as "blocked"

    @nn.compact
    def __call__(self, x, rope, bias, cache=None, index=None, prefix=None, real=None):
        cfg = self.config

        def norm(name):
            return RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name=name)

        h, kv = Attention(cfg, self.dtype, self.precision, self.attention, name="self_attn")(
            norm("input_layernorm")(x), rope, bias, cache, index, prefix, real)
        x = x + norm("post_attention_layernorm")(h)
        h = MLP(cfg, self.dtype, self.precision, name="mlp")(norm("pre_feedforward_layernorm")(x))
        return x + norm("post_feedforward_layernorm")(h), kv


class Gemma2Model(LlamaModel):
    """Same call signature and outputs as ``LlamaModel``."""
    block_class: ClassVar[type] = Gemma2Block
