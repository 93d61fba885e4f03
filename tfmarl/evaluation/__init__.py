"""Evaluation: full-catalog ranking metrics, and off-policy estimates from logged bandit feedback."""

from tfmarl.evaluation.ope import (BanditLog, BanditLogWriter, Estimate, direct_method, doubly_robust,
                                   evaluate_policy_offline, fit_reward_model, ips, read_logs, snips)
from tfmarl.evaluation.ranking import evaluate_ranking

__all__ = ["BanditLog", "BanditLogWriter", "Estimate", "direct_method", "doubly_robust", "evaluate_policy_offline",
           "evaluate_ranking", "fit_reward_model", "ips", "read_logs", "snips"]
