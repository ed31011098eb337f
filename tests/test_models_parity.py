"""Parity of the Flax decoders with transformers + PyTorch on tiny random checkpoints."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmbandit.models import Gemma2Model, LlamaModel, ModelConfig, load_pretrained  # noqa: E402
from tests.torch_oracle import CASES, TINY, hf_logits, padded_batch  # noqa: E402


@pytest.mark.parametrize("name", list(CASES))
def test_float32_logits_match_transformers(tiny_checkpoint, name):
    hf, path = tiny_checkpoint(name)
    model, params = load_pretrained(path, dtype=jnp.float32)
    assert type(model) is (Gemma2Model if name.startswith("gemma2") else LlamaModel)
    ids, mask = padded_batch()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    want = hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("theta", [1e4, 5e5, 1e6])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}])
def test_rope_inverse_frequencies_are_transformers_to_the_ulp(theta, head_dim, scaling):
    """An ulp off in inv_freq is a phase error that grows with the position (2e-2 in the
    logits of a tiny sharp model by position 6000, with float32 pow's 2-14 such entries).
    At most one entry may differ: torch's own float32 pow is not correctly rounded either
    (1e6 ** 0.578125 = 2942.72718: torch gives 2942.72705, the nearest float32 is 2942.72729)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from rmbandit.models.layers import rope_frequencies
    hf_config = transformers.LlamaConfig(**{**TINY, "num_attention_heads": 2, "head_dim": head_dim,
                                            "rope_theta": theta, "rope_scaling": scaling})
    want = LlamaRotaryEmbedding(hf_config).inv_freq.numpy()
    got = rope_frequencies(ModelConfig.from_hf_dict(hf_config.to_dict()))
    assert got.dtype == np.float32
    np.testing.assert_array_max_ulp(got, want, maxulp=1)
    assert (got != want).sum() <= (1 if (theta, head_dim) == (1e6, 128) else 0)


@pytest.mark.parametrize("model_type, bias, output_bias", [
    ("llama", True, True), ("qwen3", True, True), ("gemma2", True, True), ("llama", False, False),
    ("qwen2", None, False), ("mistral", None, False)])
def test_an_o_proj_bias_follows_attention_bias_where_transformers_gives_one(model_type, bias, output_bias):
    raw = {"model_type": model_type, "num_attention_heads": 4, **TINY, "num_hidden_layers": 1}
    if bias is not None:
        raw["attention_bias"] = bias
    assert ModelConfig.from_hf_dict(raw).output_bias is output_bias


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        ModelConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="RoPE type 'yarn'"):
        ModelConfig.from_hf_dict({**{"model_type": "llama", "num_attention_heads": 4}, **TINY,
                                  "num_hidden_layers": 1, "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_missing_or_misshapen_weights_are_clear_errors(tiny_checkpoint):
    _, path = tiny_checkpoint("llama_tied_mha")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(path / "model.safetensors")
    bad = dict(tensors)
    bad.pop("model.layers.1.mlp.up_proj.weight")
    save_file(bad, path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks 1 tensors .*layers_1.mlp.up_proj.kernel"):
        load_pretrained(path)
    bad = dict(tensors)
    bad["model.norm.weight"] = np.ones(7, np.float32)
    save_file(bad, path / "model.safetensors")
    with pytest.raises(ValueError, match="'model.norm.weight' has shape \\(7,\\)"):
        load_pretrained(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(path)


def test_a_tied_checkpoint_that_stores_its_lm_head_too_loads_as_transformers_does(tiny_checkpoint):
    hf, path = tiny_checkpoint("llama_tied_mha")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].copy()}, path / "model.safetensors")
    model, params = load_pretrained(path)
    ids, mask = padded_batch()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], hf_logits(hf, ids, mask)[real], atol=1e-4, rtol=1e-4)


def test_logprobs_and_embeddings_match_transformers(tiny_checkpoint):
    from rmbandit.models import prompt_embeddings, sequence_logprobs
    hf, path = tiny_checkpoint("llama_gqa_llama3_rope")
    model, params = load_pretrained(path)
    ids, mask = padded_batch(seed=1)
    response = np.zeros_like(mask)
    response[:, 7:] = 1                             # the last 4 tokens are the response
    got = sequence_logprobs(model, params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(response))
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions),
                 output_hidden_states=True)
    logp = torch.log_softmax(out.logits[:, :-1], -1).gather(-1, torch.tensor(ids[:, 1:, None]))[..., 0].numpy()
    want = (logp * response[:, 1:]).sum(-1)
    np.testing.assert_allclose(got.total, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.mean, want / 4, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got.length, [4, 4, 4])
    hidden = out.hidden_states[-1].numpy()
    np.testing.assert_allclose(prompt_embeddings(model, params, jnp.asarray(ids), jnp.asarray(mask), "last"),
                               hidden[:, -1], atol=1e-4)
    first = mask.argmax(-1)
    np.testing.assert_allclose(prompt_embeddings(model, params, jnp.asarray(ids), jnp.asarray(mask), "first"),
                               hidden[np.arange(3), first], atol=1e-4)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(prompt_embeddings(model, params, jnp.asarray(ids), jnp.asarray(mask), "mean"),
                               mean, atol=1e-4)
    with pytest.raises(ValueError, match="pooling"):
        prompt_embeddings(model, params, jnp.asarray(ids), jnp.asarray(mask), "max")


def _attention_reference(q, k, v, bias, scale, cap):
    """Plain attention, one head at a time (kv head h // G for query head h), float64."""
    b, t, heads, _ = q.shape
    g = heads // k.shape[2]
    out = np.zeros(q.shape)
    for row in range(b):
        for h in range(heads):
            logits = q[row, :, h] @ k[row, :, h // g].T * scale
            if cap is not None:
                logits = np.tanh(logits / cap) * cap
            logits = logits + bias[row, 0]
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            out[row, :, h] = probs / probs.sum(-1, keepdims=True) @ v[row, :, h // g]
    return out


@pytest.mark.parametrize("query_slot, cache_len, cap", [(0, 13, None), (5, 24, 2.0), (None, 24, None)])
def test_blocked_grouped_attention_equals_plain_attention(query_slot, cache_len, cap):
    """Query blocks that skip the masked keys give plain attention's result: a full causal
    forward (slot 0), queries appended to a cache at a static slot, and a traced slot (no
    skipping); 13 queries in blocks of 4, so the last block is partial."""
    from rmbandit.models.layers import attention_bias, grouped_attention

    rng = np.random.default_rng(0)
    b, t, heads, kv, hd = 2, 13, 6, 2, 8
    q = rng.normal(size=(b, t, heads, hd)).astype(np.float32)
    k, v = (rng.normal(size=(b, cache_len, kv, hd)).astype(np.float32) for _ in range(2))
    slot = 0 if query_slot is None else query_slot
    valid = np.zeros((b, cache_len), bool)
    valid[:, :slot + t] = True
    valid[1, :3] = False                                   # a left-padded row
    query_index = np.broadcast_to(slot + np.arange(t), (b, t))
    key_index = np.broadcast_to(np.arange(cache_len), (b, cache_len))
    bias = np.asarray(attention_bias(jnp.asarray(query_index), jnp.asarray(key_index), jnp.asarray(valid), None))
    keys, values = jnp.asarray(k.transpose(0, 2, 3, 1)), jnp.asarray(v.transpose(0, 2, 1, 3))  # the cache layouts
    got = grouped_attention(jnp.asarray(q), keys, values, jnp.asarray(bias), 0.3, cap, query_slot, block=4)
    want = _attention_reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                np.maximum(bias, -1e30).astype(np.float64), 0.3, cap)
    real = valid[:, slot:slot + t]                         # padding queries see no key: their output is unused
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5)


@pytest.mark.parametrize("name", ["llama_gqa_llama3_rope", "gemma2_softcap_alternating_window"])
def test_small_query_blocks_keep_transformers_logits(tiny_checkpoint, name, monkeypatch):
    """The whole model with query blocks of 3 (four blocks over 11 tokens, windows of 4)."""
    from rmbandit.models import layers

    monkeypatch.setattr(layers, "QUERY_BLOCK", 3)
    hf, path = tiny_checkpoint(name)
    model, params = load_pretrained(path, dtype=jnp.float32)
    ids, mask = padded_batch()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    want = hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)
