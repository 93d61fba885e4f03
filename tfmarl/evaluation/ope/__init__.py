"""Off-policy evaluation (OPE) of target policies from logged feedback, single actions and slates.

* `logs` (`BanditLog`, `BanditLogWriter`, `read_logs`) and `slate_log` (`SlateLog`): the logs;
  `tfmarl.data.load_bandit_feedback` reads impression files into a `SlateLog`.
* `estimators`: IPS, SNIPS, DM, DR, SNDR, Switch-DR, DRos on single-action logs.
* `slate`: SIPS, IIPS, RIPS, pseudo-inverse, Cascade-DR on slate logs (`SlateTarget`).
* `reward_models`: ridge and table reward models, cross-fitting.
* `adapter`: any tfmarl policy, ranking model or SavedModel as a target (`target_probabilities`).
* `evaluate`: `evaluate_policy_offline`, several estimators in one call.
* `simulate`: `SlateLogSimulator`, generated logs with a known ground truth.
* `validation`: `validate_simulator`, a fitted simulator checked against held-out logs.

All estimators are numpy, vectorised, with bootstrap intervals deterministic by seed; nothing
here imports TensorFlow unless a TensorFlow policy is evaluated.
"""

from tfmarl.evaluation.ope.adapter import target_probabilities
from tfmarl.evaluation.ope.estimate import Estimate
from tfmarl.evaluation.ope.estimators import direct_method, doubly_robust, dros, ips, sndr, snips, switch_dr
from tfmarl.evaluation.ope.evaluate import evaluate_policy_offline
from tfmarl.evaluation.ope.exploration import epsilon_slot_cascade, epsilon_slot_marginals
from tfmarl.evaluation.ope.logs import BanditLog, BanditLogWriter, read_logs
from tfmarl.evaluation.ope.reward_models import (RidgeRewardModel, TableRewardModel, cross_fit, cross_predict,
                                                 fit_reward_model, fold_ids)
from tfmarl.evaluation.ope.slate import SlateTarget, cascade_dr, iips, pseudo_inverse, rips, sips
from tfmarl.evaluation.ope.simulate import SlateLogSimulator
from tfmarl.evaluation.ope.slate_log import SlateLog
from tfmarl.evaluation.ope.validation import SimulatorValidation, validate_simulator

__all__ = [
    "BanditLog", "BanditLogWriter", "Estimate", "RidgeRewardModel", "SimulatorValidation", "SlateLog", "SlateLogSimulator", "SlateTarget",
    "TableRewardModel", "cascade_dr", "cross_fit", "cross_predict", "direct_method", "doubly_robust", "dros",
    "epsilon_slot_cascade", "epsilon_slot_marginals", "evaluate_policy_offline", "fit_reward_model", "fold_ids",
    "iips", "ips", "pseudo_inverse", "read_logs", "rips", "sips", "sndr", "snips", "switch_dr",
    "target_probabilities", "validate_simulator",
]
