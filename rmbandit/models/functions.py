"""Pure functions the training loop needs from a decoder: response log-probs and prompt
embeddings.  All take (model, params, ...) and jit as they are."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmbandit.models.layers import continue_prompts, gather_real, init_cache, real_token_index, scatter_real

Array = jax.Array


class LogProbs(NamedTuple):
    per_token: Array       # [B, T-1] log p(token t | tokens < t), 0 outside the response
    total: Array           # [B] sum over response tokens (DPO's log pi(y|x))
    mean: Array            # [B] length-normalised (total / response length)
    length: Array          # [B] number of response tokens


def picked_logprobs(logits: Array, targets: Array) -> Array:
    """log softmax(logits)[target] for logits [..., V] and targets [...], as the target's
    logit minus the log-sum-exp: the [..., V] log-softmax is never materialised, and
    the shift is held out of the gradient (it cancels), so autodiff does not go back
    through the max."""
    logits = logits.astype(jnp.float32)
    shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    log_norm = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=-1)) + shift[..., 0]
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_norm


def _masked(picked: Array, mask: Array) -> LogProbs:
    mask = mask.astype(jnp.float32)
    per_token = picked * mask
    length = mask.sum(-1)
    total = per_token.sum(-1)
    return LogProbs(per_token, total, total / jnp.maximum(length, 1.0), length)


def token_logprobs(logits: Array, input_ids: Array, response_mask: Array) -> LogProbs:
    """Log-probs of the tokens marked by ``response_mask`` [B, T] (1 on response tokens,
    0 on prompt and padding), from logits [B, T, V] of the same sequences."""
    picked = picked_logprobs(logits, jnp.roll(input_ids, -1, axis=1))[:, :-1]     # slice the picks, not the logits
    return _masked(picked, response_mask[:, 1:])


def sequence_logprobs(model, params, input_ids: Array, attention_mask: Array, response_mask: Array) -> LogProbs:
    """Chosen and rejected responses go through in one call: stack them on the batch axis."""
    logits = model.apply({"params": params}, input_ids, attention_mask)
    return token_logprobs(logits, input_ids, response_mask * attention_mask)


def prompt_embeddings(model, params, input_ids: Array, attention_mask: Array, pooling: str = "last") -> Array:
    """Final hidden state of each prompt [B, D]: ``last`` token (LASeR's context; prompts
    must be left-padded so the last position is real), ``first`` real token, or ``mean``
    over real tokens (LASeR's ablation)."""
    hidden = model.apply({"params": params}, input_ids, attention_mask, return_hidden=True)
    mask = attention_mask.astype(hidden.dtype)
    if pooling == "last":
        return hidden[:, -1]
    if pooling == "first":
        first = jnp.argmax(attention_mask, axis=-1)
        return jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0]
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    raise ValueError(f"pooling must be 'last', 'first' or 'mean', got {pooling!r}")


def shared_prompt_logprobs(model, params, prompt_ids: Array, prompt_mask: Array, response_ids: Array,
                           response_mask: Array, response_tokens: int | None = None) -> LogProbs:
    """Log-probs of k responses per prompt, running each prompt once.

    prompt_ids [N, P] left-padded; response_ids [k, N, R] right-padded (k = 2: chosen and
    rejected).  The prompt fills a KV cache (only its last position is projected onto the
    vocabulary: it predicts the first response token) that becomes the responses' shared
    prefix (``layers.SharedPrefix``): N P + k N R token positions instead of k N (P + R),
    the prompt's keys read once for its k responses, and vocabulary logits only where a
    response token is predicted.  Differentiable end to end (the DPO step takes gradients
    through it).  Returns LogProbs with a leading [k * N] axis (response-major).

    ``response_tokens`` (static; at least the number of real response tokens, see
    ``token_bucket``): the responses run as their real tokens alone (the model's
    ``real_tokens``), so their right padding costs no matmul and no vocabulary projection.
    """
    k, n, r = response_ids.shape
    cache = init_cache(model.config, n, prompt_ids.shape[1], model.dtype)
    first_logits, cache = model.apply({"params": params}, prompt_ids, prompt_mask, cache=cache, last_only=True)
    # rows prompt-major (row i * k + j: response j of prompt i), as the shared prefix wants
    ids = response_ids.transpose(1, 0, 2).reshape(n * k, r)
    mask = response_mask.transpose(1, 0, 2).reshape(n * k, r)
    next_ids = jnp.roll(ids, -1, axis=1)          # each position's target: the next token (the last one's is a dummy)
    if response_tokens is None:
        logits, _ = model.apply({"params": params}, ids, mask, cache=continue_prompts(cache, k, r))
        # sliced after picking: slicing [k N, R, V] logits would copy all of them
        rest = picked_logprobs(logits, next_ids)[:, :-1]
    else:
        logits, _ = model.apply({"params": params}, ids, mask, cache=continue_prompts(cache, k, r),
                                real_tokens=response_tokens)
        real = real_token_index(mask.astype(bool), response_tokens)
        picked = picked_logprobs(logits[:, 0], gather_real(next_ids, real)[:, 0])
        rest = scatter_real(picked[:, None], real, (n * k, r))[:, :-1]
    # pick before concatenating: [k N, R] log-probs, not a copy of [k N, R, V] logits
    first = picked_logprobs(jnp.repeat(first_logits[:, -1], k, axis=0), ids[:, 0])
    picked = jnp.concatenate([first[:, None], rest], axis=1)
    back = lambda x: x.reshape(n, k, r).transpose(1, 0, 2).reshape(k * n, r)      # response-major again
    return _masked(back(picked), back(mask))


def token_bucket(tokens: int, multiple: int = 64) -> int:
    """A static ``response_tokens`` for this many real tokens: a multiple of ``multiple``
    with at most four significant bits (steps of 1/8 above 8 multiples: under 12.5 %
    padding, eight sizes per doubling, so a run compiles its step for a few sizes)."""
    count = max(-(-int(tokens) // multiple), 1)
    step = 1 << max(count.bit_length() - 4, 0)
    return -(-count // step) * step * multiple


def classifier_scores(model, params, input_ids: Array, attention_mask: Array) -> Array:
    """A sequence-classifier RM's outputs [B, num_labels] at each row's last real token
    (left or right padding), as HF ``*ForSequenceClassification`` pools."""
    scores = model.apply({"params": params}, input_ids, attention_mask)          # [B, T, L]
    last = attention_mask.shape[1] - 1 - jnp.argmax(attention_mask[:, ::-1], axis=-1)
    return jnp.take_along_axis(scores, last[:, None, None], axis=1)[:, 0]
