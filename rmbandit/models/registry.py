"""model_type -> decoder module class."""
from __future__ import annotations

import jax.numpy as jnp

from rmbandit.models.config import ModelConfig
from rmbandit.models.gemma2 import Gemma2Model
from rmbandit.models.llama import LlamaModel

DECODERS = {"llama": LlamaModel, "mistral": LlamaModel, "qwen2": LlamaModel, "qwen3": LlamaModel,
            "gemma2": Gemma2Model}


def decoder_for(config: ModelConfig, dtype=jnp.float32):
    """The Flax module for ``config`` (``ModelConfig`` has already rejected unknown types)."""
    return DECODERS[config.model_type](config, dtype=dtype)
