"""Slate off-policy estimators: SIPS, IIPS, RIPS, pseudo-inverse and Cascade-DR.

They estimate V(π) = E[Σ_k r_k] under a target slate policy π from a `SlateLog`, each under a
stated click model (what the reward at position k may depend on):

* ``sips``  standard IPS on the whole slate, w = π(s)/μ(s): any click model; huge variance.
* ``iips``  independent IPS, Σ_k w_k r_k with w_k = π_k(a_k)/μ_k(a_k): r_k depends on the item at
  k only (position-based model).
* ``rips``  reward-interaction IPS, Σ_k w_{1:k} r_k with the top-k weights w_{1:k}: r_k depends on
  the items at and above k (cascade model; the position-based model is a special case).
* ``pseudo_inverse``  (Σ_k w_k − K + 1) Σ_k r_k: additive rewards, and a logging policy that
  draws positions independently (Swaminathan et al. 2017 in that case).
* ``cascade_dr``  Σ_k [w_{1:k} (r_k − r̂_k(a_k)) + w_{1:k−1} Σ_a π_k(a | top k−1) r̂_k(a)]: the
  cascade model, with a reward model as control variate (unbiased whatever r̂; Kiyohara et al.
  2022 with a per-position model).

A `SlateTarget` carries the target's probabilities of the logged slates (the adapter builds it
from any tfmarl policy). Intervals: percentile bootstrap over rounds; Cascade-DR's default model
is cross-fitted and refitted on every resample.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmarl.evaluation.ope.estimate import Estimate, finish, mean_terms
from tfmarl.evaluation.ope.reward_models import TableRewardModel, cross_fit, cross_predict, fold_ids
from tfmarl.evaluation.ope.slate_log import SlateLog


@dataclasses.dataclass
class SlateTarget:
    """A target policy's probabilities on the rounds of a `SlateLog`.

    Attributes:
      position: float64 [n, K], π_k(a_ik | x_i) of the logged item at each position.
      cascade: float64 [n, K], π(a_i1..a_ik | x_i) of the logged top k.
      support: int64 [n, S], items π may place (its slate, or its candidates).
      support_probs: float64 [n, K, S], π_k(support item | x_i) per position (rows sum to 1).
      conditional_is_marginal: whether π's choice at position k given the logged top k−1 is its
        marginal ``support_probs`` (true for deterministic policies, whose weights vanish once
        the prefix differs, and for policies drawing positions independently). Cascade-DR needs it.
      slates: int64 [n, K], the target's own slate where it is deterministic (else None).
    """

    position: np.ndarray
    cascade: np.ndarray
    support: np.ndarray
    support_probs: np.ndarray
    conditional_is_marginal: bool = True
    slates: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.position)

    @classmethod
    def deterministic(cls, log: SlateLog, slates) -> "SlateTarget":
        """The target that shows ``slates`` [n, K] (one slate per logged round) with probability 1."""
        slates = np.asarray(slates, np.int64)
        if slates.shape != log.slates.shape:
            raise ValueError(f"target slates must have the log's shape {log.slates.shape}, got {slates.shape}")
        hit = (slates == log.slates).astype(np.float64)
        k = log.slate_size
        return cls(position=hit, cascade=np.cumprod(hit, axis=1), support=slates,
                   support_probs=np.broadcast_to(np.eye(k), (len(log), k, k)).copy(), slates=slates)


def _check(log: SlateLog, target: SlateTarget) -> None:
    if not isinstance(log, SlateLog):
        raise TypeError(f"log must be a SlateLog, got {type(log).__name__}")
    if len(log) == 0:
        raise ValueError("the log is empty: nothing to estimate from")
    if not isinstance(target, SlateTarget):
        raise TypeError(f"target must be a SlateTarget (see tfmarl.evaluation.ope.target_probabilities), "
                        f"got {type(target).__name__}")
    if target.position.shape != log.slates.shape:
        raise ValueError(f"target covers {target.position.shape} (rounds, positions) but the log has "
                         f"{log.slates.shape}")


def _cascade(log: SlateLog, estimator: str) -> np.ndarray:
    if log.cascade_propensities is None:
        raise ValueError(f"{estimator} needs the logging policy's top-k probabilities (cascade_propensities); "
                         "the log has only per-position ones: use iips or pseudo_inverse")
    return log.cascade_propensities


def _interval(log, versus_logging, kw):
    return dict(kw, logged_reward=log.slate_rewards if versus_logging else None)


def sips(log: SlateLog, target: SlateTarget, *, versus_logging: bool = False, num_bootstrap: int = 1000,
         confidence: float = 0.95, seed=0) -> Estimate:
    """Standard slate IPS, mean_i (π(s_i)/μ(s_i)) Σ_k r_ik. Assumes no click model (any reward)."""
    _check(log, target)
    weights = target.cascade[:, -1] / _cascade(log, "sips")[:, -1]
    return finish("sips", mean_terms(weights * log.slate_rewards, weights),
                  **_interval(log, versus_logging, dict(num_bootstrap=num_bootstrap, confidence=confidence, seed=seed)))


def iips(log: SlateLog, target: SlateTarget, *, versus_logging: bool = False, num_bootstrap: int = 1000,
         confidence: float = 0.95, seed=0) -> Estimate:
    """Independent IPS, mean_i Σ_k w_ik r_ik, w_ik = π_k(a_ik)/μ_k(a_ik). Assumes the position-based
    click model: the reward at k depends on the item at k alone."""
    _check(log, target)
    weights = target.position / log.position_propensities
    return finish("iips", mean_terms(np.sum(weights * log.rewards, axis=1), weights.mean(axis=1)),
                  **_interval(log, versus_logging, dict(num_bootstrap=num_bootstrap, confidence=confidence, seed=seed)))


def rips(log: SlateLog, target: SlateTarget, *, versus_logging: bool = False, num_bootstrap: int = 1000,
         confidence: float = 0.95, seed=0) -> Estimate:
    """Reward-interaction IPS, mean_i Σ_k w_i,1:k r_ik with top-k weights. Assumes the cascade click
    model: the reward at k depends on the items at and above k."""
    _check(log, target)
    weights = target.cascade / _cascade(log, "rips")
    return finish("rips", mean_terms(np.sum(weights * log.rewards, axis=1), weights.mean(axis=1)),
                  **_interval(log, versus_logging, dict(num_bootstrap=num_bootstrap, confidence=confidence, seed=seed)))


def pseudo_inverse(log: SlateLog, target: SlateTarget, *, versus_logging: bool = False, num_bootstrap: int = 1000,
                   confidence: float = 0.95, seed=0) -> Estimate:
    """Pseudo-inverse, mean_i (Σ_k w_ik − K + 1) Σ_k r_ik. Assumes additive slate rewards and a
    logging policy drawing positions independently (otherwise it is biased)."""
    _check(log, target)
    weights = np.sum(target.position / log.position_propensities, axis=1) - log.slate_size + 1
    return finish("pseudo_inverse", mean_terms(weights * log.slate_rewards, weights),
                  **_interval(log, versus_logging, dict(num_bootstrap=num_bootstrap, confidence=confidence, seed=seed)))


def cascade_dr(log: SlateLog, target: SlateTarget, reward_model=None, *, num_folds: int = 5,
               versus_logging: bool = False, num_bootstrap: int = 1000, confidence: float = 0.95,
               seed=0) -> Estimate:
    """Cascade doubly robust: RIPS with a per-position reward model r̂_k(a) as control variate.
    Assumes the cascade click model; unbiased with right propensities whatever r̂.

    Args:
      reward_model: None (a `TableRewardModel`, cross-fitted in ``num_folds`` folds and refitted
        on each bootstrap resample), a model object with ``fit`` (the same), or fixed predictions
        float [n, K, 1 + S]: r̂ of the logged item (column 0) and of each support item (for a
        deterministic target, whose ``slates`` are set, S = 1: its own item at position k).
    """
    _check(log, target)
    cascade = _cascade(log, "cascade_dr")
    if not target.conditional_is_marginal:
        raise ValueError("cascade_dr needs the target's choice at each position given the logged top k−1; this "
                         "target's is not its marginal (stochastic across positions): use rips")
    n, k = log.slates.shape
    weights = target.cascade / cascade
    before = np.concatenate([np.ones((n, 1)), weights[:, :-1]], axis=1)
    if target.slates is not None:  # deterministic: position k places its own slate item only
        support_items, support_probs = target.slates[:, :, None], np.ones((n, k, 1))
    else:
        support_items = np.broadcast_to(target.support[:, None, :], (n, k, target.support.shape[1]))
        support_probs = target.support_probs
    items = np.concatenate([log.slates[:, :, None], support_items], axis=2)

    def make_terms(predictions):
        logged, support = predictions[:, :, 0], predictions[:, :, 1:]
        baseline = np.sum(support_probs * support, axis=2)
        return mean_terms(np.sum(weights * (log.rewards - logged) + before * baseline, axis=1), weights.mean(axis=1))

    logged_reward = log.slate_rewards if versus_logging else None
    interval = dict(num_bootstrap=num_bootstrap, confidence=confidence, seed=seed, logged_reward=logged_reward)
    if reward_model is not None and not hasattr(reward_model, "fit"):
        predictions = np.asarray(reward_model, np.float64)
        if predictions.shape != items.shape:
            raise ValueError(f"reward_model predictions must have shape {items.shape}, got {predictions.shape}")
        return finish("cascade_dr", make_terms(predictions), **interval)
    model = TableRewardModel() if reward_model is None else reward_model
    folds = fold_ids(n, num_folds, seed)

    def replicate(counts):
        terms = make_terms(cross_predict(cross_fit(model, log, folds, counts), n, items))
        value = terms.statistic((counts @ terms.columns / n)[None])[0]
        return value - counts @ log.slate_rewards / n if versus_logging else value

    return finish("cascade_dr", make_terms(cross_predict(cross_fit(model, log, folds), n, items)),
                  replicate=replicate, **interval)


SLATE = {"sips": sips, "iips": iips, "rips": rips, "pseudo_inverse": pseudo_inverse, "cascade_dr": cascade_dr}
