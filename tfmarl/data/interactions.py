"""`Interactions`: the in-memory form every loader returns and every later stage reads."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tfmarl.data.errors import DataError

if TYPE_CHECKING:
    from tfmarl.data.knowledge import KnowledgeGraph

LOG_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_LOG_COLUMNS = ("rating", "event")
ITEM_COLUMNS = ("title", "categories", "text")


@dataclasses.dataclass
class Interactions:
    """An interaction log and, optionally, a table describing the items.

    ``log`` has one row per interaction, in the order read from the source, with columns
      ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, seconds since the epoch),
      and optionally ``rating`` (float64) and ``event`` (str).
    ``items`` (or None) is indexed by ``item_id`` (str) with columns
      ``title`` (str, may be ""), ``categories`` (tuple of str), ``text`` (str, may be "").
    ``metadata`` holds anything else a source knows (e.g. a synthetic generator's ground truth).
    ``knowledge`` (or None) is an item knowledge graph (`tfmarl.data.knowledge.KnowledgeGraph`):
      (item_id, relation, entity) string triples such as ("1", "genre", "Comedy"), e.g. from
      `load_movielens` (genres, decades, tags) or ``generate_synthetic(knowledge_graph=True)``.
      Its items need not all appear in the log or the item table.
    """

    log: pd.DataFrame
    items: pd.DataFrame | None = None
    name: str = "interactions"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    knowledge: "KnowledgeGraph | None" = None

    def __post_init__(self):
        validate_log(self.log, where=self.name)
        if self.items is not None:
            validate_items(self.items, where=self.name)
        if self.knowledge is not None:
            from tfmarl.data.knowledge import KnowledgeGraph  # lazily: no import cycle with knowledge.py

            if not isinstance(self.knowledge, KnowledgeGraph):
                raise DataError(f"knowledge must be a KnowledgeGraph or None, got {type(self.knowledge).__name__}",
                                path=self.name)

    # --- summary -------------------------------------------------------------------------
    @property
    def num_interactions(self) -> int:
        return len(self.log)

    @property
    def num_users(self) -> int:
        return int(self.log["user_id"].nunique())

    @property
    def num_items(self) -> int:
        return int(self.log["item_id"].nunique())

    def item_ids(self) -> list[str]:
        """All item ids: those of the item table (if any) and those in the log, sorted."""
        ids = set(self.log["item_id"].unique())
        if self.items is not None:
            ids.update(self.items.index)
        return sorted(ids, key=_natural_key)

    def categories(self) -> list[str]:
        """All category names in the item table, sorted."""
        if self.items is None:
            return []
        return sorted({c for cats in self.items["categories"] for c in cats})

    def __repr__(self):
        return (
            f"Interactions(name={self.name!r}, interactions={self.num_interactions}, "
            f"users={self.num_users}, items={self.num_items}, "
            f"item_table={'yes' if self.items is not None else 'no'}"
            + (f", knowledge={len(self.knowledge)} triples" if self.knowledge is not None else "") + ")"
        )


def _natural_key(s: str):
    # Numeric ids sort numerically ("2" < "10"), others lexically after them.
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def validate_log(log: pd.DataFrame, where: str = "log") -> None:
    """Raises DataError unless ``log`` has the columns and dtypes `Interactions` promises."""
    if not isinstance(log, pd.DataFrame):
        raise DataError(f"log must be a pandas DataFrame, got {type(log).__name__}", path=where)
    for column in LOG_COLUMNS:
        if column not in log.columns:
            raise DataError("missing column", path=where, column=column)
    if len(log) == 0:
        raise DataError("no interactions", path=where)
    for column in ("user_id", "item_id"):
        values = log[column]
        if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
            raise DataError(f"ids must be strings, got dtype {values.dtype}", path=where, column=column)
        empty = values.isna() | (values.astype(str) == "")
        if empty.any():
            raise DataError(
                f"empty id in row {int(np.flatnonzero(empty.to_numpy())[0])}", path=where, column=column
            )
    if not pd.api.types.is_integer_dtype(log["timestamp"]):
        raise DataError(f"timestamps must be int64 seconds, got {log['timestamp'].dtype}", path=where,
                        column="timestamp")
    if "rating" in log.columns:
        ratings = log["rating"].to_numpy(dtype=np.float64)
        if not np.isfinite(ratings).all():
            raise DataError(
                f"non-finite rating in row {int(np.flatnonzero(~np.isfinite(ratings))[0])}",
                path=where, column="rating")


def validate_items(items: pd.DataFrame, where: str = "items") -> None:
    """Raises DataError unless ``items`` is an item table as `Interactions` promises."""
    if not isinstance(items, pd.DataFrame):
        raise DataError(f"items must be a pandas DataFrame, got {type(items).__name__}", path=where)
    for column in ITEM_COLUMNS:
        if column not in items.columns:
            raise DataError("missing item column", path=where, column=column)
    if items.index.has_duplicates:
        dup = items.index[items.index.duplicated()][0]
        raise DataError(f"item id {dup!r} appears more than once in the item table", path=where,
                        column="item_id")
