"""IFEval-style format constraints: their instructions and their checkers.

A constraint is a small dict, ``{"kind": ..., <parameters>}``, stored in a format task as
canonical JSON.  The checkers judge the form of a response only, never its content, and
follow IFEval's definitions where it has one (``str.isupper`` for capitals, markdown ``*``/``-``
lines for bullets, optional code fences around JSON, case-insensitive phrase ending).  Every
constraint also requires at least one word: an empty reply would otherwise satisfy "no commas"
or "at most N words", and a policy would learn to say nothing.
"""
from __future__ import annotations

import json
import re
from typing import Any

FORMAT_KINDS = ("uppercase", "exact_words", "max_words", "json_key", "keyword", "end_phrase", "no_commas",
                "bullets")

# Each kind's parameters, and the ways its instruction is worded (one is drawn per task).
_PARAMETERS = {"uppercase": (), "exact_words": ("n",), "max_words": ("n",), "json_key": ("key",),
               "keyword": ("word",), "end_phrase": ("phrase",), "no_commas": (), "bullets": ("n",)}
_INSTRUCTIONS = {
    "uppercase": ("Your entire response must be in capital letters.",
                  "Respond in all uppercase letters.",
                  "Write your whole answer in capital letters only."),
    "exact_words": ("Answer in exactly {n} words.",
                    "Your response must contain exactly {n} words.",
                    "Use exactly {n} words, no more and no fewer."),
    "max_words": ("Answer in at most {n} words.",
                  "Use no more than {n} words.",
                  "Respond in {n} words or fewer."),
    "json_key": ('Respond only with valid JSON: an object with the key "{key}".',
                 'Format your entire output as a JSON object with a single key "{key}".',
                 'Wrap your answer in JSON, as an object whose key is "{key}". Output nothing but the JSON.'),
    "keyword": ('Include the word "{word}" in your response.',
                'Make sure to use the word "{word}".',
                'Your answer must contain the word "{word}".'),
    "end_phrase": ('End your response with the exact phrase "{phrase}", with no other words after it.',
                   'Finish your response with this exact phrase: "{phrase}"',
                   'The last words of your response must be: {phrase}'),
    "no_commas": ("Do not use any commas in your response.",
                  "Avoid commas entirely in your answer.",
                  "Write your response without a single comma."),
    "bullets": (("Your answer must contain exactly {n} bullet points. Use markdown bullet points such as:\n"
                 "* This is a point."),
                "Answer with exactly {n} markdown bullet points.",
                "Give exactly {n} bullet points in markdown format."),
}

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")      # "don't", "well-known": one word each
_BULLET_LINE = re.compile(r"^\s*[*-]\s+\S", re.MULTILINE)
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def instruction_variants(kind: str) -> tuple[str, ...]:
    _known(kind)
    return _INSTRUCTIONS[kind]


def instruction(spec: dict[str, Any], variant: int = 0) -> str:
    """The instruction sentence for a constraint, in one of its wordings."""
    templates = instruction_variants(spec["kind"])
    return templates[variant % len(templates)].format(**{k: v for k, v in spec.items() if k != "kind"})


def spec_json(spec: dict[str, Any]) -> str:
    """Canonical JSON of a constraint (the format task's ``answer``)."""
    _validate(spec)
    return json.dumps(spec, sort_keys=True)


def parse_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(spec) if isinstance(spec, str) else dict(spec)
    _validate(spec)
    return spec


def check_format(spec: str | dict[str, Any], response: str | None) -> bool:
    """Whether ``response`` satisfies the constraint (its form, not its content)."""
    spec = parse_spec(spec)
    if not isinstance(response, str) or _WORD.search(response) is None:     # no word at all
        return False
    kind = spec["kind"]
    if kind == "uppercase":
        return response.isupper()
    if kind == "exact_words":
        return count_words(response) == spec["n"]
    if kind == "max_words":
        return count_words(response) <= spec["n"]
    if kind == "json_key":
        parsed = _parse_json_object(response)
        return parsed is not None and spec["key"] in parsed
    if kind == "keyword":
        return re.search(rf"\b{re.escape(spec['word'])}\b", response, re.IGNORECASE) is not None
    if kind == "end_phrase":
        return response.strip().lower().endswith(spec["phrase"].strip().lower())
    if kind == "no_commas":
        return "," not in response
    if kind == "bullets":
        return len(_BULLET_LINE.findall(response)) == spec["n"]
    raise AssertionError(kind)   # _validate admitted an unknown kind


def _parse_json_object(response: str) -> dict | None:
    text = response.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _known(kind: str) -> None:
    if kind not in _PARAMETERS:
        raise ValueError(f"unknown format constraint {kind!r}; valid: {', '.join(FORMAT_KINDS)}")


def _validate(spec: dict[str, Any]) -> None:
    kind = spec.get("kind")
    _known(kind)
    expected = set(_PARAMETERS[kind])
    given = set(spec) - {"kind"}
    if given != expected:
        raise ValueError(f"format constraint {kind!r} takes parameters {sorted(expected)}, got {sorted(given)}")
    if "n" in expected and (not isinstance(spec["n"], int) or spec["n"] < 1):
        raise ValueError(f"format constraint {kind!r} needs a positive integer n, got {spec['n']!r}")
