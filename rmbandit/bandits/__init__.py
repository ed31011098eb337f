"""Pure-functional contextual bandits (see ``base`` for the interface)."""
from rmbandit.bandits.base import Bandit, check_update_inputs, num_arms
from rmbandit.bandits.combinators import (add_arm, batch_baseline, cost_aware, discount, forget,
                                          from_state, quantile_rescale, rescale_rewards, set_costs,
                                          set_prior, with_prior)
from rmbandit.bandits.linear import covariance, linear_thompson, linucb, moments, posterior_mean
from rmbandit.bandits.neural import neural_ucb
from rmbandit.bandits.simple import (epsilon_greedy, exp3, multiplicative_weights, round_robin,
                                     uniform_random)

__all__ = [
    "Bandit", "add_arm", "batch_baseline", "check_update_inputs", "cost_aware", "covariance",
    "discount", "epsilon_greedy", "exp3", "forget", "from_state", "linear_thompson", "linucb",
    "moments", "multiplicative_weights", "neural_ucb", "num_arms", "posterior_mean",
    "quantile_rescale", "rescale_rewards", "round_robin", "set_costs", "set_prior",
    "uniform_random", "with_prior",
]
