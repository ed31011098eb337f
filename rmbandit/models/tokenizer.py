"""Tokenizers and chat templates through transformers, with a check that the tokenizer
belongs to the model."""
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


def chat_prompt(tokenizer, user_message: str) -> str:
    """The user message in the tokenizer's chat template, ending with the assistant turn's
    opening (plain text when the tokenizer has no template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False,
                                             add_generation_prompt=True)
    return user_message + "\n"


def encode_prompt_response(tokenizer, prompts, responses, max_length: int = 1024, multiple: int = 32,
                           eos: bool = True):
    """Left-padded token ids of chat-templated prompt + response (+ EOS, which closes the
    assistant turn in the templates we load) -> dict of int32 arrays ``input_ids``,
    ``attention_mask`` and ``response_mask`` [N, T], T bucketed to a multiple of
    ``multiple`` so batches share compiled programs.

    Over-long input is truncated, never rejected: the response keeps its first tokens
    (at most ``max_length`` - 16), then the prompt keeps its last tokens in the room left
    (the question usually ends the prompt).  An empty response is scored as EOS alone."""
    import numpy as np

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = []
    for prompt, response in zip(prompts, responses):
        p = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
        r = tokenizer(response, add_special_tokens=False).input_ids
        if eos and tokenizer.eos_token_id is not None:
            r = r + [tokenizer.eos_token_id]
        r = r[:max_length - 16]
        p = p[-(max_length - len(r)):]
        rows.append((p, r))
    width = max(multiple, -(-max(len(p) + len(r) for p, r in rows) // multiple) * multiple)
    ids = np.full((len(rows), width), tokenizer.pad_token_id or 0, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    response_mask = np.zeros((len(rows), width), np.int32)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, width - n:] = p + r
        mask[i, width - n:] = 1
        response_mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response_mask}
