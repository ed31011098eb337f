"""Attention kernels (``layers.ATTENTION_KERNELS``): jax.nn.dot_product_attention over a
prompt's and a row's keys together gives what rmbandit's blocked attention gives, for the
full forward, the shared-prompt log-probs with their gradients, and sampling; it is
really taken where it applies and never where it does not; "cudnn" off a GPU or in
float32 is an error that names the fix."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit import config as config_lib
from rmbandit.models import layers
from rmbandit.models.functions import shared_prompt_logprobs, token_bucket
from rmbandit.models.sampling import generate
from rmbandit.training.config import TrainConfig
from tests.test_models_real_tokens import TINY, ragged_batch, tiny


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of jax.nn.dot_product_attention made while tracing."""
    calls = []
    original = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: (calls.append(k), original(*a, **k))[1])
    return calls


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen3"])
def test_the_xla_kernel_gives_the_blocked_forward(model_type, fused_calls):
    model, params = tiny(model_type)
    ids, mask = (jnp.asarray(x) for x in ragged_batch(np.random.default_rng(0)))
    want = model.apply({"params": params}, ids, mask)
    assert not fused_calls
    got = model.clone(attention="xla").apply({"params": params}, ids, mask)
    assert len(fused_calls) == TINY["num_hidden_layers"] and fused_calls[0]["implementation"] == "xla"
    real = np.asarray(mask, bool)
    assert float(jnp.abs(want).max()) > 1.0
    np.testing.assert_allclose(got[real], want[real], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("real_tokens", [False, True])
def test_the_xla_kernel_gives_the_blocked_logprobs_and_gradients(real_tokens, fused_calls):
    """Behind a shared, left-padded prompt (each prompt's keys repeated for its rows), on
    the padded responses and on their real tokens alone."""
    model, params = tiny("mistral")                              # a sliding window, shorter than the rows
    rng = np.random.default_rng(4)
    prompts = jnp.asarray(rng.integers(1, TINY["vocab_size"], (3, 6)), jnp.int32)
    prompt_mask = jnp.asarray(np.arange(6)[None] >= np.array([[2], [0], [5]]), jnp.int32)
    k, r = 2, 6
    responses = jnp.asarray(rng.integers(1, TINY["vocab_size"], (k, 3, r)), jnp.int32)
    response_mask = jnp.asarray(np.arange(r)[None, None] < np.array([[2, 6, 1], [4, 3, 6]])[..., None], jnp.int32)
    size = token_bucket(int(response_mask.sum()), multiple=8) if real_tokens else None
    weights = jnp.asarray(rng.normal(size=k * 3), jnp.float32)

    def objective(p, m):
        out = shared_prompt_logprobs(m, p, prompts, prompt_mask, responses, response_mask, size)
        return jnp.sum(out.total * weights), out.per_token

    (_, want), want_grad = jax.value_and_grad(objective, has_aux=True)(params, model)
    assert not fused_calls
    (_, got), got_grad = jax.value_and_grad(objective, has_aux=True)(params, model.clone(attention="xla"))
    assert len(fused_calls) == 2 * TINY["num_hidden_layers"]      # the prompts' pass and the responses'
    assert [call["mask"].shape[-1] for call in fused_calls[-1:]] == [6 + r]      # the prompt's keys, then the row's
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert float(jnp.abs(want).max()) > 1.0
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))


def test_sampling_prefills_through_the_kernel_and_decodes_blocked(fused_calls):
    model, params = tiny("llama")
    ids, mask = (jnp.asarray(x) for x in ragged_batch(np.random.default_rng(5)))
    run = lambda m: generate(m, params, ids, mask, jax.random.key(0), max_new_tokens=5, temperature=0.0, chunks=1)
    want = run(model)
    assert not fused_calls
    got = run(model.clone(attention="xla"))
    # the prefill's layers only: a decode step has one query and keeps the blocked kernel
    assert len(fused_calls) == TINY["num_hidden_layers"]
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-5, atol=1e-5)


def test_soft_capped_logits_keep_the_blocked_kernel(fused_calls):
    model, params = tiny("gemma2")
    ids, mask = (jnp.asarray(x) for x in ragged_batch(np.random.default_rng(6)))
    want = model.apply({"params": params}, ids, mask)
    got = model.clone(attention="xla").apply({"params": params}, ids, mask)
    assert not fused_calls
    np.testing.assert_array_equal(got, want)


def test_bad_kernels_name_the_fix():
    model, params = tiny("llama")
    ids, mask = (jnp.asarray(x) for x in ragged_batch(np.random.default_rng(7)))
    with pytest.raises(ValueError, match="attention kernel must be one of blocked, xla, cudnn, got 'flash'"):
        model.clone(attention="flash").apply({"params": params}, ids, mask)
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="for NVIDIA GPUs; this process runs on cpu.*policy.attention=blocked"):
            model.clone(attention="cudnn").apply({"params": params}, ids, mask)
    with pytest.raises(ValueError, match="policy.attention=cudnn needs policy.dtype=bfloat16"):
        config_lib.load(TrainConfig, None, ["policy.attention=cudnn"])
    assert config_lib.load(TrainConfig, None, ["policy.attention=cudnn", "policy.dtype=bfloat16"]).policy.attention == "cudnn"


def test_fused_attention_rejects_float32_for_cudnn(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q = jnp.zeros((1, 4, 2, 8), jnp.float32)
    k = jnp.zeros((1, 1, 8, 4), jnp.float32)
    v = jnp.zeros((1, 1, 4, 8), jnp.float32)
    with pytest.raises(ValueError, match="bfloat16 or float16 activations, got float32.*policy.dtype=bfloat16"):
        layers.fused_attention(q, k, v, jnp.zeros((1, 1, 4, 4)), 1.0, 0, None, None, "cudnn")
