"""Flax language models with real weights: Llama-family and Gemma 2 decoders, loading from
HF checkpoints and GGUF, LoRA, KV-cache sampling, log-probs and embeddings."""
from rmbandit.models.config import ModelConfig
from rmbandit.models.functions import (LogProbs, prompt_embeddings, sequence_logprobs, shared_prompt_logprobs,
                                       token_logprobs)
from rmbandit.models.gemma2 import Gemma2Model
from rmbandit.models.llama import LlamaModel
from rmbandit.models.loading import load_pretrained
from rmbandit.models.registry import decoder_for
from rmbandit.models.tokenizer import check_tokenizer, load_tokenizer

__all__ = ["Gemma2Model", "LlamaModel", "LogProbs", "ModelConfig", "check_tokenizer", "decoder_for",
           "load_pretrained", "load_tokenizer", "prompt_embeddings", "sequence_logprobs", "shared_prompt_logprobs",
           "token_logprobs"]
