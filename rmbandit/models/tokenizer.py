"""Tokenizers through transformers, with a check that the tokenizer belongs to the model.
Chat templates, encoding, truncation and padding are in ``rmbandit.text``."""
from __future__ import annotations

import pathlib

from rmbandit.models.config import ModelConfig


def load_tokenizer(path, padding_side: str = "left"):
    """From an HF checkpoint directory or a ``.gguf`` file (its embedded tokenizer)."""
    from transformers import AutoTokenizer

    path = pathlib.Path(path)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side      # left: prompts end at the last position
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_tokenizer(config: ModelConfig, tokenizer) -> None:
    """A tokenizer with ids beyond the model's vocabulary belongs to another model."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the {config.model_type} model's vocabulary has "
            f"{config.vocab_size}: it is the tokenizer of another model; load the one saved with the checkpoint")

