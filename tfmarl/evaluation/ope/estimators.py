"""Single-action off-policy estimators: IPS, SNIPS, DM, DR, SNDR, Switch-DR and DRos.

From a `BanditLog` of rounds (x_i, a_i ~ μ, r_i) they estimate V(π) = E_x[Σ_a π(a|x) q(x, a)]
for a target policy π, with w_i = π(a_i|x_i) / μ(a_i|x_i) and a reward model r̂:

* IPS   V̂ = mean_i(w_i r_i)                      * SNIPS V̂ = Σ_i w_i r_i / Σ_i w_i
* DM    V̂ = mean_i Σ_a π(a|x_i) r̂(x_i, a)        * DR    V̂ = DM + mean_i w_i (r_i − r̂(x_i, a_i))
* SNDR  V̂ = DM + Σ_i w_i (r_i − r̂_i) / Σ_i w_i
* Switch-DR: the DR correction only where w_i ≤ τ    * DRos: DR with w shrunk to λw / (w² + λ)

The DM family takes predictions ([n, A] array, or a callable (log) -> array: used as given, so
the interval ignores the model's error) or a reward-model object with ``fit`` (default: cross-fitted
in ``num_folds`` folds, and refitted on every bootstrap resample so the interval carries the
model's uncertainty; see `reward_models`). ``versus_logging=True`` estimates V(π) − V(μ) instead,
with V(μ) the mean logged reward, paired round by round. Plain numpy, deterministic by ``seed``.
"""

from __future__ import annotations

import numpy as np

from tfmarl.evaluation.ope._checks import as_array, check_distribution, check_finite
from tfmarl.evaluation.ope.estimate import Estimate, Terms, finish, mean_terms, ratio_statistic
from tfmarl.evaluation.ope.logs import BanditLog
from tfmarl.evaluation.ope.reward_models import cross_fit, cross_predict, default_reward_model, fold_ids

def _require_rounds(log: BanditLog) -> None:
    if not isinstance(log, BanditLog):
        raise TypeError(f"log must be a BanditLog, got {type(log).__name__}")
    if len(log) == 0:
        raise ValueError("the log is empty: nothing to estimate from")


def _target_all(log: BanditLog, target_probs, name: str = "target_probs_all") -> np.ndarray:
    """Validates a full target distribution: float64 [n, A], rows summing to 1."""
    probs = as_array(target_probs, np.float64, 2, name)
    if probs.shape[0] != len(log):
        raise ValueError(f"{name} has {probs.shape[0]} rows but the log has {len(log)}")
    if log.num_arms is not None and probs.shape[1] != log.num_arms:
        raise ValueError(f"{name} has {probs.shape[1]} arms per row but the log has {log.num_arms}")
    if log.actions.max() >= probs.shape[1]:
        raise ValueError(f"{name} has {probs.shape[1]} arms per row but the log holds action "
                         f"{int(log.actions.max())}")
    check_distribution(probs, name)
    return probs


def _target_logged(log: BanditLog, target_probs) -> np.ndarray:
    """π(a_i|x_i) as float64 [n], from either [n] (already the logged action's probability) or a
    full [n, A] distribution."""
    probs = np.asarray(target_probs, dtype=np.float64)
    if probs.ndim == 2:
        return _target_all(log, probs, "target_probs")[np.arange(len(log)), log.actions]
    if probs.ndim != 1 or probs.shape[0] != len(log):
        raise ValueError(f"target_probs must have shape [{len(log)}] or [{len(log)}, A], got {probs.shape}")
    bad = ~((probs >= 0) & (probs <= 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"target_probs must lie in [0, 1]: row {i} holds {probs[i]!r}")
    return probs


def _weights(log: BanditLog, target_logged: np.ndarray, clip: float | None) -> np.ndarray:
    """Importance weights w_i = π(a_i|x_i) / μ(a_i|x_i), optionally capped at ``clip``."""
    weights = target_logged / log.propensities
    if clip is not None:
        if not clip > 0:  # also refuses NaN
            raise ValueError(f"clip must be a positive maximum weight, got {clip}")
        weights = np.minimum(weights, clip)
    return weights


def _reward_predictions(log: BanditLog, reward_model, num_arms: int) -> np.ndarray:
    """r̂(x_i, a) as float64 [n, A], from an array or a callable (log) -> array."""
    predictions = reward_model(log) if callable(reward_model) else reward_model
    predictions = as_array(predictions, np.float64, 2, "reward_model")
    if predictions.shape != (len(log), num_arms):
        raise ValueError(f"reward_model predictions must have shape {(len(log), num_arms)}, "
                         f"got {predictions.shape}")
    check_finite(predictions, "reward_model")
    return predictions




def _is_fitter(reward_model) -> bool:
    return reward_model is None or hasattr(reward_model, "fit")


def _model_estimate(name, log: BanditLog, probs: np.ndarray, reward_model, make_terms, *, num_folds: int,
                    num_bootstrap: int, confidence: float, seed, versus_logging: bool) -> Estimate:
    """An estimate whose terms depend on reward predictions: fixed ones, or a cross-fitted model
    that each bootstrap replicate refits on its resample (fold assignment kept)."""
    logged = log.rewards if versus_logging else None
    interval = dict(num_bootstrap=num_bootstrap, confidence=confidence, seed=seed, logged_reward=logged)
    if not _is_fitter(reward_model):
        return finish(name, make_terms(_reward_predictions(log, reward_model, probs.shape[1])), **interval)
    model = default_reward_model(log) if reward_model is None else reward_model
    n = len(log)
    folds = fold_ids(n, num_folds, seed)

    def predictions(weights=None):
        values = cross_predict(cross_fit(model, log, folds, weights), n)
        return _reward_predictions(log, values, probs.shape[1])

    def replicate(counts):
        terms = make_terms(predictions(counts))
        value = terms.statistic((counts @ terms.columns / n)[None])[0]
        return value - counts @ log.rewards / n if versus_logging else value

    return finish(name, make_terms(predictions()), replicate=replicate, **interval)


def ips(log: BanditLog, target_probs, *, clip: float | None = None, versus_logging: bool = False,
        num_bootstrap: int = 1000, confidence: float = 0.95, seed=0) -> Estimate:
    """Inverse propensity scoring, V̂ = mean_i w_i r_i. Assumes μ(a|x) > 0 wherever π(a|x) > 0
    (then unbiased); its variance grows with the weights.

    Args:
      log: the logged rounds (μ(a_i|x_i) is ``log.propensities``).
      target_probs: float [n], π of the logged action, or [n, A], the full target distribution
        (the logged action's column is taken).
      clip: optional maximum importance weight (w ← min(w, clip)). Clipping trades variance for
        bias: with non-negative rewards, clipped IPS underestimates.
      versus_logging: estimate V(π) − V(μ) instead of V(π).
      num_bootstrap, confidence, seed: percentile-bootstrap interval over rounds
        (``num_bootstrap=0`` skips it; the interval is then NaN).
    """
    _require_rounds(log)
    weights = _weights(log, _target_logged(log, target_probs), clip)
    return finish("ips", mean_terms(weights * log.rewards, weights), num_bootstrap=num_bootstrap,
                  confidence=confidence, seed=seed, logged_reward=log.rewards if versus_logging else None)


def snips(log: BanditLog, target_probs, *, clip: float | None = None, versus_logging: bool = False,
          num_bootstrap: int = 1000, confidence: float = 0.95, seed=0) -> Estimate:
    """Self-normalised IPS, V̂ = Σ_i w_i r_i / Σ_i w_i. Assumes the same support as IPS; biased
    in finite samples but consistent, less variable, and within the range of the rewards.

    Each bootstrap replicate recomputes the ratio; the standard error is the delta-method one,
    std(w_i (r_i − V̂)) / (mean(w) √n). Arguments as for `ips` (``clip`` applies before
    normalising). Raises ``ValueError`` if π gives probability 0 to every logged action.
    """
    _require_rounds(log)
    weights = _weights(log, _target_logged(log, target_probs), clip)
    total = weights.sum()
    if not total > 0:
        raise ValueError("snips is undefined: the target policy gives probability 0 to every logged action")
    value = float(np.sum(weights * log.rewards) / total)
    influence = weights * (log.rewards - value) / weights.mean()
    terms = Terms(np.stack([weights * log.rewards, weights], axis=1), ratio_statistic, influence, weights)
    return finish("snips", terms, num_bootstrap=num_bootstrap, confidence=confidence, seed=seed,
                  logged_reward=log.rewards if versus_logging else None)


def direct_method(log: BanditLog, target_probs_all, reward_model=None, *, num_folds: int = 5,
                  versus_logging: bool = False, num_bootstrap: int = 1000, confidence: float = 0.95,
                  seed=0) -> Estimate:
    """Direct method, V̂ = mean_i Σ_a π(a|x_i) r̂(x_i, a). Assumes r̂ is right: uses no
    propensities, has low variance, and is biased by exactly the model's error.

    Args:
      target_probs_all: float [n, A], the full target distribution of each round.
      reward_model: None (cross-fit the default model: ridge on arm features, else a per-arm
        table), a model object with ``fit`` (cross-fitted, refitted per bootstrap resample), or
        fixed predictions: float [n, A] or a callable (log) -> [n, A]; with fixed predictions
        the interval covers only the sampling of the contexts, never the model's error.
      num_folds: folds of the cross-fitting.
    """
    _require_rounds(log)
    probs = _target_all(log, target_probs_all)
    return _model_estimate("dm", log, probs, reward_model, lambda r: mean_terms(np.sum(probs * r, axis=1)),
                           num_folds=num_folds, num_bootstrap=num_bootstrap, confidence=confidence, seed=seed,
                           versus_logging=versus_logging)


def _dr_parts(log, probs, predictions, clip):
    rows = np.arange(len(log))
    weights = _weights(log, probs[rows, log.actions], clip)
    baseline = np.sum(probs * predictions, axis=1)
    return weights, baseline, log.rewards - predictions[rows, log.actions]


def doubly_robust(log: BanditLog, target_probs_all, reward_model=None, *, clip: float | None = None,
                  num_folds: int = 5, versus_logging: bool = False, num_bootstrap: int = 1000,
                  confidence: float = 0.95, seed=0) -> Estimate:
    """Doubly robust, V̂ = DM + mean_i w_i (r_i − r̂(x_i, a_i)). Assumes right propensities or a
    right reward model (either suffices for unbiasedness; a better r̂ means less variance).

    ``clip`` caps the weights of the correction term, which keeps DR unbiased only where r̂ is
    exact. Other arguments as for `direct_method` and `ips`.
    """
    _require_rounds(log)
    probs = _target_all(log, target_probs_all)

    def make_terms(predictions):
        weights, baseline, residual = _dr_parts(log, probs, predictions, clip)
        return mean_terms(baseline + weights * residual, weights)

    return _model_estimate("dr", log, probs, reward_model, make_terms, num_folds=num_folds,
                           num_bootstrap=num_bootstrap, confidence=confidence, seed=seed,
                           versus_logging=versus_logging)


def sndr(log: BanditLog, target_probs_all, reward_model=None, *, num_folds: int = 5, versus_logging: bool = False,
         num_bootstrap: int = 1000, confidence: float = 0.95, seed=0) -> Estimate:
    """Self-normalised DR, V̂ = DM + Σ_i w_i (r_i − r̂_i) / Σ_i w_i. Assumes what DR does;
    consistent rather than unbiased, and steadier than DR when a few weights are huge."""
    _require_rounds(log)
    probs = _target_all(log, target_probs_all)

    def make_terms(predictions):
        weights, baseline, residual = _dr_parts(log, probs, predictions, None)
        if not weights.sum() > 0:
            raise ValueError("sndr is undefined: the target policy gives probability 0 to every logged action")
        columns = np.stack([baseline, weights * residual, weights], axis=1)
        mean_w = weights.mean()
        correction = np.sum(weights * residual) / weights.sum()
        influence = baseline + weights * (residual - correction) / mean_w
        return Terms(columns, lambda m: m[:, 0] + ratio_statistic(m[:, 1:]), influence, weights)

    return _model_estimate("sndr", log, probs, reward_model, make_terms, num_folds=num_folds,
                           num_bootstrap=num_bootstrap, confidence=confidence, seed=seed,
                           versus_logging=versus_logging)


def switch_dr(log: BanditLog, target_probs_all, reward_model=None, *, tau: float = 10.0, num_folds: int = 5,
              versus_logging: bool = False, num_bootstrap: int = 1000, confidence: float = 0.95,
              seed=0) -> Estimate:
    """Switch-DR, V̂ = DM + mean_i 1{w_i ≤ τ} w_i (r_i − r̂_i). Assumes rounds with weights above τ
    are better served by the model alone (unbiased if τ ≥ max w, else biased by r̂'s error there)."""
    _require_rounds(log)
    if not tau > 0:
        raise ValueError(f"tau must be a positive weight threshold, got {tau}")
    probs = _target_all(log, target_probs_all)

    def make_terms(predictions):
        weights, baseline, residual = _dr_parts(log, probs, predictions, None)
        kept = np.where(weights <= tau, weights, 0.0)
        return mean_terms(baseline + kept * residual, kept)

    return _model_estimate("switch_dr", log, probs, reward_model, make_terms, num_folds=num_folds,
                           num_bootstrap=num_bootstrap, confidence=confidence, seed=seed,
                           versus_logging=versus_logging)


def dros(log: BanditLog, target_probs_all, reward_model=None, *, shrinkage: float = 10.0, num_folds: int = 5,
         versus_logging: bool = False, num_bootstrap: int = 1000, confidence: float = 0.95, seed=0) -> Estimate:
    """DR with optimistic shrinkage (Su et al. 2020): DR with w replaced by λw / (w² + λ).
    Assumes a bias of order r̂'s error is worth the variance cut (λ → ∞ recovers DR)."""
    _require_rounds(log)
    if not shrinkage > 0:
        raise ValueError(f"shrinkage must be positive, got {shrinkage}")
    probs = _target_all(log, target_probs_all)

    def make_terms(predictions):
        weights, baseline, residual = _dr_parts(log, probs, predictions, None)
        shrunk = shrinkage * weights / (weights ** 2 + shrinkage)
        return mean_terms(baseline + shrunk * residual, shrunk)

    return _model_estimate("dros", log, probs, reward_model, make_terms, num_folds=num_folds,
                           num_bootstrap=num_bootstrap, confidence=confidence, seed=seed,
                           versus_logging=versus_logging)


SINGLE_ACTION = {"ips": ips, "snips": snips, "dm": direct_method, "dr": doubly_robust, "sndr": sndr,
                 "switch_dr": switch_dr, "dros": dros}
