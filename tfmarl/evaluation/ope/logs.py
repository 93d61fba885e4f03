"""Single-action logged bandit feedback: the `BanditLog` type, and its crash-safe shard writer and reader.

A log records, for each round i, the arms shown, the arm the behaviour policy μ picked
(``actions[i]``, an index among that round's arms), the probability μ gave it
(``propensities[i]`` = μ(a_i|x_i)) and the observed reward r_i. Logs persist as ``.npz`` files
(`BanditLog.save` / `BanditLog.load`) or as a directory of shards written incrementally by
`BanditLogWriter` and read back by `read_logs`. Slates (several items per round) are `SlateLog`s.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Iterable

import numpy as np

from tfmarl.atomic import atomic_savez
from tfmarl.evaluation.ope._checks import (PROPENSITY_ATOL, as_array, as_int_array, check_distribution,
                                           check_finite, check_rows)

_FORMAT_VERSION = 1
_REQUIRED = ("rewards", "actions", "propensities")
_OPTIONAL = ("behaviour_probs", "arm_ids", "context", "arm_features")
_SHARD_RE = re.compile(r"^shard-(\d+)\.npz$")


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
        self.rewards = as_array(self.rewards, np.float64, 1, "rewards")
        n = len(self.rewards)
        self.actions = as_int_array(self.actions, 1, "actions")
        self.propensities = as_array(self.propensities, np.float64, 1, "propensities")
        check_rows(self.actions, n, "actions")
        check_rows(self.propensities, n, "propensities")
        if self.behaviour_probs is not None:
            self.behaviour_probs = as_array(self.behaviour_probs, np.float64, 2, "behaviour_probs")
        if self.arm_ids is not None:
            self.arm_ids = as_int_array(self.arm_ids, 2, "arm_ids")
        if self.context is not None:
            self.context = as_array(self.context, np.float32, 2, "context")
        if self.arm_features is not None:
            self.arm_features = as_array(self.arm_features, np.float32, 3, "arm_features")
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                check_rows(value, n, name)
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
        check_finite(self.rewards, "rewards")
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
                check_finite(getattr(self, name), name)
        if self.behaviour_probs is not None:
            check_distribution(self.behaviour_probs, "behaviour_probs")
            logged = self.behaviour_probs[np.arange(len(self)), self.actions]
            off = np.abs(logged - self.propensities) > PROPENSITY_ATOL
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
