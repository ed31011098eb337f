"""The jitted preference-optimisation step: ``train_step(state, base, batch) -> (state, metrics)``.

The policy is ``base`` (frozen) + ``state.params``: LoRA adapters (``models.lora``) or,
with full fine-tuning, the whole params pytree (``base`` is then unused).  Gradients are
taken with respect to ``state.params`` alone, so the frozen matrices get no weight
gradient; the adapters run beside the frozen kernels (``lora.unmerged``), so theirs costs
rank-r products, not a weight-sized one per adapted matrix.  A batch is grouped by
prompt: each prompt runs once for all the responses its pairs use
(``shared_prompt_logprobs``), and each pair indexes two of them, so a response in several
pairs is computed once.  The reference log-probs come in the batch, computed
once per batch outside the gradient (``reference_logprobs``).  The prompts split into
``micro_batches`` equal parts whose gradients are summed in a ``lax.scan`` (gradient
accumulation); invalid pair slots (``valid = 0``) weigh nothing, and the loss is the mean
over the batch's valid pairs, whatever the split.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmbandit.models import lora as lora_lib
from rmbandit.models.functions import shared_prompt_logprobs, token_bucket
from rmbandit.training.losses import dpo_loss, ipo_loss, log_ratio_margin

Array = jax.Array
LOSSES = ("dpo", "dpo_nll", "ipo")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    loss: Literal["dpo", "dpo_nll", "ipo"] = "dpo"
    beta: float = 0.1
    learning_rate: float = 5e-6            # LASeR's LoRA learning rate
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    micro_batches: int = 1                 # gradient accumulation: the batch's prompts split in this many
    full_finetune: bool = False            # False: LoRA adapters only
    lora_rank: int = 16                    # LASeR: rank 16, alpha 32, q_proj / v_proj
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    # False: adapters beside the frozen kernels (lora.unmerged), rank-r gradient products;
    # True: through merged kernels W + s a b, a weight-sized x^T dy per adapted matrix but
    # about 10 % less XLA compile time (SmolLM2 on XLA:CPU: experiments/benchmarks/lora_step.py)
    merge_adapters: bool = False
    drop_padding: bool = True              # responses run as their real tokens alone (``response_tokens``)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"step.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.micro_batches < 1:
            raise ValueError(f"step.micro_batches must be >= 1, got {self.micro_batches}")

    @property
    def lora(self) -> lora_lib.LoraConfig:
        return lora_lib.LoraConfig(self.lora_rank, self.lora_alpha, tuple(self.lora_targets))


class PairBatch(NamedTuple):
    """B prompts, k responses each, and P pair slots per prompt that index the responses
    (static shapes; ``valid`` marks the real pairs)."""
    prompt_ids: Array       # [B, L] int32, left-padded chat prompts
    prompt_mask: Array      # [B, L]
    response_ids: Array     # [k, B, R] int32, right-padded
    response_mask: Array    # [k, B, R]
    chosen: Array           # [B, P] int32: index (0..k-1) of each pair's chosen response
    rejected: Array         # [B, P] int32: index of its rejected response
    valid: Array            # [B, P] float32: 1 for a real pair
    reference: Array        # [k, B] float32: log pi_ref(y | x) of each response


class TrainState(NamedTuple):
    params: Any             # what is trained: LoRA adapters, or the full params
    opt_state: Any
    step: Array             # int32: optimiser steps taken


def make_optimizer(config: StepConfig) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, with an optional linear warm-up."""
    lr = config.learning_rate
    if config.warmup_steps:
        lr = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                       optax.adamw(lr, weight_decay=config.weight_decay))


def init_state(key: Array, base_params, config: StepConfig) -> TrainState:
    params = base_params if config.full_finetune else lora_lib.init_lora(key, base_params, config.lora)
    return TrainState(params, make_optimizer(config).init(params), jnp.zeros((), jnp.int32))


def policy_params(base_params, trained, config: StepConfig):
    """The policy's full params: the trained pytree itself, or base + LoRA merged (the
    sampler's and the embeddings'; the step runs the adapters unmerged, ``policy_logprobs``)."""
    return trained if config.full_finetune else lora_lib.merge_lora(base_params, trained, config.lora)


def response_tokens(response_mask, config: StepConfig, multiple: int = 64) -> int | None:
    """The static size of the responses' real tokens for the step and the reference pass
    (``shared_prompt_logprobs``): ``response_mask`` [k, B, R] (host array) bucketed by its
    micro-batch with the most real tokens, a multiple of ``multiple`` (the real tokens shard
    over the batch's devices: make it divisible by their number); None with
    ``drop_padding`` off."""
    if not config.drop_padding:
        return None
    mask = np.asarray(response_mask)
    k, prompts, r = mask.shape
    parts = config.micro_batches if prompts % config.micro_batches == 0 else 1     # _split names the misfit
    return token_bucket(mask.reshape(k, parts, prompts // parts, r).sum((0, 2, 3)).max(), multiple)


def response_logprobs(model, params, batch: PairBatch, tokens: int | None = None):
    """log pi(y | x) and lengths of every response [k, B]; ``tokens``: ``response_tokens``."""
    out = shared_prompt_logprobs(model, params, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                 batch.response_mask, tokens)
    shape = batch.response_ids.shape[:2]
    return out.total.reshape(shape), out.length.reshape(shape)


def policy_logprobs(model, base_params, trained, batch: PairBatch, config: StepConfig,
                    tokens: int | None = None):
    """``response_logprobs`` of the policy base + ``trained``: the full params, or the LoRA
    adapters run unmerged (``lora.unmerged``: differentiable at rank-r cost), or merged with
    ``merge_adapters``."""
    if config.full_finetune or config.merge_adapters:
        return response_logprobs(model, policy_params(base_params, trained, config), batch, tokens)
    with lora_lib.unmerged(trained, config.lora):
        return response_logprobs(model, base_params, batch, tokens)


def reference_logprobs(model, base_params, reference, batch: PairBatch, config: StepConfig,
                       tokens: int | None = None) -> Array:
    """log pi_ref(y | x) [k, B], no gradient: ``reference`` is the reference policy's trained
    pytree (LoRA adapters, or full params), run as the step runs the policy
    (``policy_logprobs``: the same products, so no merged-vs-unmerged rounding enters the
    margin); ``tokens``: ``response_tokens``.  It runs micro-batch by micro-batch, as the step
    does: ``tokens`` is sized for the fullest micro-batch, not for the whole batch."""
    if config.micro_batches == 1:
        total, _ = policy_logprobs(model, base_params, reference, batch, config, tokens)
    else:
        parts = jax.lax.map(lambda part: policy_logprobs(model, base_params, reference, part, config, tokens)[0],
                            _split(batch, config.micro_batches))                  # [parts, k, B / parts]
        total = jnp.moveaxis(parts, 0, 1).reshape(parts.shape[1], -1)
    return jax.lax.stop_gradient(total)


def pick_pairs(per_response: Array, batch: PairBatch) -> Array:
    """[k, B] per-response values -> [2, B, P]: those of each pair's chosen and rejected."""
    rows = per_response.T                                                # [B, k]
    return jnp.stack([jnp.take_along_axis(rows, batch.chosen, axis=1),
                      jnp.take_along_axis(rows, batch.rejected, axis=1)])


def pair_losses(policy: Array, lengths: Array, reference: Array, config: StepConfig) -> Array:
    """Per-pair loss [...] from log-probs [2, ...] (chosen, rejected)."""
    if config.loss == "ipo":
        return ipo_loss(policy[0], policy[1], reference[0], reference[1], config.beta, lengths[0], lengths[1])
    nll = -policy[0] / jnp.maximum(lengths[0], 1.0) if config.loss == "dpo_nll" else None
    return dpo_loss(policy[0], policy[1], reference[0], reference[1], config.beta, nll)


def _split(batch: PairBatch, parts: int) -> PairBatch:
    """Prompts split into ``parts`` equal micro-batches, stacked on a new leading axis."""
    def split(x, axis):
        n = x.shape[axis]
        if n % parts:
            raise ValueError(f"{n} prompts do not split into step.micro_batches={parts} equal parts; make "
                             "train.prompts_per_batch a multiple of step.micro_batches")
        x = x.reshape(x.shape[:axis] + (parts, n // parts) + x.shape[axis + 1:])
        return jnp.moveaxis(x, axis, 0)
    return PairBatch(*(split(x, PROMPT_AXIS[f]) for f, x in zip(PairBatch._fields, batch)))


# the prompt axis of each PairBatch field (responses and their reference log-probs are k-major)
PROMPT_AXIS = {f: 1 if f in ("response_ids", "response_mask", "reference") else 0 for f in PairBatch._fields}


def make_train_step(model, config: StepConfig):
    """``train_step(state, base_params, batch, response_tokens=None) -> (state, metrics)``,
    not yet jitted (the caller jits it with its shardings and donation; see
    ``jit_train_step``).  ``response_tokens`` (static): ``response_tokens(batch.response_mask,
    config)``, or None to run the padded responses.

    metrics: ``loss`` (the mean over the pairs weighted by ``batch.valid``, each pair's weight
    in the loss: 1, or UWO's agreement; 0 on an empty slot), ``losses`` [B * P] each pair
    slot's own loss, prompt-major as ``sample_pairs`` lays them out (0 on empty slots),
    ``margin`` [B * P] (the log-ratio margin h, 0 on empty slots), ``reward_accuracy`` (the
    weighted share of pairs with h > 0), ``grad_norm`` (before clipping), ``pairs`` (the
    filled slots)."""
    optimizer = make_optimizer(config)

    def micro_loss(trained, base_params, micro: PairBatch, count, tokens):
        policy, lengths = policy_logprobs(model, base_params, trained, micro, config, tokens)
        policy, lengths, reference = (pick_pairs(x, micro) for x in (policy, lengths, micro.reference))
        losses = pair_losses(policy, lengths, reference, config)
        margin = log_ratio_margin(policy[0], policy[1], reference[0], reference[1])
        filled = micro.valid > 0          # each pair's own values; its weight enters the mean only
        return jnp.sum(losses * micro.valid) / count, (jnp.where(filled, losses, 0.0), jnp.where(filled, margin, 0.0))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, base_params, batch: PairBatch, response_tokens: int | None = None):
        # the weighted mean sum(w loss) / sum(w); weights (UWO's) may total less than 1
        total = jnp.sum(batch.valid)
        count = jnp.where(total > 0, total, 1.0)
        micro = _split(batch, config.micro_batches)

        def accumulate(grads, part):
            (loss, aux), g = grad_fn(state.params, base_params, part, count, response_tokens)
            return jax.tree.map(jnp.add, grads, g), (loss, aux)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, (loss_parts, (losses, margins)) = jax.lax.scan(accumulate, zeros, micro)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        valid = batch.valid.reshape(-1)
        margins = margins.reshape(-1)
        metrics = {"loss": jnp.sum(loss_parts), "losses": losses.reshape(-1), "margin": margins,
                   "reward_accuracy": jnp.sum((margins > 0) * valid) / count,
                   "grad_norm": optax.tree.norm(grads), "pairs": jnp.sum(valid > 0)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def jit_train_step(model, config: StepConfig, state_sharding=None):
    """The step jitted with the state's buffers donated (it is replaced every step).  On a
    mesh, ``state_sharding`` (a sharding, or a pytree of them, for the TrainState) pins the
    new state's layout to the old one's, so the next call does not compile again for a
    layout XLA chose; the frozen params and the batch keep the shardings they come with."""
    step = make_train_step(model, config)
    out_shardings = None if state_sharding is None else (state_sharding, None)
    return jax.jit(step, donate_argnums=(0,), out_shardings=out_shardings, static_argnames=("response_tokens",))
