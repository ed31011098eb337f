"""Helpers for the transformers + PyTorch parity oracle (imported only by tests that
already skipped without torch): tiny random checkpoints of every decoder family, saved
as transformers saves them, and a left-padded batch for them."""
from __future__ import annotations

import numpy as np

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
# case -> (transformers config class, options on top of TINY): one or more per family
CASES = {
    "llama_gqa_llama3_rope": ("LlamaConfig", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, rope_theta=500000.0)),
    "llama_tied_mha": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama_attention_bias": ("LlamaConfig", dict(attention_bias=True)),     # o_proj has one too
    "mistral_sliding_window": ("MistralConfig", dict(sliding_window=4)),
    "qwen2_qkv_bias": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3_qk_norm": ("Qwen3Config", dict(head_dim=16)),
    "gemma2_softcap_alternating_window": ("Gemma2Config", dict(head_dim=8, sliding_window=4,
                                                               attn_logit_softcapping=2.0,
                                                               final_logit_softcapping=3.0)),
}


def save_perturbed(model, directory, perturb):
    """Nudge the parameters whose name satisfies ``perturb`` (norm scales, biases: their
    init values 1 and 0 would hide a dropped or misplaced one), then save_pretrained."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if perturb(name):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory, safe_serialization=True)
    return model


def save_tiny(directory, name, num_labels=None, **overrides):
    """The tiny random transformers model of ``CASES[name]`` saved to ``directory``: a
    causal LM, or with ``num_labels`` a *ForSequenceClassification; ``overrides`` change
    the config (e.g. ``vocab_size`` of a real tokenizer); returns the model."""
    import torch
    import transformers

    cls, extra = CASES[name]
    torch.manual_seed(0)
    labels = {} if num_labels is None else {"num_labels": num_labels}
    config = getattr(transformers, cls)(**{**TINY, **extra, **labels, **overrides})
    auto = transformers.AutoModelForCausalLM if num_labels is None else transformers.AutoModelForSequenceClassification
    model = auto.from_config(config).eval()
    return save_perturbed(model, directory, lambda n: n.endswith("norm.weight") or n.endswith(".bias"))


BERT_TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=40, type_vocab_size=2)


def save_tiny_bert(directory, cls="BertModel", **extra):
    """A tiny random transformers BERT (``cls``: BertModel, BertForMaskedLM, ...) saved to
    ``directory`` with LayerNorms and biases nudged; returns the model."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls)(transformers.BertConfig(**{**BERT_TINY, **extra})).eval()
    return save_perturbed(model, directory, lambda n: "LayerNorm" in n or n.endswith(".bias"))


def padded_batch(seed=0, b=3, t=11, vocab=97):
    """Token ids [b, t] and attention mask, rows 1 and 2 left-padded by 3 and 6."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids[mask == 0] = 0
    return ids, mask


def hf_logits(model, ids, mask):
    """transformers' logits with positions counting only real tokens, as ours do."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))).logits.numpy()
