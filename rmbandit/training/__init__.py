"""Preference-training pieces: per-pair losses and preference pairs from scored samples
(the step and the loop come with the training issue)."""
from rmbandit.training.losses import dpo_loss, ipo_loss, log_ratio_margin
from rmbandit.training.pairs import Pairs, sample_pairs

__all__ = ["Pairs", "dpo_loss", "ipo_loss", "log_ratio_margin", "sample_pairs"]
