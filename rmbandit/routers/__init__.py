"""Routers: which RM labels which prompt or pair (see ``base`` for the interface).

The simulation (``rmbandit simulate``) and the training loop route through these same
functions; a router knows contexts, arms and losses, never an LM."""
from rmbandit.routers.base import (ALL_RMS, Assignment, Router, RouterState, check, rm_mask)
from rmbandit.routers.bandit import GRANULARITIES, bandit_router, laser, round_robin, uniform_random
from rmbandit.routers.bayesian import (advantage_queries, advantage_rewards, bayesian_router, losses_under_labels,
                                       offline_router)
from rmbandit.routers.fixed import majority, majority_vote, single_rm

__all__ = ["ALL_RMS", "Assignment", "GRANULARITIES", "Router", "RouterState", "advantage_queries", "advantage_rewards",
           "bandit_router", "bayesian_router", "check", "laser", "losses_under_labels", "majority", "majority_vote",
           "offline_router", "rm_mask", "round_robin", "single_rm", "uniform_random"]
