"""The task record shared by the generators, the checkers and the pair builder, and the
rule that puts every task in the train or the test split."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

CATEGORIES = ("arithmetic", "multiple_choice", "format", "factual")
SPLITS = ("train", "test")
CHECKS = ("number", "choice", "yes_no", "text", "symbol", "format")

# A quarter of every subject (country, element, animal, topic, arithmetic problem) is test-only.
_TEST_BUCKETS = 4


@dataclasses.dataclass(frozen=True)
class Task:
    """One prompt with a verifiable answer.

    answer: the reference answer (a number, a letter A-D, "yes"/"no", a short string); for
      format tasks the constraint as canonical JSON, e.g. ``{"kind": "max_words", "n": 12}``.
    check: which checker ``is_correct`` applies (one of ``CHECKS``).
    meta: extra information as ``(key, value)`` pairs with hashable values (so tasks can go in
      sets): the MC options, the format constraint, the distractors the pair builder uses, ...
    """
    id: str
    category: str
    prompt: str
    answer: str
    check: str
    meta: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.meta).get(key, default)

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.meta)


def split_of(subject_key: str) -> str:
    """The split a subject belongs to, from a hash of its key ("country:France",
    "arith:add:7:12", ...).

    Splitting by subject rather than by prompt keeps a test fact out of training in any
    wording or category (no "capital of France?" in train when "Is Paris the capital of
    France?" is a test question), for every seed; a hash, not a shuffle, keeps each subject's
    split fixed when rows are added to a table.
    """
    digest = hashlib.sha256(subject_key.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % _TEST_BUCKETS == 0 else "train"


def make_task(category: str, split: str, prompt: str, answer: str, check: str, **meta: Any) -> Task:
    # The id depends on the content only, so one task has one id whichever seed drew it.
    digest = hashlib.sha256(f"{category}\n{prompt}".encode()).hexdigest()[:12]
    return Task(id=f"{category}/{split}/{digest}", category=category, prompt=prompt, answer=answer, check=check,
                meta=tuple(sorted(meta.items())))
