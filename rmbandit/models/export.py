"""Export params (LoRA merged first, if any) to an HF safetensors directory that
transformers loads."""
from __future__ import annotations

import json
import pathlib

import flax
import numpy as np
from safetensors.numpy import save_file

from rmbandit.models.config import ModelConfig

HF_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}      # ours -> config.json's
from rmbandit.models.loading import flax_to_hf_name
from rmbandit.models.registry import family


def hf_config_dict(config: ModelConfig) -> dict:
    rope = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type in ("llama3", "linear"):
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(low_freq_factor=config.rope_low_freq_factor, high_freq_factor=config.rope_high_freq_factor,
                    original_max_position_embeddings=config.rope_original_max_positions)
    features = family(config.model_type).features
    out = {
        "architectures": [family(config.model_type).hf_class(config.num_labels)], "model_type": config.model_type,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": HF_ACTIVATIONS[config.activation],
        "rope_parameters": rope, "rope_theta": config.rope_theta,
        "attention_bias": config.attention_bias, "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        # written even when None: some families (Gemma 2) otherwise default it to 0 on load
        "pad_token_id": config.pad_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
    }
    if config.num_labels:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
    if features.get("uniform_window"):
        out["sliding_window"] = config.sliding_window
    if features.get("gemma"):
        windows = [w for w in config.layer_windows if w is not None]
        out.update(hidden_activation=out["hidden_act"], sliding_window=windows[0] if windows else None,
                   layer_types=["sliding_attention" if w else "full_attention" for w in config.layer_windows],
                   attn_logit_softcapping=config.attn_softcap, final_logit_softcapping=config.final_softcap,
                   query_pre_attn_scalar=round(config.query_scale ** -2))
    return out


def export_hf(directory, config: ModelConfig, params, lora=None, lora_config=None) -> pathlib.Path:
    """Write config.json + model.safetensors (float32) to ``directory``: a causal LM, or a
    sequence classifier (``config.num_labels``) that ``AutoModelForSequenceClassification`` loads."""
    if lora is not None:
        from rmbandit.models.lora import LoraConfig, merge_lora
        params = merge_lora(params, lora, lora_config or LoraConfig())
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, value in flax.traverse_util.flatten_dict(params).items():
        array = np.asarray(value, np.float32)
        tensors[flax_to_hf_name(path)] = np.ascontiguousarray(array.T if path[-1] == "kernel" else array)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2))
    return directory
