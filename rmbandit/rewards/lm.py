"""RMs built on our Flax decoders (any family ``load_pretrained`` reads, HF dir or GGUF):

- ``sequence_classifier``: HF ``*ForSequenceClassification`` checkpoints (Skywork-Reward,
  GRM, Mistral-RM style): backbone + ``score`` head at the last real token of the chat;
- ``implicit_dpo``: beta * (log pi(y|x) - log pi_ref(y|x)), how LASeR uses Zephyr /
  Qwen-Chat / Eurus through RewardBench; ``log_likelihood``: the reference-free variant,
  log pi(y|x) / |y|;
- ``judge``: a chat LM prompted with a rubric.  Pointwise: log P("Yes") - log P("No") for
  the next token; pairwise: P("A") vs P("B") (renormalised over the two), averaged over
  both orders to cancel position bias.

Every forward is jitted once per bucketed length; with ``mesh`` the weights load straight
onto their shardings and each batch is split over ``data`` x ``fsdp``.

The options all four share (name, lengths, batch sizes, dtype, mesh, on_invalid) are one
dataclass, ``LMOptions``; each factory takes them as keyword arguments
(``judge(path, "pairwise", micro_batch=8)``), and a config entry as keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import pathlib
import string
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit import parallel, text
from rmbandit.models import load_pretrained, load_tokenizer
from rmbandit.models.functions import classifier_scores, sequence_logprobs
from rmbandit.models.tokenizer import check_tokenizer
from rmbandit.rewards.base import OnInvalid, RewardModel
from rmbandit.text import encode_prompt_response

PAIRWISE_RUBRIC = ("You are a strict grader. Compare two responses to the question and pick the better one: "
                   "the one that is correct and follows every instruction.\n\nQuestion: {prompt}\n\n"
                   "Response A: {a}\n\nResponse B: {b}\n\nWhich response is better? Answer with one letter, A or B.")
POINTWISE_RUBRIC = ("You are a strict grader. Is the response to the question correct and does it follow every "
                    "instruction?\n\nQuestion: {prompt}\n\nResponse: {response}\n\nAnswer with one word, Yes or No.")


@dataclasses.dataclass(frozen=True)
class LMOptions:
    """What every LM RM factory takes, besides its own arguments."""
    name: str | None = None              # the RM's name (the router's arm); default from the checkpoint
    max_length: int = 1024               # tokens per scored text; longer ones are truncated
    batch_size: int = 256                # items per RM call (``RewardModel.batch_size``)
    micro_batch: int = 16                # rows per forward pass
    dtype: str = "float32"               # weights and activations: float32, bfloat16, float16 (or a jnp type)
    mesh: jax.sharding.Mesh | None = None   # load sharded, split each micro-batch over data x fsdp
    on_invalid: OnInvalid = "raise"

    def __post_init__(self):
        for key in ("max_length", "batch_size", "micro_batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        try:
            dtype = jnp.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"dtype must be a float dtype (float32, bfloat16, float16), got {self.dtype!r}")

    @classmethod
    def of(cls, factory: str, options: dict) -> LMOptions:
        """``LMOptions(**options)``, with an error that names the factory and the valid options."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in options if k not in valid]
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{factory}() got an unknown option {unknown[0]!r}{hint}; its options: {', '.join(valid)}")
        return cls(**options)

    def load(self, path, tokenizer=None) -> LoadedLM:
        return LoadedLM(path, self.dtype, self.mesh, tokenizer)

    def unpack(self):
        """name, max_length, batch_size, micro_batch and the RewardModel's extra keywords: the
        names the factories' bodies use."""
        return self.name, self.max_length, self.batch_size, self.micro_batch, {"on_invalid": self.on_invalid}


class LoadedLM:
    """A model, its params and tokenizer, checked to belong together, and jitted calls."""

    def __init__(self, path, dtype="float32", mesh=None, tokenizer=None):
        self.path = pathlib.Path(path)
        self.model, self.params = load_pretrained(path, dtype=jnp.dtype(dtype), mesh=mesh)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
        check_tokenizer(self.model.config, self.tokenizer)
        self.mesh = mesh
        self._compiled = {}
        self.forwards = 0              # model calls (micro-batches), for the RMs' cost

    def run(self, fn, input_ids, attention_mask, *extra, micro_batch: int = 16, multiple: int = 32):
        """``fn(model, params, input_ids, attention_mask, *extra)`` jitted, over left-padded
        rows [N, T] -> outputs [N, ...].

        Rows are sorted by length and cut into micro-batches of ``micro_batch`` rows, each
        trimmed to its own longest row (rounded up to ``multiple``): short sequences never
        pay for a long one's padding, and the compiled shapes stay few.  Under a mesh each
        micro-batch is split over ``data`` x ``fsdp``."""
        if fn not in self._compiled:
            self._compiled[fn] = jax.jit(functools.partial(fn, self.model))
        jitted = self._compiled[fn]
        if self.mesh is not None:
            shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
            micro_batch = -(-micro_batch // shards) * shards
        lengths = attention_mask.sum(1)
        groups = text.length_groups(lengths, micro_batch)
        order = np.concatenate(groups)
        width = attention_mask.shape[1]
        outputs = []
        for group in groups:
            rows = np.concatenate([group, np.repeat(group[-1:], micro_batch - len(group))])   # one batch shape
            keep = text.bucket(lengths[rows].max(), multiple, cap=width)
            arrays = [a[rows][:, width - keep:] if a.ndim == 2 and a.shape[1] == width else a[rows]
                      for a in (input_ids, attention_mask, *extra)]
            if self.mesh is None:
                out = jitted(self.params, *map(jnp.asarray, arrays))
            else:
                with parallel.use_mesh(self.mesh):
                    out = jitted(self.params, *[jax.device_put(a, parallel.batch_sharding(self.mesh, a.ndim))
                                                for a in arrays])
            outputs.append(np.asarray(out)[:len(group)])
            self.forwards += 1
        result = np.concatenate(outputs)
        unsorted = np.empty_like(result)
        unsorted[order] = result
        return unsorted


def _reward_head(model, params, ids, mask):
    return classifier_scores(model, params, ids, mask)[:, 0]


def _response_logprobs(model, params, ids, mask, response_mask):
    out = sequence_logprobs(model, params, ids, mask, response_mask)
    return jnp.stack([out.total, out.mean], axis=-1)                   # [B, 2]


def _next_token_logprobs(model, params, ids, mask):
    logits = model.apply({"params": params}, ids, mask, last_only=True)[:, -1]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def sequence_classifier(path: str | os.PathLike, *, lm: LoadedLM | None = None, **lm_options) -> RewardModel:
    """``lm_options``: the fields of ``LMOptions``."""
    opts = LMOptions.of("sequence_classifier", lm_options)
    name, max_length, batch_size, micro_batch, kwargs = opts.unpack()
    lm = lm or opts.load(path)
    config = lm.model.config
    if not config.num_labels:
        raise ValueError(f"{path} is a causal LM, not a *ForSequenceClassification reward model; use "
                         "kind 'implicit_dpo', 'log_likelihood' or 'judge' for it")
    if config.num_labels != 1:
        raise ValueError(f"{path} has a {config.num_labels}-label head; a reward model has one output")

    def score(prompts, responses):
        rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        enc = text.encode_slots(lm.tokenizer, functools.partial(_full_chat, lm.tokenizer), rows, max_length)
        return lm.run(_reward_head, enc["input_ids"], enc["attention_mask"], micro_batch=micro_batch)

    return RewardModel(name or lm.path.name, score_fn=score, batch_size=batch_size, kind="sequence_classifier",
                       model_calls=lambda: lm.forwards, **kwargs)


def implicit_dpo(path: str | os.PathLike, reference_path: str | os.PathLike, beta: float = 0.1,
                 **lm_options) -> RewardModel:
    """beta * (log pi(y|x) - log pi_ref(y|x)); both models must share a tokenizer.
    ``lm_options``: the fields of ``LMOptions``."""
    opts = LMOptions.of("implicit_dpo", lm_options)
    name, max_length, batch_size, micro_batch, kwargs = opts.unpack()
    policy = opts.load(path)
    reference = opts.load(reference_path, tokenizer=policy.tokenizer)

    def score(prompts, responses):
        enc = encode_prompt_response(policy.tokenizer, prompts, responses, max_length)
        args = (enc["input_ids"], enc["attention_mask"], enc["response_mask"])
        return beta * (policy.run(_response_logprobs, *args, micro_batch=micro_batch)[:, 0]
                       - reference.run(_response_logprobs, *args, micro_batch=micro_batch)[:, 0])

    return RewardModel(name or f"{policy.path.name}-implicit", score_fn=score, batch_size=batch_size,
                       kind="implicit_dpo", model_calls=lambda: policy.forwards + reference.forwards, **kwargs)


def log_likelihood(path: str | os.PathLike, normalize: bool = True, *, lm: LoadedLM | None = None,
                   **lm_options) -> RewardModel:
    """Reference-free implicit reward: mean (``normalize``) or total log-prob of the response.
    ``lm_options``: the fields of ``LMOptions``."""
    opts = LMOptions.of("log_likelihood", lm_options)
    name, max_length, batch_size, micro_batch, kwargs = opts.unpack()
    lm = lm or opts.load(path)

    def score(prompts, responses):
        enc = encode_prompt_response(lm.tokenizer, prompts, responses, max_length)
        out = lm.run(_response_logprobs, enc["input_ids"], enc["attention_mask"], enc["response_mask"],
                     micro_batch=micro_batch)
        return out[:, 1] if normalize else out[:, 0]

    return RewardModel(name or f"{lm.path.name}-loglik", score_fn=score, batch_size=batch_size,
                       kind="log_likelihood", model_calls=lambda: lm.forwards, **kwargs)


def judge(path: str | os.PathLike, mode: Literal["pointwise", "pairwise"] = "pointwise", rubric: str | None = None,
          *, lm: LoadedLM | None = None, **lm_options) -> RewardModel:
    """A generative judge.  ``rubric`` is a format string with {prompt} and {response}
    (pointwise) or {prompt}, {a}, {b} (pairwise).  Over-long input loses the responses'
    tails, never the rubric or the question (``rmbandit.text.fit_chat``)."""
    if mode not in ("pointwise", "pairwise"):
        raise ValueError(f"judge mode must be 'pointwise' or 'pairwise', got {mode!r}")
    opts = LMOptions.of("judge", lm_options)
    name, max_length, batch_size, micro_batch, kwargs = opts.unpack()
    rubric = rubric or (POINTWISE_RUBRIC if mode == "pointwise" else PAIRWISE_RUBRIC)
    _check_rubric(rubric, mode)
    lm = lm or opts.load(path)
    tok = lm.tokenizer
    options = ("Yes", "No") if mode == "pointwise" else ("A", "B")
    option_ids = [text.first_token(tok, o) for o in options]

    def next_token(rows):
        enc = text.encode_slots(tok, lambda slots: text.chat_prompt(tok, rubric.format(**slots)), rows, max_length)
        logp = lm.run(_next_token_logprobs, enc["input_ids"], enc["attention_mask"], micro_batch=micro_batch)
        return logp[:, option_ids[0]] - logp[:, option_ids[1]]       # log-odds of the first option

    if mode == "pointwise":
        def score(prompts, responses):
            return next_token([{"prompt": p, "response": r} for p, r in zip(prompts, responses)])
        return RewardModel(name or f"{lm.path.stem}-judge", score_fn=score, batch_size=batch_size, kind="judge",
                           model_calls=lambda: lm.forwards, **kwargs)

    def prefer(prompts, a, b):
        n = len(prompts)
        odds = next_token([{"prompt": p, "a": x, "b": y} for p, x, y in zip(prompts, a, b)]
                          + [{"prompt": p, "a": y, "b": x} for p, x, y in zip(prompts, a, b)])
        first = 1.0 / (1.0 + np.exp(-odds))                      # P(A) renormalised over {A, B}
        return 0.5 * (first[:n] + (1.0 - first[n:]))             # a in slot A, then a in slot B
    return RewardModel(name or f"{lm.path.stem}-pairjudge", prefer_fn=prefer, batch_size=batch_size,
                       kind="pairwise_judge", model_calls=lambda: lm.forwards, **kwargs)


RUBRIC_FIELDS = {"pointwise": {"prompt", "response"}, "pairwise": {"prompt", "a", "b"}}


def _check_rubric(rubric: str, mode: str) -> None:
    """Before any model loads: the rubric names exactly the fields its mode fills."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None}
    except ValueError as err:
        raise ValueError(f"the {mode} judge rubric is not a valid format string ({err}); "
                         "write literal braces as {{ and }}") from None
    if fields != RUBRIC_FIELDS[mode]:
        needed = ", ".join("{" + field + "}" for field in sorted(RUBRIC_FIELDS[mode]))
        raise ValueError(f"the {mode} judge rubric has the fields {sorted(fields)}; it needs exactly {needed} "
                         "(literal braces as {{ and }})")


def _full_chat(tokenizer, slots) -> str:
    return text.chat_text(tokenizer, slots["prompt"], slots["response"])

