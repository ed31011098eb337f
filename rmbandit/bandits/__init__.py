"""Pure-functional contextual bandits (see ``base`` for the interface)."""
from rmbandit.bandits.base import NO_ARM, Bandit, check_update_inputs, forget, num_arms
from rmbandit.bandits.checkpoint import abstract_state, restore_state, save_state, state_from_tree
from rmbandit.bandits.combinators import (add_arm, batch_baseline, cost_aware, discount, from_state,
                                          quantile_rescale, rescale_rewards, set_costs, with_prior)
from rmbandit.bandits.linear import covariance, linear_thompson, linucb, moments, posterior_mean, set_prior
from rmbandit.bandits.neural import neural_ucb
from rmbandit.bandits.simple import (epsilon_greedy, exp3, multiplicative_weights, round_robin,
                                     uniform_random)

__all__ = [
    "NO_ARM", "Bandit", "abstract_state", "add_arm", "batch_baseline", "check_update_inputs", "cost_aware", "covariance",
    "discount", "epsilon_greedy", "exp3", "forget", "from_state", "linear_thompson", "linucb",
    "moments", "multiplicative_weights", "neural_ucb", "num_arms", "posterior_mean",
    "quantile_rescale", "rescale_rewards", "restore_state", "round_robin", "save_state", "set_costs",
    "set_prior", "state_from_tree", "uniform_random", "with_prior",
]
