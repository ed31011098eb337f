"""Running only the real tokens of a padded batch (``real_tokens``): the same outputs and
gradients as the padded forward, for every decoder family, and the token buckets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import ModelConfig, decoder_for
from rmbandit.models.functions import shared_prompt_logprobs, token_bucket
from rmbandit.models.layers import real_token_index
from tests.helpers import equations

TINY = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8)
FAMILIES = {
    "llama": {},
    "qwen3": {},                                                  # q/k norms per head
    "mistral": {"sliding_window": 3},
    "gemma2": {"sliding_window": 3, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
               "query_pre_attn_scalar": 8},
}


def tiny(model_type):
    config = ModelConfig.from_hf_dict({"model_type": model_type, **TINY, **FAMILIES[model_type]})
    model = decoder_for(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params, is_leaf=lambda x: hasattr(x, "value"))
    # weights large enough that a wrong position, mask or slot shows in the logits
    return model, jax.tree.map(lambda x: x * 4.0, params)


def ragged_batch(rng, rows=4, width=7):
    """Left-padded, right-padded, full and one-token rows, as prompts and responses come."""
    ids = rng.integers(1, TINY["vocab_size"], (rows, width)).astype(np.int32)
    mask = np.ones((rows, width), np.int32)
    mask[0, :3] = 0              # left padding
    mask[1, 4:] = 0              # right padding
    mask[3, 1:] = 0              # one real token
    return ids, mask


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_real_tokens_give_the_padded_forwards_outputs(model_type):
    model, params = tiny(model_type)
    ids, mask = ragged_batch(np.random.default_rng(0))
    padded = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    real = int(mask.sum())
    for size in (real, real + 5):                       # exact, and with unused slots
        got = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), real_tokens=size))
        assert got.shape == (size, 1, TINY["vocab_size"])
        np.testing.assert_allclose(got[:real, 0], padded[mask.astype(bool)], rtol=2e-5, atol=2e-5)
        assert np.isfinite(got).all()                                       # unused slots too
    index = np.asarray(real_token_index(jnp.asarray(mask, bool), real + 2))
    np.testing.assert_array_equal(index, list(np.flatnonzero(mask)) + [mask.size, mask.size + 1])


def test_real_tokens_reject_last_only():
    model, params = tiny("llama")
    ids, mask = ragged_batch(np.random.default_rng(1))
    with pytest.raises(ValueError, match="last_only and real_tokens do not combine"):
        model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), last_only=True, real_tokens=32)


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_shared_prompt_logprobs_and_gradients_without_the_padding(model_type):
    """The responses' real tokens alone (behind a shared, left-padded prompt): the same
    log-probs and the same gradient as the padded responses."""
    model, params = tiny(model_type)
    rng = np.random.default_rng(2)
    prompts = rng.integers(1, TINY["vocab_size"], (3, 6)).astype(np.int32)
    prompt_mask = np.ones((3, 6), np.int32)
    prompt_mask[0, :2] = 0                                        # left padding
    k, n, r = 3, 3, 6
    responses = rng.integers(1, TINY["vocab_size"], (k, n, r)).astype(np.int32)
    response_mask = np.ones((k, n, r), np.int32)
    for j, i, length in [(0, 0, 2), (1, 2, 5), (2, 1, 1), (0, 2, 4)]:
        response_mask[j, i, length:] = 0
    weights = jnp.asarray(rng.normal(size=k * n), jnp.float32)

    def objective(p, size):
        out = shared_prompt_logprobs(model, p, jnp.asarray(prompts), jnp.asarray(prompt_mask), jnp.asarray(responses),
                                     jnp.asarray(response_mask), size)
        return jnp.sum(out.total * weights), out

    (want, want_out), want_grad = jax.value_and_grad(objective, has_aux=True)(params, None)
    size = token_bucket(response_mask.sum(), multiple=8)
    assert response_mask.sum() <= size < response_mask.size
    (got, got_out), got_grad = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=1)(params, size)
    np.testing.assert_allclose(got_out.total, want_out.total, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got_out.length, want_out.length)
    np.testing.assert_allclose(got_out.per_token, want_out.per_token, rtol=1e-5, atol=1e-4)
    assert float(jnp.abs(want_out.per_token).max()) > 1.0
    for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):       # float32 sums in another order
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))


def test_the_real_token_scatters_differentiate_as_plain_scatters():
    """The slots of the real tokens are unique and sorted, and the scatters say so: their
    derivative is then a scatter of the tangents.  Undeclared, JAX differentiates a
    scatter as if slots collided (a uint32 id per element of q, k and v, scattered,
    gathered back and compared, in every layer of the step)."""
    model, params = tiny("llama")
    rng = np.random.default_rng(3)
    prompts = jnp.asarray(rng.integers(1, TINY["vocab_size"], (2, 5)), jnp.int32)
    responses = jnp.asarray(rng.integers(1, TINY["vocab_size"], (2, 2, 6)), jnp.int32)
    response_mask = jnp.asarray(np.arange(6)[None, None] < np.array([[2, 6], [3, 1]])[..., None], jnp.int32)

    def objective(p):
        return shared_prompt_logprobs(model, p, prompts, jnp.ones_like(prompts), responses, response_mask, 16).total.sum()

    found = equations(jax.make_jaxpr(jax.grad(objective))(params).jaxpr)
    scatters = [eqn for eqn in found if eqn.primitive.name == "scatter"]
    gathers = [eqn for eqn in found if eqn.primitive.name == "gather"]
    assert len(scatters) >= 3 * TINY["num_hidden_layers"]           # q, k, v of every layer, and their tangents
    assert all(eqn.params["unique_indices"] and eqn.params["indices_are_sorted"] for eqn in scatters)
    assert any(eqn.params["unique_indices"] for eqn in gathers)
    assert not [eqn for eqn in found if any(getattr(v.aval, "dtype", None) == jnp.uint32 and v.aval.ndim >= 2
                                            for v in eqn.outvars)]
    # unused slots point past the layout, each to its own index: unique, increasing, dropped
    index = np.asarray(real_token_index(response_mask.reshape(4, 6).astype(bool), 16))
    assert (np.diff(index) > 0).all() and (index[12:] >= 24).all()


def test_token_buckets_are_few_and_tight():
    sizes = {token_bucket(t) for t in range(1, 4097)}
    for tokens in [1, 63, 64, 65, 369, 529, 737, 1000, 1025, 5000, 64_000]:
        size = token_bucket(tokens)
        assert size % 64 == 0 and size >= tokens
        assert size - tokens < max(64, tokens / 8 + 64)        # under 1/8 + one multiple of padding
    # eight sizes per doubling above 512 tokens, a multiple of 64 below
    assert sorted(s for s in sizes if 1024 < s <= 2048) == list(range(1152, 2049, 128))
    assert len(sizes) == 8 + 8 + 8 + 8
