"""Off-policy evaluation (OPE) of a target policy from logged bandit feedback.

A *log* records, for each round i, the arms shown, the arm the behaviour policy μ picked
(``actions[i]``, an index among that round's arms), the probability μ gave it
(``propensities[i]`` = μ(a_i|x_i)) and the observed reward r_i. From it the value of another
(target) policy π, V(π) = E_x[Σ_a π(a|x) q(x, a)], can be estimated without deploying π:

* IPS   V̂ = mean_i(w_i r_i),                  w_i = π(a_i|x_i) / μ(a_i|x_i)
* SNIPS V̂ = Σ_i w_i r_i / Σ_i w_i
* DM    V̂ = mean_i Σ_a π(a|x_i) r̂(x_i, a)
* DR    V̂ = DM + mean_i w_i (r_i − r̂(x_i, a_i))

IPS and DR are unbiased when μ > 0 wherever π > 0 (DR also needs nothing of r̂ for that); SNIPS
is consistent with less variance; DM is only as good as the reward model r̂.

Every estimator returns an `Estimate` with a percentile-bootstrap confidence interval over
rounds. All of it is plain numpy (no TensorFlow), vectorised, and deterministic given ``seed``.
Logs persist as ``.npz`` files (`BanditLog.save` / `BanditLog.load`) or as a directory of
shards written incrementally by `BanditLogWriter` and read back by `read_logs`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from tfmarl.atomic import atomic_savez

__all__ = [
    "BanditLog", "BanditLogWriter", "read_logs", "Estimate", "ips", "snips", "direct_method",
    "doubly_robust", "evaluate_policy_offline", "fit_reward_model",
]

_FORMAT_VERSION = 1
_REQUIRED = ("rewards", "actions", "propensities")
_OPTIONAL = ("behaviour_probs", "arm_ids", "context", "arm_features")
# Probability rows may come from float32 softmaxes over many arms: allow that much rounding.
_SUM_ATOL = 1e-4
_PROPENSITY_ATOL = 1e-6
# Bootstrap index matrices are drawn in chunks of at most this many entries (~32 MB of int64).
_BOOTSTRAP_CHUNK = 1 << 22
_SHARD_RE = re.compile(r"^shard-(\d+)\.npz$")


# --------------------------------------------------------------------------------------------
# The log


@dataclasses.dataclass(eq=False)  # field-wise == on arrays is ambiguous; compare arrays() instead
class BanditLog:
    """Logged bandit feedback: one row per round.

    Attributes:
      rewards: float64 [n], observed reward of the logged action (finite).
      actions: int64 [n], index of the logged arm among that round's A arms.
      propensities: float64 [n], μ(a_i|x_i), the behaviour probability of the logged action,
        in (0, 1].
      behaviour_probs: optional float64 [n, A], the full behaviour distribution (rows sum to 1;
        must agree with ``propensities``).
      arm_ids: optional int64 [n, A], item indices of the arms shown in each round.
      context: optional float32 [n, d], context features.
      arm_features: optional float32 [n, A, k], features of each shown arm.
      metadata: JSON-serialisable dict (policy name, date, ...), kept by save/load.

    Inputs are converted to these dtypes; inconsistent shapes or values raise ``ValueError``
    naming the field.
    """

    rewards: np.ndarray
    actions: np.ndarray
    propensities: np.ndarray
    behaviour_probs: np.ndarray | None = None
    arm_ids: np.ndarray | None = None
    context: np.ndarray | None = None
    arm_features: np.ndarray | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.rewards = _array(self.rewards, np.float64, 1, "rewards")
        n = len(self.rewards)
        self.actions = _int_array(self.actions, 1, "actions")
        self.propensities = _array(self.propensities, np.float64, 1, "propensities")
        _check_rows(self.actions, n, "actions")
        _check_rows(self.propensities, n, "propensities")
        if self.behaviour_probs is not None:
            self.behaviour_probs = _array(self.behaviour_probs, np.float64, 2, "behaviour_probs")
        if self.arm_ids is not None:
            self.arm_ids = _int_array(self.arm_ids, 2, "arm_ids")
        if self.context is not None:
            self.context = _array(self.context, np.float32, 2, "context")
        if self.arm_features is not None:
            self.arm_features = _array(self.arm_features, np.float32, 3, "arm_features")
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                _check_rows(value, n, name)
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        self._check_arm_counts()
        self._check_values()

    def _check_arm_counts(self) -> None:
        counts = {name: getattr(self, name).shape[1] for name in ("behaviour_probs", "arm_ids", "arm_features")
                  if getattr(self, name) is not None}
        if len(set(counts.values())) > 1:
            raise ValueError(f"arm counts disagree across fields: {counts}")

    def _check_values(self) -> None:
        _check_finite(self.rewards, "rewards")
        bad = ~((self.propensities > 0) & (self.propensities <= 1))  # also catches NaN
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"propensities must lie in (0, 1]: row {i} holds {self.propensities[i]!r} "
                             f"({int(bad.sum())} bad rows)")
        num_arms = self.num_arms  # None: no per-arm field, so only negative actions are wrong
        bad = (self.actions < 0) if num_arms is None else ((self.actions < 0) | (self.actions >= num_arms))
        if bad.any():
            i = int(np.argmax(bad))
            limit = "[0, inf)" if num_arms is None else f"[0, {num_arms})"
            raise ValueError(f"actions must lie in {limit}: row {i} holds {int(self.actions[i])}")
        for name in ("context", "arm_features"):
            if getattr(self, name) is not None:
                _check_finite(getattr(self, name), name)
        if self.behaviour_probs is not None:
            _check_distribution(self.behaviour_probs, "behaviour_probs")
            logged = self.behaviour_probs[np.arange(len(self)), self.actions]
            off = np.abs(logged - self.propensities) > _PROPENSITY_ATOL
            if off.any():
                i = int(np.argmax(off))
                raise ValueError(f"propensities disagree with behaviour_probs at the logged action: row {i} "
                                 f"has propensity {self.propensities[i]!r} but behaviour_probs {logged[i]!r}")

    def __len__(self) -> int:
        return len(self.rewards)

    def __repr__(self) -> str:
        optional = [name for name in _OPTIONAL if getattr(self, name) is not None]
        return f"BanditLog(n={len(self)}, num_arms={self.num_arms}, optional={optional}, metadata={self.metadata})"

    @property
    def num_arms(self) -> int | None:
        """A, the number of arms per round, when a per-arm field says it (else None)."""
        for name in ("behaviour_probs", "arm_ids", "arm_features"):
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[1])
        return None

    def arrays(self) -> dict[str, np.ndarray]:
        """The present array fields by name (optional fields that are None are left out)."""
        names = _REQUIRED + tuple(name for name in _OPTIONAL if getattr(self, name) is not None)
        return {name: getattr(self, name) for name in names}

    def save(self, path) -> pathlib.Path:
        """Writes the log to ``path`` (an ``.npz`` file, name used as given) atomically: the data
        goes to a temporary file in the same directory, which then replaces ``path``, so a reader
        or a crash never leaves half a file there. Returns the path."""
        path = pathlib.Path(path)
        try:
            meta = json.dumps(self.metadata, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be JSON-serialisable: {err}") from None
        arrays = dict(self.arrays(), metadata_json=np.array(meta), format_version=np.array(_FORMAT_VERSION))
        atomic_savez(path, arrays)
        return path

    @classmethod
    def load(cls, path) -> "BanditLog":
        """Reads a log written by `save` (validated like a new one)."""
        with np.load(pathlib.Path(path), allow_pickle=False) as data:
            missing = [name for name in _REQUIRED if name not in data.files]
            if missing:
                raise ValueError(f"{path}: not a bandit log, missing field(s) {missing}")
            version = int(data["format_version"]) if "format_version" in data.files else _FORMAT_VERSION
            if version > _FORMAT_VERSION:
                raise ValueError(f"{path}: log format version {version} is newer than this reader's "
                                 f"({_FORMAT_VERSION})")
            fields = {name: data[name] for name in _REQUIRED + _OPTIONAL if name in data.files}
            meta = json.loads(str(data["metadata_json"])) if "metadata_json" in data.files else {}
        return cls(**fields, metadata=meta)

    @classmethod
    def concat(cls, logs: Iterable["BanditLog"]) -> "BanditLog":
        """Stacks logs row-wise, in order. All must carry the same optional fields with the same
        trailing shapes (arms, feature sizes). Metadata dicts are merged, later logs winning."""
        logs = list(logs)
        if not logs:
            raise ValueError("concat needs at least one log")
        fields = {}
        for name in _REQUIRED + _OPTIONAL:
            present = [getattr(log, name) is not None for log in logs]
            if not any(present):
                continue
            if not all(present):
                raise ValueError(f"cannot concat: {name} is present in some logs but not in log "
                                 f"{present.index(False)}")
            tails = {getattr(log, name).shape[1:] for log in logs}
            if len(tails) > 1:
                raise ValueError(f"cannot concat: {name} has different trailing shapes {sorted(tails)}")
            fields[name] = np.concatenate([getattr(log, name) for log in logs])
        metadata = {}
        for log in logs:
            metadata.update(log.metadata)
        return cls(**fields, metadata=metadata)


def _array(value, dtype, ndim: int, name: str) -> np.ndarray:
    try:
        value = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be convertible to {np.dtype(dtype).name}: {err}") from None
    if value.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {value.shape}")
    return value


def _int_array(value, ndim: int, name: str) -> np.ndarray:
    raw = np.asarray(value)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        # Accept integral floats (e.g. read from a CSV), refuse 1.5 or NaN.
        if not np.issubdtype(raw.dtype, np.number) or not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise ValueError(f"{name} must hold integers, got dtype {raw.dtype}")
    return _array(raw, np.int64, ndim, name)


def _check_rows(value: np.ndarray, n: int, name: str) -> None:
    if value.shape[0] != n:
        raise ValueError(f"{name} has {value.shape[0]} rows but rewards has {n} (shape {value.shape})")


def _check_finite(value: np.ndarray, name: str) -> None:
    finite = np.isfinite(value)
    if not finite.all():
        bad = ~finite.reshape(len(value), -1).all(axis=1)
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite: row {i} holds NaN or inf ({int(bad.sum())} bad rows)")


def _check_distribution(probs: np.ndarray, name: str) -> None:
    """Rows of ``probs`` [n, A] must be probability distributions."""
    bad = ~np.all((probs >= 0) & (probs <= 1), axis=1)  # also catches NaN
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must lie in [0, 1]: row {i} holds {probs[i].tolist()}")
    sums = probs.sum(axis=1)
    bad = np.abs(sums - 1) > _SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} rows must sum to 1: row {i} sums to {sums[i]!r}")


# --------------------------------------------------------------------------------------------
# Incremental, crash-safe logging


class BanditLogWriter:
    """Appends logged rounds to a directory of ``.npz`` shards.

    Rounds added with `add` are buffered; once ``flush_every`` rounds are buffered they are
    written as the next shard (``path/shard-00000.npz``, ``shard-00001.npz``, ...), each
    atomically, so every flushed shard survives if the process dies. Rounds still buffered at a
    crash are lost: call `flush` at points that must be durable, and `close` (or use ``with``)
    at the end. Opening a directory that already holds shards appends after them.

    Every batch must carry the same optional fields with the same trailing shapes as the first.
    ``metadata`` (JSON-serialisable) is stored in every shard.
    """

    def __init__(self, path, flush_every: int = 10_000, metadata: dict | None = None):
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.flush_every = int(flush_every)
        self.metadata = dict(metadata or {})
        existing = _shard_paths(self.path)
        self._next_shard = _shard_index(existing[-1]) + 1 if existing else 0
        self._buffer: list[BanditLog] = []
        self._buffered = 0
        self._schema = None
        self.rows_written = 0
        self.closed = False

    def add(self, rewards, actions, propensities, arm_ids=None, behaviour_probs=None, context=None,
            arm_features=None) -> None:
        """Buffers a batch of rounds (arrays with a leading batch axis; see `BanditLog` for
        shapes). The batch is validated now, so a bad batch fails here, not at flush time."""
        if self.closed:
            raise ValueError("BanditLogWriter is closed")
        batch = BanditLog(rewards, actions, propensities, behaviour_probs=behaviour_probs, arm_ids=arm_ids,
                          context=context, arm_features=arm_features, metadata=self.metadata)
        if not len(batch):
            return
        schema = {name: value.shape[1:] for name, value in batch.arrays().items()}
        if self._schema is None:
            self._schema = schema
        elif schema != self._schema:
            raise ValueError(f"batch fields/shapes {schema} differ from the first batch's {self._schema}")
        self._buffer.append(batch)
        self._buffered += len(batch)
        if self._buffered >= self.flush_every:
            self.flush()

    def flush(self) -> pathlib.Path | None:
        """Writes the buffered rounds as one new shard; returns its path (None if nothing to write)."""
        if not self._buffer:
            return None
        shard = self.path / f"shard-{self._next_shard:05d}.npz"
        BanditLog.concat(self._buffer).save(shard)
        self._next_shard += 1
        self.rows_written += self._buffered
        self._buffer, self._buffered = [], 0
        return shard

    def close(self) -> None:
        """Flushes what is buffered; further `add` calls fail. Idempotent."""
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> "BanditLogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # on an exception too: keep what was logged before it


def read_logs(path) -> BanditLog:
    """Reads a log: a `BanditLogWriter` directory (shards concatenated in shard order; leftover
    temporary files from an interrupted write are ignored) or a single ``.npz`` file."""
    path = pathlib.Path(path)
    if path.is_file():
        return BanditLog.load(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no bandit log at {path}")
    shards = _shard_paths(path)
    if not shards:
        raise ValueError(f"{path} holds no shard-NNNNN.npz files")
    return BanditLog.concat(BanditLog.load(shard) for shard in shards)


def _shard_index(path: pathlib.Path) -> int:
    return int(_SHARD_RE.match(path.name).group(1))


def _shard_paths(directory: pathlib.Path) -> list[pathlib.Path]:
    """Shards in numeric order (sorting names would misplace shard-100000 after shard-99999)."""
    return sorted((p for p in directory.iterdir() if _SHARD_RE.match(p.name)), key=_shard_index)


# --------------------------------------------------------------------------------------------
# Estimates and the bootstrap


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An off-policy value estimate.

    Attributes:
      value: the point estimate V̂(π).
      ci_low, ci_high: percentile-bootstrap confidence interval (NaN when ``num_bootstrap=0``).
      std_error: analytic standard error of ``value``: std of the per-round terms / √n, and for
        SNIPS the delta-method (linearised ratio) version. Independent of the bootstrap.
      n: rounds used.
      estimator: "ips", "snips", "dm" or "dr".
      effective_sample_size: (Σw)² / Σw² of the (clipped) importance weights, for the weighted
        estimators (None for DM); much smaller than ``n`` means a few rounds dominate.
      confidence: the interval's nominal coverage.
    """

    value: float
    ci_low: float
    ci_high: float
    std_error: float
    n: int
    estimator: str
    effective_sample_size: float | None = None
    confidence: float = 0.95

    def __str__(self) -> str:
        ess = "" if self.effective_sample_size is None else f", ess={self.effective_sample_size:.1f}"
        return (f"{self.estimator}: {self.value:.6g} [{self.ci_low:.6g}, {self.ci_high:.6g}] "
                f"(se={self.std_error:.3g}, n={self.n}{ess})")


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
    alpha = (1.0 - confidence) / 2.0
    if np.isnan(replicates).all():
        return math.nan, math.nan
    low, high = np.nanquantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _estimate(name: str, columns: np.ndarray, statistic, influence: np.ndarray, *, num_bootstrap: int,
              confidence: float, seed, weights: np.ndarray | None = None) -> Estimate:
    """Builds an `Estimate` from per-round ``columns`` [n, m], the ``statistic`` of their means,
    and the per-round ``influence`` terms [n] whose std / √n is the standard error."""
    num_bootstrap = int(num_bootstrap)
    if num_bootstrap < 0:
        raise ValueError(f"num_bootstrap must be >= 0, got {num_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = len(columns)
    value = float(statistic(columns.mean(axis=0, keepdims=True))[0])
    std_error = float(np.std(influence, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if num_bootstrap:
        low, high = _bootstrap(columns, statistic, num_bootstrap, confidence, seed)
    else:
        low, high = math.nan, math.nan
    ess = None
    if weights is not None:
        sq = float(np.sum(weights ** 2))
        ess = float(np.sum(weights)) ** 2 / sq if sq > 0 else 0.0
    return Estimate(value=value, ci_low=low, ci_high=high, std_error=std_error, n=n, estimator=name,
                    effective_sample_size=ess, confidence=float(confidence))


def _mean_statistic(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def _ratio_statistic(means: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(means[:, 1] > 0, means[:, 0] / means[:, 1], np.nan)


# --------------------------------------------------------------------------------------------
# Inputs: target probabilities, weights, reward predictions


def _require_rounds(log: BanditLog) -> None:
    if not isinstance(log, BanditLog):
        raise TypeError(f"log must be a BanditLog, got {type(log).__name__}")
    if len(log) == 0:
        raise ValueError("the log is empty: nothing to estimate from")


def _target_all(log: BanditLog, target_probs, name: str = "target_probs_all") -> np.ndarray:
    """Validates a full target distribution: float64 [n, A], rows summing to 1."""
    probs = _array(target_probs, np.float64, 2, name)
    if probs.shape[0] != len(log):
        raise ValueError(f"{name} has {probs.shape[0]} rows but the log has {len(log)}")
    if log.num_arms is not None and probs.shape[1] != log.num_arms:
        raise ValueError(f"{name} has {probs.shape[1]} arms per row but the log has {log.num_arms}")
    if log.actions.max() >= probs.shape[1]:
        raise ValueError(f"{name} has {probs.shape[1]} arms per row but the log holds action "
                         f"{int(log.actions.max())}")
    _check_distribution(probs, name)
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
    predictions = _array(predictions, np.float64, 2, "reward_model")
    if predictions.shape != (len(log), num_arms):
        raise ValueError(f"reward_model predictions must have shape {(len(log), num_arms)}, "
                         f"got {predictions.shape}")
    _check_finite(predictions, "reward_model")
    return predictions


# --------------------------------------------------------------------------------------------
# Estimators


def ips(log: BanditLog, target_probs, *, clip: float | None = None, num_bootstrap: int = 1000,
        confidence: float = 0.95, seed=0) -> Estimate:
    """Inverse propensity scoring: V̂_IPS = (1/n) Σ_i w_i r_i, w_i = π(a_i|x_i) / μ(a_i|x_i).

    Unbiased when μ(a|x) > 0 wherever π(a|x) > 0; its variance grows with the weights.

    Args:
      log: the logged rounds (μ(a_i|x_i) is ``log.propensities``).
      target_probs: float [n], π of the logged action, or [n, A], the full target distribution
        (the logged action's column is taken).
      clip: optional maximum importance weight (w ← min(w, clip)). Clipping trades variance for
        bias: with non-negative rewards, clipped IPS underestimates.
      num_bootstrap, confidence, seed: percentile-bootstrap interval over rounds
        (``num_bootstrap=0`` skips it; the interval is then NaN).
    """
    _require_rounds(log)
    weights = _weights(log, _target_logged(log, target_probs), clip)
    terms = weights * log.rewards
    return _estimate("ips", terms[:, None], _mean_statistic, terms, num_bootstrap=num_bootstrap,
                     confidence=confidence, seed=seed, weights=weights)


def snips(log: BanditLog, target_probs, *, clip: float | None = None, num_bootstrap: int = 1000,
          confidence: float = 0.95, seed=0) -> Estimate:
    """Self-normalised IPS: V̂_SNIPS = Σ_i w_i r_i / Σ_i w_i.

    Biased in finite samples but consistent, and usually far less variable than IPS; it stays
    within the range of the observed rewards. Each bootstrap replicate recomputes the ratio.
    The standard error is the delta-method one: std(w_i (r_i − V̂)) / (mean(w) √n).
    Arguments as for `ips` (``clip`` is applied before normalising). Raises ``ValueError`` if
    the target gives probability 0 to every logged action (Σw = 0).
    """
    _require_rounds(log)
    weights = _weights(log, _target_logged(log, target_probs), clip)
    total = weights.sum()
    if not total > 0:
        raise ValueError("snips is undefined: the target policy gives probability 0 to every logged action")
    value = float(np.sum(weights * log.rewards) / total)
    influence = weights * (log.rewards - value) / weights.mean()
    columns = np.stack([weights * log.rewards, weights], axis=1)
    return _estimate("snips", columns, _ratio_statistic, influence, num_bootstrap=num_bootstrap,
                     confidence=confidence, seed=seed, weights=weights)


def direct_method(log: BanditLog, target_probs_all, reward_model, *, num_bootstrap: int = 1000,
                  confidence: float = 0.95, seed=0) -> Estimate:
    """Direct method: V̂_DM = (1/n) Σ_i Σ_a π(a|x_i) r̂(x_i, a).

    Uses no propensities and has low variance, but is biased whenever r̂ is; its interval covers
    only the sampling noise of the contexts, never the model's error.

    Args:
      target_probs_all: float [n, A], the full target distribution of each round.
      reward_model: float [n, A] predicted rewards r̂(x_i, a), or a callable (log) -> [n, A]
        (e.g. `fit_reward_model`).
    """
    _require_rounds(log)
    probs = _target_all(log, target_probs_all)
    predictions = _reward_predictions(log, reward_model, probs.shape[1])
    terms = np.sum(probs * predictions, axis=1)
    return _estimate("dm", terms[:, None], _mean_statistic, terms, num_bootstrap=num_bootstrap,
                     confidence=confidence, seed=seed)


def doubly_robust(log: BanditLog, target_probs_all, reward_model, *, clip: float | None = None,
                  num_bootstrap: int = 1000, confidence: float = 0.95, seed=0) -> Estimate:
    """Doubly robust: V̂_DR = V̂_DM + (1/n) Σ_i w_i (r_i − r̂(x_i, a_i)).

    Unbiased if either the propensities or the reward model are right (with correct
    propensities, for any r̂); the better r̂, the smaller the variance (with r̂ = E[r|x, a] only
    the reward noise and the context sampling remain). ``clip`` caps the weights of the
    correction term, which keeps DR unbiased only where r̂ is exact. Other arguments as for
    `direct_method` and `ips`.
    """
    _require_rounds(log)
    probs = _target_all(log, target_probs_all)
    predictions = _reward_predictions(log, reward_model, probs.shape[1])
    rows = np.arange(len(log))
    weights = _weights(log, probs[rows, log.actions], clip)
    terms = np.sum(probs * predictions, axis=1) + weights * (log.rewards - predictions[rows, log.actions])
    return _estimate("dr", terms[:, None], _mean_statistic, terms, num_bootstrap=num_bootstrap,
                     confidence=confidence, seed=seed, weights=weights)


_ESTIMATORS = ("ips", "snips", "dm", "dr")


def evaluate_policy_offline(log: BanditLog, target_probs_all, reward_model=None,
                            estimators: Sequence[str] = _ESTIMATORS, **kw) -> dict[str, Estimate]:
    """Runs several estimators on one log; returns ``{name: Estimate}`` in the order asked.

    Args:
      target_probs_all: float [n, A], the target distribution of each round.
      reward_model: [n, A] predictions or a callable (log) -> [n, A], for "dm" and "dr". When
        None and one of those is asked for, the ridge baseline `fit_reward_model` is fitted on
        this same log (which needs ``log.arm_features``; for a fair DR prefer predictions from a
        model fitted on other data).
      estimators: any of "ips", "snips", "dm", "dr".
      **kw: ``clip`` (ignored by "dm"), ``num_bootstrap``, ``confidence``, ``seed``. One seed
        resamples the same rounds for every estimator, so their intervals are comparable.
    """
    _require_rounds(log)
    unknown = [name for name in estimators if name not in _ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(_ESTIMATORS)}")
    allowed = {"clip", "num_bootstrap", "confidence", "seed"}
    if set(kw) - allowed:
        raise TypeError(f"unexpected keyword argument(s) {sorted(set(kw) - allowed)}; allowed: {sorted(allowed)}")
    predictions = None
    if {"dm", "dr"} & set(estimators):
        if reward_model is None:
            if log.arm_features is None:
                raise ValueError("dm/dr need a reward_model, and the log has no arm_features to fit the "
                                 "baseline on: pass reward_model or estimators=('ips', 'snips')")
            reward_model = fit_reward_model(log)
        num_arms = _target_all(log, target_probs_all).shape[1]
        predictions = _reward_predictions(log, reward_model, num_arms)  # call a callable model once
    no_clip = {k: v for k, v in kw.items() if k != "clip"}
    results = {}
    for name in estimators:
        if name == "ips":
            results[name] = ips(log, target_probs_all, **kw)
        elif name == "snips":
            results[name] = snips(log, target_probs_all, **kw)
        elif name == "dm":
            results[name] = direct_method(log, target_probs_all, predictions, **no_clip)
        else:
            results[name] = doubly_robust(log, target_probs_all, predictions, **kw)
    return results


# --------------------------------------------------------------------------------------------
# Baseline reward model


def _reward_features(log: BanditLog) -> np.ndarray:
    """Per-(round, arm) regression features, float64 [n, A, p].

    Arm features alone, or with a context [n, d]: when d equals the arm-feature size k,
    [arm, context ⊙ arm] (a bilinear-diagonal cross, so context–arm affinity is learnable);
    otherwise [arm, context] (context broadcast to every arm).
    """
    if log.arm_features is None:
        raise ValueError("fit_reward_model needs log.arm_features (pass your own reward predictions otherwise)")
    arm = log.arm_features.astype(np.float64)
    if log.context is None:
        return arm
    context = np.broadcast_to(log.context.astype(np.float64)[:, None, :], arm.shape[:2] + log.context.shape[1:])
    if context.shape[-1] == arm.shape[-1]:
        return np.concatenate([arm, context * arm], axis=-1)
    return np.concatenate([arm, context], axis=-1)


def fit_reward_model(log: BanditLog, *, l2: float = 1.0) -> np.ndarray:
    """A baseline reward model: ridge regression of the logged rewards on per-arm features.

    Fits r ≈ b + φ(x_i, a_i)·β on the logged (round, action) pairs by minimising
    Σ_i (r_i − b − φ_i·β)² + l2‖β‖² (the intercept b is not penalised), with φ from
    ``arm_features`` and, when present, ``context`` (see below). It is a plain, linear baseline
    for `direct_method` / `doubly_robust`; any better model's [n, A] predictions can be passed
    to them instead. Fitting and evaluating on the same log makes DM optimistic about the model;
    cross-fitting (fit on other rounds) is the safer use.

    Features: arm features alone; with a context of the same size, [arm, context ⊙ arm];
    with a context of another size, [arm, context].

    Returns:
      float64 [n, A], predicted reward r̂(x_i, a) of every arm of every round.
    """
    _require_rounds(log)
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    features = _reward_features(log)
    logged = features[np.arange(len(log)), log.actions]  # [n, p]
    # Centring removes the intercept from the penalised problem.
    mean_x, mean_y = logged.mean(axis=0), log.rewards.mean()
    x = logged - mean_x
    gram = x.T @ x + l2 * np.eye(x.shape[1])
    # lstsq rather than solve: with l2 = 0 and collinear features the Gram matrix is singular.
    beta = np.linalg.lstsq(gram, x.T @ (log.rewards - mean_y), rcond=None)[0]
    return (features - mean_x) @ beta + mean_y
