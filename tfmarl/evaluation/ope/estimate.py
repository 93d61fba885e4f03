"""The `Estimate` every off-policy estimator returns, and the bootstraps behind its interval.

Estimators reduce a log to per-round ``columns`` [n, m] whose means determine the estimate
through a ``statistic`` (the mean itself for IPS, a ratio for SNIPS); `finish` turns them into
an `Estimate` with a percentile-bootstrap interval over rounds. Estimators whose reward model is
fitted on the log (cross-fitted DM / DR) instead pass a ``replicate`` function that refits on a
resample, so their interval carries the model's own uncertainty.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

# Bootstrap index matrices are drawn in chunks of at most this many entries (~32 MB of int64).
_BOOTSTRAP_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An off-policy value estimate.

    Attributes:
      value: the point estimate V̂(π), or V̂(π) − V(μ) when ``relative_to == "logging"``.
      ci_low, ci_high: percentile-bootstrap confidence interval (NaN when ``num_bootstrap=0``).
      std_error: analytic standard error of ``value``: std of the per-round terms / √n (for the
        self-normalised estimators the delta-method, linearised version). Independent of the
        bootstrap; for refitted reward models it ignores the model's fitting noise.
      n: rounds used.
      estimator: the estimator's name ("ips", "snips", "dr", "sips", ...).
      effective_sample_size: (Σw)² / Σw² of the importance weights, for the weighted
        estimators (None for DM); much smaller than ``n`` means a few rounds dominate.
      confidence: the interval's nominal coverage.
      relative_to: None for a value, "logging" for the difference with the logging policy's
        value (the mean logged reward), whose interval is paired round by round.
    """

    value: float
    ci_low: float
    ci_high: float
    std_error: float
    n: int
    estimator: str
    effective_sample_size: float | None = None
    confidence: float = 0.95
    relative_to: str | None = None

    def __str__(self) -> str:
        ess = "" if self.effective_sample_size is None else f", ess={self.effective_sample_size:.1f}"
        name = self.estimator if self.relative_to is None else f"{self.estimator} − {self.relative_to}"
        return (f"{name}: {self.value:.6g} [{self.ci_low:.6g}, {self.ci_high:.6g}] "
                f"(se={self.std_error:.3g}, n={self.n}{ess})")

    def covers(self, truth: float) -> bool:
        """Whether the interval contains ``truth``."""
        return bool(self.ci_low <= truth <= self.ci_high)


@dataclasses.dataclass
class Terms:
    """What an estimator computes before the interval: per-round ``columns`` [n, m], the
    ``statistic`` mapping column means [B, m] to estimates [B], the per-round ``influence``
    terms [n] whose std / √n is the standard error, and the importance ``weights`` (or None)."""

    columns: np.ndarray
    statistic: Callable[[np.ndarray], np.ndarray]
    influence: np.ndarray
    weights: np.ndarray | None = None


def mean_statistic(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def ratio_statistic(means: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(means[:, 1] > 0, means[:, 0] / means[:, 1], np.nan)


def mean_terms(terms: np.ndarray, weights: np.ndarray | None = None) -> Terms:
    """`Terms` of an estimator that is the plain mean of per-round ``terms`` [n]."""
    return Terms(terms[:, None], mean_statistic, terms, weights)


def check_interval_args(num_bootstrap, confidence) -> int:
    num_bootstrap = int(num_bootstrap)
    if num_bootstrap < 0:
        raise ValueError(f"num_bootstrap must be >= 0, got {num_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return num_bootstrap


def _bootstrap(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], num_bootstrap: int,
               confidence: float, seed) -> tuple[float, float]:
    """Percentile bootstrap over rounds.

    Args:
      columns: float64 [n, m], per-round quantities whose means the estimate is a function of.
      statistic: maps column means [B, m] to estimates [B].

    Each replicate resamples the n rounds with replacement. Replicates are drawn in chunks as
    an index matrix [b, n] and reduced with vectorised gathers; the chunk size depends on n
    only, so one seed resamples the same rounds for every estimator (paired intervals).
    Replicates whose statistic is undefined (NaN, e.g. SNIPS with Σw = 0) are dropped.
    """
    n, m = columns.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK // n)
    columns = np.ascontiguousarray(columns.T)  # [m, n]: each gather reads one contiguous row
    replicates = np.empty(num_bootstrap)
    for start in range(0, num_bootstrap, chunk):
        b = min(chunk, num_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        means = np.stack([column[idx].mean(axis=1) for column in columns], axis=1)
        replicates[start:start + b] = statistic(means)
    return _percentiles(replicates, confidence)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    if np.isnan(replicates).all():
        return math.nan, math.nan
    low, high = np.nanquantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _with_logging_baseline(terms: Terms, logged_reward: np.ndarray) -> Terms:
    """Terms of V̂(π) − mean(logged reward), paired round by round."""
    baseline = logged_reward - logged_reward.mean()
    statistic = terms.statistic
    return Terms(np.concatenate([terms.columns, logged_reward[:, None]], axis=1),
                 lambda means: statistic(means[:, :-1]) - means[:, -1], terms.influence - baseline, terms.weights)


def _ess(weights: np.ndarray | None) -> float | None:
    if weights is None:
        return None
    sq = float(np.sum(weights ** 2))
    return float(np.sum(weights)) ** 2 / sq if sq > 0 else 0.0


def finish(name: str, terms: Terms, *, num_bootstrap: int, confidence: float, seed,
           logged_reward: np.ndarray | None = None, replicate: Callable[[np.ndarray], float] | None = None
           ) -> Estimate:
    """Builds the `Estimate` of ``terms``.

    ``logged_reward`` [n]: when given, the estimate is V̂(π) − V(μ), V(μ) estimated by the mean
    logged reward on the same resampled rounds. ``replicate(counts)``: when given, each bootstrap
    replicate is ``replicate(counts)`` for multinomial resampling counts [n] instead of the
    statistic of resampled column means (used to refit reward models per resample); it must
    already subtract the logging baseline if ``logged_reward`` is given.
    """
    num_bootstrap = check_interval_args(num_bootstrap, confidence)
    if logged_reward is not None:
        terms = _with_logging_baseline(terms, logged_reward)
    n = len(terms.columns)
    value = float(terms.statistic(terms.columns.mean(axis=0, keepdims=True))[0])
    std_error = float(np.std(terms.influence, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if not num_bootstrap:
        low, high = math.nan, math.nan
    elif replicate is None:
        low, high = _bootstrap(terms.columns, terms.statistic, num_bootstrap, confidence, seed)
    else:
        rng = np.random.default_rng(seed)
        replicates = np.array([replicate(np.bincount(rng.integers(0, n, n), minlength=n))
                               for _ in range(num_bootstrap)])
        low, high = _percentiles(replicates, confidence)
    return Estimate(value=value, ci_low=low, ci_high=high, std_error=std_error, n=n, estimator=name,
                    effective_sample_size=_ess(terms.weights), confidence=float(confidence),
                    relative_to=None if logged_reward is None else "logging")
