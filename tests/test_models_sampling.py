"""KV-cache sampling against transformers generate and against the full forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import load_pretrained
from rmbandit.models.layers import BF16_WEIGHTS, dense
from rmbandit.models.sampling import (bucket, decode_chunks, filter_logits, generate, inverse_cdf,
                                     with_bfloat16_weights)

torch = pytest.importorskip("torch")

from tests.torch_oracle import padded_batch  # noqa: E402


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope", "mistral_sliding_window", "qwen3_qk_norm",
                                  "gemma2_softcap_alternating_window"])
def test_greedy_generation_is_token_identical_to_transformers(tiny_checkpoint, name):
    hf, path = tiny_checkpoint(name)
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=3, t=7)
    got = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
                   max_new_tokens=9, temperature=0.0)
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=9,
                           do_sample=False, eos_token_id=None, pad_token_id=0).numpy()[:, ids.shape[1]:]
    np.testing.assert_array_equal(got.tokens, want)
    assert np.asarray(got.mask).all()


@pytest.mark.parametrize("name, chunks", [("qwen2_qkv_bias", 1), ("qwen2_qkv_bias", 3),
                                          ("mistral_sliding_window", 2), ("gemma2_softcap_alternating_window", 2)])
def test_cached_decode_equals_full_forward_logprobs(tiny_checkpoint, name, chunks):
    """Samples attend to their prompt as a shared prefix, in decode chunks whose caches
    grow: the sampler's log-probs equal a full forward over prompt + sample.  Windows of
    4 slots cross from the samples into the 8-slot prompt."""
    _, path = tiny_checkpoint(name)
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=4, t=8)          # every prompt has real tokens
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(1),
                   max_new_tokens=10, num_samples=2, temperature=0.8, chunks=chunks)
    full_ids = np.concatenate([np.repeat(ids, 2, 0), np.asarray(out.tokens)], 1)
    full_mask = np.concatenate([np.repeat(mask, 2, 0), np.asarray(out.mask)], 1)
    logits = model.apply({"params": params}, jnp.asarray(full_ids), jnp.asarray(full_mask))
    logp = jax.nn.log_softmax(logits[:, 7:-1], -1)
    want = jnp.take_along_axis(logp, jnp.asarray(out.tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4)


def test_eos_stops_a_sample_and_pads_after_it(tiny_checkpoint):
    _, path = tiny_checkpoint("llama_tied_mha")
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=5, t=5)
    free = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
                    max_new_tokens=6, temperature=0.0)
    eos = int(free.tokens[0, 2])                 # make row 0's third token the EOS
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
                   max_new_tokens=6, temperature=0.0, eos_ids=(eos,), pad_id=0)
    first = int(np.argmax(np.asarray(out.tokens[0]) == eos))
    assert first <= 2
    np.testing.assert_array_equal(out.mask[0], [1] * (first + 1) + [0] * (5 - first))
    assert (np.asarray(out.tokens[0, first + 1:]) == 0).all()


def test_samples_differ_per_key_and_follow_the_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, 1.0, top_p=0.7)
    assert np.isfinite(np.asarray(kept[0, :2])).all() and np.isinf(np.asarray(kept[0, 2:])).all()
    for top_p in (0.0, 1e-9, 0.4):                  # the most likely token always stays (greedy at 0)
        kept = np.asarray(filter_logits(logits, 1.0, top_p=top_p))
        assert np.isfinite(kept[0, 0]) and np.isinf(kept[0, 1:]).all(), top_p
    kept = filter_logits(logits, 1.0, top_k=3)
    assert np.isinf(np.asarray(kept[0, 3])) and np.isfinite(np.asarray(kept[0, :3])).all()
    draws = jax.vmap(lambda k: jax.random.categorical(k, filter_logits(logits, 1.0)[0]))(
        jax.random.split(jax.random.key(0), 20000))
    np.testing.assert_allclose(np.bincount(np.asarray(draws), minlength=4) / 20000, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    assert bucket(1) == 32 and bucket(33) == 64 and bucket(64) == 64


def test_sampled_tokens_follow_the_model_distribution(tiny_checkpoint):
    """Empirical first-token frequencies over many samples match softmax(logits / T)."""
    _, path = tiny_checkpoint("llama_tied_mha")
    model, params = load_pretrained(path)
    params = {**params, "norm": {"scale": params["norm"]["scale"] * 40}}     # a peaked distribution
    ids, mask = padded_batch(seed=6, t=5)
    ids, mask = jnp.asarray(ids[:1]), jnp.asarray(mask[:1])
    n = 4000
    out = generate(model, params, ids, mask, jax.random.key(3), max_new_tokens=1, num_samples=n, temperature=0.7)
    want = np.asarray(jax.nn.softmax(model.apply({"params": params}, ids, mask)[0, -1] / 0.7))
    freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=want.size) / n
    assert want.max() > 0.2, "the test needs a peaked distribution to tell samplers apart"
    # DKW: the empirical CDF is within 0.031 of the true one with probability 0.999
    assert np.abs(np.cumsum(freq) - np.cumsum(want)).max() < 0.031
    uniform = np.full_like(want, 1 / want.size)
    assert np.abs(np.cumsum(uniform) - np.cumsum(want)).max() > 0.1     # a wrong sampler would fail


def test_decode_chunks_cover_the_new_tokens():
    assert decode_chunks(128, 4) == [32, 64, 96, 128]
    assert decode_chunks(10, 3) == [8, 10]
    assert decode_chunks(5, 4) == [5]
    assert decode_chunks(128, 1) == [128]


def test_chunked_greedy_decode_equals_one_loop(tiny_checkpoint):
    _, path = tiny_checkpoint("llama_gqa_llama3_rope")
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=7, t=6)
    runs = [generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), max_new_tokens=20,
                     num_samples=2, temperature=0.0, chunks=c) for c in (1, 3)]
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    np.testing.assert_allclose(runs[0].logprobs, runs[1].logprobs, atol=1e-5)


@pytest.mark.parametrize("vocab, block", [(1000, 64), (4096, 256), (7, 4)])
def test_inverse_cdf_matches_numpy_search(vocab, block):
    """The two-level search returns what np.searchsorted on the whole cumulative sum does
    (the first index whose running total exceeds u * total), never a zero-weight entry,
    including draws next to block edges and a vocabulary that is no multiple of the block."""
    rng = np.random.default_rng(vocab)
    weights = rng.exponential(size=(64, vocab)).astype(np.float32)
    weights[rng.random(weights.shape) < 0.3] = 0.0
    weights[:, 0] = 0.0                                       # u = 0 must not pick a zero weight
    cdf = np.cumsum(weights.astype(np.float64), -1)
    u = rng.random(64).astype(np.float32)
    u[:4] = [0.0, np.nextafter(np.float32(1), np.float32(0)), *(cdf[2:4, block - 1] / cdf[2:4, -1])]
    got = np.asarray(inverse_cdf(jnp.asarray(weights), jnp.asarray(u), block=block))
    want = np.array([np.searchsorted(c, x * c[-1], side="right") for c, x in zip(cdf, u.astype(np.float64))])
    # float32 and float64 running totals may disagree on a draw next to an edge: then the
    # entry on the other side of the edge (or of a run of zero weights) is drawn
    assert (got == want).mean() >= 60 / 64
    assert (weights[np.arange(64), got] > 0).all()


def test_inverse_cdf_draw_on_a_block_edge_goes_to_the_next_entry():
    """With equal integer weights the running totals are exact: u * total landing exactly
    on the end of a block must draw the first entry of the next block (the total must be
    exceeded, not reached), as np.searchsorted(side="right") does."""
    weights = jnp.ones((4, 1024), jnp.float32)
    u = jnp.asarray([0.0, 0.25, 0.5, 0.75], jnp.float32)
    np.testing.assert_array_equal(inverse_cdf(weights, u, block=256), [0, 256, 512, 768])


def test_prompt_hidden_is_the_last_token_embedding(tiny_checkpoint):
    """The prefill's final hidden state at each prompt's last position is LASeR's context:
    the same as ``prompt_embeddings(..., "last")``, without a second forward."""
    from rmbandit.models import prompt_embeddings
    _, path = tiny_checkpoint("qwen2_qkv_bias")
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=5, t=8)
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(2), max_new_tokens=3,
                   num_samples=2, temperature=0.7)
    want = prompt_embeddings(model, params, jnp.asarray(ids), jnp.asarray(mask), "last")
    assert out.prompt_hidden.shape == (ids.shape[0], model.config.hidden_size)
    np.testing.assert_allclose(out.prompt_hidden, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_weight_product_rounds_both_operands_and_accumulates_in_float32():
    """A dense layer at ``BF16_WEIGHTS`` = the float64 product of the bfloat16-rounded input
    and kernel (LM-like inputs: norms in the hundreds, a shared direction), as float32."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 96)) + 40.0 * rng.normal(size=96)).astype(np.float32)
    kernel = rng.normal(0, 0.05, size=(96, 48)).astype(np.float32)
    layer = dense(48, ("embed", "mlp"), precision=BF16_WEIGHTS)
    got = layer.apply({"params": {"kernel": jnp.asarray(kernel, jnp.bfloat16)}}, jnp.asarray(x))
    rounded = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, rounded(x) @ rounded(kernel), rtol=1e-6, atol=1e-4)
    assert np.abs(np.asarray(got, np.float64) - x.astype(np.float64) @ kernel).max() > 1e-2   # it did round


@pytest.mark.parametrize("name", ["llama_tied_mha", "qwen2_qkv_bias", "gemma2_softcap_alternating_window"])
def test_bfloat16_weights_sample_close_to_the_float32_policy(tiny_checkpoint, name):
    """Sampling from ``with_bfloat16_weights``: the sampler's log-probs of its own tokens
    are the float32 policy's full-forward log-probs to bfloat16 accuracy, and the greedy
    decode picks the float32 policy's tokens."""
    _, path = tiny_checkpoint(name)
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=4, t=8)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    sampler, weights = with_bfloat16_weights(model, params)
    out = generate(sampler, weights, ids, mask, jax.random.key(1), max_new_tokens=10, num_samples=2,
                   temperature=0.8, chunks=2)
    full_ids = jnp.concatenate([jnp.repeat(ids, 2, 0), out.tokens], 1)
    full_mask = jnp.concatenate([jnp.repeat(mask, 2, 0), out.mask], 1)
    logp = jax.nn.log_softmax(model.apply({"params": params}, full_ids, full_mask)[:, 7:-1], -1)
    want = jnp.take_along_axis(logp, out.tokens[..., None], -1)[..., 0]
    error = np.abs(np.asarray(out.logprobs) - np.asarray(want))
    assert 0 < error.max() < 3e-2, error.max()
    greedy = [generate(m, p, ids, mask, jax.random.key(0), max_new_tokens=6, temperature=0.0).tokens
              for m, p in ((model, params), (sampler, weights))]
    np.testing.assert_array_equal(*greedy)
