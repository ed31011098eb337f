"""Routers: which RM labels which prompt or pair (see ``base`` for the interface).

The simulation (``rmbandit simulate``) and the training loop route through these same
functions; a router knows contexts, arms and losses, never an LM."""
from rmbandit.routers.base import (ALL_RMS, Assignment, Router, RouterState, check, rm_mask)
from rmbandit.routers.bandit import GRANULARITIES, bandit_router, laser, round_robin, uniform_random
from rmbandit.routers.baselines import (ClassifierParams, best_rm_labels, classifier_router, laser_exp3,
                                        laser_neural_ucb, laser_with, online_ensemble, train_classifier)
from rmbandit.routers.bayesian import (advantage_queries, advantage_rewards, bayesian_router, losses_under_labels,
                                       offline_router)
from rmbandit.routers.fixed import majority, majority_vote, single_rm

__all__ = ["ALL_RMS", "Assignment", "ClassifierParams", "GRANULARITIES", "Router", "RouterState", "advantage_queries",
           "advantage_rewards", "bandit_router", "bayesian_router", "best_rm_labels", "check", "classifier_router",
           "laser", "laser_exp3", "laser_neural_ucb", "laser_with", "losses_under_labels", "majority",
           "majority_vote", "offline_router", "online_ensemble", "rm_mask", "round_robin", "single_rm",
           "train_classifier", "uniform_random"]
