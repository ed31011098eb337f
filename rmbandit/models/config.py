"""Model configuration: one frozen dataclass, built from an HF ``config.json``.

Both transformers layouts are read: RoPE settings in ``rope_parameters`` (transformers 5)
or in ``rope_theta`` + ``rope_scaling`` (earlier versions).  Anything the decoder does
not implement is an error that names the option, never a silent difference.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

SUPPORTED_ROPE = ("default", "llama3", "linear")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    attention_bias: bool = False           # q/k/v projections
    output_bias: bool = False              # o_proj (Llama, Qwen3, Gemma 2: = attention_bias; Qwen2, Mistral: none)
    qk_norm: bool = False
    sliding_window: int | None = None      # every layer (Mistral); None = full attention
    layer_windows: tuple | None = None     # per-layer window (Gemma 2 alternates); overrides sliding_window
    activation: str = "silu"               # "silu" or "gelu_tanh"
    # Gemma 2 (its block is in gemma2.py): RMSNorm scales by (1 + w), embeddings times sqrt(d),
    # soft-capped attention and final logits, queries scaled by query_pre_attn_scalar^-1/2
    norm_offset: float = 0.0
    embed_scale: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_scale: float | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    # *ForSequenceClassification checkpoints (reward models): a ``score`` head of this many
    # outputs replaces the vocabulary projection
    num_labels: int | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "the config") -> "ModelConfig":
        """From a parsed HF ``config.json``; ``source`` (the file) is named in errors."""
        from rmbandit.models.registry import family     # the registry imports the decoders, which import us

        if "model_type" not in raw:
            raise ValueError(f"{source} has no 'model_type'; is it an HF config.json?")
        model_type = raw["model_type"]
        features = family(model_type).features
        ints = {key: required_int(raw, key, source) for key in REQUIRED_INTS}
        act = raw.get("hidden_activation") or raw.get("hidden_act") or features.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {act!r} for {model_type}; supported: {sorted(ACTIVATIONS)}")
        if raw.get("use_bidirectional_attention"):
            raise ValueError(f"use_bidirectional_attention=True is not supported for {model_type}")
        if raw.get("mlp_bias"):
            raise ValueError(f"mlp_bias=True is not supported for {model_type}")
        rope = dict(raw.get("rope_parameters") or {})
        if not rope:
            rope = dict(raw.get("rope_scaling") or {})
            rope.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE:
            raise ValueError(f"unsupported RoPE type {rope_type!r}; supported: {SUPPORTED_ROPE}")
        heads = ints["num_attention_heads"]
        window = None
        if features.get("uniform_window"):
            window = raw.get("sliding_window")
        elif raw.get("use_sliding_window") and raw.get("sliding_window"):
            raise ValueError(f"use_sliding_window=True is not supported for {model_type}")
        num_labels = None
        architectures = raw.get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            num_labels = len(raw["id2label"]) if raw.get("id2label") else raw.get("num_labels", 2)
        elif architectures and not any(a.endswith("ForCausalLM") for a in architectures):
            raise ValueError(f"unsupported architecture {architectures[0]!r}; rmbandit.models loads "
                             "*ForCausalLM and *ForSequenceClassification checkpoints")
        gemma = features.get("gemma", False)
        layer_windows = None
        if gemma:
            types = raw.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                               for i in range(ints["num_hidden_layers"])]
            layer_windows = tuple(raw.get("sliding_window") if t == "sliding_attention" else None for t in types)
        return cls(
            model_type=model_type,
            vocab_size=ints["vocab_size"],
            hidden_size=ints["hidden_size"],
            intermediate_size=ints["intermediate_size"],
            num_layers=ints["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or ints["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_positions=int(rope.get("original_max_position_embeddings", 8192)),
            attention_bias=raw.get("attention_bias", features.get("attention_bias", False)),
            output_bias=features.get("output_bias", raw.get("attention_bias", False)),
            qk_norm=features.get("qk_norm", False),
            sliding_window=window,
            layer_windows=layer_windows,
            activation=ACTIVATIONS[act],
            norm_offset=1.0 if gemma else 0.0,
            embed_scale=gemma,
            attn_softcap=raw.get("attn_logit_softcapping") if gemma else None,
            final_softcap=raw.get("final_logit_softcapping") if gemma else None,
            query_scale=raw.get("query_pre_attn_scalar", 256) ** -0.5 if gemma else None,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=tuple(raw["eos_token_id"]) if isinstance(raw.get("eos_token_id"), list)
            else raw.get("eos_token_id"),
            num_labels=num_labels,
            pad_token_id=raw.get("pad_token_id"),
        )

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path) -> "ModelConfig":
        file = config_file(path, "pass an HF checkpoint directory")
        return cls.from_hf_dict(read_config_json(file), str(file))


REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def config_file(path, hint: str) -> pathlib.Path:
    """``path``'s config.json (``path`` may be the file itself); missing is an error with ``hint``."""
    path = pathlib.Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no config.json in {path}; {hint}")
    return file


def read_config_json(file: pathlib.Path) -> dict[str, Any]:
    """A config.json as a dict; invalid JSON is an error naming the file, line and column."""
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
                         "fix the file or copy it again from the checkpoint") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a JSON {type(raw).__name__}, not an object of config keys")
    return raw


def required_int(raw: dict[str, Any], key: str, source: str) -> int:
    """``raw[key]`` as a positive int; absent, None or of another type is an error naming ``source`` and key."""
    if raw.get(key) is None:
        raise ValueError(f"{source} lacks the required key {key!r}; copy config.json from the same checkpoint")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{source}: {key!r} must be a positive integer, got {value!r}")
    return value
