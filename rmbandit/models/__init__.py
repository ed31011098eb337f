"""Flax decoder LMs with real weights (work in progress: see issue 4)."""
from rmbandit.models.config import ModelConfig
from rmbandit.models.llama import LlamaModel
from rmbandit.models.loading import load_pretrained

__all__ = ["LlamaModel", "ModelConfig", "load_pretrained"]
