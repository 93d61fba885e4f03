"""Evaluation: full-catalog ranking metrics (and, with the RL stack, simulated online and OPE)."""

from tfmarl.evaluation.ranking import evaluate_ranking

__all__ = ["evaluate_ranking"]
