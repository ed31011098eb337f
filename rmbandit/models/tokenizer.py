"""Tokenizers and chat templates through transformers, with a check that the tokenizer
belongs to the model."""
from __future__ import annotations

import pathlib

from rmbandit.models.config import ModelConfig


def load_tokenizer(path, padding_side: str = "left"):
    """From an HF checkpoint directory or a ``.gguf`` file (its embedded tokenizer)."""
    from transformers import AutoTokenizer

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the checkpoint directory or .gguf file whose "
                                "tokenizer to load")
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side      # left: prompts end at the last position
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Checkpoints may give their embedding table spare rows past the tokenizer's ids (a
# multiple of 64 or 128 for the matmul tiles: Qwen2.5 has 151936 rows for 151665 tokens,
# OLMo 50304 for 50280).  More spare rows than this mean the tokenizer is another model's.
def spare_rows_allowed(tokens: int) -> int:
    return max(1024, tokens // 10)


def check_tokenizer(config, tokenizer, model_name: str | None = None) -> None:
    """Raise if ``tokenizer`` does not belong to the model of ``config`` (a ``ModelConfig``,
    or anything with ``vocab_size`` and optional ``bos_token_id`` / ``eos_token_id`` /
    ``pad_token_id``, e.g. ``bert.BertConfig``).

    Wrong either way: ids beyond the model's vocabulary (a bigger tokenizer); a vocabulary
    much bigger than the tokenizer (beyond ``spare_rows_allowed``: a smaller tokenizer);
    a special token (bos, eos, pad, unk) outside the vocabulary; a bos, eos or pad token
    other than the one the config names (eos: one of them).  A pad token that is the eos
    token is not compared: ``load_tokenizer`` pads with eos where a tokenizer has none, and
    padding is masked, so it changes no result."""
    vocab, tokens = config.vocab_size, len(tokenizer)
    problems = []
    if tokens > vocab:
        problems.append(f"the tokenizer has {tokens} tokens but the model's vocabulary has {vocab}")
    elif vocab - tokens > spare_rows_allowed(tokens):
        problems.append(f"the model's vocabulary has {vocab} rows but the tokenizer only {tokens} tokens "
                        f"(at most {spare_rows_allowed(tokens)} spare rows are padding)")
    for kind in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None and not 0 <= token_id < vocab:
            problems.append(f"its {kind} token id {token_id} is outside the model's vocabulary of {vocab}")
    for kind in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        named = getattr(config, f"{kind}_token_id", None)
        if kind == "pad" and token_id == getattr(tokenizer, "eos_token_id", None):
            continue
        allowed = named if isinstance(named, (tuple, list)) else (named,)
        if token_id is not None and named is not None and token_id not in allowed:
            problems.append(f"its {kind} token id is {token_id} ({getattr(tokenizer, f'{kind}_token', None)!r}) "
                            f"but the model's config says {named}")
    if problems:
        kind = getattr(config, "model_type", None) or type(config).__name__.removesuffix("Config")
        model = model_name or f"{kind} model"
        tokenizer_name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {tokenizer_name!r} does not fit the {model}: {'; '.join(problems)}. It is the "
                         "tokenizer of another model; pass the tokenizer saved with the checkpoint "
                         "(load_tokenizer(<the checkpoint directory or .gguf file>))")


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
