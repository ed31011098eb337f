"""Preference pairs from scored samples (ALGORITHMS.md section 1, step 2).

Each prompt has n sampled responses scored by the routed RM.  A pair (y_w, y_l) needs a
strict score gap, R(y_w) > R(y_l): ties, and responses whose score is NaN (an RM that
dropped them), give no pair.  Up to ``pairs_per_prompt`` pairs are drawn per prompt, uniformly
without replacement among the prompt's valid unordered pairs (LASeR: P = 10 of n = 30).
Shapes are static for jit: every prompt gets ``pairs_per_prompt`` slots, with ``valid`` marking
the filled ones, so a batch whose prompts all tie has ``valid.any() == False`` and the caller
skips its step (and gives the router no update).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Pairs(NamedTuple):
    prompt: Array       # [P * pairs_per_prompt] int32: the prompt of each slot
    chosen: Array       # [P * pairs_per_prompt] int32: index (0..n-1) of y_w among the prompt's samples
    rejected: Array     # [P * pairs_per_prompt] int32: index of y_l
    valid: Array        # [P * pairs_per_prompt] bool: the slot holds a pair (strict gap, finite scores)


def _candidates(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs i < j of n samples (n (n-1) / 2 of them; 435 for n = 30)."""
    i, j = np.triu_indices(n, k=1)
    return i.astype(np.int32), j.astype(np.int32)


def _one_prompt(scores: Array, key: Array, first: Array, second: Array, pairs_per_prompt: int):
    a, b = scores[first], scores[second]
    ok = jnp.isfinite(a) & jnp.isfinite(b) & (a != b)
    # uniform without replacement among the valid pairs: the top-k of random priorities
    priority = jnp.where(ok, jax.random.uniform(key, ok.shape), -1.0)
    top, picked = jax.lax.top_k(priority, pairs_per_prompt)
    i, j = first[picked], second[picked]
    a_wins = scores[i] > scores[j]
    return jnp.where(a_wins, i, j), jnp.where(a_wins, j, i), top >= 0.0


def sample_pairs(scores: Array, pairs_per_prompt: int, key: Array) -> Pairs:
    """``scores`` [P, n] (one row per prompt, NaN for a dropped response) -> ``Pairs`` with
    ``pairs_per_prompt`` slots per prompt, chosen = the higher-scored response of each pair."""
    scores = jnp.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [prompts, samples] with at least 2 samples per prompt, got shape "
                         f"{scores.shape}; sample n >= 2 responses per prompt")
    prompts, n = scores.shape
    if not isinstance(pairs_per_prompt, (int, np.integer)) or pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be a positive integer, got {pairs_per_prompt!r}")
    first, second = _candidates(n)
    if pairs_per_prompt > len(first):
        raise ValueError(f"pairs_per_prompt={pairs_per_prompt} but {n} samples give only {len(first)} "
                         f"distinct pairs; lower it or sample more responses")
    keys = jax.random.split(key, prompts)
    chosen, rejected, valid = jax.vmap(_one_prompt, in_axes=(0, 0, None, None, None))(
        scores, keys, jnp.asarray(first), jnp.asarray(second), pairs_per_prompt)
    prompt = jnp.repeat(jnp.arange(prompts, dtype=jnp.int32), pairs_per_prompt)
    return Pairs(prompt, chosen.reshape(-1).astype(jnp.int32), rejected.reshape(-1).astype(jnp.int32),
                 valid.reshape(-1))


def candidate_pairs(prompts: int, n: int, pairs_per_prompt: int, key: Array) -> tuple[Array, Array]:
    """Unlabelled pairs for per-pair routing (BayesianRouter): ``pairs_per_prompt`` distinct
    unordered pairs (first < second) of each prompt's n samples, uniformly without
    replacement -> (first, second), each [prompts, pairs_per_prompt].  The router picks an
    RM for each pair before any RM has scored it; that RM's label orders it (``labelled``)."""
    first, second = _candidates(n)
    if not isinstance(pairs_per_prompt, (int, np.integer)) or not 1 <= pairs_per_prompt <= len(first):
        raise ValueError(f"pairs_per_prompt must be an integer in [1, {len(first)}] for {n} samples per prompt, "
                         f"got {pairs_per_prompt!r}")
    picked = jax.vmap(lambda k: jax.random.choice(k, len(first), (pairs_per_prompt,), replace=False))(
        jax.random.split(key, prompts))
    return jnp.asarray(first)[picked], jnp.asarray(second)[picked]


def labelled(first: Array, second: Array, prefer: Array) -> Pairs:
    """Candidate pairs ordered by their RMs' labels: ``prefer`` [prompts, P] is P(first beats
    second) from the RM that labelled each pair; a tie (0.5) or a dropped label (NaN) gives
    no pair, as in ``sample_pairs``."""
    first, second, prefer = jnp.asarray(first), jnp.asarray(second), jnp.asarray(prefer)
    if not first.shape == second.shape == prefer.shape or first.ndim != 2:
        raise ValueError(f"first, second and prefer must be [prompts, pairs] of one shape, got {first.shape}, "
                         f"{second.shape} and {prefer.shape}")
    first_wins = prefer > 0.5
    prompt = jnp.repeat(jnp.arange(first.shape[0], dtype=jnp.int32), first.shape[1])
    return Pairs(prompt, jnp.where(first_wins, first, second).reshape(-1).astype(jnp.int32),
                 jnp.where(first_wins, second, first).reshape(-1).astype(jnp.int32),
                 (jnp.isfinite(prefer) & (prefer != 0.5)).reshape(-1))
