"""Every matmul of the models runs at the precision their parameters call for: HIGHEST for
float32 (on GPU the default float32 matmul is TF32: logits 2e-3 off torch's), the
backend's default for bfloat16, or what the caller asks for.  Checked on the jaxprs of a
forward, a LoRA forward, the log-prob / embedding functions and sampling (prefill and
decode loop), down to the attention score and value products."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit.models import ModelConfig, decoder_for, prompt_embeddings, sequence_logprobs, shared_prompt_logprobs
from rmbandit.models.bert import BertConfig, BertEncoder, sentence_embeddings
from rmbandit.models.functions import classifier_scores
from rmbandit.models.layers import default_precision
from rmbandit.models.lora import LoraConfig, init_lora, merge_lora
from rmbandit.models.sampling import generate, with_bfloat16_weights

from tests.helpers import DEFAULT, HIGHEST, assert_every_dot, dot_equations, equations, precision_is
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
CONFIGS = {
    "llama": dict(model_type="llama"),
    "llama_tied": dict(model_type="llama", tie_word_embeddings=True),
    "gemma2": dict(model_type="gemma2", head_dim=8, sliding_window=4, attn_logit_softcapping=2.0,
                   final_logit_softcapping=3.0),
    "qwen3_classifier": dict(model_type="qwen3", head_dim=8, architectures=["Qwen3ForSequenceClassification"],
                             id2label={"0": "LABEL_0"}),
}


def _model(name, dtype, precision="auto"):
    config = ModelConfig.from_hf_dict({**TINY, **CONFIGS[name]})
    model = decoder_for(config, dtype, precision)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 64, size=(2, 7)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, :3].set(0)
    params = jax.tree.map(lambda x: x.astype(dtype), model.init(jax.random.key(0), ids)["params"])
    return model, jax.tree.map(lambda x: getattr(x, "value", x), params,
                               is_leaf=lambda x: hasattr(x, "value")), ids, mask


# per layer: q, k, v, o, gate, up, down and the two attention products; plus the head
PER_LAYER = 9


@pytest.mark.parametrize("dtype, want", [(jnp.float32, HIGHEST), (jnp.bfloat16, DEFAULT)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_logprob_functions(name, dtype, want):
    model, params, ids, mask = _model(name, dtype)
    layers = model.config.num_layers
    assert_every_dot(lambda p: model.apply({"params": p}, ids, mask), params, want=want, at_least=PER_LAYER * layers + 1)
    if model.config.num_labels:
        assert_every_dot(lambda p: classifier_scores(model, p, ids, mask), params, want=want, at_least=PER_LAYER * 2)
        return
    assert_every_dot(lambda p: sequence_logprobs(model, p, ids, mask, mask), params, want=want, at_least=PER_LAYER * 2)
    assert_every_dot(lambda p: jax.grad(lambda q: sequence_logprobs(model, q, ids, mask, mask).total.sum())(p),
                     params, want=want, at_least=3 * PER_LAYER * 2)                        # the DPO step's backward
    assert_every_dot(lambda p: prompt_embeddings(model, p, ids, mask), params, want=want, at_least=PER_LAYER * 2)
    responses = jnp.stack([ids[:, :4], ids[:, 3:7]])
    assert_every_dot(lambda p: shared_prompt_logprobs(model, p, ids, mask, responses, jnp.ones_like(responses)),
                     params, want=want, at_least=PER_LAYER * 2 * 2)        # prompt, then responses + prefix


@pytest.mark.parametrize("dtype, want", [(jnp.float32, HIGHEST), (jnp.bfloat16, DEFAULT)])
def test_lora_forward_and_sampling(dtype, want):
    model, params, ids, mask = _model("gemma2", dtype)
    cfg = LoraConfig(rank=2, alpha=4.0)
    lora = init_lora(jax.random.key(1), params, cfg)
    assert_every_dot(lambda a: model.apply({"params": merge_lora(params, a, cfg)}, ids, mask), lora, want=want,
                     at_least=PER_LAYER * 2 + 4)                            # + one a @ b per adapter
    for temperature in (0.0, 0.7):
        assert_every_dot(lambda p: generate(model, p, ids, mask, jax.random.key(0), max_new_tokens=16, num_samples=2,
                                            temperature=temperature, chunks=2),
                         params, want=want, at_least=PER_LAYER * 2 * 3)     # prefill + two decode loops


@pytest.mark.parametrize("dtype, want", [(jnp.float32, HIGHEST), (jnp.bfloat16, DEFAULT)])
def test_bert_encoder(dtype, want):
    config = BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)
    model = BertEncoder(config, dtype)
    ids = jnp.ones((2, 6), jnp.int32)
    params = jax.tree.map(lambda x: getattr(x, "value", x), model.init(jax.random.key(0), ids)["params"],
                          is_leaf=lambda x: hasattr(x, "value"))
    assert_every_dot(lambda p: sentence_embeddings(model, p, ids, jnp.ones_like(ids)), params, want=want,
                     at_least=8 * 2)


def test_precision_can_be_overridden():
    model, params, ids, mask = _model("llama", jnp.float32, precision=DEFAULT)
    assert_every_dot(lambda p: model.apply({"params": p}, ids, mask), params, want=DEFAULT, at_least=PER_LAYER * 2)
    model, params, ids, mask = _model("llama", jnp.bfloat16, precision=HIGHEST)
    assert_every_dot(lambda p: model.apply({"params": p}, ids, mask), params, want=HIGHEST, at_least=PER_LAYER * 2)
    lora = init_lora(jax.random.key(1), params, LoraConfig(rank=2))
    assert_every_dot(lambda a: merge_lora(params, a, LoraConfig(rank=2), precision=HIGHEST), lora, want=HIGHEST,
                     at_least=4)
    assert default_precision(jnp.float32) == HIGHEST and default_precision(jnp.bfloat16) is None


def test_highest_float32_gives_the_same_logits_on_cpu():
    """On CPU float32 matmuls are exact at any precision setting: HIGHEST changes nothing."""
    model, params, ids, mask = _model("gemma2", jnp.float32)
    fast, _, _, _ = _model("gemma2", jnp.float32, precision=DEFAULT)
    np.testing.assert_allclose(model.apply({"params": params}, ids, mask), fast.apply({"params": params}, ids, mask),
                               rtol=0, atol=1e-6)


def test_highest_compiles_to_the_same_cpu_program():
    """XLA:CPU computes float32 dots in float32 at any precision: the compiled forward is the
    default one but for the precision attributes, so HIGHEST costs nothing on CPU."""
    import re

    if jax.default_backend() != "cpu":
        pytest.skip("a statement about XLA:CPU")
    programs = []
    for precision in ("auto", DEFAULT):
        model, params, ids, mask = _model("llama", jnp.float32, precision)
        text = jax.jit(lambda p: model.apply({"params": p}, ids, mask)).lower(params).compile().as_text()
        assert ("operand_precision={highest,highest}" in text) == (precision == "auto")
        programs.append(re.sub(r", operand_precision=\{[^}]*\}|metadata=\{[^}]*\}", "", text))
    assert programs[0] == programs[1]


@pytest.mark.parametrize("name", ["llama", "llama_tied", "gemma2"])
def test_bfloat16_weights_sampler_multiplies_only_weights_in_bfloat16(name):
    """``with_bfloat16_weights``: in the prefill and both decode loops every product with a
    weight (7 a layer, plus the vocabulary head) takes bfloat16 operands and gives float32;
    attention's two products a layer stay float32 at HIGHEST; no arithmetic (Gemma's
    embedding scale, norms, residual adds) computes in bfloat16."""
    model, params, ids, mask = _model(name, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p: generate(*with_bfloat16_weights(model, p), ids, mask, jax.random.key(0),
                                              max_new_tokens=16, num_samples=2, temperature=0.7, chunks=2))(params)
    dots = [([str(v.aval.dtype) for v in eqn.invars], str(eqn.outvars[0].aval.dtype), eqn.params["precision"])
            for eqn in dot_equations(jaxpr.jaxpr)]
    calls, layers = 3, model.config.num_layers                     # prefill + two decode loops
    weight = [d for d in dots if d[0] == ["bfloat16", "bfloat16"]]
    rest = [d for d in dots if d[0] != ["bfloat16", "bfloat16"]]
    assert len(weight) == calls * (7 * layers + 1) and all(out == "float32" for _, out, _ in weight)
    assert len(rest) >= calls * 2 * layers
    assert all(ins == ["float32", "float32"] and out == "float32" and precision_is(p, HIGHEST) for ins, out, p in rest)
    moves = {"convert_element_type", "gather", "dynamic_slice", "slice", "reshape", "squeeze", "broadcast_in_dim",
             "transpose", "concatenate", "pjit", "jit", "copy"}
    in_bfloat16 = {eqn.primitive.name for eqn in equations(jaxpr.jaxpr)
                   if any(str(getattr(v.aval, "dtype", "")) == "bfloat16" for v in eqn.outvars)}
    assert in_bfloat16 - moves - {"dot_general"} == set(), in_bfloat16


def test_bfloat16_weights_leave_a_bfloat16_policy_alone():
    model, params, _, _ = _model("llama", jnp.bfloat16)
    sampler, same = with_bfloat16_weights(model, params)
    assert sampler is model and same is params
