"""Logged slate feedback: the `SlateLog` type (a single-action log is a slate of one).

Each round i showed a slate s_i = (a_i1, ..., a_iK) of item indices drawn from a behaviour
policy μ and observed a reward per position r_ik (a click, say). The behaviour probabilities the
slate estimators need are kept per position:

* ``position_propensities`` [n, K]: μ_k(a_ik | x_i), the marginal probability that item a_ik
  appears at position k (independent IPS, pseudo-inverse);
* ``cascade_propensities`` [n, K]: μ(a_i1..a_ik | x_i), the probability of the slate's top k
  (reward-interaction IPS, Cascade-DR); its last column is the whole slate's, μ(s_i | x_i)
  (standard slate IPS).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from tfmarl.atomic import atomic_savez
from tfmarl.evaluation.ope._checks import PROPENSITY_ATOL, as_array, as_int_array, check_finite, check_rows
from tfmarl.evaluation.ope.logs import BanditLog

_FORMAT = "tfmarl.SlateLog"
_LISTS = ("round_ids", "users", "sessions")
_ARRAYS = ("slates", "rewards", "position_propensities", "cascade_propensities", "history", "candidates",
           "context", "timestamps")


@dataclasses.dataclass(eq=False)
class SlateLog:
    """Logged slates: one row per round (impression).

    Attributes:
      slates: int64 [n, K], item indices shown, top first (distinct within a row).
      rewards: float64 [n, K], reward observed at each position (finite).
      position_propensities: float64 [n, K] in (0, 1], μ_k(a_ik | x_i).
      cascade_propensities: optional float64 [n, K] in (0, 1], μ(a_i1..a_ik | x_i), non-increasing
        along k and never above the first position's marginal.
      history: optional int64 [n, L], the user's item indices before the impression, right-padded
        with 0 (what sequence policies are scored on).
      candidates: optional int64 [n, N], the items the behaviour policy chose from.
      context: optional float32 [n, d], context features.
      timestamps: optional int64 [n], seconds since the epoch.
      round_ids: optional list of the rounds' ids (strings), for messages and joins.
      users: optional list of the rounds' user ids (strings).
      sessions: optional list of the rounds' session ids (strings; sessions are what simulator
        validation compares lengths of).
      item_vocab: optional list of item ids, ``item_vocab[j]`` the id of index j + 2 (tfmarl's
        vocabulary layout: 0 = padding, 1 = unknown).
      metadata: JSON-serialisable dict, kept by save/load.
    """

    slates: np.ndarray
    rewards: np.ndarray
    position_propensities: np.ndarray
    cascade_propensities: np.ndarray | None = None
    history: np.ndarray | None = None
    candidates: np.ndarray | None = None
    context: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    round_ids: list | None = None
    users: list | None = None
    sessions: list | None = None
    item_vocab: list | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.slates = as_int_array(self.slates, 2, "slates")
        n, k = self.slates.shape
        self.rewards = as_array(self.rewards, np.float64, 2, "rewards")
        self.position_propensities = as_array(self.position_propensities, np.float64, 2, "position_propensities")
        for name in ("rewards", "position_propensities"):
            if getattr(self, name).shape != (n, k):
                raise ValueError(f"{name} must have the slates' shape {(n, k)}, got {getattr(self, name).shape}")
        if self.cascade_propensities is not None:
            self.cascade_propensities = as_array(self.cascade_propensities, np.float64, 2, "cascade_propensities")
            if self.cascade_propensities.shape != (n, k):
                raise ValueError(f"cascade_propensities must have the slates' shape {(n, k)}, "
                                 f"got {self.cascade_propensities.shape}")
        for name, ndim in (("history", 2), ("candidates", 2), ("timestamps", 1)):
            if getattr(self, name) is not None:
                setattr(self, name, as_int_array(getattr(self, name), ndim, name))
                check_rows(getattr(self, name), n, name)
        if self.context is not None:
            self.context = as_array(self.context, np.float32, 2, "context")
            check_rows(self.context, n, "context")
            check_finite(self.context, "context")
        for name in _LISTS:
            if getattr(self, name) is not None:
                setattr(self, name, [str(r) for r in getattr(self, name)])
                if len(getattr(self, name)) != n:
                    raise ValueError(f"{name} has {len(getattr(self, name))} entries but the log has {n} rounds")
        if self.item_vocab is not None:
            self.item_vocab = [str(t) for t in self.item_vocab]
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        self._check_values()

    def _check_values(self) -> None:
        if self.slates.size and self.slates.min() < 0:
            raise ValueError(f"slates must hold item indices >= 0: row {self._row(self.slates < 0)} holds a negative one")
        ordered = np.sort(self.slates, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if repeated.any():
            raise ValueError(f"slates must hold distinct items: row {int(np.argmax(repeated))} repeats one")
        check_finite(self.rewards, "rewards")
        for name in ("position_propensities", "cascade_propensities"):
            value = getattr(self, name)
            if value is None:
                continue
            bad = ~((value > 0) & (value <= 1))
            if bad.any():
                i = self._row(bad)
                raise ValueError(f"{name} must lie in (0, 1]: row {i} holds {value[i].tolist()}")
        cascade = self.cascade_propensities
        if cascade is not None:
            rising = (np.diff(cascade, axis=1) > PROPENSITY_ATOL).any(axis=1)
            above = cascade[:, 0] - self.position_propensities[:, 0] > PROPENSITY_ATOL
            if rising.any():
                raise ValueError(f"cascade_propensities must not increase along the slate: row {self._row(rising)}")
            if above.any():
                raise ValueError(f"cascade_propensities disagree with position_propensities at the top position: "
                                 f"row {self._row(above)}")

    @staticmethod
    def _row(mask: np.ndarray) -> int:
        return int(np.argmax(mask.reshape(len(mask), -1).any(axis=1)))

    def __len__(self) -> int:
        return len(self.slates)

    def __repr__(self) -> str:
        optional = [name for name in _ARRAYS[3:] if getattr(self, name) is not None]
        return f"SlateLog(n={len(self)}, slate_size={self.slate_size}, optional={optional})"

    @property
    def slate_size(self) -> int:
        return int(self.slates.shape[1])

    @property
    def slate_propensities(self) -> np.ndarray | None:
        """μ(s_i | x_i), float64 [n] (None without ``cascade_propensities``)."""
        return None if self.cascade_propensities is None else self.cascade_propensities[:, -1]

    @property
    def slate_rewards(self) -> np.ndarray:
        """Σ_k r_ik, float64 [n]: the slate-level reward the estimators estimate the mean of."""
        return self.rewards.sum(axis=1)

    def subset(self, rows) -> "SlateLog":
        """The rounds ``rows`` (indices or a boolean mask), in that order."""
        rows = np.arange(len(self))[np.asarray(rows)]
        fields = {name: getattr(self, name)[rows] for name in _ARRAYS if getattr(self, name) is not None}
        lists = {name: [getattr(self, name)[i] for i in rows] for name in _LISTS if getattr(self, name) is not None}
        return SlateLog(**fields, **lists, item_vocab=self.item_vocab, metadata=dict(self.metadata))

    def to_bandit_log(self) -> BanditLog:
        """The log of a slate of one as a `BanditLog`: arms are the ``candidates`` (the action is
        the shown item's position among them), or without candidates the item indices themselves."""
        if self.slate_size != 1:
            raise ValueError(f"only slates of one are single-action logs; this log has slates of {self.slate_size}")
        items = self.slates[:, 0]
        if self.candidates is None:
            return BanditLog(self.rewards[:, 0], items, self.position_propensities[:, 0], metadata=dict(self.metadata))
        found = self.candidates == items[:, None]
        missing = ~found.any(axis=1)
        if missing.any():
            raise ValueError(f"the shown item is not among the candidates in row {int(np.argmax(missing))}")
        return BanditLog(self.rewards[:, 0], found.argmax(axis=1), self.position_propensities[:, 0],
                         arm_ids=self.candidates, context=self.context, metadata=dict(self.metadata))

    def save(self, path) -> pathlib.Path:
        """Writes the log to one ``.npz`` file atomically (loads without pickle)."""
        path = pathlib.Path(path)
        header = {"format": _FORMAT, "item_vocab": self.item_vocab, "metadata": self.metadata,
                  **{name: getattr(self, name) for name in _LISTS}}
        try:
            header = json.dumps(header)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be JSON-serialisable: {err}") from None
        arrays = {name: getattr(self, name) for name in _ARRAYS if getattr(self, name) is not None}
        atomic_savez(path, dict(arrays, header=np.array(header)))
        return path

    @classmethod
    def load(cls, path) -> "SlateLog":
        """Reads a log written by `save` (validated like a new one)."""
        with np.load(pathlib.Path(path), allow_pickle=False) as data:
            if "header" not in data.files or json.loads(str(data["header"])).get("format") != _FORMAT:
                raise ValueError(f"{path}: not a saved SlateLog")
            header = json.loads(str(data["header"]))
            fields = {name: data[name] for name in _ARRAYS if name in data.files}
        return cls(**fields, **{name: header.get(name) for name in _LISTS}, item_vocab=header["item_vocab"],
                   metadata=header["metadata"])
