"""`evaluate_policy_offline`: several estimators of one target policy on one log, in one call."""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np

from tfmarl.evaluation.ope.adapter import target_probabilities
from tfmarl.evaluation.ope.estimate import Estimate
from tfmarl.evaluation.ope.estimators import SINGLE_ACTION
from tfmarl.evaluation.ope.logs import BanditLog
from tfmarl.evaluation.ope.slate import SLATE, SlateTarget
from tfmarl.evaluation.ope.slate_log import SlateLog

_SINGLE_DEFAULT = ("ips", "snips", "dm", "dr")
_MODEL_BASED = {"dm", "dr", "sndr", "switch_dr", "dros", "cascade_dr"}
_OPTIONS = {"clip", "num_bootstrap", "confidence", "seed", "versus_logging", "num_folds", "tau", "shrinkage"}


def evaluate_policy_offline(log, target, reward_model=None, estimators: Sequence[str] | None = None,
                            **kw) -> dict[str, Estimate]:
    """Runs several estimators on one log; returns ``{name: Estimate}`` in the order asked.

    Args:
      log: a `BanditLog` (then ``target`` is the target distribution float [n, A]) or a `SlateLog`
        (then ``target`` is anything `target_probabilities` takes: a tfmarl slate policy, ranking
        model, SavedModel directory, target slates [n, K] or a `SlateTarget`). A `SlateLog` of
        slates of one with ``candidates`` also runs the single-action estimators (arms = candidates).
      reward_model: for the model-based estimators (dm, dr, sndr, switch_dr, dros, cascade_dr):
        None (cross-fitted default), a model object with ``fit``, or fixed predictions.
      estimators: names from ips, snips, dm, dr, sndr, switch_dr, dros (single action) and sips,
        iips, rips, pseudo_inverse, cascade_dr (slates). Default: ips, snips, dm, dr for a
        `BanditLog`; for a `SlateLog`, every slate estimator its propensities allow (the
        single-action ones too for slates of one with candidates).
      **kw: options passed to the estimators that take them: ``clip``, ``num_bootstrap``,
        ``confidence``, ``seed`` (one seed resamples the same rounds for every estimator, so their
        intervals are comparable), ``versus_logging``, ``num_folds``, ``tau``, ``shrinkage``.
    """
    unknown_kw = set(kw) - _OPTIONS
    if unknown_kw:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown_kw)}; allowed: {sorted(_OPTIONS)}")
    single_log, single_target, slate_target = None, None, None
    if isinstance(log, BanditLog):
        single_log, single_target = log, target
        available = dict(SINGLE_ACTION)
        default = _SINGLE_DEFAULT
    elif isinstance(log, SlateLog):
        slate_target = target_probabilities(log, target)
        available = dict(SLATE)
        default = [name for name in SLATE if log.cascade_propensities is not None
                   or name in ("iips", "pseudo_inverse")]
        if log.slate_size == 1 and log.candidates is not None:
            single_log, single_target = log.to_bandit_log(), _candidate_distribution(log, slate_target)
            available.update(SINGLE_ACTION)
            default = list(SINGLE_ACTION) + default
    else:
        raise TypeError(f"log must be a BanditLog or a SlateLog, got {type(log).__name__}")
    names = list(default if estimators is None else estimators)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown} for this log; choose from {list(available)}")
    results = {}
    for name in names:
        function = available[name]
        accepted = inspect.signature(function).parameters
        options = {key: value for key, value in kw.items() if key in accepted}
        model = {"reward_model": reward_model} if name in _MODEL_BASED else {}
        if name in SINGLE_ACTION and single_log is not None:
            results[name] = function(single_log, single_target, **model, **options)
        else:
            results[name] = function(log, slate_target, **model, **options)
    return results


def _candidate_distribution(log: SlateLog, target: SlateTarget) -> np.ndarray:
    """π over the logged candidates [n, N] for a slate of one (arms of the single-action log)."""
    match = (target.support[:, None, :] == log.candidates[:, :, None])          # [n, N, S]
    probs = np.einsum("nas,ns->na", match.astype(np.float64), target.support_probs[:, 0, :])
    short = np.abs(probs.sum(axis=1) - 1) > 1e-6
    if short.any():
        raise ValueError(f"the target shows items outside the logged candidates (round {int(np.argmax(short))}): "
                         "single-action estimators need its distribution over the candidates; ask for iips")
    return probs
