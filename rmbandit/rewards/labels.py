"""Every RM of a pool on labelled preference pairs: the table the offline router learns from
(BayesianRouter's behaviour labels delta_i^n) and the controlled simulation replays.

Labelling the pairs once and saving the table keeps the LM RMs' minutes out of every later
experiment; the table stores how the pairs were made, so ``load`` can rebuild their texts
(``data.make_pairs`` is deterministic) and check they are the same pairs.

    pairs = data.make_pairs(data.load_suite("test", size_per_category=50))
    table = label_with_pool(pool, pairs, source={"split": "test", "per_category": 50, "seed": 0})
    save(table, "experiments/results/pool_labels_test.json")
    table.correct            # [N, K] bool: RM k prefers the chosen response of pair i
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence

import numpy as np

FORMAT = "rmbandit.pool_labels/1"


@dataclasses.dataclass(frozen=True)
class PoolLabels:
    rm_names: tuple[str, ...]
    prefer: np.ndarray          # [N, K] float32: P(chosen beats rejected) per RM; NaN where it dropped the pair
    seconds: np.ndarray         # [K] wall seconds each RM spent labelling the N pairs
    calls: np.ndarray           # [K] model calls (forward passes) each RM made for them
    task_ids: tuple[str, ...]   # [N] the task of each pair (pairs are rebuilt from ``source``)
    categories: tuple[str, ...]  # [N]
    source: dict                # how the pairs were made, e.g. {"split": "test", "per_category": 50, "seed": 0}

    def __post_init__(self):
        n, k = len(self.task_ids), len(self.rm_names)
        if self.prefer.shape != (n, k) or self.seconds.shape != (k,) or self.calls.shape != (k,) or \
                len(self.categories) != n:
            raise ValueError(f"inconsistent pool labels: prefer {self.prefer.shape}, seconds {self.seconds.shape}, "
                             f"calls {self.calls.shape} for {n} pairs and {k} RMs")

    @property
    def correct(self) -> np.ndarray:
        """[N, K] bool: the RM labels the pair as the ground truth does.  A tie (p = 0.5) or a
        dropped pair gives no training pair, so it is not a correct label."""
        return np.nan_to_num(self.prefer, nan=0.5) > 0.5

    @property
    def tie(self) -> np.ndarray:
        """[N, K] bool: the RM gives no label (p = 0.5 exactly, or NaN)."""
        return ~np.isfinite(self.prefer) | (self.prefer == 0.5)

    def cost_per_pair(self) -> dict[str, np.ndarray]:
        """Seconds and model calls per pair labelled, per RM ([K] each)."""
        n = max(len(self.task_ids), 1)
        return {"seconds": self.seconds / n, "calls": self.calls / n}

    def subset(self, rows) -> PoolLabels:
        """The pairs ``rows`` picks (indices or a boolean mask), with their share of the costs."""
        rows = np.arange(len(self.task_ids))[np.asarray(rows)]         # a mask as the indices it keeps
        share = len(rows) / max(len(self.task_ids), 1)
        return dataclasses.replace(self, prefer=self.prefer[rows], task_ids=tuple(np.asarray(self.task_ids)[rows]),
                                   categories=tuple(np.asarray(self.categories)[rows]),
                                   seconds=self.seconds * share, calls=self.calls * share)


def label_with_pool(pool: Sequence, pairs: Sequence, source: dict | None = None,
                    log=lambda message: None) -> PoolLabels:
    """Every RM of ``pool`` on every pair (``data.Pair``: chosen is the correct response)."""
    if not pairs:
        raise ValueError("label_with_pool got no pairs; build them with data.make_pairs(tasks)")
    prompts = [p.task.prompt for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    prefer, seconds, calls = [], [], []
    for rm in pool:
        calls_before, start = rm.cost.calls, time.perf_counter()
        prefer.append(rm.prefer(prompts, chosen, rejected))
        seconds.append(time.perf_counter() - start)
        calls.append(rm.cost.calls - calls_before)
        log(f"{rm.name}: {len(pairs)} pairs in {seconds[-1]:.1f} s")
    return PoolLabels(tuple(rm.name for rm in pool), np.stack(prefer, 1).astype(np.float32),
                      np.asarray(seconds, np.float64), np.asarray(calls, np.float64),
                      tuple(p.task.id for p in pairs), tuple(p.task.category for p in pairs), dict(source or {}))


def save(labels: PoolLabels, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "format": FORMAT, "source": labels.source, "rm_names": list(labels.rm_names),
        "seconds": labels.seconds.tolist(), "calls": labels.calls.tolist(),
        "pairs": [{"task_id": t, "category": c, "prefer": [None if np.isnan(v) else float(v) for v in row]}
                  for t, c, row in zip(labels.task_ids, labels.categories, labels.prefer)]}, indent=None) + "\n")
    return path


def load(path) -> PoolLabels:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no pool-label table at {path}; write one with "
                                "`python experiments/pool_labels.py` (it labels the suite's pairs with every RM)")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a pool-label table: name the table's .json file in it")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is truncated or not a pool-label table: "
                         "write it again with `python experiments/pool_labels.py`") from err
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pool-label table (format {FORMAT!r}); write one with "
                         "`python experiments/pool_labels.py`")
    pairs = raw["pairs"]
    prefer = np.array([[np.nan if v is None else v for v in p["prefer"]] for p in pairs], np.float32)
    return PoolLabels(tuple(raw["rm_names"]), prefer.reshape(len(pairs), len(raw["rm_names"])),
                      np.asarray(raw["seconds"], np.float64), np.asarray(raw["calls"], np.float64),
                      tuple(p["task_id"] for p in pairs), tuple(p["category"] for p in pairs), raw["source"])


def check_pairs(labels: PoolLabels, pairs: Sequence) -> None:
    """Raise unless ``pairs`` are the pairs the table was made from (same tasks, same order)."""
    ids = tuple(p.task.id for p in pairs)
    if ids != labels.task_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, labels.task_ids)) if a != b), min(len(ids),
                                                                                             len(labels.task_ids)))
        raise ValueError(f"the pairs do not match the pool-label table ({len(ids)} vs {len(labels.task_ids)} pairs, "
                         f"first difference at pair {first}); rebuild them from the table's source "
                         f"{labels.source} or label these pairs again")
