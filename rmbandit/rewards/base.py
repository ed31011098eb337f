"""The reward-model interface: one small class for every kind.

An RM is built from a function and a little bookkeeping:

- pointwise: ``score(prompts, responses) -> float32 [N]`` (higher is better);
- pairwise: ``prefer(prompts, a, b) -> float32 [N]``, the probability that ``a`` beats
  ``b`` (0.5 = no preference).  A pointwise RM gets ``prefer`` for free (Bradley-Terry:
  sigmoid of the score difference); a pairwise judge only has ``prefer``.

Prompts are the plain user messages (the task text); responses are plain text.  Each
LM-based RM applies its own tokenizer and chat template, since RMs of one pool rarely
share a tokenizer.

Every call is split into batches of ``batch_size``, timed and counted in ``rm.cost``
(seconds, model calls, items).  Invalid output is never passed on silently: with
``on_invalid="raise"`` (default) a NaN/inf score or an exception inside the RM raises
``RewardModelError`` naming the RM; with ``on_invalid="drop"`` the item's score is NaN,
counted in ``cost.invalid`` and logged, and ``label_pairs`` drops every pair it touches.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
PreferFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


class RewardModelError(RuntimeError):
    """An RM failed or returned an invalid score; the message names the RM."""


@dataclasses.dataclass
class Cost:
    seconds: float = 0.0
    calls: int = 0           # model forward passes (or batches, for models without a counter)
    items: int = 0           # responses scored (a pairwise comparison counts as one)
    invalid: int = 0         # NaN / inf outputs dropped under on_invalid="drop"

    def per_1000(self) -> dict:
        scale = 1000.0 / max(self.items, 1)
        return {"seconds": self.seconds * scale, "calls": self.calls * scale}


@dataclasses.dataclass(eq=False)
class RewardModel:
    """``score_fn`` / ``prefer_fn`` see one batch at a time and return float arrays."""
    name: str
    score_fn: ScoreFn | None = None
    prefer_fn: PreferFn | None = None
    batch_size: int = 64
    on_invalid: str = "raise"
    kind: str = "custom"
    cost: Cost = dataclasses.field(default_factory=Cost)
    # a counter of the underlying model's forward passes (an LM RM splits a batch into
    # micro-batches); without one, each batch counts as one call
    model_calls: Callable[[], int] | None = None

    def __post_init__(self):
        if self.score_fn is None and self.prefer_fn is None:
            raise ValueError(f"RM {self.name!r} needs a score_fn (pointwise) or a prefer_fn (pairwise)")
        if self.on_invalid not in ("raise", "drop"):
            raise ValueError(f"on_invalid must be 'raise' or 'drop', got {self.on_invalid!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def pointwise(self) -> bool:
        return self.score_fn is not None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if self.score_fn is None:
            raise TypeError(f"RM {self.name!r} is a pairwise judge: it has prefer(prompts, a, b), not score()")
        _same_length(self.name, prompts=prompts, responses=responses)
        return self._run(self.score_fn, prompts, responses)

    def prefer(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a beats b) [N]; NaN where a score was dropped (``on_invalid="drop"``)."""
        _same_length(self.name, prompts=prompts, a=a, b=b)
        if self.prefer_fn is not None:
            return np.clip(self._run(self.prefer_fn, prompts, a, b), 0.0, 1.0)
        n = len(prompts)
        scores = self.score(list(prompts) + list(prompts), list(a) + list(b))
        return (1.0 / (1.0 + np.exp(-(scores[:n] - scores[n:]).astype(np.float64)))).astype(np.float32)

    def _run(self, fn, *columns) -> np.ndarray:
        n = len(columns[0])
        out = np.empty(n, np.float32)
        start = time.perf_counter()
        calls_before = self.model_calls() if self.model_calls else 0
        try:
            for lo in range(0, n, self.batch_size):
                batch = [list(c[lo:lo + self.batch_size]) for c in columns]
                values = np.asarray(fn(*batch), np.float32).reshape(-1)
                if values.shape[0] != len(batch[0]):
                    raise RewardModelError(f"RM {self.name!r} returned {values.shape[0]} values for a batch of "
                                           f"{len(batch[0])}")
                out[lo:lo + len(batch[0])] = values
                self.cost.calls += 0 if self.model_calls else 1
        except RewardModelError:
            raise
        except Exception as err:      # name the RM; the caller's state (policy, router) is untouched
            raise RewardModelError(f"RM {self.name!r} ({self.kind}) failed: {type(err).__name__}: {err}") from err
        finally:
            self.cost.seconds += time.perf_counter() - start
            if self.model_calls:
                self.cost.calls += self.model_calls() - calls_before
        self.cost.items += n
        bad = ~np.isfinite(out)
        if bad.any():
            first = int(np.argmax(bad))
            message = (f"RM {self.name!r} ({self.kind}) returned a non-finite score for {int(bad.sum())} of {n} "
                       f"items (first at index {first}: {out[first]})")
            if self.on_invalid == "raise":
                raise RewardModelError(message + "; fix the RM, or build it with on_invalid='drop' to drop "
                                                 "those pairs")
            log.warning("%s; dropped", message)
            self.cost.invalid += int(bad.sum())
            out[bad] = np.nan
        return out


def _same_length(name, **columns):
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"RM {name!r}: inputs differ in length {lengths}")
    for key, column in columns.items():
        if isinstance(column, str):
            raise TypeError(f"RM {name!r}: {key} must be a sequence of strings, got one string")


def label_pairs(rm: RewardModel, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]):
    """Label candidate pairs with ``rm``: -> (a_wins bool [N], keep bool [N], p [N]).

    Ties (p = 0.5 exactly: equal scores, an abstaining verifier) and dropped scores (NaN)
    give no pair, as both papers do."""
    p = rm.prefer(prompts, a, b)
    keep = np.isfinite(p) & (p != 0.5)
    return np.nan_to_num(p, nan=0.5) > 0.5, keep, p
