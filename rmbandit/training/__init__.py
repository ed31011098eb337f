"""Preference-training pieces (losses now; the step and the loop come with the training issue)."""
from rmbandit.training.losses import dpo_loss

__all__ = ["dpo_loss"]
