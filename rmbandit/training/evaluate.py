"""Greedy accuracy per category on held-out tasks (the bundled suite's test split)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rmbandit import data

# (user messages) -> responses as text
Respond = Callable[[Sequence[str]], list[str]]


def accuracy_by_category(respond: Respond, tasks: Sequence[data.Task], batch_size: int = 64) -> dict[str, float]:
    """Share of ``tasks`` whose response ``data.is_correct`` accepts, per category, plus
    ``all`` (the mean over categories, so each counts the same whatever its size)."""
    responses: list[str] = []
    for start in range(0, len(tasks), batch_size):
        responses += respond([t.prompt for t in tasks[start:start + batch_size]])
    correct = np.asarray([data.is_correct(t, r) for t, r in zip(tasks, responses)], bool)
    categories = np.asarray([t.category for t in tasks])
    result = {str(c): float(correct[categories == c].mean()) for c in dict.fromkeys(categories)}
    result["all"] = float(np.mean(list(result.values()))) if result else float("nan")
    return result


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Generated token rows -> text, each cut at its mask (EOS and padding dropped)."""
    rows = [row[:int(m.sum())].tolist() for row, m in zip(np.asarray(tokens), np.asarray(mask))]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
