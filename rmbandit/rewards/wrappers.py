"""RMs made from other RMs: Gaussian score noise (LASeR's noise study), a random binary RM,
an inverted RM, and a score cache so re-scoring a (prompt, response) costs nothing.

Their state is explicit (``rm.state_dict()``, see ``base``): random draws come from a
``CounterRNG`` (call k of a stream draws from ``default_rng([seed, stream, k])``, so its state
is one count), and the cache is a ``ScoreCache`` (its state: prompts, responses, scores)."""
from __future__ import annotations

import zlib

import numpy as np

from rmbandit.rewards.base import RewardModel


class CounterRNG:
    """Counter-based random numbers: each call gets a fresh generator keyed by (seed, stream,
    call count).  Restoring the count resumes the exact sequence; ``stream`` keeps two users
    of one seed (a random RM with noise on top) independent."""

    def __init__(self, seed: int, stream: str):
        self.seed, self.stream, self.calls = int(seed), stream, 0

    def next(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, zlib.crc32(self.stream.encode()), self.calls])
        self.calls += 1
        return rng

    def state_dict(self) -> dict:
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"the saved {self.stream} RNG has seed {state['seed']}, this RM was built with seed "
                             f"{self.seed}; build it from the config entry the state was saved with")
        self.calls = int(state["calls"])


class ScoreCache:
    """Finite scores by (prompt, response)."""

    def __init__(self):
        self.scores: dict[tuple[str, str], float] = {}

    def __len__(self):
        return len(self.scores)

    def __contains__(self, key):
        return key in self.scores

    def state_dict(self) -> dict:
        return {"prompts": [k[0] for k in self.scores], "responses": [k[1] for k in self.scores],
                "scores": list(self.scores.values())}

    def load_state_dict(self, state: dict) -> None:
        columns = [list(state[k]) for k in ("prompts", "responses", "scores")]
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"a saved score cache needs prompts, responses and scores of one length, got "
                             f"{[len(c) for c in columns]}")
        self.scores = {(p, r): float(v) for p, r, v in zip(*columns)}


def with_noise(rm: RewardModel, sigma: float, seed: int = 0, name: str | None = None) -> RewardModel:
    """score + N(0, sigma^2), a fresh draw per call; for a pairwise judge the noise is
    added to the log-odds of its preference."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    rng = CounterRNG(seed, "noise")
    name = name or f"{rm.name}+noise{sigma:g}"
    if rm.pointwise:
        return _derived(rm, name, "noisy", {"rng": rng},
                        score_fn=lambda p, r: rm.score(p, r) + rng.next().normal(0.0, sigma, len(p)))

    def prefer(prompts, a, b):
        q = np.clip(rm.prefer(prompts, a, b).astype(np.float64), 1e-6, 1 - 1e-6)
        logit = np.log(q) - np.log1p(-q) + rng.next().normal(0.0, sigma, len(prompts))
        return 1.0 / (1.0 + np.exp(-logit))
    return _derived(rm, name, "noisy", {"rng": rng}, prefer_fn=prefer)


def random_rm(seed: int = 0, name: str = "random") -> RewardModel:
    """Scores 0 or 1 with equal probability, independent of the input: a pair gets a
    random winner half the time and is a tie (no pair) otherwise."""
    rng = CounterRNG(seed, "random")
    return RewardModel(name, score_fn=lambda p, r: rng.next().integers(0, 2, len(p)).astype(np.float32),
                       batch_size=1 << 16, kind="random", parts={"rng": rng})


def inverted(rm: RewardModel, name: str | None = None) -> RewardModel:
    """The reverse preference: -score, or 1 - P(a beats b)."""
    name = name or f"{rm.name}-inverted"
    if rm.pointwise:
        return _derived(rm, name, "inverted", {}, score_fn=lambda p, r: -rm.score(p, r))
    return _derived(rm, name, "inverted", {}, prefer_fn=lambda p, a, b: 1.0 - rm.prefer(p, a, b))


def cached(rm: RewardModel) -> RewardModel:
    """Scores keyed by (prompt, response): only unseen pairs reach ``rm``.  The cache is
    ``result.parts["cache"]`` and part of ``result.state_dict()``.  A score that failed or
    is not finite is never stored (it is asked again next time).  Pointwise RMs only (a
    judge's verdict depends on the pair)."""
    if not rm.pointwise:
        raise TypeError(f"cached() needs a pointwise RM; {rm.name!r} is a pairwise judge")
    cache = ScoreCache()

    def score(prompts, responses):
        keys = list(zip(prompts, responses))
        todo = list(dict.fromkeys(k for k in keys if k not in cache.scores))     # each unseen key once
        fresh = {}
        if todo:
            values = rm.score([k[0] for k in todo], [k[1] for k in todo])
            fresh = dict(zip(todo, values.tolist()))
            cache.scores.update((k, v) for k, v in fresh.items() if np.isfinite(v))
        return np.array([cache.scores[k] if k in cache.scores else fresh[k] for k in keys], np.float32)

    return _derived(rm, rm.name, "cached", {"cache": cache}, score_fn=score, batch_size=1 << 30)


def _derived(rm: RewardModel, name: str, how: str, parts: dict, **fns) -> RewardModel:
    """A wrapper's model calls are its inner RM's (a cache hit costs none)."""
    fields = dict(score_fn=None, prefer_fn=None, batch_size=rm.batch_size, on_invalid=rm.on_invalid,
                  model_calls=lambda: rm.cost.calls, parts=parts, inner=rm)
    fields.update(fns)
    return RewardModel(name, kind=f"{how}({rm.kind})", **fields)


__all__ = ["CounterRNG", "ScoreCache", "cached", "inverted", "random_rm", "with_noise"]
