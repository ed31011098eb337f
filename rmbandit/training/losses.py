"""Per-pair preference losses (ALGORITHMS.md section 1); a batch loss is their mean."""
from __future__ import annotations

import jax

Array = jax.Array


def dpo_loss(policy_chosen: Array, policy_rejected: Array, ref_chosen: Array, ref_rejected: Array,
             beta: float = 0.1, nll_chosen: Array | None = None) -> Array:
    """-log sigmoid(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]) per pair;
    with ``nll_chosen`` (= -log pi(y_w) / |y_w|) LASeR's DPO + NLL objective."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    loss = -jax.nn.log_sigmoid(margin)
    return loss if nll_chosen is None else loss + nll_chosen
