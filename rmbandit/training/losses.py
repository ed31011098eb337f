"""Per-pair preference losses (ALGORITHMS.md section 1); a batch loss is their mean."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def dpo_loss(policy_chosen: Array, policy_rejected: Array, ref_chosen: Array, ref_rejected: Array,
             beta: float = 0.1, nll_chosen: Array | None = None) -> Array:
    """-log sigmoid(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]) per pair;
    with ``nll_chosen`` (= -log pi(y_w) / |y_w|) LASeR's DPO + NLL objective."""
    margin = beta * log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    loss = -jax.nn.log_sigmoid(margin)
    return loss if nll_chosen is None else loss + nll_chosen


def log_ratio_margin(policy_chosen: Array, policy_rejected: Array, ref_chosen: Array, ref_rejected: Array) -> Array:
    """h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), per pair."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def ipo_loss(policy_chosen: Array, policy_rejected: Array, ref_chosen: Array, ref_rejected: Array,
             beta: float = 0.1, chosen_length: Array | None = None, rejected_length: Array | None = None) -> Array:
    """IPO (Azar et al. 2023): (h - 1 / (2 beta))^2 per pair, h the log-ratio margin; it
    regresses the margin to a finite target instead of pushing it to infinity.  With the
    responses' token counts, each log-ratio is averaged per token first (as TRL does, and as
    the IPO paper's results were computed), so the target does not scale with length."""
    if not beta > 0:
        raise ValueError(f"IPO needs beta > 0 (its target margin is 1 / (2 beta)), got {beta}")
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if chosen_length is not None:
        chosen = chosen / jnp.maximum(chosen_length, 1.0)
        rejected = rejected / jnp.maximum(rejected_length, 1.0)
    return (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
