"""Pieces every decoder family shares: RMSNorm (with Gemma's (1 + w) variant), RoPE
(incl. ``llama3`` / ``linear`` scaling), the causal / padding / sliding-window mask,
grouped-query attention with an optional KV cache and soft-capping, the gated MLP, and the
decode cache.  Parameters carry logical axis names (``rmbandit.parallel`` maps them to mesh
axes); Dense kernels are [in, out] and keep the HF checkpoints' names.  Every matmul takes
the model's ``precision`` (``resolve_precision``: HIGHEST for float32 parameters), or
``BF16_WEIGHTS``: bfloat16 operands and float32 results for every product with a weight.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rmbandit.models.config import ModelConfig

Array = jax.Array
RESIDUAL = ("activation_batch", "activation_length", "activation_embed")     # logical axes of [B, T, D]


def default_precision(dtype):
    """The matmul precision for parameters of ``dtype``: HIGHEST for float32 (on GPU the
    default float32 matmul is TF32, whose logits differed from torch's by 2e-3; HIGHEST
    by 1.6e-6), the backend's default (None) for bfloat16 and other types."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def resolve_precision(precision, dtype):
    """A module's ``precision`` attribute: "auto" -> ``default_precision(dtype)``; a
    ``jax.lax.Precision`` or None as given."""
    return default_precision(dtype) if isinstance(precision, str) and precision == "auto" else precision


# a ``precision`` for a float32 model: every product with a weight (dense layers, the tied
# head) rounds both operands to bfloat16 and accumulates in float32; attention's products
# keep the model's own precision (``sampling.with_bfloat16_weights`` builds on it)
BF16_WEIGHTS = jax.lax.DotAlgorithmPreset.BF16_BF16_F32


def bf16_weights(precision) -> bool:
    """Whether ``precision`` is ``BF16_WEIGHTS``."""
    return precision is BF16_WEIGHTS             # enum members are singletons


def _bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    # both operands rounded to bfloat16, float32 accumulation and result: XLA:CPU runs this
    # on its bf16 kernels (2.3-2.6x the float32 speed at 16 rows: benchmarks/bf16_products.py); the
    # algorithm preset itself kept the float32 kernel there
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                               preferred_element_type=jnp.float32)


def weight_einsum(spec: str, x: Array, weight: Array, precision) -> Array:
    """``jnp.einsum(spec, x, weight)`` at a model's ``precision``, ``BF16_WEIGHTS`` included
    (for weight products outside a dense layer, such as a tied vocabulary head)."""
    if bf16_weights(precision):
        return jnp.einsum(spec, x.astype(jnp.bfloat16), weight.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    return jnp.einsum(spec, x, weight, precision=precision)


def dense(features, names, use_bias=False, name=None, dtype=jnp.float32, precision=None):
    product = ({"dot_general": _bf16_dot_general, "precision": None} if bf16_weights(precision)
               else {"precision": precision})
    return nn.Dense(features, use_bias=use_bias, name=name, dtype=dtype, param_dtype=dtype, **product,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))


class RMSNorm(nn.Module):
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    offset: float = 0.0            # Gemma stores w and scales by (1 + w)

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:            # Gemma multiplies in float32, Llama after the cast
            return (x32 * (self.offset + scale.astype(jnp.float32))).astype(x.dtype)
        return (x32.astype(self.dtype) * scale).astype(x.dtype)


def softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def rope_frequencies(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] (float32, as the HF checkpoints compute them),
    with the ``llama3`` / ``linear`` scalings."""
    d = config.head_dim
    # the power in float64, rounded once: NumPy's float32 pow is an ulp off HF's (torch's) in
    # 2-14 of 32-64 entries (a phase error that grows with the position); this is off in at
    # most one, where torch's pow is not correctly rounded (theta 1e6, head_dim 128)
    exponents = (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)).astype(np.float64)
    inv = np.float32(1.0) / (np.float64(config.rope_theta) ** exponents).astype(np.float32)
    if config.rope_type == "linear":
        return (inv / np.float32(config.rope_factor)).astype(np.float32)
    if config.rope_type == "llama3":
        old = config.rope_original_max_positions
        low_wavelen = old / config.rope_low_freq_factor
        high_wavelen = old / config.rope_high_freq_factor
        wavelen = (np.float32(1.0) / inv) * np.float32(2 * math.pi)      # torch's scalar / tensor, op for op
        scaled = np.where(wavelen > low_wavelen, inv / config.rope_factor, inv)
        smooth = (old / wavelen - config.rope_low_freq_factor) / (
            config.rope_high_freq_factor - config.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / config.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_tables(config: ModelConfig, positions: Array, max_position: int) -> tuple[Array, Array]:
    """cos and sin of the rotary angles [B, T, D / 2] for ``positions`` [B, T], every one
    below ``max_position`` (a static bound: the sequence or cache length).

    Looked up in tables made at trace time rather than computed in the graph: XLA:CPU
    fuses an elementwise cos / sin into each consumer and evaluates it once per element
    of q and k (per head), which cost 10% of a 16 x 256 forward."""
    angles = np.arange(max_position, dtype=np.float32)[:, None] * rope_frequencies(config)[None]
    index = jnp.clip(positions, 0, max_position - 1)
    return (jnp.asarray(np.cos(angles.astype(np.float64)).astype(np.float32))[index],
            jnp.asarray(np.sin(angles.astype(np.float64)).astype(np.float32))[index])


def apply_rope(x: Array, rope: tuple[Array, Array]) -> Array:
    """x [B, T, H, D] rotated by ``rope_tables``; the rotate-half convention of the HF checkpoints."""
    cos, sin = (table[:, :, None] for table in rope)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_bias(query_pos: Array, key_pos: Array, key_valid: Array, window: int | None) -> Array:
    """Additive mask [B, 1, Tq, Tk]: causal, padding and optional sliding window."""
    allowed = (key_pos[:, None, :] <= query_pos[:, :, None]) & key_valid[:, None, :]
    if window is not None:
        allowed &= key_pos[:, None, :] > query_pos[:, :, None] - window
    return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None]


def real_token_index(valid: Array, size: int) -> Array:
    """The flat slots (b * T + t) of the real tokens of a padded [B, T] layout (``valid``),
    in order, then B * T, B * T + 1, ... (no slot) up to the static ``size``: the map
    between a padded batch and its real tokens alone.  ``size`` must be at least the number
    of real tokens (more are dropped).  Every index differs and they increase, so
    ``gather_real`` / ``scatter_real`` declare them unique and sorted: the scatter's
    derivative is then a scatter of the tangents, not JAX's scheme for colliding indices
    (an id per element scattered, gathered back and compared: three more passes over q,
    k and v in every layer of the step)."""
    flat = valid.reshape(-1)
    index = jnp.nonzero(flat, size=size, fill_value=flat.size)[0].astype(jnp.int32)
    unused = jnp.arange(size, dtype=jnp.int32) - jnp.sum(flat, dtype=jnp.int32)       # >= 0 on the unused slots
    return jnp.where(unused >= 0, flat.size + unused, index)


def gather_real(x: Array, real: Array) -> Array:
    """[B, T, ...] -> [n, 1, ...]: the real tokens of a padded layout (zeros in unused slots),
    one per row of length 1, so that the batch's sharding carries over to them."""
    flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return flat.at[real].get(mode="fill", fill_value=0, unique_indices=True, indices_are_sorted=True)[:, None]


def scatter_real(x: Array, real: Array, padded: tuple[int, int]) -> Array:
    """[n, 1, ...] -> [B, T, ...] (``padded`` = (B, T)): ``gather_real`` undone, zeros at the padding."""
    flat = jnp.zeros((padded[0] * padded[1], *x.shape[2:]), x.dtype).at[real].set(
        x[:, 0], mode="drop", unique_indices=True, indices_are_sorted=True)
    return flat.reshape(*padded, *x.shape[2:])


class Attention(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    precision: object = None          # of every matmul (see ``resolve_precision``)
    kernel: str = "blocked"           # of attention over several queries: ``ATTENTION_KERNELS``

    @nn.compact
    def __call__(self, x, rope, bias, cache=None, index=None, prefix=None, real=None):
        """``rope``: ``rope_tables`` of the tokens' positions.  With ``real`` (see
        ``real_token_index``), ``x`` [n, 1, D] holds only the real tokens of the padded
        [B, T] layout that ``bias`` [B, 1, T, S] masks: the projections run on them alone,
        and attention on the padded layout they are scattered into.  With ``cache`` = (keys
        [B, KV, D, S], values [B, KV, S, D]), this step's keys and values are written at
        slot ``index`` and the queries attend over all S slots (``bias`` masks the empty
        ones).  With ``prefix`` = (keys [Bp, KV, D, P], values
        [Bp, KV, P, D], bias [Bp, 1, T, P]) the queries also attend to a prompt shared by
        each group of B / Bp consecutive rows (see ``SharedPrefix``)."""
        cfg, precision = self.config, self.precision
        b, t, _ = x.shape
        heads, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = dense(heads * hd, ("embed", "q_heads"), cfg.attention_bias, "q_proj", self.dtype, precision)(x)
        k = dense(kv * hd, ("embed", "kv_heads"), cfg.attention_bias, "k_proj", self.dtype, precision)(x)
        v = dense(kv * hd, ("embed", "kv_heads"), cfg.attention_bias, "v_proj", self.dtype, precision)(x)
        q, k, v = q.reshape(b, t, heads, hd), k.reshape(b, t, kv, hd), v.reshape(b, t, kv, hd)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
        k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
        v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, self.dtype, cfg.norm_offset, name="k_norm")(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        if real is not None:
            padded = bias.shape[0], bias.shape[2]
            q, k, v = (scatter_real(y, real, padded) for y in (q, k, v))
            b, t = padded
        # the cache's layouts: keys [B, KV, D, T] (the query-key product is then a plain
        # [G, D] x [D, S] matmul per kv head: 1.7x faster decode attention on XLA:CPU than
        # contracting D on both sides), values [B, KV, T, D]; a decode step reads the cache
        # as it lies instead of transposing all of it
        k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, 0, 0, index))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, 0, index, 0))
        scale = cfg.query_scale if cfg.query_scale is not None else 1.0 / math.sqrt(hd)
        # the queries' first sequence slot, where it is known at trace time: keys after a
        # query block's last slot are masked for every row, so they are never computed
        query_slot = 0 if cache is None else index if isinstance(index, int) else None
        # bfloat16 weights leave attention's products (activations only) in the compute dtype
        out = grouped_attention(q, k, v, bias, scale, cfg.attn_softcap, query_slot, prefix=prefix,
                                precision=default_precision(self.dtype) if bf16_weights(precision) else precision,
                                kernel=self.kernel)
        out = out.reshape(b, t, heads * hd)
        if real is not None:
            out = gather_real(out, real)
        return dense(cfg.hidden_size, ("q_heads", "embed"), cfg.output_bias, "o_proj", self.dtype, precision)(out), (k, v)


QUERY_BLOCK = 64       # causal key skipping per query block; 64 was fastest at T=256 on XLA:CPU
# attention over several queries (training, prefill): "blocked" = ``grouped_attention``'s
# own (causal blocks skipped, a shared prompt attended once per prompt); "xla" / "cudnn" =
# ``jax.nn.dot_product_attention`` with that implementation over the prompt's and the
# row's keys together ("cudnn": cuDNN's fused flash attention, NVIDIA GPUs, bfloat16 /
# float16).  A decode step and soft-capped logits (Gemma 2) always take "blocked".
ATTENTION_KERNELS = ("blocked", "xla", "cudnn")


def check_attention_kernel(kernel: str) -> str:
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, got {kernel!r}")
    return kernel


def fused_attention(q: Array, k: Array, v: Array, bias: Array, scale: float, query_slot: int, prefix,
                    precision, kernel: str) -> Array:
    """``grouped_attention`` (same arguments and result) by ``jax.nn.dot_product_attention``:
    the keys up to the queries' last slot in its [B, S, KV, D] layout, a shared prompt's
    keys repeated for each of its rows in front of them, and the additive ``bias`` as a
    mask (it holds 0 or float32 min)."""
    if kernel == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"attention kernel 'cudnn' is cuDNN's, for NVIDIA GPUs; this process runs on "
                         f"{jax.default_backend()}: use the 'blocked' kernel (policy.attention=blocked)")
    if kernel == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention kernel 'cudnn' takes bfloat16 or float16 activations, got {q.dtype}: "
                         "run the policy in bfloat16 (policy.dtype=bfloat16) or use the 'blocked' kernel")
    b, t = q.shape[:2]
    keys = min(query_slot + t, k.shape[3])
    key_rows, value_rows = k[..., :keys].transpose(0, 3, 1, 2), v[:, :, :keys].transpose(0, 2, 1, 3)
    allowed = bias[..., :keys] == 0
    if prefix is not None:
        pk, pv, pbias = prefix
        n = b // pk.shape[0]
        key_rows = jnp.concatenate([jnp.repeat(pk.transpose(0, 3, 1, 2), n, axis=0), key_rows], axis=1)
        value_rows = jnp.concatenate([jnp.repeat(pv.transpose(0, 2, 1, 3), n, axis=0), value_rows], axis=1)
        allowed = jnp.concatenate([jnp.repeat(pbias == 0, n, axis=0), allowed], axis=-1)
    # the XLA implementation's products take the default precision: TF32 for float32 on a
    # GPU, so a HIGHEST model asks for it around the call
    highest = precision == jax.lax.Precision.HIGHEST
    with jax.default_matmul_precision("highest") if highest else contextlib.nullcontext():
        return jax.nn.dot_product_attention(q, key_rows.astype(q.dtype), value_rows.astype(q.dtype), mask=allowed,
                                            scale=scale, implementation=kernel)


def grouped_attention(q: Array, k: Array, v: Array, bias: Array, scale: float, cap: float | None,
                      query_slot: int | None = None, block: int | None = None, prefix=None,
                      precision=None, kernel: str = "blocked") -> Array:
    """Grouped-query attention: q [B, T, H, D], keys [B, KV, D, S], values [B, KV, S, D],
    additive ``bias`` [B, 1, T, S]; returns [B, T, H, D].

    Each kv head's G = H / KV query heads are stacked into the rows of one matmul (no
    repeated keys). With ``query_slot`` (a static int: the sequence slot of query 0, so
    the bias is causal from there) queries run in blocks of ``block`` and each block sees
    only the keys up to its last slot: the masked upper triangle is skipped, not computed
    and thrown away (about half the work of a full causal forward). Without it, every
    query sees all S keys (a decode step at a traced cache index).

    ``prefix`` = (keys [Bp, KV, D, P], values [Bp, KV, P, D], bias [Bp, 1, T, P]): keys
    every query sees before its own, shared by groups of n = B / Bp consecutive rows (the
    samples of one prompt, or a chosen and a rejected response). The n rows' queries go
    through the shared keys together, in one matmul per prompt and kv head, so the
    prompt's keys are read once for all its samples; the two softmax parts are merged by
    their log-sum-exp.  ``precision``: of the score and value products.  ``kernel`` (see
    ``ATTENTION_KERNELS``) other than "blocked": ``fused_attention`` where it applies."""
    if kernel != "blocked" and query_slot is not None and cap is None and q.shape[1] > 1:
        return fused_attention(q, k, v, bias, scale, query_slot, prefix, precision, kernel)
    b, t, heads, hd = q.shape
    kv, s = k.shape[1], k.shape[3]
    block = block or QUERY_BLOCK
    g = heads // kv
    qh = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)          # [B, KV, G, T, D]
    starts = range(0, t, block) if query_slot is not None else (0,)
    parts = []
    for q0 in starts:
        q1 = t if query_slot is None else min(q0 + block, t)
        keys = s if query_slot is None else min(query_slot + q1, s)
        rows = qh[:, :, :, q0:q1].reshape(b, kv, g * (q1 - q0), hd)
        parts.append(_partial_attention(rows, k[..., :keys], v[:, :, :keys], bias[:, :, None, q0:q1, :keys],
                                        (b, kv, g, q1 - q0), scale, cap, precision))
    out, top, total = parts[0] if len(parts) == 1 else (jnp.concatenate(x, axis=3) for x in zip(*parts))
    if prefix is not None:
        pk, pv, pbias = prefix
        n = b // pk.shape[0]
        shared_rows = qh.reshape(b // n, n, kv, g, t, hd).transpose(0, 2, 1, 3, 4, 5)     # [Bp, KV, n, G, T, D]
        shared = _partial_attention(shared_rows.reshape(b // n, kv, n * g * t, hd), pk, pv,
                                    pbias[:, :, None, None], (b // n, kv, n, g, t), scale, cap, precision)
        # back to one row per sample: [Bp, KV, n, G, T, .] -> [B, KV, G, T, .]
        shared = [x.transpose(0, 2, 1, 3, 4, 5).reshape(b, kv, g, t, -1) for x in shared]
        out, top, total = _merge_partials((out, top, total), shared)
    out = out / total
    return out.astype(q.dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, heads, hd)


def _partial_attention(rows: Array, k: Array, v: Array, bias: Array, shape: tuple, scale: float,
                       cap: float | None, precision=None):
    """Softmax attention of ``rows`` [..., M, D] over keys [..., D, S] and values [..., S, D],
    left unnormalised so that parts over different keys can be merged: returns (sum of
    exp(logit - max) v, max, sum of exp(logit - max)), each reshaped to ``shape`` + (D or 1,).
    ``bias`` broadcasts against the logits reshaped to ``shape`` + (S,). The max is held
    out of the gradient: the result does not depend on it."""
    logits = jnp.einsum("...md,...ds->...ms", rows, k, precision=precision).astype(jnp.float32) * scale
    logits = softcap(logits, cap).reshape(*shape, k.shape[-1]) + bias
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits - top)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("...ms,...sd->...md", weights.astype(v.dtype).reshape(*rows.shape[:-1], -1), v,
                     precision=precision)
    return out.astype(jnp.float32).reshape(*shape, v.shape[-1]), top, total


def _merge_partials(a, b):
    """Two unnormalised softmax parts over disjoint keys -> one (a part whose keys are all
    masked has max ~ float32 min, so its weight is exp(-huge) = 0)."""
    (out_a, top_a, total_a), (out_b, top_b, total_b) = a, b
    top = jnp.maximum(top_a, top_b)
    wa, wb = jnp.exp(top_a - top), jnp.exp(top_b - top)
    return out_a * wa + out_b * wb, top, total_a * wa + total_b * wb


class MLP(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    precision: object = None

    @nn.compact
    def __call__(self, x):
        cfg, precision = self.config, self.precision
        gate = dense(cfg.intermediate_size, ("embed", "mlp"), False, "gate_proj", self.dtype, precision)(x)
        up = dense(cfg.intermediate_size, ("embed", "mlp"), False, "up_proj", self.dtype, precision)(x)
        act = nn.silu if cfg.activation == "silu" else partial(nn.gelu, approximate=True)
        hidden = nn.with_logical_constraint(act(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(cfg.hidden_size, ("mlp", "embed"), False, "down_proj", self.dtype, precision)(hidden)


class SharedPrefix(NamedTuple):
    """Keys/values of prompts that groups of consecutive cache rows continue (the n samples
    of a prompt, a chosen and a rejected response): stored once per prompt and attended
    once per prompt and kv head for all of its rows, instead of copied n times."""
    k: tuple               # L arrays [Bp, KV, D, P]
    v: tuple               # L arrays [Bp, KV, P, D]
    mask: Array            # [Bp, P] bool: which prompt slots hold real tokens


class KVCache(NamedTuple):
    """Decode state: keys/values of every layer, which slots hold real tokens, the next
    slot to write and each row's next RoPE position; optionally a ``SharedPrefix`` whose
    slots come before slot 0."""
    k: tuple               # L arrays [B, KV, D, S]: one buffer per layer, so a decode step
    v: tuple               # L arrays [B, KV, S, D]; writes its token in place instead of copying a stacked cache
    mask: Array            # [B, S] bool
    index: Array | int     # next slot: a static int at trace time, an int32 array in a loop
    positions: Array       # [B] int32
    prefix: SharedPrefix | None = None


def _empty_slots(layers: int, batch: int, kv_heads: int, head_dim: int, length: int, dtype):
    """Zeroed keys [B, KV, D, S] and values [B, KV, S, D] for ``layers`` layers, and the
    [B, S] mask: the one place that spells out the cache layouts."""
    keys = tuple(jnp.zeros((batch, kv_heads, head_dim, length), dtype) for _ in range(layers))
    values = tuple(jnp.zeros((batch, kv_heads, length, head_dim), dtype) for _ in range(layers))
    return keys, values, jnp.zeros((batch, length), bool)


def init_cache(config: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    """An empty cache. Its ``index`` is the Python int 0 and stays an int through calls
    made at trace time (prefill, a shared prompt), so attention skips the empty slots;
    a decode loop carries it as an int32 array."""
    keys, values, mask = _empty_slots(config.num_layers, batch, config.num_kv_heads, config.head_dim, length, dtype)
    return KVCache(keys, values, mask, 0, jnp.zeros((batch,), jnp.int32))


def continue_prompts(prompt_cache: KVCache, rows_per_prompt: int, length: int) -> KVCache:
    """An empty cache of ``length`` slots for ``rows_per_prompt`` continuations of each
    prompt in a filled ``prompt_cache`` (row i * n + j continues prompt i), which becomes
    their shared prefix; positions go on from each prompt's own length."""
    if prompt_cache.prefix is not None:
        raise ValueError("the prompt cache already continues a shared prefix")
    prompts, kv_heads, head_dim, _ = prompt_cache.k[0].shape
    keys, values, mask = _empty_slots(len(prompt_cache.k), prompts * rows_per_prompt, kv_heads, head_dim, length,
                                      prompt_cache.k[0].dtype)
    return KVCache(keys, values, mask, 0, jnp.repeat(prompt_cache.positions, rows_per_prompt),
                   SharedPrefix(prompt_cache.k, prompt_cache.v, prompt_cache.mask))


def grow_cache(cache: KVCache, length: int) -> KVCache:
    """The cache with its own slots (not its shared prefix's) padded with empty ones to
    ``length``: a decode loop that has filled them goes on in a longer one."""
    extra = length - cache.mask.shape[1]
    return cache._replace(k=tuple(jnp.pad(k, ((0, 0), (0, 0), (0, 0), (0, extra))) for k in cache.k),
                          v=tuple(jnp.pad(v, ((0, 0), (0, 0), (0, extra), (0, 0))) for v in cache.v),
                          mask=jnp.pad(cache.mask, ((0, 0), (0, extra))))
