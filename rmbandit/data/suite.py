"""The bundled task suite: deterministic train/test tasks in four categories, as Task lists,
chat prompts or a ``datasets.Dataset``.

The categories are ones where different reward models are good (so routing matters):
``arithmetic`` (short word problems, numeric answer), ``multiple_choice`` (A-D), ``format``
(IFEval-style constraints, checked on the response's form) and ``factual`` (short answers and
yes/no questions from the shipped tables).  Tasks are short and easy on purpose: a 135M chat
model should improve on them measurably within minutes.

Splits are disjoint by subject (see ``task.split_of``): no test prompt, and no test country,
element, animal, topic or arithmetic problem, appears in train, for any seed.
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Sequence

import numpy as np

from rmbandit import text
from rmbandit.data.generators import GENERATORS
from rmbandit.data.task import CATEGORIES, SPLITS, Task

DEFAULT_SIZE = {"train": 200, "test": 50}
# Consecutive draws that bring nothing new before a category counts as exhausted.  A draw fails
# when its subject is in the other split (3 in 4 for arithmetic on the test split) or its prompt
# was drawn already; a streak this long means almost every prompt of the split has been seen.
_MAX_FRUITLESS_DRAWS = 5000


def load_suite(split: str = "train", *, size_per_category: int | None = None,
               categories: Sequence[str] | None = None, seed: int = 0) -> list[Task]:
    """``size_per_category`` distinct tasks of each category (default 200 train, 50 test), grouped
    by category in the order asked.  The same arguments always give the same tasks.  All but
    ``split`` are keyword-only: a seed passed where a size or the categories go is an error."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    categories = CATEGORIES if categories is None else tuple(categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(CATEGORIES)}")
    size = DEFAULT_SIZE[split] if size_per_category is None else size_per_category
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size_per_category must be a positive integer, got {size!r}")
    tasks: list[Task] = []
    for category in dict.fromkeys(categories):   # a category asked twice is generated once
        # one stream per (seed, category, split): asking for fewer categories changes no task
        rng = np.random.default_rng([seed, zlib.crc32(category.encode()), SPLITS.index(split)])
        tasks += _distinct_tasks(category, split, int(size), rng)
    return tasks


def _distinct_tasks(category: str, split: str, size: int, rng: np.random.Generator) -> list[Task]:
    make = GENERATORS[category]
    found: dict[str, Task] = {}
    fruitless = 0
    while len(found) < size:
        task = make(rng, split)
        if task is None or task.prompt in found:
            fruitless += 1
            if fruitless > _MAX_FRUITLESS_DRAWS:
                raise ValueError(f"could draw only {len(found)} distinct {category} tasks for the {split} split; "
                                 f"ask for fewer than {size}")
            continue
        found[task.prompt] = task
        fruitless = 0
    return list(found.values())


def chat_prompt(tokenizer, task: Task | str, system: str | None = None) -> str:
    """The task as the model sees it: ``rmbandit.text.chat_prompt`` of its prompt (the
    tokenizer's chat template around one user turn, ending with the assistant's generation
    prompt).  ``system`` replaces the template's default system message, if given."""
    return text.chat_prompt(tokenizer, task.prompt if isinstance(task, Task) else task, system)


def to_dataset(tasks: Sequence[Task]):
    """A ``datasets.Dataset`` with one row per task: id, category, prompt, answer, check and
    meta (as a JSON string, since its keys differ between categories)."""
    import datasets  # heavy import, only where a Dataset is wanted

    rows = {"id": [], "category": [], "prompt": [], "answer": [], "check": [], "meta": []}
    for task in tasks:
        for column in ("id", "category", "prompt", "answer", "check"):
            rows[column].append(getattr(task, column))
        rows["meta"].append(json.dumps(task.info, sort_keys=True))
    features = datasets.Features({column: datasets.Value("string") for column in rows})
    return datasets.Dataset.from_dict(rows, features=features)


def task_from_row(row: dict) -> Task:
    """The Task back from a ``to_dataset`` row (JSON lists come back as tuples)."""
    return Task(id=row["id"], category=row["category"], prompt=row["prompt"], answer=row["answer"],
                check=row["check"], meta=tuple(sorted((k, _as_tuples(v)) for k, v in json.loads(row["meta"]).items())))


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
