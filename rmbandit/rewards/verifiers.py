"""Rule verifiers over the bundled task suite (LASeR's "correctness RM" and narrower ones).

A verifier needs each prompt's task (reference answer, checker); it is built with the
tasks whose prompts it will see and looks them up by prompt text.  Scores are 1 (pass)
or 0 (fail); a verifier that has no opinion on a task (a numbers-only verifier on a
multiple-choice question) gives every response the same score, so a pair is a tie and
yields no preference.

- ``correctness``: the final answer against the reference (number / choice letter / yes-no
  / short string, normalised); abstains on format tasks, whose "answer" is a constraint;
- ``numeric``: correctness for tasks with a numeric answer only;
- ``format``: the format constraint of format tasks; on the others only that a final
  answer can be extracted at all (a weak, content-blind signal);
- ``length``: shorter is better (a classic RM bias, useful as a deliberately poor arm).
"""
from __future__ import annotations

from typing import Iterable, Literal, Sequence, get_args

import numpy as np

from rmbandit import data
from rmbandit.rewards.base import OnInvalid, RewardModel

ABSTAIN = 0.5
VerifierKind = Literal["correctness", "numeric", "format", "length"]
KINDS = get_args(VerifierKind)


def task_index(tasks: Iterable) -> dict:
    index = {}
    for task in tasks:
        index.setdefault(task.prompt, task)
    return index


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _correctness(task, response):
    return ABSTAIN if task.category == "format" else float(data.is_correct(task, response))


def _numeric(task, response):
    return float(data.is_correct(task, response)) if _is_number(task.answer) and task.category != "format" \
        else ABSTAIN


def _format(task, response):
    if task.category == "format":
        return float(data.is_correct(task, response))
    return float(data.extract_answer(task, response) is not None)


RULES = {"correctness": _correctness, "numeric": _numeric, "format": _format}


def verifier(kind: VerifierKind, tasks: Iterable = (), name: str | None = None,
             on_invalid: OnInvalid = "raise") -> RewardModel:
    if kind not in KINDS:
        raise ValueError(f"unknown verifier kind {kind!r}; choose from {KINDS}")
    if kind == "length":
        return RewardModel(name or "length", score_fn=lambda p, r: -np.array([len(x) for x in r], np.float32),
                           batch_size=1 << 16, kind="verifier:length", on_invalid=on_invalid)
    index = task_index(tasks)
    if not index:
        raise ValueError(f"the {kind} verifier needs the tasks whose prompts it will score; got none")
    rule = RULES[kind]

    def score(prompts: Sequence[str], responses: Sequence[str]):
        out = np.empty(len(prompts), np.float32)
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            task = index.get(prompt)
            if task is None:
                raise KeyError(f"no task has the prompt {prompt[:60]!r}...; build the verifier with the tasks "
                               "the prompts come from")
            out[i] = rule(task, response)
        return out

    return RewardModel(name or f"{kind}-verifier", score_fn=score, batch_size=1 << 16, kind=f"verifier:{kind}",
                       on_invalid=on_invalid)
