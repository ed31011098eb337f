"""Flax decoder LMs with real weights (work in progress: see issue 4)."""
from rmbandit.models.config import ModelConfig
from rmbandit.models.functions import LogProbs, prompt_embeddings, sequence_logprobs, token_logprobs
from rmbandit.models.llama import LlamaModel
from rmbandit.models.loading import load_pretrained
from rmbandit.models.tokenizer import check_tokenizer, load_tokenizer

__all__ = ["LlamaModel", "LogProbs", "ModelConfig", "check_tokenizer", "load_pretrained", "load_tokenizer",
           "prompt_embeddings", "sequence_logprobs", "token_logprobs"]
