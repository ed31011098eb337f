"""Reward models behind one interface (``RewardModel``: score / prefer, cost, invalid-output
policy), every kind the LASeR and BayesianRouter papers route between, and pools built
from config entries."""
from rmbandit.rewards.base import Cost, RewardModel, RewardModelError, label_pairs
from rmbandit.rewards.wrappers import cached, inverted, random_rm, with_noise

__all__ = ["Cost", "RewardModel", "RewardModelError", "cached", "inverted", "label_pairs", "random_rm",
           "with_noise"]
