"""Evaluation: full-catalog ranking metrics, off-policy estimates from logged feedback (single
actions and slates), and validation of fitted simulators against held-out logs."""

from tfmarl.evaluation.ope import (BanditLog, BanditLogWriter, Estimate, SimulatorValidation, SlateLog, SlateTarget,
                                   cascade_dr, direct_method, doubly_robust, dros, evaluate_policy_offline,
                                   fit_reward_model, iips, ips, pseudo_inverse, read_logs, rips, sips, sndr, snips,
                                   switch_dr, target_probabilities, validate_simulator)
from tfmarl._lazy import lazy_getattr

# Ranking metrics need TensorFlow; off-policy evaluation does not, so it loads on first use.
__getattr__ = lazy_getattr(globals(), {"evaluate_ranking": "tfmarl.evaluation.ranking",
                                       "evaluate_cold_items": "tfmarl.evaluation.cold_start",
                                       "evaluate_by_history_length": "tfmarl.evaluation.cold_start"})

__all__ = ["BanditLog", "BanditLogWriter", "Estimate", "SimulatorValidation", "SlateLog", "SlateTarget", "cascade_dr",
           "direct_method", "doubly_robust", "dros", "evaluate_by_history_length", "evaluate_cold_items",
           "evaluate_policy_offline", "evaluate_ranking", "fit_reward_model",
           "iips", "ips", "pseudo_inverse", "read_logs", "rips", "sips", "sndr", "snips", "switch_dr",
           "target_probabilities", "validate_simulator"]
