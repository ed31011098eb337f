"""GGUF files (llama.cpp) -> a ModelConfig and HF-named, dequantised tensors.

Dequantisation is the ``gguf`` package's (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K and
more).  llama.cpp stores the q/k projections of ``llama``-architecture files with rows
permuted for its interleaved RoPE; we undo that, as transformers does.
"""
from __future__ import annotations

import pathlib
import re

import numpy as np

from rmbandit.models.config import ModelConfig
from rmbandit.models.registry import LLAMA_GGUF_BLOCK, Family, gguf_family

# llama.cpp's names of the tensors outside the blocks (every architecture we read)
TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_name(gguf_name: str, block: dict = LLAMA_GGUF_BLOCK) -> str | None:
    """GGUF tensor name -> HF name, ``block`` mapping the block tensors (a ``Family``'s
    ``gguf_block``); None for a name it does not know."""
    if gguf_name in TOP_LEVEL:
        return TOP_LEVEL[gguf_name]
    match = _BLOCK_NAME.match(gguf_name)
    if match and match.group(2) in block:
        layer, module, kind = match.groups()
        return f"model.layers.{layer}.{block[module]}.{kind}"
    return None


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def config_from_gguf(reader, source: str = "the GGUF file") -> ModelConfig:
    arch = _field(reader, "general.architecture")
    family = gguf_family(arch)
    missing = [key for key in (f"{arch}.attention.head_count", f"{arch}.embedding_length",
                               f"{arch}.feed_forward_length", f"{arch}.block_count")
               if reader.fields.get(key) is None]
    if missing:
        raise ValueError(f"{source} lacks the metadata {missing}; convert the checkpoint to GGUF again")
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"GGUF RoPE scaling {scaling!r} is not supported; convert from the HF checkpoint instead")
    heads = _field(reader, f"{arch}.attention.head_count")
    hidden = _field(reader, f"{arch}.embedding_length")
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    names = {t.name for t in reader.tensors}
    return ModelConfig.from_hf_dict({
        "model_type": family.model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _field(reader, f"{arch}.feed_forward_length"),
        "num_hidden_layers": _field(reader, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _field(reader, f"{arch}.attention.head_count_kv", heads),
        "head_dim": _field(reader, f"{arch}.attention.key_length", hidden // heads),
        "rms_norm_eps": _field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        "rope_parameters": {"rope_type": "default", "rope_theta": _field(reader, f"{arch}.rope.freq_base", 10000.0)},
        "attention_bias": "blk.0.attn_q.bias" in names,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }, source)


def unpermute_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head (half, pair) row permutation of q/k projections."""
    dim = weight.shape[0] // heads // 2
    return weight.reshape(heads, dim, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def open_gguf(path: pathlib.Path):
    """A ``gguf.GGUFReader`` of ``path``.  The reader parses the header and maps every
    tensor's bytes as it opens the file, so a truncated or corrupt file fails here, as an
    error naming it, instead of as a reshape deep inside the gguf package."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as err:
        size = path.stat().st_size
        raise ValueError(f"{path} ({size} bytes) is truncated or corrupt: the gguf package cannot read it ({err}); "
                         "download the file again or convert the checkpoint to GGUF again") from err


def read_gguf(path: pathlib.Path):
    """-> (ModelConfig, iterator of (HF name, float32 array in HF layout))."""
    import gguf

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    reader = open_gguf(path)
    config = config_from_gguf(reader, str(path))
    family: Family = gguf_family(_field(reader, "general.architecture"))
    permute = family.gguf_permuted_qk

    def tensors():
        for tensor in reader.tensors:
            name = hf_name(tensor.name, family.gguf_block)
            if tensor.name == "rope_freqs.weight":       # llama.cpp's form of the llama3 RoPE scaling
                raise ValueError(f"{path.name} scales RoPE per frequency (tensor 'rope_freqs.weight': Llama 3.1 and "
                                 "later), which rmbandit reads from HF checkpoints only (config.json's rope_scaling); "
                                 "load the model's HF checkpoint directory instead")
            if name is None:
                raise ValueError(f"unexpected GGUF tensor {tensor.name!r} in {path.name}")
            try:
                weight = gguf.dequantize(tensor.data, tensor.tensor_type)
            except NotImplementedError as err:
                raise ValueError(f"tensor {tensor.name!r} uses quantisation {tensor.tensor_type.name}, which the "
                                 f"gguf package cannot dequantise ({err}); re-quantise to Q8_0/Q4_K/F16") from err
            if permute and ".q_proj.weight" in name:
                weight = unpermute_rope_rows(weight, config.num_heads)
            elif permute and ".k_proj.weight" in name:
                weight = unpermute_rope_rows(weight, config.num_kv_heads)
            yield name, np.asarray(weight, np.float32)

    return config, tensors()
