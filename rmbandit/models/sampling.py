"""Sampling: prefill + KV-cache decode under jit, left-padded prompts, n samples per
prompt, temperature / top-k / top-p / greedy, EOS and max-new-tokens stops, a PRNG key
per sample.  Lengths are bucketed by the caller (``bucket``) so a run compiles a few times."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.models.layers import init_cache

Array = jax.Array


class Samples(NamedTuple):
    tokens: Array          # [B * n, max_new] (pad_id after the stop)
    mask: Array            # [B * n, max_new] 1 on generated tokens, EOS included
    logprobs: Array        # [B * n, max_new] log p(token) under the unscaled model (temperature 1)


def bucket(length: int, multiple: int = 32) -> int:
    """Round a length up so that nearby lengths share one compiled program."""
    return max(multiple, -(-length // multiple) * multiple)


def filter_logits(logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Scaled logits with everything outside the top-k / nucleus set to -inf."""
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        drop_sorted = cumulative - jax.nn.softmax(sorted_logits, axis=-1) >= top_p   # keeps the first token
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_samples", "temperature",
                                             "top_k", "top_p", "eos_ids", "pad_id"))
def generate(model, params, prompt_ids: Array, prompt_mask: Array, key: Array, *, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_ids: tuple[int, ...] = (), pad_id: int = 0) -> Samples:
    """Left-padded prompts [B, P] -> ``num_samples`` continuations each (rows grouped by
    prompt: row i * n + j is sample j of prompt i).  temperature 0 is greedy."""
    # the samples of a prompt share it: prefill each prompt once, projecting only its last
    # position onto the vocabulary, then copy the cache for the samples
    cache = init_cache(model.config, prompt_ids.shape[0], prompt_ids.shape[1] + max_new_tokens, model.dtype)
    logits, cache = model.apply({"params": params}, prompt_ids, prompt_mask, cache=cache, last_only=True)
    cache = jax.tree.map(lambda x: jnp.repeat(x, num_samples, axis=0) if jnp.ndim(x) else x, cache)
    cache = cache._replace(index=jnp.int32(cache.index))       # a loop carries the slot as an array
    logits = jnp.repeat(logits, num_samples, axis=0)
    rows = logits.shape[0]
    row_keys = jax.random.split(key, rows)                  # one stream per sample

    def pick(logits, step):
        logp = jax.nn.log_softmax(logits, axis=-1)
        if temperature == 0.0:
            token = jnp.argmax(logits, axis=-1)
        else:
            # inverse-CDF sampling: one uniform per row instead of a Gumbel draw per vocabulary entry
            u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(row_keys)
            cdf = jnp.cumsum(jax.nn.softmax(filter_logits(logits, temperature, top_k, top_p), axis=-1), axis=-1)
            token = jnp.minimum(jnp.sum(cdf < u[:, None] * cdf[:, -1:], axis=-1), logits.shape[-1] - 1)
        return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]

    def body(carry):
        step, last_logits, cache, done, tokens, out_mask, out_logp = carry
        token, logp = pick(last_logits, step)
        live = ~done
        token = jnp.where(live, token, pad_id)
        tokens = tokens.at[:, step].set(token)
        out_mask = out_mask.at[:, step].set(live)
        out_logp = out_logp.at[:, step].set(jnp.where(live, logp, 0.0))
        done = done | (live & jnp.isin(token, jnp.asarray(eos_ids, jnp.int32))) if eos_ids else done
        logits, cache = model.apply({"params": params}, token[:, None], live[:, None].astype(jnp.int32), cache=cache)
        return step + 1, logits[:, -1], cache, done, tokens, out_mask, out_logp

    def cond(carry):
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[3])

    init = (jnp.int32(0), logits[:, -1], cache, jnp.zeros((rows,), bool),
            jnp.full((rows, max_new_tokens), pad_id, jnp.int32), jnp.zeros((rows, max_new_tokens), bool),
            jnp.zeros((rows, max_new_tokens), jnp.float32))
    _, _, _, _, tokens, out_mask, out_logp = jax.lax.while_loop(cond, body, init)
    return Samples(tokens, out_mask.astype(jnp.int32), out_logp)
