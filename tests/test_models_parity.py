"""Parity of the Flax decoders with transformers + PyTorch on tiny random checkpoints."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmbandit.models import Gemma2Model, LlamaModel, ModelConfig, load_pretrained  # noqa: E402
from tests.torch_oracle import save_perturbed  # noqa: E402

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
CASES = {
    "llama_gqa_llama3_rope": ("LlamaConfig", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, rope_theta=500000.0)),
    "llama_tied_mha": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "mistral_sliding_window": ("MistralConfig", dict(sliding_window=4)),
    "qwen2_qkv_bias": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3_qk_norm": ("Qwen3Config", dict(head_dim=16)),
    "gemma2_softcap_alternating_window": ("Gemma2Config", dict(head_dim=8, sliding_window=4,
                                                               attn_logit_softcapping=2.0,
                                                               final_logit_softcapping=3.0)),
}


def _save_tiny(tmp_path, name):
    cls, extra = CASES[name]
    torch.manual_seed(0)
    config = getattr(transformers, cls)(**{**TINY, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return save_perturbed(model, tmp_path, lambda n: n.endswith("norm.weight") or n.endswith(".bias"))


def _batch(seed=0, b=3, t=11, vocab=97):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :3] = 0                    # left padding
    mask[2, :6] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(CASES))
def test_float32_logits_match_transformers(tmp_path, name):
    hf = _save_tiny(tmp_path, name)
    model, params = load_pretrained(tmp_path, dtype=jnp.float32)
    assert type(model) is (Gemma2Model if name.startswith("gemma2") else LlamaModel)
    ids, mask = _batch()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(positions)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        ModelConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="RoPE type 'yarn'"):
        ModelConfig.from_hf_dict({**{"model_type": "llama", "num_attention_heads": 4}, **TINY,
                                  "num_hidden_layers": 1, "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)


def test_missing_or_misshapen_weights_are_clear_errors(tmp_path):
    _save_tiny(tmp_path, "llama_tied_mha")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    bad = dict(tensors)
    bad.pop("model.layers.1.mlp.up_proj.weight")
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks 1 tensors .*layers_1.mlp.up_proj.kernel"):
        load_pretrained(tmp_path)
    bad = dict(tensors)
    bad["model.norm.weight"] = np.ones(7, np.float32)
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="'model.norm.weight' has shape \\(7,\\)"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(tmp_path)


def test_logprobs_and_embeddings_match_transformers(tmp_path):
    from rmbandit.models import prompt_embeddings, sequence_logprobs
    hf = _save_tiny(tmp_path, "llama_gqa_llama3_rope")
    model, params = load_pretrained(tmp_path)
    ids, mask = _batch(seed=1)
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


def test_tokenizer_from_another_model_is_rejected():
    from rmbandit.models import check_tokenizer

    class FakeTokenizer:
        def __len__(self):
            return 151_000

    config = ModelConfig.from_hf_dict({"model_type": "llama", **TINY, "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="151000 tokens .*vocabulary has 97"):
        check_tokenizer(config, FakeTokenizer())
