"""Text -> model inputs, in one place: chat templates, tokenisation, truncation that keeps
the question, padding to length buckets and length-sorted micro-batches.

A low layer like ``parallel``: it imports numpy and duck-types transformers tokenizers
(``__call__``, ``apply_chat_template``, ``chat_template``, ``pad_token_id``,
``eos_token_id``), nothing else of rmbandit, so ``data``, ``models`` and ``rewards`` all use it.

Special tokens are added once.  Text rendered by a chat template already holds the
template's special tokens (``<|im_start|>``, a Llama 3 ``<|begin_of_text|>``), so it is
tokenised without the tokenizer's own; a tokenizer without a template (BERT-style, base
LMs) gets plain text and adds its own ([CLS] ... [SEP], BOS) as transformers would.

Truncation keeps what a reward reads.  Slots of a rendered chat are *questions* (the
prompt) or *responses*; the template around them (instructions, answer-format lines,
role markers) is never cut.  Over-long input loses the responses' tails first; when the
responses are down to ``RESPONSE_SHARE`` of ``max_length`` and it is still too long, the
question loses its middle (its start and its end, where the question usually is, stay).
So two different questions never encode alike because a long response pushed them out.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

RESPONSE_SHARE = 0.25       # responses keep at least this share of max_length before a question is cut
MIN_QUESTION_TOKENS = 8     # a question cut shorter than this is lost: an error instead
CUT_MARK = " [...] "        # stands where a question's middle was cut out


# --- length buckets -----------------------------------------------------------------------

def bucket(length: int, multiple: int = 32, cap: int | None = None) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (at least one multiple), at most
    ``cap``: nearby lengths share one compiled program."""
    size = max(multiple, -(-int(length) // multiple) * multiple)
    return size if cap is None else min(size, cap)


def length_groups(lengths, size: int) -> list[np.ndarray]:
    """Row indices sorted longest first (stable), cut into groups of ``size``: a micro-batch
    of similar lengths pads little."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[start:start + size] for start in range(0, len(order), size)]


# --- chat templates -------------------------------------------------------------------------

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, user_message: str, system: str | None = None) -> str:
    """One user turn (after ``system``, which replaces the template's default system
    message) in the tokenizer's chat template, ending with the assistant turn's opening.
    Without a template (BERT-style or base LMs): ``system``, a blank line, the message and
    a newline, as plain text."""
    if not has_chat_template(tokenizer):
        return (f"{system}\n\n" if system is not None else "") + user_message + "\n"
    return tokenizer.apply_chat_template(_messages(user_message, system), tokenize=False, add_generation_prompt=True)


def chat_text(tokenizer, user_message: str, response: str, system: str | None = None) -> str:
    """The whole exchange, the assistant's ``response`` closed as the template closes a
    turn (what a sequence-classifier RM scores).  Without a template: ``chat_prompt``'s
    text followed by the response."""
    if not has_chat_template(tokenizer):
        return chat_prompt(tokenizer, user_message, system) + response
    return tokenizer.apply_chat_template(_messages(user_message, system) + [{"role": "assistant", "content": response}],
                                         tokenize=False)


def _messages(user_message: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user_message}]


# --- tokenisation ---------------------------------------------------------------------------

def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def token_ids(tokenizer, texts: Sequence[str], special_tokens: bool = False,
              max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text, one batched tokenizer call.  ``special_tokens`` adds the
    tokenizer's own ([CLS]/[SEP], BOS); ``max_length`` truncates as transformers does
    (the start is kept, the closing special token too)."""
    if isinstance(texts, str):
        raise TypeError("token_ids takes a list of strings; wrap a single text in a list")
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=special_tokens, truncation=max_length is not None,
                     max_length=max_length)["input_ids"]


def chat_ids(tokenizer, chats: Sequence[str]) -> list[list[int]]:
    """Token ids of texts from ``chat_prompt`` / ``chat_text``: a template's text holds
    its special tokens already; plain text gets the tokenizer's."""
    return token_ids(tokenizer, chats, special_tokens=not has_chat_template(tokenizer))


def first_token(tokenizer, word: str) -> int:
    """The id of ``word``'s first token (a judge's verdict slot)."""
    ids = token_ids(tokenizer, [word])[0]
    if not ids:
        raise ValueError(f"the tokenizer encodes {word!r} as no tokens")
    return ids[0]


# --- truncation -----------------------------------------------------------------------------

def fit_chat(tokenizer, render: Callable[[dict[str, str]], str], slots: Mapping[str, str], max_length: int,
             questions: Sequence[str] = ("prompt",)) -> str:
    """``render(slots)``, a chat text, with its slots shortened so that it is at most
    ``max_length`` tokens (as ``chat_ids`` counts them).

    Slots named in ``questions`` are kept whole while the other slots (responses) can
    give room: responses lose their tails first, sharing what is left evenly, down to
    ``RESPONSE_SHARE`` of ``max_length`` together; then the questions lose their middles
    (``CUT_MARK`` stands for what went).  What ``render`` adds around the slots (rubric,
    answer format, roles) is never cut; if it alone does not fit, that is an error."""
    slots = dict(slots)
    unknown = [name for name in questions if name not in slots]
    if unknown:
        raise ValueError(f"question slot(s) {unknown} are not among the slots {sorted(slots)}")
    text = render(slots)
    total = len(chat_ids(tokenizer, [text])[0])
    if total <= max_length:
        return text
    lengths = dict(zip(slots, map(len, token_ids(tokenizer, list(slots.values())))))
    around = total - sum(lengths.values())                  # what render adds: never cut
    answers = [name for name in slots if name not in questions]
    question_need = sum(lengths[name] for name in questions)
    answer_need = sum(lengths[name] for name in answers)
    over = 0
    for _ in range(8):            # token merges at slot edges and the cut mark cost a few tokens more
        budget = max_length - around - over
        if budget < 0:
            raise ValueError(f"the text around the slots {sorted(slots)} takes {around} tokens, more than "
                             f"max_length {max_length}: raise max_length or shorten the rubric / system prompt")
        answer_budget = min(answer_need, budget, max(budget - question_need, int(RESPONSE_SHARE * max_length)))
        question_budget = budget - answer_budget
        if question_budget < min(question_need, MIN_QUESTION_TOKENS):
            raise ValueError(f"max_length {max_length} leaves {max(question_budget, 0)} tokens for the question "
                             f"(the text around the slots takes {around}, the responses keep {answer_budget}): "
                             "raise max_length")
        cut = {**_shorten(tokenizer, slots, lengths, answers, answer_budget, middle=False),
               **_shorten(tokenizer, slots, lengths, questions, question_budget, middle=True)}
        text = render({name: cut[name] for name in slots})
        total = len(chat_ids(tokenizer, [text])[0])
        if total <= max_length:
            return text
        over += total - max_length
    raise ValueError(f"could not fit the slots {sorted(slots)} into max_length {max_length} tokens "
                     f"({total} after cutting); raise max_length")


def _shorten(tokenizer, slots: dict[str, str], lengths: dict[str, int], names: Sequence[str], budget: int,
             middle: bool) -> dict[str, str]:
    """The slots ``names`` cut to their shares of ``budget`` tokens (equal shares, what a
    short slot leaves goes to the others): each keeps its start, or its start and end if
    ``middle``."""
    keep, left = {}, budget
    for i, name in enumerate(sorted(names, key=lengths.get)):
        keep[name] = min(lengths[name], left // (len(names) - i))
        left -= keep[name]
    return {name: _cut(tokenizer, slots[name], keep[name], middle) for name in names}


def _cut(tokenizer, text: str, keep: int, middle: bool) -> str:
    """``text`` down to ``keep`` tokens, cut at token edges: the first ``keep``, or the
    first and last halves around ``CUT_MARK``."""
    try:
        spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except NotImplementedError:         # slow (Python) tokenizers have no offsets: decode instead
        ids = token_ids(tokenizer, [text])[0]
        spans = None
    n = len(spans if spans is not None else ids)
    if n <= keep:
        return text
    head, tail = (-(-keep // 2), keep // 2) if middle else (keep, 0)
    if spans is not None:
        start, end = (text[:spans[head - 1][1]] if head else ""), (text[spans[-tail][0]:] if tail else "")
    else:
        start, end = tokenizer.decode(ids[:head]), (tokenizer.decode(ids[-tail:]) if tail else "")
    return start + CUT_MARK + end if middle else start


# --- padding --------------------------------------------------------------------------------

def pad(rows: Sequence[Sequence[int]], pad_id: int = 0, side: str = "left", multiple: int = 32,
        max_length: int | None = None) -> dict[str, np.ndarray]:
    """Token rows -> int32 ``input_ids`` and ``attention_mask`` [N, T], T the longest row
    bucketed (``bucket(longest, multiple, max_length)``).  ``left`` ends every row at the
    last position (decoders read the last token), ``right`` starts every row at 0
    (BERT's absolute positions)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    longest = max(map(len, rows), default=0)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a row has {longest} tokens, more than max_length {max_length}: truncate it first")
    width = bucket(longest, multiple, max_length)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, where] = row
        mask[i, where] = 1
    return {"input_ids": ids, "attention_mask": mask}


# --- whole encoders -------------------------------------------------------------------------

def encode_texts(tokenizer, texts: Sequence[str], max_length: int, side: str = "right",
                 multiple: int = 32) -> dict[str, np.ndarray]:
    """Plain texts (not chats) with the tokenizer's special tokens, truncated as
    transformers does (the start is kept), padded to a bucket: a sentence encoder's input."""
    return pad(token_ids(tokenizer, texts, special_tokens=True, max_length=max_length), pad_id(tokenizer), side,
               multiple, max_length)


def encode_chats(tokenizer, chats: Sequence[str], max_length: int, multiple: int = 32) -> dict[str, np.ndarray]:
    """Chat texts (from ``chat_prompt`` / ``chat_text``, shortened by ``fit_chat``) ->
    left-padded, bucketed ``input_ids`` / ``attention_mask``.  A chat over ``max_length``
    is an error: cutting it here would cut the question or the verdict slot."""
    rows = chat_ids(tokenizer, chats)
    for i, row in enumerate(rows):
        if len(row) > max_length:
            raise ValueError(f"chat {i} has {len(row)} tokens, more than max_length {max_length}: "
                             "shorten it with rmbandit.text.fit_chat first")
    return pad(rows, pad_id(tokenizer), "left", multiple, max_length)


def encode_slots(tokenizer, render: Callable[[dict[str, str]], str], rows: Sequence[Mapping[str, str]],
                 max_length: int, questions: Sequence[str] = ("prompt",), multiple: int = 32) -> dict[str, np.ndarray]:
    """``render(row)`` for each row of slots (a judge's rubric around question and
    responses, a whole chat), each shortened by ``fit_chat``, left-padded and bucketed."""
    return encode_chats(tokenizer, [fit_chat(tokenizer, render, row, max_length, questions) for row in rows],
                        max_length, multiple)


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int, system: str | None = None,
                   multiple: int = 32) -> dict[str, np.ndarray]:
    """User messages -> left-padded chat prompts for sampling; an over-long message loses
    its middle."""
    return encode_slots(tokenizer, lambda slots: chat_prompt(tokenizer, slots["prompt"], system),
                        [{"prompt": p} for p in prompts], max_length, multiple=multiple)


def encode_prompt_response(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int = 1024,
                           multiple: int = 32, eos: bool = True, system: str | None = None) -> dict[str, np.ndarray]:
    """Left-padded chat prompt + response (+ EOS, which closes the assistant turn in the
    templates we load) -> int32 ``input_ids``, ``attention_mask``, ``response_mask``
    [N, T] (T bucketed) and ``prompt_lengths`` [N].  An empty response is EOS alone.

    Over-long input: the response keeps its first tokens (a reward reads its start), at
    least ``RESPONSE_SHARE`` of ``max_length``; the prompt fills the rest and, when longer,
    loses the middle of its user message (``fit_chat``), never the template or the
    question's end; then the response takes all the room the prompt leaves."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    answers = token_ids(tokenizer, responses)
    if eos and tokenizer.eos_token_id is not None:
        answers = [r + [tokenizer.eos_token_id] for r in answers]

    def render(slots):
        return chat_prompt(tokenizer, slots["prompt"], system)
    room = [max_length - min(len(r), int(RESPONSE_SHARE * max_length)) for r in answers]
    asked = [fit_chat(tokenizer, render, {"prompt": p}, n) for p, n in zip(prompts, room)]
    rows, prompt_lengths = [], []
    for p, r in zip(chat_ids(tokenizer, asked), answers):
        rows.append(p + r[:max_length - len(p)])
        prompt_lengths.append(len(p))
    enc = pad(rows, pad_id(tokenizer), "left", multiple, max_length)
    width = enc["input_ids"].shape[1]
    lengths = np.asarray([len(row) for row in rows], np.int32)
    prompt_lengths = np.asarray(prompt_lengths, np.int32)
    # left padding: a row's response runs from width - (its length - its prompt) to the end
    enc["response_mask"] = (np.arange(width)[None] >= (width - lengths + prompt_lengths)[:, None]).astype(np.int32)
    enc["prompt_lengths"] = prompt_lengths
    return enc
