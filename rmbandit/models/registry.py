"""Model families: one record per HF ``model_type`` with everything that differs between
them (config defaults, decoder module, transformers class, GGUF architecture and tensor
names).  Loading, export and GGUF reading look a family up here; nothing else keeps a
per-family table."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax.numpy as jnp

from rmbandit.models.config import ModelConfig
from rmbandit.models.gemma2 import Gemma2Model
from rmbandit.models.layers import default_precision
from rmbandit.models.llama import LlamaModel

# llama.cpp's block tensor names -> the HF module names (the same for every llama-like
# architecture llama.cpp writes)
LLAMA_GGUF_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str                        # HF config.json ``model_type``
    decoder: type                          # the Flax module
    hf_prefix: str                         # transformers class stem: Llama -> LlamaForCausalLM
    # what the type implies for ModelConfig: attention_bias / qk_norm defaults, output_bias
    # (an o_proj bias: where absent, config.json's attention_bias decides), uniform_window
    # (config.json's sliding_window applies to every layer), gemma (Gemma 2's norms, scalings,
    # soft-caps), hidden_act (the activation where config.json names none)
    features: Mapping = dataclasses.field(default_factory=dict)
    gguf_architecture: str | None = None   # GGUF ``general.architecture``; None: not read from GGUF
    gguf_block: Mapping = dataclasses.field(default_factory=dict)  # GGUF block tensor -> HF module
    gguf_permuted_qk: bool = False         # llama.cpp permuted q/k rows for its interleaved RoPE

    def hf_class(self, num_labels: int | None = None) -> str:
        """The transformers class of a causal LM, or of a sequence classifier (reward model)."""
        return f"{self.hf_prefix}For{'SequenceClassification' if num_labels else 'CausalLM'}"


FAMILIES = {f.model_type: f for f in (
    Family("llama", LlamaModel, "Llama", gguf_architecture="llama", gguf_block=LLAMA_GGUF_BLOCK,
           gguf_permuted_qk=True),
    Family("mistral", LlamaModel, "Mistral", {"uniform_window": True, "output_bias": False}),
    Family("qwen2", LlamaModel, "Qwen2", {"attention_bias": True, "output_bias": False}, gguf_architecture="qwen2",
           gguf_block=LLAMA_GGUF_BLOCK),
    Family("qwen3", LlamaModel, "Qwen3", {"qk_norm": True}, gguf_architecture="qwen3", gguf_block=LLAMA_GGUF_BLOCK),
    # transformers' Gemma2Config defaults to GELU-tanh where config.json names no activation
    Family("gemma2", Gemma2Model, "Gemma2", {"gemma": True, "hidden_act": "gelu_pytorch_tanh"}),
)}


def family(model_type: str) -> Family:
    """The family of ``model_type``; an unknown type is an error that lists the known ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; rmbandit.models implements "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def gguf_family(architecture: str) -> Family:
    known = {f.gguf_architecture: f for f in FAMILIES.values() if f.gguf_architecture}
    if architecture not in known:
        raise ValueError(f"unsupported GGUF architecture {architecture!r}; rmbandit.models reads {sorted(known)}")
    return known[architecture]


def decoder_for(config: ModelConfig, dtype=jnp.float32, precision="auto"):
    """The Flax module for ``config``.  ``precision`` of every matmul: "auto" is
    ``layers.default_precision(dtype)`` (HIGHEST for float32, the backend's default for
    bfloat16), or a ``jax.lax.Precision`` / None."""
    return family(config.model_type).decoder(config, dtype=dtype, precision=precision)
