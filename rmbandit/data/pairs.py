"""Labelled preference pairs for the suite: a correct and an incorrect response to each task,
written the way a small chat model writes, for measuring each reward model's pairwise accuracy
per category.

A pair should be hard to separate by anything but correctness.  So the chosen and the
rejected response draw their style independently (a bare answer, a sentence, reasoning then
"The answer is X."), fluent openers and closers are added to either side at random, and the
wrong answers are the plausible ones: an off-by-one or wrong-operation result with matching
working, right working with a slipped final line, the tempting MC option, a negated or
self-contradicting yes/no, a format violation that is otherwise fluent and on topic (one word
too many, one lowercase word, a numbered list instead of bullets, a paraphrased end phrase).
Every pair is checked on construction: ``is_correct`` accepts the chosen and rejects the
rejected response.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np

from rmbandit.data import formats, tables
from rmbandit.data.answers import is_correct
from rmbandit.data.generators import END_PHRASES, JSON_KEYS
from rmbandit.data.task import Task

_OPENERS = ("", "", "", "Sure! ", "Let's see. ", "Good question. ")
_CLOSERS = ("", "", "", " Hope this helps!", " Let me know if you have more questions.",
            " This is a well-known fact.")
_ATTEMPTS = 20     # fresh style draws before a pair that fails its own check counts as a bug


@dataclasses.dataclass(frozen=True)
class Pair:
    """``chosen`` answers ``task`` correctly, ``rejected`` does not; ``kind`` says how the
    rejected response went wrong ("off_by_one", "distractor_option", "negated",
    "one_word_too_many", ...); the styles say how each was written."""
    task: Task
    chosen: str
    rejected: str
    kind: str
    chosen_style: str
    rejected_style: str

    @property
    def prompt(self) -> str:
        return self.task.prompt


def make_pairs(tasks: Sequence[Task], seed: int = 0, per_task: int = 2) -> list[Pair]:
    """``per_task`` pairs per task, each with a different kind of wrong answer where the task
    has enough kinds.  Deterministic: a task's pairs depend only on the task and the seed."""
    if not isinstance(per_task, int) or per_task < 1:
        raise ValueError(f"per_task must be a positive integer, got {per_task!r}")
    pairs = []
    for task in tasks:
        rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(task.id.encode()).digest()[:8], "big")])
        kinds_of, build = _BUILDERS[_builder_name(task)]
        kinds = kinds_of(task)
        order = [kinds[i] for i in rng.permutation(len(kinds))]
        for i in range(per_task):
            pairs.append(_checked_pair(task, order[i % len(order)], build, rng))
    return pairs


def reference_response(task: Task) -> str:
    """A correct response: the reference answer itself, or for a format task a response that
    satisfies the constraint (the answer there is the constraint, not a response)."""
    if task.check != "format":
        return task.answer
    return _format_chosen(task, formats.parse_spec(task.answer), np.random.default_rng(0))[0]


def _checked_pair(task: Task, kind: str, build: Callable, rng: np.random.Generator) -> Pair:
    for _ in range(_ATTEMPTS):
        chosen, chosen_style, rejected, rejected_style = build(task, kind, rng)
        if is_correct(task, chosen) and not is_correct(task, rejected):
            return Pair(task, chosen, rejected, kind, chosen_style, rejected_style)
    raise RuntimeError(f"could not build a valid {kind!r} pair for {task.id}: last chosen {chosen!r}, "
                       f"rejected {rejected!r}")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _dress(rng: np.random.Generator, text: str, opener: bool = True) -> str:
    """An opener and a closer at random: chat-model padding that carries no answer."""
    return f"{_pick(rng, _OPENERS) if opener else ''}{text}{_pick(rng, _CLOSERS)}"


# ---------------------------------------------------------------------------------------------
# arithmetic: the answer and its working

def _arithmetic_kinds(task: Task) -> list[str]:
    return [kind for kind, _, _ in task.get("distractors")]


def _arithmetic_response(rng, value, equation: str, reasoning: str, slip: bool = False) -> tuple[str, str]:
    working = reasoning.replace("{eq}", equation)
    if slip:      # right working, wrong final line
        return _dress(rng, f"{working} The answer is {value}."), "reasoning_then_answer"
    styles = {"terse": f"{value}",
              "statement": f"The answer is {value}.",
              "equation": f"{equation}.",
              "reasoning_then_answer": f"{working} The answer is {value}.",
              "answer_then_reasoning": f"The answer is {value}. {working}",
              "reasoning_only": working}
    style = _pick(rng, sorted(styles))
    text = styles[style] if style == "terse" else _dress(rng, styles[style])
    return text, style


def _arithmetic_pair(task: Task, kind: str, rng):
    reasoning = task.get("reasoning")
    chosen, chosen_style = _arithmetic_response(rng, task.answer, task.get("equation"), reasoning)
    _, value, equation = next(d for d in task.get("distractors") if d[0] == kind)
    rejected, rejected_style = _arithmetic_response(rng, value, equation, reasoning, slip=kind == "final_line_slip")
    return chosen, chosen_style, rejected, rejected_style


# ---------------------------------------------------------------------------------------------
# multiple choice

def _choice_kinds(task: Task) -> list[str]:
    return ["distractor_option", "other_wrong_option", "mislabelled_option"]


def _choice_response(rng, letter: str, text: str, claim: str, show_text: bool = False) -> tuple[str, str]:
    reason = _sentence(claim.format(text))
    styles = {"letter": letter,
              "letter_text": f"{letter}) {text}",
              "answer_is": f"The answer is {letter}) {text}." if show_text or rng.random() < 0.5
              else f"The correct answer is {letter}.",
              "reason_then_letter": f"{reason}, so the answer is {letter}.",
              "letter_then_reason": f"{letter}. {reason}."}
    names = sorted(styles)
    if show_text:     # a mislabelled option only shows as such next to its text
        names = [n for n in names if n != "letter"]
    style = _pick(rng, names)
    return (styles[style] if style in ("letter", "letter_text") else _dress(rng, styles[style])), style


def _choice_pair(task: Task, kind: str, rng):
    options, claim = task.get("options"), task.get("claim")
    right = "ABCD".index(task.answer)
    chosen, chosen_style = _choice_response(rng, task.answer, options[right], claim)
    wrong = [i for i in range(4) if i != right]
    if kind == "mislabelled_option":      # the right text under a wrong letter
        rejected, rejected_style = _choice_response(rng, "ABCD"[_pick(rng, wrong)], options[right], claim, True)
    else:
        lure = options.index(task.get("lure"))
        index = lure if kind == "distractor_option" else _pick(rng, [i for i in wrong if i != lure])
        rejected, rejected_style = _choice_response(rng, "ABCD"[index], options[index], claim)
    return chosen, chosen_style, rejected, rejected_style


# ---------------------------------------------------------------------------------------------
# factual short answers (text, symbol, number)

def _short_kinds(task: Task) -> list[str]:
    return sorted({kind for kind, _ in task.get("distractors")})


def _short_response(rng, value: str, claim: str) -> tuple[str, str]:
    styles = {"terse": value,
              "sentence": f"{_sentence(claim.format(value))}.",
              "answer_is": f"The answer is {value}.",
              "hedged": f"It should be {value}."}
    style = _pick(rng, sorted(styles))
    return (value if style == "terse" else _dress(rng, styles[style])), style


def _short_pair(task: Task, kind: str, rng):
    claim = task.get("claim")
    chosen, chosen_style = _short_response(rng, task.answer, claim)
    value = _pick(rng, [v for k, v in task.get("distractors") if k == kind])
    rejected, rejected_style = _short_response(rng, value, claim)
    return chosen, chosen_style, rejected, rejected_style


# ---------------------------------------------------------------------------------------------
# factual yes/no

def _yes_no_kinds(task: Task) -> list[str]:
    return ["negated", "contradicted"]


def _yes_no_response(rng, verdict: str, task: Task, reasoning_agrees: bool = True) -> tuple[str, str]:
    """A "yes"/"no" answer; with ``reasoning_agrees=False`` the sentence after it says the
    opposite of the verdict (a small model's classic slip)."""
    statement, negation, fact = task.get("statement"), task.get("negation"), task.get("fact")
    yes_reason = statement if reasoning_agrees else negation
    no_reason = negation if reasoning_agrees else statement
    reason = yes_reason if verdict == "yes" else no_reason
    styles = {"terse": f"{verdict.capitalize()}.",
              "verdict_reason": f"{verdict.capitalize()}, {reason}.",
              "verdict_then_sentence": f"{verdict.capitalize()}. {_sentence(reason)}."}
    if reasoning_agrees and verdict == task.answer and verdict == "no":
        styles["verdict_then_fact"] = f"No. {_sentence(fact)}."
        styles["verdict_reason_fact"] = f"No, {negation}. {_sentence(fact)}."
    names = sorted(styles) if reasoning_agrees else ["verdict_reason", "verdict_then_sentence"]
    style = _pick(rng, names)
    # no opener: "Sure! No." reads as a slip; models put the verdict first
    return (styles[style] if style == "terse" else _dress(rng, styles[style], opener=False)), style


def _yes_no_pair(task: Task, kind: str, rng):
    chosen, chosen_style = _yes_no_response(rng, task.answer, task)
    wrong = "no" if task.answer == "yes" else "yes"
    rejected, rejected_style = _yes_no_response(rng, wrong, task, reasoning_agrees=kind == "negated")
    return chosen, chosen_style, rejected, rejected_style


# ---------------------------------------------------------------------------------------------
# format: an on-topic answer that keeps or breaks the constraint

_FORMAT_REJECTIONS = {
    "uppercase": ["not_uppercase", "last_sentence_not_uppercase", "one_lowercase_word"],
    "exact_words": ["one_word_too_many", "one_word_too_few", "ignores_word_count"],
    "max_words": ["one_word_too_many", "too_long"],
    "json_key": ["wrong_key", "single_quotes", "prose_around_json", "plain_text"],
    "keyword": ["keyword_missing"],
    "end_phrase": ["text_after_phrase", "paraphrased_phrase", "phrase_first"],
    "no_commas": ["uses_commas"],
    "bullets": ["one_bullet_too_many", "one_bullet_too_few", "numbered_list", "paragraph"],
}


def _format_kinds(task: Task) -> list[str]:
    return list(_FORMAT_REJECTIONS[formats.parse_spec(task.answer)["kind"]])


def _sentences(rng, topic: tables.FormatTopic, count: int | None = None) -> list[str]:
    count = int(rng.integers(1, 4)) if count is None else count
    start = int(rng.integers(0, len(topic.sentences) - count + 1))
    return list(topic.sentences[start:start + count])


def _first_words(topic: tables.FormatTopic, count: int, start: int = 0) -> str:
    words = " ".join(topic.sentences[start:]).split()
    return " ".join(words[:count]).rstrip(",.;:!?") + "."


def _text_of_length(rng, topic: tables.FormatTopic, count: int) -> str:
    """``count`` words: whole consecutive sentences when some have exactly that many (what a
    careful writer does), else the opening words of a sentence cut off with a full stop."""
    sentences = topic.sentences
    windows = [" ".join(sentences[i:j]) for i in range(len(sentences)) for j in range(i + 1, len(sentences) + 1)
               if formats.count_words(" ".join(sentences[i:j])) == count]
    if windows and rng.random() < 0.7:
        return _pick(rng, windows)
    # cut one long sentence short rather than leave a stray word after a full stop
    long_enough = [i for i, sentence in enumerate(sentences) if len(sentence.split()) >= count]
    return _first_words(topic, count, _pick(rng, long_enough) if long_enough else 0)


def _json(rng, key: str, text: str) -> tuple[str, str]:
    style = _pick(rng, ("compact", "indented", "fenced"))
    body = json.dumps({key: text}, indent=None if style == "compact" else 2)
    return (f"```json\n{body}\n```" if style == "fenced" else body), style


def _bullets(rng, items: list[str], marker: str | None = None) -> str:
    marker = marker or _pick(rng, ("*", "-"))
    intro = _pick(rng, ("", "", "Here are a few points:\n"))
    return intro + "\n".join(f"{marker} {item}" for item in items)


def _format_chosen(task: Task, spec: dict, rng) -> tuple[str, str]:
    topic = tables.format_topic(task.get("topic"))
    kind = spec["kind"]
    text = " ".join(_sentences(rng, topic))
    if kind == "uppercase":
        return text.upper(), "uppercase_sentences"
    if kind == "exact_words":
        return _text_of_length(rng, topic, spec["n"]), "n_words"
    if kind == "max_words":
        whole = _longest_prefix_within(topic, spec["n"])
        if whole and rng.random() < 0.6:
            return whole, "whole_sentences_within_limit"
        return _first_words(topic, int(rng.integers(max(3, spec["n"] - 4), spec["n"] + 1))), "truncated_within_limit"
    if kind == "json_key":
        return _json(rng, spec["key"], text)
    if kind == "keyword":
        parts = _sentences(rng, topic)
        parts.insert(int(rng.integers(0, len(parts) + 1)), topic.keyword_sentence(spec["word"]))
        return " ".join(parts), "keyword_sentence_inserted"
    if kind == "end_phrase":
        return text + _pick(rng, (" ", "\n\n")) + spec["phrase"], "phrase_at_end"
    if kind == "no_commas":
        return " ".join(_sentences(rng, topic)).replace(",", ""), "commas_removed"
    if kind == "bullets":
        return _bullets(rng, _sentences(rng, topic, spec["n"])), "bullets"
    raise AssertionError(kind)


def _longest_prefix_within(topic: tables.FormatTopic, limit: int) -> str | None:
    text = None
    for end in range(1, len(topic.sentences) + 1):
        candidate = " ".join(topic.sentences[:end])
        if formats.count_words(candidate) > limit:
            break
        text = candidate
    return text


def _format_rejected(task: Task, spec: dict, kind: str, rng) -> str:
    topic = tables.format_topic(task.get("topic"))
    parts = _sentences(rng, topic)
    text = " ".join(parts)
    if kind == "not_uppercase":
        return text
    if kind == "last_sentence_not_uppercase":
        parts = _sentences(rng, topic, int(rng.integers(2, 4)))
        return " ".join([p.upper() for p in parts[:-1]] + parts[-1:])
    if kind == "one_lowercase_word":
        words = text.upper().split()
        candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3]
        i = _pick(rng, candidates)
        words[i] = words[i].lower()
        return " ".join(words)
    if kind == "one_word_too_many":
        return _text_of_length(rng, topic, spec["n"] + 1)
    if kind == "one_word_too_few":
        return _text_of_length(rng, topic, spec["n"] - 1)
    if kind == "ignores_word_count":
        return text
    if kind == "too_long":
        return " ".join(topic.sentences[:_sentences_beyond(topic, spec["n"])])
    if kind == "wrong_key":
        return _json(rng, _pick(rng, [k for k in JSON_KEYS if k != spec["key"]]), text)[0]
    if kind == "single_quotes":
        return "{'" + spec["key"] + "': '" + text + "'}"
    if kind == "prose_around_json":
        return _pick(rng, ("Sure! Here is the JSON you asked for:\n", "Here is my answer in JSON format:\n")) + \
            json.dumps({spec["key"]: text}, indent=2)
    if kind == "plain_text":
        return text
    if kind == "keyword_missing":
        return " ".join(_sentences(rng, topic, int(rng.integers(1, 5))))
    if kind == "text_after_phrase":
        extra = _pick(rng, [s for s in topic.sentences if s not in parts])
        return f"{text} {spec['phrase']} {extra}"
    if kind == "paraphrased_phrase":
        return f"{text} {dict(END_PHRASES)[spec['phrase']]}"
    if kind == "phrase_first":
        return f"{spec['phrase']} {text}"
    if kind == "uses_commas":
        with_commas = [s for s in topic.sentences if "," in s]
        extra = " ".join(_sentences(rng, topic, 1))
        return " ".join([_pick(rng, with_commas), extra] if rng.random() < 0.5 else [extra, _pick(rng, with_commas)])
    if kind in ("one_bullet_too_many", "one_bullet_too_few"):
        return _bullets(rng, _sentences(rng, topic, spec["n"] + (1 if kind == "one_bullet_too_many" else -1)))
    if kind == "numbered_list":
        return "\n".join(f"{i}. {s}" for i, s in enumerate(_sentences(rng, topic, spec["n"]), 1))
    if kind == "paragraph":
        return " ".join(_sentences(rng, topic, spec["n"]))
    raise AssertionError(kind)


def _sentences_beyond(topic: tables.FormatTopic, limit: int) -> int:
    """How many leading sentences it takes to pass ``limit`` words."""
    for end in range(1, len(topic.sentences) + 1):
        if formats.count_words(" ".join(topic.sentences[:end])) > limit:
            return end
    return len(topic.sentences)


def _format_pair(task: Task, kind: str, rng):
    spec = formats.parse_spec(task.answer)
    chosen, chosen_style = _format_chosen(task, spec, rng)
    return chosen, chosen_style, _format_rejected(task, spec, kind, rng), kind


# ---------------------------------------------------------------------------------------------

_BUILDERS = {"arithmetic": (_arithmetic_kinds, _arithmetic_pair), "choice": (_choice_kinds, _choice_pair),
             "short": (_short_kinds, _short_pair), "yes_no": (_yes_no_kinds, _yes_no_pair),
             "format": (_format_kinds, _format_pair)}


def _builder_name(task: Task) -> str:
    if task.category == "arithmetic":
        return "arithmetic"
    if task.check in ("choice", "yes_no", "format"):
        return task.check
    return "short"
