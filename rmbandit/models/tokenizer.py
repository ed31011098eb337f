"""Tokenizers through transformers, with a check that the tokenizer belongs to the model.
Chat templates, encoding, truncation and padding are in ``rmbandit.text``."""
from __future__ import annotations

import pathlib

from rmbandit.models.config import ModelConfig


# what transformers' AutoTokenizer reads from a checkpoint directory (fast, sentencepiece,
# BPE, WordPiece); a directory with none of them holds no tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_tokenizer(path, padding_side: str = "left"):
    """From an HF checkpoint directory or a ``.gguf`` file (its embedded tokenizer)."""
    from transformers import AutoTokenizer

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the checkpoint directory or .gguf file whose "
                                "tokenizer to load")
    if path.is_dir() and not any((path / name).exists() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                                "model's tokenizer there too (tokenizer.save_pretrained(path)), or pass the "
                                "model's .gguf file")
    if path.is_file() and path.suffix != ".gguf":
        raise ValueError(f"{path} is a file but not a .gguf one; pass the checkpoint directory that holds it "
                         f"({path.parent}) or a .gguf file")
    if path.suffix == ".gguf":
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except ModuleNotFoundError as err:      # transformers' GGUF reader imports torch
            if "torch" not in str(err) and "read_gguf_metadata" not in str(err):
                raise
            tokenizer = gguf_tokenizer(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side      # left: prompts end at the last position
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def gguf_tokenizer(path):
    """A ``.gguf`` file's embedded tokenizer without PyTorch: the metadata is read with the
    ``gguf`` package and converted by transformers' own GGUF tokenizer converter (what
    ``AutoTokenizer.from_pretrained(gguf_file=...)`` does, minus its reader, which imports
    torch; the main job installs no torch)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (GGUF_TOKENIZER_MAPPING, _SPECIAL_TOKENS,
                                                                       convert_gguf_tokenizer)

    from rmbandit.models.gguf_loading import open_gguf

    reader = open_gguf(pathlib.Path(path))
    metadata = {key: field.contents() for key, field in reader.fields.items()
                if key.startswith("tokenizer.") or key == "general.architecture"}
    grouped = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)       # as transformers: llama.cpp adds BOS to sentencepiece
    for name, key in _SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{**config, **extra})


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

