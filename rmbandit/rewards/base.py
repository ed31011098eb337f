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
(When a batch raises under "drop", its items are scored again one at a time, so only the
items that fail are dropped.)  Bad input -- columns of different lengths, an empty batch,
an item that is not a string -- is the caller's bug and always raises.

State.  Whatever an RM changes as it scores -- its ``cost``, the RNG of a random RM or a
noise wrapper, a score cache -- is explicit, so that a resumed run labels exactly as the
uninterrupted one would: ``rm.state_dict()`` gives it as a nested dict of str / int /
float / lists (JSON as it is: save it with ``orbax.checkpoint.args.JsonSave`` or
``json.dump``) and ``rm.load_state_dict(state)`` puts it back into an RM built from the
same config.  The parts: ``cost``, one entry per stateful part in ``rm.parts`` (objects with
``state_dict`` / ``load_state_dict``, e.g. a counter-based RNG, whose state is a call count,
or a score cache, whose state is its three columns), and ``inner``, the wrapped RM's state.
``pool.pool_state`` / ``pool.load_pool_state`` do the same for a whole pool.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Literal, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
PreferFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
OnInvalid = Literal["raise", "drop"]


class RewardModelError(RuntimeError):
    """An RM failed or returned an invalid score; the message names the RM."""


class Stateful(Protocol):
    """A part of an RM that changes as it scores (an RNG, a cache); its state is JSON-like."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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
    on_invalid: OnInvalid = "raise"
    kind: str = "custom"
    cost: Cost = dataclasses.field(default_factory=Cost)
    # a counter of the underlying model's forward passes (an LM RM splits a batch into
    # micro-batches); without one, each batch counts as one call
    model_calls: Callable[[], int] | None = None
    # what changes as the RM scores, besides ``cost`` (see the module docstring: State)
    parts: dict[str, Stateful] = dataclasses.field(default_factory=dict)
    inner: RewardModel | None = None       # the RM a wrapper wraps; its state is part of this one's

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
        _check_columns(self.name, prompts=prompts, responses=responses)
        return self._run(self.score_fn, prompts, responses)

    def prefer(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a beats b) [N]; NaN where a score was dropped (``on_invalid="drop"``)."""
        _check_columns(self.name, prompts=prompts, a=a, b=b)
        if self.prefer_fn is not None:
            return np.clip(self._run(self.prefer_fn, prompts, a, b), 0.0, 1.0)
        n = len(prompts)
        scores = self.score(list(prompts) + list(prompts), list(a) + list(b))
        return (1.0 / (1.0 + np.exp(-(scores[:n] - scores[n:]).astype(np.float64)))).astype(np.float32)

    def state_dict(self) -> dict:
        """The RM's mutable state as a JSON-like nested dict (see the module docstring)."""
        state = {"cost": dataclasses.asdict(self.cost)}
        state.update({key: part.state_dict() for key, part in self.parts.items()})
        if self.inner is not None:
            state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` of an RM built from the same config entry."""
        expected = ["cost", *self.parts, *(["inner"] if self.inner is not None else [])]
        if not isinstance(state, dict) or sorted(state) != sorted(expected):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"RM {self.name!r} ({self.kind}): the state to restore has keys {got}, this RM has "
                             f"{sorted(expected)}; was it saved from an RM built from another config entry?")
        self.cost = Cost(**state["cost"])
        for key, part in self.parts.items():
            part.load_state_dict(state[key])
        if self.inner is not None:
            self.inner.load_state_dict(state["inner"])

    def _run(self, fn, *columns) -> np.ndarray:
        n = len(columns[0])
        out = np.empty(n, np.float32)
        failures: dict[int, str] = {}           # item index -> the exception, under on_invalid="drop"
        start = time.perf_counter()
        calls_before = self.model_calls() if self.model_calls else 0
        try:
            for lo in range(0, n, self.batch_size):
                batch = [list(c[lo:lo + self.batch_size]) for c in columns]
                out[lo:lo + len(batch[0])] = self._batch(fn, batch, lo, failures)
        finally:
            self.cost.seconds += time.perf_counter() - start
            if self.model_calls:
                self.cost.calls += self.model_calls() - calls_before
        self.cost.items += n
        bad = ~np.isfinite(out)
        if bad.any():
            first = int(np.argmax(bad))
            if failures:
                index, error = next(iter(failures.items()))
                message = (f"RM {self.name!r} ({self.kind}) failed on {len(failures)} of {n} items (first at index "
                           f"{index}: {error})")
                if int(bad.sum()) > len(failures):
                    message += f" and returned a non-finite score for {int(bad.sum()) - len(failures)} more"
            else:
                message = (f"RM {self.name!r} ({self.kind}) returned a non-finite score for {int(bad.sum())} of {n} "
                           f"items (first at index {first}: {out[first]})")
            if self.on_invalid == "raise":
                raise RewardModelError(message + "; fix the RM, or build it with on_invalid='drop' to drop "
                                                 "those pairs")
            log.warning("%s; dropped", message)
            self.cost.invalid += int(bad.sum())
            out[bad] = np.nan
        return out

    def _batch(self, fn, batch, offset: int, failures: dict) -> np.ndarray:
        """``fn`` on one batch; under "drop", a batch that raises is scored again item by item
        and the items that raise get NaN (their errors go to ``failures``)."""
        try:
            return self._call(fn, batch)
        except RewardModelError:
            raise
        except Exception as err:      # name the RM; the caller's state (policy, router) is untouched
            if self.on_invalid == "raise":
                raise RewardModelError(f"RM {self.name!r} ({self.kind}) failed: {_describe(err)}") from err
            if len(batch[0]) == 1:
                failures[offset] = _describe(err)
                return np.full(1, np.nan, np.float32)
        values = np.full(len(batch[0]), np.nan, np.float32)
        for i in range(len(batch[0])):
            try:
                values[i] = self._call(fn, [[column[i]] for column in batch])[0]
            except RewardModelError:
                raise
            except Exception as err:
                failures[offset + i] = _describe(err)
        return values

    def _call(self, fn, batch) -> np.ndarray:
        values = np.asarray(fn(*batch), np.float32).reshape(-1)
        if values.shape[0] != len(batch[0]):      # a broken RM, not a bad item: never dropped
            raise RewardModelError(f"RM {self.name!r} returned {values.shape[0]} values for a batch of "
                                   f"{len(batch[0])}")
        self.cost.calls += 0 if self.model_calls else 1
        return values


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def _check_columns(name, **columns):
    """Equal, non-zero lengths and strings only: bad input is the caller's bug, never dropped."""
    for key, column in columns.items():
        if isinstance(column, (str, bytes)):
            raise TypeError(f"RM {name!r}: {key} must be a sequence of strings, got one {type(column).__name__}; "
                            f"wrap it in a list")
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"RM {name!r}: inputs differ in length {lengths}; each needs one entry per item")
    if not next(iter(lengths.values())):
        raise ValueError(f"RM {name!r}: empty batch (0 {' / '.join(lengths)}); call it with at least one item")
    for key, column in columns.items():
        for i, item in enumerate(column):
            if not isinstance(item, str):
                raise TypeError(f"RM {name!r}: {key}[{i}] is {type(item).__name__} ({item!r:.60}), not str; "
                                f"RMs score text")


def label_pairs(rm: RewardModel, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]):
    """Label candidate pairs with ``rm``: -> (a_wins bool [N], keep bool [N], p [N]).

    Ties (p = 0.5 exactly: equal scores, an abstaining verifier) and dropped scores (NaN)
    give no pair, as both papers do."""
    p = rm.prefer(prompts, a, b)
    keep = np.isfinite(p) & (p != 0.5)
    return np.nan_to_num(p, nan=0.5) > 0.5, keep, p
