"""The jitted DPO step: its loss against a NumPy DPO on full-sequence log-probs, gradient
accumulation, padding, LoRA-only gradients, remat, full fine-tuning and sharding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rmbandit import parallel
from rmbandit.models import LlamaModel, ModelConfig, sequence_logprobs
from rmbandit.training import step as step_lib

CONFIG = ModelConfig(model_type="llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)


@pytest.fixture(scope="module")
def model_and_params():
    model = LlamaModel(CONFIG)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    return model, params


def make_batch(b=4, k=3, pairs=2, l=6, r=5, seed=0, valid=None):
    """b prompts (one left-padded), k responses each (some short), ``pairs`` slots per prompt."""
    rng = np.random.default_rng(seed)
    prompt_ids = rng.integers(1, CONFIG.vocab_size, (b, l)).astype(np.int32)
    prompt_mask = np.ones((b, l), np.int32)
    prompt_mask[0, :2] = 0
    response_ids = rng.integers(1, CONFIG.vocab_size, (k, b, r)).astype(np.int32)
    response_mask = np.ones((k, b, r), np.int32)
    response_mask[1, 1 % b, 3:] = 0
    response_mask[0, 2 % b, 4:] = 0
    first = rng.integers(0, k, (b, pairs))
    second = (first + rng.integers(1, k, (b, pairs))) % k                # a different response
    valid = np.ones((b, pairs), np.float32) if valid is None else np.asarray(valid, np.float32).reshape(b, pairs)
    reference = rng.normal(-12.0, 1.0, (k, b)).astype(np.float32)
    return step_lib.PairBatch(*map(jnp.asarray, (prompt_ids, prompt_mask, response_ids, response_mask,
                                                 first.astype(np.int32), second.astype(np.int32), valid, reference)))


def pair_axis(field):
    return step_lib.PROMPT_AXIS[field]


def full_sequence_logprobs(model, params, batch):
    """log pi(y|x) [k, B] the plain way: prompt + response as one left/right-padded row."""
    out = []
    for j in range(batch.response_ids.shape[0]):
        ids = jnp.concatenate([batch.prompt_ids, batch.response_ids[j]], 1)
        mask = jnp.concatenate([batch.prompt_mask, batch.response_mask[j]], 1)
        response = jnp.concatenate([jnp.zeros_like(batch.prompt_mask), batch.response_mask[j]], 1)
        out.append(np.asarray(sequence_logprobs(model, params, ids, mask, response).total))
    return np.stack(out)


def by_pair(per_response, batch):
    """[k, B] -> chosen, rejected values [B, P] (NumPy indexing)."""
    rows = np.asarray(per_response).T
    return (np.take_along_axis(rows, np.asarray(batch.chosen), 1), np.take_along_axis(rows, np.asarray(batch.rejected), 1))


@pytest.mark.parametrize("loss", ["dpo", "dpo_nll", "ipo"])
def test_step_loss_matches_numpy_on_full_sequences(model_and_params, loss):
    model, params = model_and_params
    config = step_lib.StepConfig(loss=loss, beta=0.5, learning_rate=1e-3)
    state = step_lib.init_state(jax.random.key(1), params, config)
    # a nonzero adapter, so the policy differs from the base model
    state = state._replace(params=jax.tree.map(lambda x: x + 0.05, state.params))
    batch = make_batch(valid=[1, 1, 0, 1, 1, 0, 1, 1])
    merged = step_lib.policy_params(params, state.params, config)
    logp = full_sequence_logprobs(model, merged, batch)
    (pc, pr), (rc, rr) = by_pair(logp, batch), by_pair(batch.reference, batch)
    valid = np.asarray(batch.valid)
    h = (pc - rc) - (pr - rr)
    lengths = np.asarray(batch.response_mask).sum(-1)                  # [k, B]
    if loss == "ipo":        # log-ratios averaged per token (TRL's and the IPO authors' form)
        lc, lr = by_pair(lengths, batch)
        per_pair = ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * 0.5)) ** 2
    else:
        per_pair = np.log1p(np.exp(-0.5 * h.astype(np.float64)))
        if loss == "dpo_nll":
            per_pair = per_pair - pc / by_pair(lengths, batch)[0]
    want = np.sum(per_pair * valid) / valid.sum()
    _, metrics = jax.jit(step_lib.make_train_step(model, config))(state, params, batch)
    np.testing.assert_allclose(metrics["loss"], want, rtol=2e-5)
    np.testing.assert_allclose(metrics["losses"], (per_pair * valid).reshape(-1), rtol=2e-5, atol=1e-6)
    assert float(metrics["pairs"]) == 6


def test_pair_weights_below_one_in_total_give_the_weighted_mean(model_and_params):
    """UWO weighs a pair by the share of RMs agreeing with the majority (1/3: one RM of three):
    the loss is sum(w loss) / sum(w) even when the weights total less than 1, and the
    per-pair losses and margins are each pair's own."""
    model, params = model_and_params
    config = step_lib.StepConfig(beta=0.5)
    state = step_lib.init_state(jax.random.key(1), params, config)
    state = state._replace(params=jax.tree.map(lambda x: x + 0.05, state.params))
    step = jax.jit(step_lib.make_train_step(model, config))
    _, unit = step(state, params, make_batch())                       # every slot a pair of weight 1
    weights = np.zeros(8, np.float32)
    weights[[1, 6]] = [1 / 3, 1 / 6]
    _, got = step(state, params, make_batch(valid=weights))
    losses, margins = np.asarray(unit["losses"]), np.asarray(unit["margin"])
    np.testing.assert_allclose(got["loss"], np.sum(weights * losses) / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(got["losses"], np.where(weights > 0, losses, 0), rtol=1e-5)
    np.testing.assert_allclose(got["margin"], np.where(weights > 0, margins, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["reward_accuracy"], np.sum(weights * (margins > 0)) / weights.sum(), rtol=1e-6)
    assert int(got["pairs"]) == 2
    one = np.zeros(8, np.float32)
    one[1] = 1.0
    _, whole, = step(state, params, make_batch(valid=one))
    _, third = step(state, params, make_batch(valid=one / 3))            # one pair, whatever its weight
    for key in ("loss", "grad_norm", "reward_accuracy"):
        np.testing.assert_allclose(third[key], whole[key], rtol=1e-5, err_msg=key)


def test_reference_logprobs_are_the_reference_policys(model_and_params):
    model, params = model_and_params
    config = step_lib.StepConfig()
    adapters = step_lib.init_state(jax.random.key(2), params, config).params
    adapters = jax.tree.map(lambda x: x + 0.03, adapters)
    batch = make_batch()
    got = step_lib.reference_logprobs(model, params, adapters, batch, config)
    want = full_sequence_logprobs(model, step_lib.policy_params(params, adapters, config), batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("micro_batches", [1, 2, 4])
def test_reference_logprobs_without_the_padding_cover_every_micro_batch(model_and_params, micro_batches):
    """The bucket of real tokens fits the fullest micro-batch; the reference pass (on the
    whole batch) must not drop the other micro-batches' tokens."""
    model, params = model_and_params
    config = step_lib.StepConfig(micro_batches=micro_batches)
    adapters = jax.tree.map(lambda x: x + 0.03, step_lib.init_state(jax.random.key(2), params, config).params)
    batch = make_batch(b=4, r=20, seed=5)
    tokens = step_lib.response_tokens(np.asarray(batch.response_mask), config)
    assert tokens < np.asarray(batch.response_mask).sum() or micro_batches == 1      # smaller than the batch
    got = jax.jit(step_lib.reference_logprobs, static_argnums=(0, 4, 5))(model, params, adapters, batch, config,
                                                                          tokens)
    want = full_sequence_logprobs(model, step_lib.policy_params(params, adapters, config), batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def run_steps(model, params, config, batches, key=3, drop_padding=False):
    state = step_lib.init_state(jax.random.key(key), params, config)
    step = jax.jit(step_lib.make_train_step(model, config), static_argnames="response_tokens")
    for batch in batches:
        tokens = step_lib.response_tokens(np.asarray(batch.response_mask), config) if drop_padding else None
        state, metrics = step(state, params, batch, response_tokens=tokens)
    return state, metrics


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_step_without_the_response_padding_is_the_same_step(model_and_params, micro_batches):
    model, params = model_and_params
    config = step_lib.StepConfig(learning_rate=1e-2, micro_batches=micro_batches)
    batches = [make_batch(b=4, r=7, seed=s, valid=[1, 0, 1, 1, 1, 1, 0, 1]) for s in range(2)]
    assert step_lib.response_tokens(np.asarray(batches[0].response_mask), config) == (128 if micro_batches == 1 else 64)
    padded, want = run_steps(model, params, config, batches)
    unpadded, got = run_steps(model, params, config, batches, drop_padding=True)
    for name in ("loss", "losses", "margin", "grad_norm"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(unpadded.params), jax.tree.leaves(padded.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_response_tokens_fit_the_fullest_micro_batch():
    mask = np.zeros((2, 4, 100), np.int32)          # [k, B, R]: prompts 0-1 in part 0, 2-3 in part 1
    mask[:, :2, :10] = 1                            # part 0: 40 real tokens
    mask[:, 2:, :70] = 1                            # part 1: 280 real tokens
    assert step_lib.response_tokens(mask, step_lib.StepConfig(micro_batches=2)) == 320
    assert step_lib.response_tokens(mask, step_lib.StepConfig()) == 320           # all 320 in one
    mask[:, 2:, :90] = 1
    assert step_lib.response_tokens(mask, step_lib.StepConfig(micro_batches=2)) == 384   # 360 in part 1
    assert step_lib.response_tokens(mask, step_lib.StepConfig()) == 448                  # 400 in one
    assert step_lib.response_tokens(mask, step_lib.StepConfig(), multiple=384) == 768      # 400 on 384 devices
    assert step_lib.response_tokens(mask, step_lib.StepConfig(drop_padding=False)) is None


def test_gradient_accumulation_equals_the_full_batch(model_and_params):
    model, params = model_and_params
    batches = [make_batch(b=8, seed=s, valid=[1, 0, 1, 1, 1, 1, 0, 1] * 2) for s in range(3)]
    one, m1 = run_steps(model, params, step_lib.StepConfig(learning_rate=1e-2), batches)
    four, m4 = run_steps(model, params, step_lib.StepConfig(learning_rate=1e-2, micro_batches=4), batches)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    # Adam moves each element by about the learning rate whatever the size of its gradient, so
    # an element whose gradient is near zero carries the float32 rounding of the micro-batch
    # sum into its update: atol 1e-5 is 1e-3 of one step (a wrong sum moves elements by 1e-2)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padded_slots_change_nothing(model_and_params):
    """A batch with two extra invalid slots (garbage tokens) trains exactly as without them."""
    model, params = model_and_params
    small = make_batch(b=4, seed=5)
    extra = make_batch(b=2, seed=6, valid=[0] * 4)
    big = step_lib.PairBatch(*(jnp.concatenate([s, e], axis=pair_axis(f))
                               for f, s, e in zip(step_lib.PairBatch._fields, small, extra)))
    assert big.prompt_ids.shape[0] == 6 and float(big.valid.sum()) == 8
    config = step_lib.StepConfig(learning_rate=1e-2)
    a, ma = run_steps(model, params, config, [small])
    b, mb = run_steps(model, params, config, [big])
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    # Adam moves every weight by about the learning rate (1e-2) whatever the gradient's size:
    # compare the steps to 1e-4 of that
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_only_the_adapters_train_and_the_step_moves_them(model_and_params):
    model, params = model_and_params
    config = step_lib.StepConfig(learning_rate=1e-2)
    start = step_lib.init_state(jax.random.key(3), params, config)
    start_params = jax.tree.map(np.asarray, start.params)
    state, metrics = run_steps(model, params, config, [make_batch()])
    paths = {tuple(str(k.key) for k in path[-2:]) for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert paths == {("q_proj", "a"), ("q_proj", "b"), ("v_proj", "a"), ("v_proj", "b")}
    moved = [np.abs(np.asarray(b) - a).max() for a, b in zip(jax.tree.leaves(start_params), jax.tree.leaves(state.params))]
    assert max(moved) > 1e-4 and int(state.step) == 1
    assert float(metrics["grad_norm"]) > 0


def test_remat_gives_the_same_step(model_and_params):
    model, params = model_and_params
    config = step_lib.StepConfig(learning_rate=1e-2)
    plain, m0 = run_steps(model, params, config, [make_batch(seed=7)])
    for policy in ("full", "dots"):
        remat, m1 = run_steps(model.clone(remat=policy), params, config, [make_batch(seed=7)])
        np.testing.assert_allclose(m0["grad_norm"], m1["grad_norm"], rtol=1e-5)
        # Adam's first step moves each weight by about lr whatever its gradient's size: an
        # entry near zero shows the recomputation's rounding (3e-7 on jax 0.7.1's XLA:CPU)
        for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(remat.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="remat must be one of none, full, dots"):
        model.clone(remat="ful").apply({"params": params}, jnp.zeros((1, 3), jnp.int32))


def test_full_finetuning_trains_every_matrix(model_and_params):
    model, params = model_and_params
    config = step_lib.StepConfig(full_finetune=True, learning_rate=1e-3)
    state, _ = run_steps(model, params, config, [make_batch()])
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params))]
    assert all(changed), "every weight gets a gradient when fine-tuning fully"


def test_micro_batches_must_divide_the_batch(model_and_params):
    model, params = model_and_params
    config = step_lib.StepConfig(micro_batches=3)
    with pytest.raises(ValueError, match="4 prompts do not split into step.micro_batches=3"):
        run_steps(model, params, config, [make_batch(b=4)])


def test_the_step_on_a_data_fsdp_mesh_matches_one_device(model_and_params):
    model, params = model_and_params
    config = step_lib.StepConfig(learning_rate=1e-2, micro_batches=2)
    batch = make_batch(b=8, seed=9)
    want, want_metrics = run_steps(model, params, config, [batch])
    mesh = parallel.make_mesh(data=4, fsdp=2)
    with parallel.use_mesh(mesh):
        shardings = parallel.param_shardings(model, mesh, (jnp.zeros((1, 1), jnp.int32),))
        sharded_params = jax.device_put(params, shardings)
        state = step_lib.init_state(jax.random.key(3), sharded_params, config)
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        spec = lambda x, axis: jax.sharding.NamedSharding(  # noqa: E731
            mesh, jax.sharding.PartitionSpec(*([None] * axis + [("data", "fsdp")])))
        batch = step_lib.PairBatch(*(jax.device_put(x, spec(x, pair_axis(f)))
                                     for f, x in zip(step_lib.PairBatch._fields, batch)))
        # the responses' real tokens alone: their [n, 1, D] rows shard as the batch does
        tokens = step_lib.response_tokens(np.asarray(batch.response_mask), config)
        step = jax.jit(step_lib.make_train_step(model, config), static_argnames="response_tokens")
        got, metrics = step(state, sharded_params, batch, response_tokens=tokens)
    np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_lora_step_forms_no_weight_sized_gradient(model_and_params):
    """The adapters run unmerged: their gradient costs rank-r products.  Through a merged
    kernel it would be x^T dy, a product the size of each adapted matrix."""
    from tests.helpers import dot_equations
    model, params = model_and_params
    config = step_lib.StepConfig(lora_rank=4)
    state = step_lib.init_state(jax.random.key(0), params, config)
    batch = make_batch()
    kernels = {tuple(params["layers_0"]["self_attn"][name]["kernel"].shape) for name in config.lora_targets}

    def weight_sized(loss):
        jaxpr = jax.make_jaxpr(jax.grad(loss))(state.params).jaxpr
        return [eqn for eqn in dot_equations(jaxpr) if tuple(eqn.outvars[0].aval.shape) in kernels]

    def merged(trained):             # step.merge_adapters: through W + s a b
        merging = dataclasses.replace(config, merge_adapters=True)
        total, _ = step_lib.policy_logprobs(model, params, trained, batch, merging)
        return jnp.sum(total)

    def step_way(trained):
        total, _ = step_lib.policy_logprobs(model, params, trained, batch, config)
        return jnp.sum(total)

    assert len(weight_sized(merged)) >= 2 * CONFIG.num_layers * len(kernels)      # the walk sees them
    assert weight_sized(step_way) == []


def test_merged_and_unmerged_adapters_take_the_same_step(model_and_params):
    model, params = model_and_params
    batches = [make_batch(seed=s) for s in range(2)]
    apart, m1 = run_steps(model, params, step_lib.StepConfig(learning_rate=1e-2), batches)
    merged, m2 = run_steps(model, params, step_lib.StepConfig(learning_rate=1e-2, merge_adapters=True), batches)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["losses"], m2["losses"], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(apart.params), jax.tree.leaves(merged.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)         # see the accumulation test's atol
