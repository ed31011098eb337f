"""Sampling: prefill + KV-cache decode under jit, left-padded prompts, n samples per
prompt, temperature / top-k / top-p / greedy, EOS and max-new-tokens stops, a PRNG key
per sample.  Prompts come from ``rmbandit.text.encode_prompts`` (chat template, left
padding, lengths bucketed with ``bucket``) so a run compiles a few times."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.models.layers import BF16_WEIGHTS, continue_prompts, grow_cache, init_cache
from rmbandit.text import bucket          # also re-exported: callers bucket prompt lengths with it

Array = jax.Array


class Samples(NamedTuple):
    tokens: Array          # [B * n, max_new] (pad_id after the stop)
    mask: Array            # [B * n, max_new] 1 on generated tokens, EOS included
    logprobs: Array        # [B * n, max_new] log p(token) under the unscaled model (temperature 1)
    prompt_hidden: Array   # [B, D] final hidden state at each prompt's last position (LASeR's context,
                           # from the prefill the samples need anyway)


def with_bfloat16_weights(model, params):
    """(model, params) -> the same policy reading bfloat16 copies of its weight matrices:
    every product with a weight (projections, MLP, vocabulary head) rounds both operands to
    bfloat16 and accumulates in float32 (``layers.BF16_WEIGHTS``), while activations, norms,
    attention and the KV cache stay float32.

    For sampling a float32 policy on CPU: a decode step multiplies 16-row activations by
    every weight, and XLA:CPU's bfloat16 kernels run those products 2.3-2.6x as fast as its
    float32 ones (the whole sampler 1.4x).  It changes which tokens are drawn, the samples'
    log-probs and the prefill's hidden states (LASeR's context) to bfloat16 accuracy; the
    DPO step recomputes every log-prob it trains on in float32.  A policy that is not
    float32 comes back unchanged."""
    if jnp.dtype(model.dtype) != jnp.float32:
        return model, params
    cast = lambda x: x.astype(jnp.bfloat16) if x.ndim >= 2 and x.dtype == jnp.float32 else x
    return model.clone(precision=BF16_WEIGHTS), jax.tree.map(cast, params)


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
        drop_sorted = cumulative - jax.nn.softmax(sorted_logits, axis=-1) >= top_p
        drop_sorted = drop_sorted.at[..., 0].set(False)         # the most likely token stays, even at top_p 0
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


CDF_BLOCK = 256        # vocabulary entries per block of the two-level inverse CDF


def inverse_cdf(weights: Array, u: Array, block: int = CDF_BLOCK) -> Array:
    """For each row of non-negative ``weights`` [R, V] (not normalised) and ``u`` [R] in
    [0, 1): the first index whose cumulative weight exceeds u * total, so index i comes
    out with probability weights[i] / total and a zero-weight index never does.

    Two levels: block sums and their running total pick the block that holds the draw,
    then a running total inside that one block picks the entry. A cumulative sum over
    the whole vocabulary (49k entries a row) cost more than the rest of the sampling step
    on XLA:CPU."""
    rows, vocab = weights.shape
    blocks = -(-vocab // block)
    padded = jnp.pad(weights, ((0, 0), (0, blocks * block - vocab))).reshape(rows, blocks, block)
    sums = padded.sum(-1)                                               # [R, blocks]
    ends = jnp.cumsum(sums, axis=-1)
    target = u * ends[:, -1]
    # rounding can put the target at or past the end of the last nonzero block (or entry):
    # clamp to it, so that a zero weight is never drawn
    chosen = jnp.minimum(jnp.sum(ends <= target[:, None], axis=-1), _last_positive(sums))
    start = jnp.where(chosen > 0, jnp.take_along_axis(ends, jnp.maximum(chosen - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    entries = jnp.take_along_axis(padded, chosen[:, None, None], axis=1)[:, 0]      # [R, block]
    inside = jnp.cumsum(entries, axis=-1)
    offset = jnp.minimum(jnp.sum(inside <= (target - start)[:, None], axis=-1), _last_positive(entries))
    return chosen * block + offset


def _last_positive(x: Array) -> Array:
    """Index of the last positive entry of each row of ``x`` [R, N] (0 if there is none)."""
    n = x.shape[-1]
    return jnp.max(jnp.where(x > 0, jnp.arange(n), 0), axis=-1)


def decode_chunks(max_new_tokens: int, chunks: int, multiple: int = 8) -> list[int]:
    """Ends of the decode loop's chunks: about equal, multiples of ``multiple``, the last
    at ``max_new_tokens``."""
    size = bucket(-(-max_new_tokens // chunks), multiple)
    return list(range(size, max_new_tokens, size)) + [max_new_tokens]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_samples", "temperature",
                                             "top_k", "top_p", "eos_ids", "pad_id", "chunks"))
def generate(model, params, prompt_ids: Array, prompt_mask: Array, key: Array, *, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_ids: tuple[int, ...] = (), pad_id: int = 0, chunks: int = 4) -> Samples:
    """Left-padded prompts [B, P] -> ``num_samples`` continuations each (rows grouped by
    prompt: row i * n + j is sample j of prompt i).  temperature 0 is greedy.

    The decode runs in ``chunks`` loops whose caches hold only the slots that loop can
    fill, so attention reads the generated keys written so far rather than all
    ``max_new_tokens`` slots (on average 5/8 of them for 4 chunks); each chunk is one more
    compiled loop body."""
    # the samples of a prompt share it: prefill each prompt once, projecting only its last
    # position onto the vocabulary; its keys and values become the samples' shared prefix
    # (read once per prompt by attention, never copied per sample)
    prompt_cache = init_cache(model.config, prompt_ids.shape[0], prompt_ids.shape[1], model.dtype)
    (logits, hidden), prompt_cache = model.apply({"params": params}, prompt_ids, prompt_mask, cache=prompt_cache,
                                                 last_only=True, with_hidden=True)
    ends = decode_chunks(max_new_tokens, chunks)
    cache = continue_prompts(prompt_cache, num_samples, ends[0])
    cache = cache._replace(index=jnp.int32(cache.index))       # a loop carries the slot as an array
    logits = jnp.repeat(logits, num_samples, axis=0)
    rows = logits.shape[0]
    row_keys = jax.random.split(key, rows)                  # one stream per sample

    def pick(logits, step):
        # log p(token) under the model at temperature 1: the token's logit minus the log-sum-exp
        top = jnp.max(logits, axis=-1, keepdims=True)
        unscaled = jnp.exp(logits - top)
        log_norm = jnp.log(jnp.sum(unscaled, axis=-1)) + top[:, 0]
        if temperature == 0.0:
            token = jnp.argmax(logits, axis=-1)
        else:
            # inverse-CDF sampling: one uniform per row instead of a Gumbel draw per vocabulary
            # entry; the top logit is never filtered out, so top / T is the scaled maximum
            u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(row_keys)
            if temperature == 1.0 and not top_k and top_p >= 1.0:
                weights = unscaled
            else:
                weights = jnp.exp(filter_logits(logits, temperature, top_k, top_p) - top / temperature)
            token = inverse_cdf(weights, u)
        picked = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
        return token.astype(jnp.int32), picked - log_norm

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

    carry = (jnp.int32(0), logits[:, -1], cache, jnp.zeros((rows,), bool),
             jnp.full((rows, max_new_tokens), pad_id, jnp.int32), jnp.zeros((rows, max_new_tokens), bool),
             jnp.zeros((rows, max_new_tokens), jnp.float32))
    for i, end in enumerate(ends):
        if i:
            carry = carry[:2] + (grow_cache(carry[2], end),) + carry[3:]
        carry = jax.lax.while_loop(lambda c, end=end: (c[0] < end) & ~jnp.all(c[3]), body, carry)
    _, _, _, _, tokens, out_mask, out_logp = carry
    return Samples(tokens, out_mask.astype(jnp.int32), out_logp, hidden[:, -1])
