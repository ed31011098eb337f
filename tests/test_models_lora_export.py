"""LoRA adapters and export back to an HF directory that transformers loads."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import load_pretrained
from rmbandit.models.export import export_hf
from rmbandit.models.lora import LoraConfig, init_lora, merge_lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.torch_oracle import hf_logits, padded_batch  # noqa: E402


@pytest.fixture(params=["qwen2_qkv_bias", "gemma2_softcap_alternating_window"])
def tiny(tiny_checkpoint, request):
    _, path = tiny_checkpoint(request.param)
    return load_pretrained(path)


def test_fresh_lora_is_identity_and_merge_is_w_plus_scaled_ab(tiny):
    model, params = tiny
    cfg = LoraConfig(rank=4, alpha=8.0)
    lora = init_lora(jax.random.key(0), params, cfg)
    assert set(flax.traverse_util.flatten_dict(lora)) == {
        (f"layers_{i}", "self_attn", p, ab) for i in range(2) for p in ("q_proj", "v_proj") for ab in "ab"}
    ids, mask = map(jnp.asarray, padded_batch())
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
    ids, mask = map(jnp.asarray, padded_batch())

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


def test_a_lora_rank_or_alpha_that_cannot_scale_is_refused():
    for bad, message in [(dict(rank=0), "rank must be a positive integer, got 0"),
                         (dict(rank=2.5), "rank must be a positive integer, got 2.5"),
                         (dict(alpha=0.0), "alpha must be > 0, got 0.0")]:
        with pytest.raises(ValueError, match=message):
            LoraConfig(**bad)


def test_export_round_trips_through_transformers(tiny, tmp_path):
    model, params = tiny
    cfg = LoraConfig(rank=4, alpha=8.0)
    rng = np.random.default_rng(2)
    lora = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype),
                        init_lora(jax.random.key(0), params, cfg))
    out = export_hf(tmp_path / "export", model.config, params, lora, cfg)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = padded_batch()
    ours = np.asarray(model.apply({"params": merge_lora(params, lora, cfg)}, jnp.asarray(ids), jnp.asarray(mask)))
    want = hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], want[real], atol=1e-4, rtol=1e-4)
    again, params2 = load_pretrained(out)
    assert again.config == model.config


@pytest.mark.parametrize("case", ["llama_gqa_llama3_rope", "qwen3_qk_norm", "gemma2_softcap_alternating_window"])
def test_sequence_classifier_export_round_trips_through_transformers(tiny_checkpoint, tmp_path, case):
    """A reward model's ``score`` head is exported as ``score.weight`` (it once came out as
    ``model.layers.score..weight``) under a *ForSequenceClassification config:
    transformers loads it without missing or unexpected weights and scores as we do."""
    from rmbandit.models.functions import classifier_scores

    _, path = tiny_checkpoint(case, num_labels=2)
    model, params = load_pretrained(path)
    assert model.config.num_labels == 2
    rng = np.random.default_rng(0)
    params = {**params, "score": {"kernel": params["score"]["kernel"] + jnp.asarray(
        rng.normal(size=params["score"]["kernel"].shape), jnp.float32)}}      # not the checkpoint's head
    out = export_hf(tmp_path / "export", model.config, params)
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32,
                                                                               output_loading_info=True)
    assert not any(info.values()), info
    assert type(hf).__name__.endswith("ForSequenceClassification")
    ids, mask = padded_batch(seed=2)
    ours = np.asarray(classifier_scores(model, params, jnp.asarray(ids), jnp.asarray(mask)))
    with torch.no_grad():            # transformers on each unpadded row: it pools the last token
        want = np.stack([hf.eval()(input_ids=torch.tensor(row[m == 1][None])).logits[0].numpy()
                         for row, m in zip(ids, mask)])
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
    again, params2 = load_pretrained(out)
    assert again.config == model.config
    np.testing.assert_array_equal(params2["score"]["kernel"], params["score"]["kernel"])


@pytest.mark.parametrize("remat", ["none", "full"])
def test_unmerged_adapters_give_the_merged_models_outputs_and_gradients(tiny, remat):
    from rmbandit.models.lora import unmerged
    model, params = tiny
    model = model.clone(remat=remat)
    cfg = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    rng = np.random.default_rng(1)
    lora = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype),
                        init_lora(jax.random.key(0), params, cfg))
    ids, mask = map(jnp.asarray, padded_batch())

    def merged(adapters):
        return model.apply({"params": merge_lora(params, adapters, cfg)}, ids, mask)

    def beside(adapters):
        with unmerged(adapters, cfg):
            return model.apply({"params": params}, ids, mask)

    want, got = merged(lora), jax.jit(beside)(lora)
    assert float(jnp.max(jnp.abs(want - model.apply({"params": params}, ids, mask)))) > 1e-2   # the adapters act
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    loss = lambda fn: lambda adapters: jnp.sum(jax.nn.log_softmax(fn(adapters))[..., 3] * mask)  # noqa: E731
    grads_want, grads_got = jax.grad(loss(merged))(lora), jax.jit(jax.grad(loss(beside)))(lora)
    for path, g in jax.tree_util.tree_leaves_with_path(grads_want):
        scale = float(jnp.max(jnp.abs(g)))
        assert scale > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(dict(jax.tree_util.tree_leaves_with_path(grads_got))[path], g, rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def test_unmerged_adapters_of_another_model_are_an_error(tiny):
    from rmbandit.models.lora import unmerged
    model, params = tiny
    lora = init_lora(jax.random.key(0), params, LoraConfig(rank=2))
    lora["layers_9"] = lora["layers_1"]                                 # the model has 2 layers
    ids, mask = map(jnp.asarray, padded_batch())
    with pytest.raises(ValueError, match=r"layers_9/self_attn/q_proj.*init_lora"):
        with unmerged(lora, LoraConfig(rank=2)):
            model.apply({"params": params}, ids, mask)
