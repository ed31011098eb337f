"""Preference-training pieces: per-pair losses, preference pairs from scored samples, and
the ensemble baselines' pairs from every RM's scores (the step, the loop and best-of-n are
imported from their modules: they load models)."""
from rmbandit.training.ensembles import (agreement_ensemble, majority_vote, normalise_scores, score_ensemble, uwo,
                                         weighted_score_ensemble, weighted_scores)
from rmbandit.training.losses import dpo_loss, ipo_loss, log_ratio_margin
from rmbandit.training.pairs import Pairs, sample_pairs

__all__ = ["Pairs", "agreement_ensemble", "dpo_loss", "ipo_loss", "log_ratio_margin", "majority_vote",
           "normalise_scores", "sample_pairs", "score_ensemble", "uwo", "weighted_score_ensemble", "weighted_scores"]
