"""Models on a (data, fsdp, tensor) mesh of the 8 fake CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rmbandit import parallel
from rmbandit.models import LlamaModel, ModelConfig

CONFIG = ModelConfig.from_hf_dict(dict(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=8))


def test_parameters_get_the_expected_partition_specs():
    model = LlamaModel(CONFIG)
    specs = parallel.param_specs(model, (jnp.zeros((1, 4), jnp.int32),))
    layer = specs["layers_0"]
    assert specs["embed_tokens"] == P("tensor", "fsdp")
    assert specs["lm_head"]["kernel"] == P("fsdp", "tensor")
    assert layer["self_attn"]["q_proj"]["kernel"] == P("fsdp", "tensor")
    assert layer["self_attn"]["o_proj"]["kernel"] == P("tensor", "fsdp")
    assert layer["mlp"]["down_proj"]["kernel"] == P("tensor", "fsdp")
    assert layer["self_attn"]["q_norm"]["scale"] == P(None)


@pytest.mark.parametrize("attention", ["blocked", "xla"])
def test_sharded_forward_equals_single_device(attention):
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    model = LlamaModel(CONFIG, attention=attention)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(4, 9)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, :3].set(0)
    params = nn.unbox(model.init(jax.random.key(0), ids[:1])["params"])
    want = model.apply({"params": params}, ids, mask)
    shardings = parallel.param_shardings(model, mesh, (ids[:1],))
    sharded = jax.device_put(params, shardings)
    assert sharded["layers_0"]["mlp"]["up_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
    batch = parallel.batch_sharding(mesh)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    got = forward(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(got.sharding.device_set) == 8


def test_activation_constraints_apply_inside_use_mesh():
    """Outside ``use_mesh`` the activation constraints are no-ops; inside, the compiled
    forward keeps the MLP hidden states split over ``tensor`` and the result is unchanged."""
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    model = LlamaModel(CONFIG)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(4, 8)), jnp.int32)
    mask = jnp.ones_like(ids).at[2, :2].set(0)
    params = nn.unbox(model.init(jax.random.key(0), ids[:1])["params"])
    want = model.apply({"params": params}, ids, mask)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    assert "sharding_constraint" not in forward.lower(params, ids, mask).as_text()
    with parallel.use_mesh(mesh):
        sharded = jax.device_put(params, parallel.param_shardings(model, mesh, (ids[:1],)))
        batch = parallel.batch_sharding(mesh)
        lowered = forward.lower(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
        text = lowered.as_text()
        # one constraint per q/k/v, MLP hidden and residual per layer, plus embeddings and logits
        assert text.count("sharding_constraint") >= CONFIG.num_layers * 5 + 2
        assert '{devices=[4,1,2]' in text or "tensor" in text
        got = lowered.compile()(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.sharding.spec[0] == ("data", "fsdp")


def test_mesh_shape_errors():
    with pytest.raises(ValueError, match="needs 12 devices, have 8"):
        parallel.make_mesh(data=3, fsdp=2, tensor=2)
    with pytest.raises(ValueError, match="do not split"):
        parallel.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="make_mesh got no devices"):
        parallel.make_mesh(devices=[])
    for axes, name in [(dict(fsdp=0), "fsdp"), (dict(tensor=-1), "tensor"), (dict(data=0), "data")]:
        with pytest.raises(ValueError, match=f"mesh axis {name} must be a positive size"):
            parallel.make_mesh(**axes)


def test_a_tensor_axis_that_splits_heads_is_warned_about():
    model = LlamaModel(CONFIG)                                  # 4 heads, 2 kv heads
    example = (jnp.zeros((1, 4), jnp.int32),)
    with pytest.warns(UserWarning, match="tensor=4 does not divide the model's num_kv_heads=2: heads are split"):
        parallel.param_shardings(model, parallel.make_mesh(data=2, tensor=4), example)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel.param_shardings(model, parallel.make_mesh(data=4, tensor=2), example)


def test_the_sharded_embedding_lookup_needs_no_full_rematerialisation(capfd):
    """The README's (2, 2, 2) example inside use_mesh: looked up from a table split on
    embed, the rows reached the residual stream's batch split only by XLA replicating them
    whole (its "Involuntary full rematerialization" warning on every forward)."""
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    model = LlamaModel(CONFIG)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(8, 9)), jnp.int32)
    mask = jnp.ones_like(ids)
    params = nn.unbox(model.init(jax.random.key(0), ids[:1])["params"])
    want = model.apply({"params": params}, ids, mask)
    sharded = jax.device_put(params, parallel.param_shardings(model, mesh, (ids[:1],)))
    capfd.readouterr()
    with parallel.use_mesh(mesh):
        got = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(sharded, ids, mask)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


def test_load_places_each_tensor_on_its_sharding(tiny_checkpoint):
    import pytest
    pytest.importorskip("torch")
    from rmbandit.models import load_pretrained
    from tests.torch_oracle import padded_batch
    _, path = tiny_checkpoint("llama_gqa_llama3_rope")
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    model, sharded = load_pretrained(path, mesh=mesh)
    _, plain = load_pretrained(path)
    kernel = sharded["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (16, 16)        # [32, 32] split 2 x 2
    assert sharded["lm_head"]["kernel"].sharding.spec == P("fsdp", None)   # 97 does not split: replicated
    ids, mask = map(jnp.asarray, padded_batch())
    np.testing.assert_allclose(jax.jit(lambda p: model.apply({"params": p}, ids, mask))(sharded),
                               model.apply({"params": plain}, ids, mask), atol=1e-5)


def test_sharded_sampling_equals_single_device(tiny_checkpoint):
    import pytest
    pytest.importorskip("torch")
    from rmbandit.models import load_pretrained
    from rmbandit.models.sampling import generate
    from tests.torch_oracle import padded_batch
    _, path = tiny_checkpoint("qwen3_qk_norm")
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    model, sharded = load_pretrained(path, mesh=mesh)
    _, plain = load_pretrained(path)
    ids, mask = padded_batch(seed=2, b=4, t=8)
    batch = parallel.batch_sharding(mesh)
    kwargs = dict(max_new_tokens=6, num_samples=2, temperature=0.9)
    want = generate(model, plain, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), **kwargs)
    got = generate(model, sharded, jax.device_put(jnp.asarray(ids), batch), jax.device_put(jnp.asarray(mask), batch),
                   jax.random.key(0), **kwargs)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
