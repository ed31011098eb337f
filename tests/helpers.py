"""Helpers shared by several test files (imported, never collected): the bandit list every
property test runs over, and a walk over jaxprs for the matmul-precision tests."""
from __future__ import annotations

import jax

from rmbandit import bandits

HIGHEST, DEFAULT = jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT

# Every algorithm, small enough for fast tests, plus one deeply wrapped bandit.
BANDITS = {
    "linucb": lambda: bandits.linucb(alpha=0.5),
    "thompson": lambda: bandits.linear_thompson(prior_var=0.02),
    "exp3": lambda: bandits.exp3(),
    "neural_ucb": lambda: bandits.neural_ucb(hidden=(8, 4), train_steps=2, buffer_size=8),
    "epsilon_greedy": lambda: bandits.epsilon_greedy(),
    "uniform_random": lambda: bandits.uniform_random(),
    "round_robin": lambda: bandits.round_robin(),
    "multiplicative_weights": lambda: bandits.multiplicative_weights(),
    "rescaled_discounted_linucb": lambda: bandits.batch_baseline(bandits.quantile_rescale(
        bandits.discount(bandits.cost_aware(bandits.linucb(), 0.1), 0.95, every=2))),
}
PLAIN_BANDITS = [name for name in BANDITS if name != "rescaled_discounted_linucb"]


def equations(jaxpr) -> list:
    """Every equation in ``jaxpr``, nested jaxprs (jit, while loops, conds, custom
    derivatives) included."""
    found = []
    for eqn in jaxpr.eqns:
        found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)          # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    found += equations(inner)
    return found


def dot_equations(jaxpr) -> list:
    """Every dot_general equation in ``jaxpr`` (see ``equations``)."""
    return [eqn for eqn in equations(jaxpr) if eqn.primitive.name == "dot_general"]


def dot_precisions(jaxpr) -> list:
    """The ``precision`` of every dot_general in ``jaxpr`` (see ``dot_equations``)."""
    return [eqn.params["precision"] for eqn in dot_equations(jaxpr)]


def precision_is(precision, want) -> bool:
    """dot_general's precision (None or one per operand) is ``want`` (DEFAULT: also None)."""
    if precision is None:
        return want == DEFAULT
    return all(p == want or (want == DEFAULT and p is None) for p in precision)


def assert_every_dot(fn, *args, want, at_least):
    precisions = dot_precisions(jax.make_jaxpr(fn)(*args).jaxpr)
    assert len(precisions) >= at_least, f"only {len(precisions)} dot_generals: the walk missed some"
    wrong = [p for p in precisions if not precision_is(p, want)]
    assert not wrong, f"{len(wrong)} of {len(precisions)} dot_generals are not at {want}: {wrong[:3]}"
