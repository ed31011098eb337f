"""LoRA adapters and export back to an HF directory that transformers loads."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import load_pretrained
from rmbandit.models.export import export_hf
from rmbandit.models.lora import LoraConfig, init_lora, merge_lora
from tests.test_models_parity import _batch, _save_tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(params=["qwen2_qkv_bias", "gemma2_softcap_alternating_window"])
def tiny(tmp_path, request):
    _save_tiny(tmp_path / "hf", request.param)
    return load_pretrained(tmp_path / "hf")


def test_fresh_lora_is_identity_and_merge_is_w_plus_scaled_ab(tiny):
    model, params = tiny
    cfg = LoraConfig(rank=4, alpha=8.0)
    lora = init_lora(jax.random.key(0), params, cfg)
    assert set(flax.traverse_util.flatten_dict(lora)) == {
        (f"layers_{i}", "self_attn", p, ab) for i in range(2) for p in ("q_proj", "v_proj") for ab in "ab"}
    ids, mask = map(jnp.asarray, _batch())
    base = model.apply({"params": params}, ids, mask)
    np.testing.assert_array_equal(model.apply({"params": merge_lora(params, lora, cfg)}, ids, mask), base)
    rng = np.random.default_rng(0)
    lora = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), lora)
    merged = merge_lora(params, lora, cfg)
    a, b = lora["layers_1"]["self_attn"]["v_proj"]["a"], lora["layers_1"]["self_attn"]["v_proj"]["b"]
    np.testing.assert_allclose(merged["layers_1"]["self_attn"]["v_proj"]["kernel"],
                               params["layers_1"]["self_attn"]["v_proj"]["kernel"] + 2.0 * np.asarray(a) @ np.asarray(b),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(merged["layers_1"]["mlp"]["up_proj"]["kernel"],
                                  params["layers_1"]["mlp"]["up_proj"]["kernel"])


def test_gradients_reach_only_the_adapters(tiny):
    model, params = tiny
    cfg = LoraConfig(rank=2, alpha=4.0)
    lora = init_lora(jax.random.key(1), params, cfg)
    ids, mask = map(jnp.asarray, _batch())

    def loss(adapters):
        return model.apply({"params": merge_lora(params, adapters, cfg)}, ids, mask).mean()

    grads = jax.grad(loss)(lora)
    assert jax.tree.structure(grads) == jax.tree.structure(lora)
    assert float(jnp.abs(grads["layers_0"]["self_attn"]["q_proj"]["b"]).max()) > 0      # b gets signal
    assert float(jnp.abs(grads["layers_0"]["self_attn"]["q_proj"]["a"]).max()) == 0     # a waits for b != 0


def test_unknown_lora_target_names_the_layers(tiny):
    _, params = tiny
    with pytest.raises(ValueError, match=r"\['qkv'\] match no Dense layer; available: .*q_proj"):
        init_lora(jax.random.key(0), params, LoraConfig(targets=("qkv",)))


def test_export_round_trips_through_transformers(tiny, tmp_path):
    model, params = tiny
    cfg = LoraConfig(rank=4, alpha=8.0)
    rng = np.random.default_rng(2)
    lora = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype),
                        init_lora(jax.random.key(0), params, cfg))
    out = export_hf(tmp_path / "export", model.config, params, lora, cfg)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = _batch()
    ours = np.asarray(model.apply({"params": merge_lora(params, lora, cfg)}, jnp.asarray(ids), jnp.asarray(mask)))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)
    again, params2 = load_pretrained(out)
    assert again.config == model.config
