"""DPO loss against its formula and TRL, and the shared-prompt log-probs against the plain forward."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.training import dpo_loss, ipo_loss, log_ratio_margin
from rmbandit.training.step import StepConfig, pair_losses

TRL_FIXTURE = json.loads((pathlib.Path(__file__).parent / "data" / "trl_dpo_losses.json").read_text())
TRL_LOSS_NAMES = {("sigmoid",): "dpo", ("ipo",): "ipo", ("sigmoid", "sft"): "dpo_nll"}


def test_dpo_loss_matches_the_formula():
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(size=5) * 10 for _ in range(4))
    beta = 0.3
    want = np.log1p(np.exp(-beta * ((pc - rc) - (pr - rr))))
    np.testing.assert_allclose(dpo_loss(pc, pr, rc, rr, beta), want, rtol=1e-5)
    nll = rng.random(5)
    np.testing.assert_allclose(dpo_loss(pc, pr, rc, rr, beta, nll), want + nll, rtol=1e-5)
    # stable for huge margins, and the gradient pushes chosen up and rejected down
    assert np.isfinite(np.asarray(dpo_loss(jnp.array([1e4]), jnp.array([-1e4]), 0.0, 0.0, 1.0))).all()
    g = jax.grad(lambda c, r: dpo_loss(c, r, 0.0, 0.0, 0.5).sum(), argnums=(0, 1))(jnp.array([0.2]), jnp.array([0.1]))
    assert float(g[0][0]) < 0 < float(g[1][0])


def test_ipo_loss_matches_the_formula_summed_and_per_token():
    rng = np.random.default_rng(1)
    pc, pr, rc, rr = (rng.normal(size=6) * 10 for _ in range(4))
    lc, lr = rng.integers(1, 40, 6).astype(float), rng.integers(1, 40, 6).astype(float)
    beta = 0.2
    np.testing.assert_allclose(ipo_loss(pc, pr, rc, rr, beta), ((pc - rc) - (pr - rr) - 2.5) ** 2, rtol=1e-5)
    np.testing.assert_allclose(ipo_loss(pc, pr, rc, rr, beta, lc, lr), ((pc - rc) / lc - (pr - rr) / lr - 2.5) ** 2,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="IPO needs beta > 0"):
        ipo_loss(pc, pr, rc, rr, 0.0)


@pytest.mark.parametrize("case", TRL_FIXTURE["cases"], ids=lambda c: f"{'+'.join(c['loss_type'])}-beta{c['beta']}")
def test_losses_match_trl_on_the_same_logprobs(case):
    """Our per-pair losses (as the step forms them: dpo, dpo_nll with NLL = -log pi(y_w) / |y_w|,
    ipo with per-token log-ratios) against TRL's DPOTrainer on the same summed log-probs and
    token counts (tests/data/trl_dpo_losses.json, written by experiments/reference/
    trl_dpo_losses.py).  Each pair was its own TRL batch, so TRL's loss is that pair's; the
    batch is TRL's mean over several pairs (for dpo_nll chosen responses of one length, as
    TRL's "sft" term is a token mean over the batch's chosen tokens, not a mean of per-pair
    NLLs)."""
    config = StepConfig(loss=TRL_LOSS_NAMES[tuple(case["loss_type"])], beta=case["beta"])

    def ours(c):
        policy = jnp.asarray([c["policy_chosen"], c["policy_rejected"]])
        reference = jnp.asarray([c["ref_chosen"], c["ref_rejected"]])
        lengths = jnp.asarray([c["chosen_length"], c["rejected_length"]], jnp.float32)
        return pair_losses(policy, lengths, reference, config)

    pairs, batch = case["pairs"], case["batch"]
    np.testing.assert_allclose(ours(pairs), pairs["trl_loss"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(ours(batch).mean(), batch["trl_loss"], rtol=1e-5, atol=0)
    # the fixture covers what could go wrong: unequal lengths, and margins where only the
    # stable -log sigmoid stays finite and accurate
    logprobs = (np.asarray(pairs[k]) for k in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"))
    margin = case["beta"] * np.asarray(log_ratio_margin(*logprobs))
    assert margin.max() > 45 and margin.min() < -45
    assert any(c != r for c, r in zip(pairs["chosen_length"], pairs["rejected_length"]))


@pytest.mark.parametrize("query_block", [64, 2])
def test_shared_prompt_logprobs_equal_the_full_sequences(tmp_path, query_block, monkeypatch):
    """Also with query blocks of 2: the prompt and the responses then skip keys past their
    block at the cache's static slot."""
    pytest.importorskip("torch")
    from rmbandit.models import layers, load_pretrained, sequence_logprobs
    monkeypatch.setattr(layers, "QUERY_BLOCK", query_block)
    from rmbandit.models.functions import shared_prompt_logprobs
    from tests.torch_oracle import save_tiny
    save_tiny(tmp_path, "llama_gqa_llama3_rope")
    model, params = load_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    n, p, r = 3, 6, 5
    prompt = rng.integers(3, 97, size=(n, p))
    prompt_mask = np.ones((n, p), np.int32)
    prompt_mask[1, :2] = 0
    responses = rng.integers(3, 97, size=(2, n, r))
    response_mask = np.ones((2, n, r), np.int32)
    response_mask[0, 2, 3:] = 0                   # right padding
    response_mask[1, 0, 4:] = 0
    got = shared_prompt_logprobs(model, params, jnp.asarray(prompt), jnp.asarray(prompt_mask),
                                 jnp.asarray(responses), jnp.asarray(response_mask))
    full_ids = np.concatenate([np.tile(prompt, (2, 1)), responses.reshape(2 * n, r)], 1)
    full_mask = np.concatenate([np.tile(prompt_mask, (2, 1)), response_mask.reshape(2 * n, r)], 1)
    response_only = np.concatenate([np.zeros((2 * n, p), np.int32), response_mask.reshape(2 * n, r)], 1)
    want = sequence_logprobs(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask), jnp.asarray(response_only))
    np.testing.assert_allclose(got.total, want.total, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.length, want.length)


def test_picked_logprobs_value_and_gradient_equal_log_softmax():
    """The log-sum-exp form (shift held out of the gradient) against the textbook
    log_softmax + gather, values and gradients, on logits large enough to overflow exp."""
    from rmbandit.models.functions import picked_logprobs

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 50)) * 30 + 200, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, size=(3, 5)))
    weights = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)

    def textbook(x):
        return jnp.take_along_axis(jax.nn.log_softmax(x, -1), targets[..., None], -1)[..., 0]

    np.testing.assert_allclose(picked_logprobs(logits, targets), textbook(logits), atol=1e-4)
    got = jax.grad(lambda x: (picked_logprobs(x, targets) * weights).sum())(logits)
    want = jax.grad(lambda x: (textbook(x) * weights).sum())(logits)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, want, atol=1e-5)
