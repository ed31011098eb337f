"""RMs made from other RMs: Gaussian score noise (LASeR's noise study), a random binary RM,
an inverted RM, and a score cache so re-scoring a (prompt, response) costs nothing."""
from __future__ import annotations


import numpy as np

from rmbandit.rewards.base import RewardModel


def with_noise(rm: RewardModel, sigma: float, seed: int = 0, name: str | None = None) -> RewardModel:
    """score + N(0, sigma^2), a fresh draw per call; for a pairwise judge the noise is
    added to the log-odds of its preference."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    rng = np.random.default_rng(seed)
    name = name or f"{rm.name}+noise{sigma:g}"
    if rm.pointwise:
        return _derived(rm, name, "noisy", score_fn=lambda p, r: rm.score(p, r) + rng.normal(0.0, sigma, len(p)))

    def prefer(prompts, a, b):
        q = np.clip(rm.prefer(prompts, a, b).astype(np.float64), 1e-6, 1 - 1e-6)
        logit = np.log(q) - np.log1p(-q) + rng.normal(0.0, sigma, len(prompts))
        return 1.0 / (1.0 + np.exp(-logit))
    return _derived(rm, name, "noisy", prefer_fn=prefer)


def random_rm(seed: int = 0, name: str = "random") -> RewardModel:
    """Scores 0 or 1 with equal probability, independent of the input: a pair gets a
    random winner half the time and is a tie (no pair) otherwise."""
    rng = np.random.default_rng(seed)
    return RewardModel(name, score_fn=lambda p, r: rng.integers(0, 2, len(p)).astype(np.float32),
                       batch_size=1 << 16, kind="random")


def inverted(rm: RewardModel, name: str | None = None) -> RewardModel:
    """The reverse preference: -score, or 1 - P(a beats b)."""
    name = name or f"{rm.name}-inverted"
    if rm.pointwise:
        return _derived(rm, name, "inverted", score_fn=lambda p, r: -rm.score(p, r))
    return _derived(rm, name, "inverted", prefer_fn=lambda p, a, b: 1.0 - rm.prefer(p, a, b))


def cached(rm: RewardModel) -> RewardModel:
    """Scores keyed by (RM name, prompt, response): only unseen pairs reach ``rm``.  The
    cache is ``result.cache`` (a dict), so it can be saved and restored with a run.
    Pointwise RMs only (a judge's verdict depends on the pair)."""
    if not rm.pointwise:
        raise TypeError(f"cached() needs a pointwise RM; {rm.name!r} is a pairwise judge")
    store: dict[tuple[str, str, str], float] = {}

    def score(prompts, responses):
        keys = [(rm.name, p, r) for p, r in zip(prompts, responses)]
        todo = list(dict.fromkeys(k for k in keys if k not in store))     # each unseen key once
        if todo:
            values = rm.score([k[1] for k in todo], [k[2] for k in todo])
            store.update(zip(todo, values.tolist()))
        return np.array([store[k] for k in keys], np.float32)

    wrapped = _derived(rm, rm.name, "cached", score_fn=score, batch_size=1 << 30)
    wrapped.cache = store
    return wrapped


def _derived(rm: RewardModel, name: str, how: str, **fns) -> RewardModel:
    """A wrapper's model calls are its inner RM's (a cache hit costs none)."""
    fields = dict(score_fn=None, prefer_fn=None, batch_size=rm.batch_size, on_invalid=rm.on_invalid,
                  model_calls=lambda: rm.cost.calls)
    fields.update(fns)
    return RewardModel(name, kind=f"{how}({rm.kind})", **fields)


__all__ = ["cached", "inverted", "random_rm", "with_noise"]
