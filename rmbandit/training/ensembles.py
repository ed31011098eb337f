"""Ensemble labelling: preference pairs from the scores of ALL K RMs (the baselines that
routing is measured against; ALGORITHMS.md sections 2-3).

Every function takes ``scores`` [K, P, n] -- RM k's score of sample j of prompt p, NaN
where an RM dropped a response -- and returns ``(Pairs, weight)``: ``Pairs`` in the layout
of ``sample_pairs`` (``pairs_per_prompt`` slots per prompt, ``valid`` marking the filled
ones) and ``weight`` [slots] float32, the pair's weight in the loss (0 on an empty slot).
``PairBatch.valid`` is that weight: the step's loss is sum(valid * loss) / sum(valid).

- ``score_ensemble`` (LASeR's RM Score Ensemble, after Coste et al. 2023): the mean of the
  RMs' scores, then ``sample_pairs``.  LASeR averages the raw scores; its own text notes that
  this "is sensitive to the absolute scores produced (which may differ between RMs)", and our
  pools mix 0/1 verifiers, log-likelihoods and judge log-odds, so by default each RM's
  scores are first z-scored over each prompt's n samples (``normalise="zscore"``);
  ``normalise="none"`` is the paper's raw mean.
- ``weighted_score_ensemble``: the same with per-RM weights (the Online RM Ensemble: the
  weights a multiplicative-weights router gives, ``Assignment.scores``).
- ``agreement_ensemble`` (LASeR's RM Agreement Ensemble, after Wang et al. 2024): ``candidates``
  random pairs per prompt (LASeR: 100 of 32 samples), keep the ``pairs_per_prompt`` (10) on
  which the most RMs agree about the direction, labelled by the majority.
- ``majority_vote`` (BayesianRouter's baseline): pairs labelled by the majority of the RMs.
- ``uwo`` (Uncertainty-Weighted Optimisation, Coste et al. 2023, as BayesianRouter runs it):
  majority labels, each pair weighted by the fraction of the K RMs that agree with the majority.

A vote: RM k prefers i to j when both scores are finite and s_k[i] > s_k[j]; an RM that ties
the pair or dropped one of its responses abstains.  A pair has a label when more RMs prefer
one side than the other; a tie of votes (including no votes) gives no pair, as an RM's own
tie does in ``sample_pairs``.  Majority-vote and UWO slots are drawn uniformly without
replacement among the prompt's labelled pairs, as ``sample_pairs`` draws among one RM's.
Everything is jnp with static shapes: jit with the integer arguments static.
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit.training.pairs import Pairs, _candidates, sample_pairs

Array = jax.Array
NORMALISATIONS = ("zscore", "none")
Normalise = Literal["zscore", "none"]


# ---- scores ----------------------------------------------------------------------------------

def _check_scores(scores) -> Array:
    scores = jnp.asarray(scores, jnp.float32)
    if scores.ndim != 3 or scores.shape[0] < 1 or scores.shape[2] < 2:
        raise ValueError(f"scores must be [RMs, prompts, samples] with at least 1 RM and 2 samples per prompt, "
                         f"got shape {scores.shape}; stack each RM's [prompts, samples] scores on a leading axis")
    return scores


def normalise_scores(scores, normalise: Normalise = "zscore") -> Array:
    """[K, P, n] -> each RM's scores z-scored over each prompt's finite samples (NaN stays
    NaN; a prompt an RM scores all alike becomes all 0: that RM has no opinion there)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    scores = _check_scores(scores)
    if normalise == "none":
        return scores
    finite = jnp.isfinite(scores)
    count = jnp.maximum(finite.sum(-1, keepdims=True), 1)
    mean = jnp.where(finite, scores, 0.0).sum(-1, keepdims=True) / count
    centred = jnp.where(finite, scores - mean, 0.0)
    std = jnp.sqrt(jnp.sum(centred ** 2, -1, keepdims=True) / count)
    # alike exactly, not std > 0: the float32 mean of equal scores (0.1, 0.3) can be one ulp
    # off, and centred / std would make those +-1 ulp into z-scores of +-1
    highest = jnp.where(finite, scores, -jnp.inf).max(-1, keepdims=True)
    lowest = jnp.where(finite, scores, jnp.inf).min(-1, keepdims=True)
    varies = (highest > lowest) & (std > 0)
    z = jnp.where(varies, centred / jnp.where(varies, std, 1.0), 0.0)
    return jnp.where(finite, z, jnp.nan)


def _rm_weights(weights, num_rms: int, prompts: int) -> Array:
    """[K] or [P, K] non-negative weights -> [K, P, 1]."""
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape not in ((num_rms,), (prompts, num_rms)):
        raise ValueError(f"weights must be [RMs] = ({num_rms},) or [prompts, RMs] = ({prompts}, {num_rms}) "
                         f"(e.g. a router's Assignment.scores), got shape {weights.shape}")
    if not isinstance(weights, jax.core.Tracer):
        values = np.asarray(weights)
        if not (np.isfinite(values).all() and (values >= 0).all()):
            raise ValueError(f"weights must be finite and >= 0 (a distribution over the RMs, e.g. multiplicative "
                             f"weights' probabilities), got {values.tolist()}")
    return (weights[:, None] if weights.ndim == 1 else weights.T)[..., None]


def weighted_scores(scores, weights, normalise: Normalise = "zscore") -> Array:
    """[K, P, n] scores, [K] (or [P, K]) weights -> [P, n]: the weighted mean of the
    (normalised) scores over the RMs that scored each sample, NaN where none with weight
    did (a response one RM dropped keeps the others' opinion of it)."""
    scores = _check_scores(scores)
    return _weighted_scores(scores, _rm_weights(weights, scores.shape[0], scores.shape[1]), normalise)


@functools.partial(jax.jit, static_argnames="normalise")
def _weighted_scores(scores: Array, weights: Array, normalise: Normalise) -> Array:
    scores = normalise_scores(scores, normalise)
    w = jnp.broadcast_to(weights, scores.shape)
    w = jnp.where(jnp.isfinite(scores), w, 0.0)
    total = w.sum(0)
    mixed = jnp.sum(w * jnp.where(jnp.isfinite(scores), scores, 0.0), 0) / jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, mixed, jnp.nan)


def _with_weights(pairs: Pairs) -> tuple[Pairs, Array]:
    return pairs, pairs.valid.astype(jnp.float32)


def weighted_score_ensemble(scores, weights, pairs_per_prompt: int, key: Array,
                            normalise: Normalise = "zscore") -> tuple[Pairs, Array]:
    """Online RM Ensemble: ``sample_pairs`` on the weighted mean of the normalised scores."""
    return _with_weights(sample_pairs(weighted_scores(scores, weights, normalise), pairs_per_prompt, key))


def score_ensemble(scores, pairs_per_prompt: int, key: Array, normalise: Normalise = "zscore") -> tuple[Pairs, Array]:
    """RM Score Ensemble: ``sample_pairs`` on the mean of the RMs' (normalised) scores."""
    scores = _check_scores(scores)
    return weighted_score_ensemble(scores, jnp.ones((scores.shape[0],)), pairs_per_prompt, key, normalise)


# ---- votes -----------------------------------------------------------------------------------

def pair_votes(scores, first: Array, second: Array) -> tuple[Array, Array]:
    """[K, P, n] scores, candidate pairs (first[c], second[c]) -> (votes for first,
    votes for second), each [P, C] int32: the RMs that order the pair strictly."""
    a, b = scores[..., first], scores[..., second]                      # [K, P, C]
    both = jnp.isfinite(a) & jnp.isfinite(b)
    return (jnp.sum(both & (a > b), 0).astype(jnp.int32), jnp.sum(both & (b > a), 0).astype(jnp.int32))


def _take(priority: Array, slots: int) -> tuple[Array, Array]:
    """Per prompt, the ``slots`` candidates of highest priority and whether each is real
    (priority >= 0; an unavailable candidate has priority -1)."""
    top, picked = jax.lax.top_k(priority, slots)
    return picked, top >= 0.0


@functools.partial(jax.jit, static_argnames=("slots", "candidates", "by_agreement"))
def _labelled_pairs(scores, slots: int, key: Array, candidates: int | None, by_agreement: bool):
    """The shared core: votes on every pair i < j of each prompt; optionally restrict to
    ``candidates`` random ones; pick ``slots`` labelled pairs (uniformly, or the most
    agreed-on with random tie-breaks); chosen = the majority's side."""
    num_rms, prompts, n = scores.shape
    first, second = (jnp.asarray(x) for x in _candidates(n))
    for_first, for_second = pair_votes(scores, first, second)           # [P, C]
    labelled = for_first != for_second
    draw_key, candidate_key = jax.random.split(key)
    if candidates is not None:
        chosen_candidates = _take(jax.random.uniform(candidate_key, labelled.shape), candidates)[0]
        is_candidate = jnp.zeros(labelled.shape, bool).at[jnp.arange(prompts)[:, None], chosen_candidates].set(True)
        labelled = labelled & is_candidate
    majority_votes = jnp.maximum(for_first, for_second)
    noise = jax.random.uniform(draw_key, labelled.shape)                # in [0, 1): breaks ties only
    priority = majority_votes + noise if by_agreement else noise
    picked, valid = _take(jnp.where(labelled, priority, -1.0), slots)   # [P, slots]
    row = jnp.arange(prompts)[:, None]
    i, j = first[picked], second[picked]
    first_wins = for_first[row, picked] > for_second[row, picked]
    agreement = jnp.where(valid, majority_votes[row, picked] / num_rms, 0.0)
    pairs = Pairs(jnp.repeat(jnp.arange(prompts, dtype=jnp.int32), slots),
                  jnp.where(first_wins, i, j).reshape(-1).astype(jnp.int32),
                  jnp.where(first_wins, j, i).reshape(-1).astype(jnp.int32), valid.reshape(-1))
    return pairs, agreement.reshape(-1).astype(jnp.float32)


def _check_count(name: str, value, n: int) -> None:
    available = n * (n - 1) // 2
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value > available:
        raise ValueError(f"{name}={value} but {n} samples give only {available} distinct pairs; lower it or sample "
                         "more responses")


def majority_vote(scores, pairs_per_prompt: int, key: Array) -> tuple[Pairs, Array]:
    """BayesianRouter's Majority vote: ``pairs_per_prompt`` pairs per prompt drawn uniformly
    among those with a majority, chosen = the side most RMs prefer; weight 1."""
    scores = _check_scores(scores)
    _check_count("pairs_per_prompt", pairs_per_prompt, scores.shape[2])
    pairs, _ = _labelled_pairs(scores, slots=int(pairs_per_prompt), key=key, candidates=None, by_agreement=False)
    return _with_weights(pairs)


def uwo(scores, pairs_per_prompt: int, key: Array) -> tuple[Pairs, Array]:
    """UWO: the majority vote's pairs, each weighted by the fraction of the K RMs that
    agree with its majority (an RM that abstains counts as not agreeing)."""
    scores = _check_scores(scores)
    _check_count("pairs_per_prompt", pairs_per_prompt, scores.shape[2])
    return _labelled_pairs(scores, slots=int(pairs_per_prompt), key=key, candidates=None, by_agreement=False)


def agreement_ensemble(scores, pairs_per_prompt: int, key: Array, candidates: int = 100) -> tuple[Pairs, Array]:
    """LASeR's RM Agreement Ensemble: ``candidates`` random pairs per prompt (LASeR: 100 of
    32 samples), of which the ``pairs_per_prompt`` (LASeR: 10) with the most RMs on the
    majority's side (ties broken at random) become pairs labelled by that majority; weight 1.
    Fewer than ``candidates`` distinct pairs (n(n-1)/2 of n samples): every pair is a candidate."""
    scores = _check_scores(scores)
    if not isinstance(candidates, (int, np.integer)) or candidates < 1:
        raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
    n = scores.shape[2]
    candidates = min(int(candidates), n * (n - 1) // 2)
    if not isinstance(pairs_per_prompt, (int, np.integer)) or not 1 <= pairs_per_prompt <= candidates:
        raise ValueError(f"pairs_per_prompt (the pairs kept) must be an integer in [1, candidates={candidates}], "
                         f"got {pairs_per_prompt!r}")
    pairs, _ = _labelled_pairs(scores, slots=int(pairs_per_prompt), key=key, candidates=candidates, by_agreement=True)
    return _with_weights(pairs)
