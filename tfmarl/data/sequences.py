"""Per-user, time-ordered item sequences in a flat (CSR) layout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from tfmarl.data.errors import DataError
from tfmarl.data.interactions import Interactions
from tfmarl.data.vocab import Vocabulary


@dataclasses.dataclass
class Sequences:
    """Item index sequences, one per user, oldest first.

    User ``u``'s items are ``items[offsets[u]:offsets[u + 1]]`` (indices of an item `Vocabulary`),
    with matching ``timestamps``. Ties in time keep the order of the source log, so the order is
    deterministic.
    """

    user_ids: np.ndarray  # [U] str
    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [total] int32
    timestamps: np.ndarray  # [total] int64

    def __post_init__(self):
        if len(self.offsets) != len(self.user_ids) + 1 or self.offsets[-1] != len(self.items):
            raise ValueError("offsets do not match user_ids and items")
        if len(self.timestamps) != len(self.items):
            raise ValueError("timestamps and items differ in length")

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_interactions(self) -> int:
        return int(len(self.items))

    def __getitem__(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def rows(self):
        """Iterates over the users' item arrays."""
        for u in range(len(self)):
            yield self[u]

    def select(self, keep: np.ndarray) -> "Sequences":
        """Keeps, for every user, the interactions where the flat boolean mask ``keep`` is True.

        Users left with no interaction are dropped.
        """
        keep = np.asarray(keep, dtype=bool)
        kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        counts = kept_before[self.offsets[1:]] - kept_before[self.offsets[:-1]]
        has_any = counts > 0
        offsets = np.concatenate([[0], np.cumsum(counts[has_any])]).astype(np.int64)
        return Sequences(self.user_ids[has_any], offsets, self.items[keep], self.timestamps[keep])

    @classmethod
    def from_lists(cls, user_ids, item_lists, timestamp_lists=None) -> "Sequences":
        """Builds sequences from Python lists of item indices (oldest first)."""
        lengths = [len(x) for x in item_lists]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate([np.asarray(x, np.int32) for x in item_lists]) if item_lists else np.zeros(0, np.int32)
        if timestamp_lists is None:
            timestamps = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) if lengths else np.zeros(0, np.int64)
        else:
            timestamps = np.concatenate([np.asarray(x, np.int64) for x in timestamp_lists])
        return cls(np.asarray(user_ids, dtype=object), offsets, items.astype(np.int32), timestamps)


def build_sequences(interactions: Interactions, item_vocab: Vocabulary | None = None):
    """Groups an interaction log into per-user time-ordered sequences.

    Args:
      interactions: the log.
      item_vocab: item vocabulary to index with; by default one is built from every item id of
        the log and the item table (so catalog items never seen in the log still get an index).

    Returns:
      ``(sequences, item_vocab)``. Unknown item ids (when a vocabulary is given) map to the OOV
      index 1. Users appear in order of their ids.
    """
    if item_vocab is None:
        item_vocab = Vocabulary(interactions.item_ids())
    log = interactions.log
    user_codes, user_ids = pd.factorize(log["user_id"], sort=False)
    # Order users naturally ("2" before "10") for stable, readable output.
    order_users = np.asarray(sorted(range(len(user_ids)), key=lambda i: _natural_key(user_ids[i])))
    rank = np.empty_like(order_users)
    rank[order_users] = np.arange(len(order_users))
    user_rank = rank[user_codes]
    timestamps = log["timestamp"].to_numpy(np.int64)
    # lexsort: last key is primary; the row number breaks timestamp ties by source order.
    order = np.lexsort((np.arange(len(log)), timestamps, user_rank))
    items = item_vocab.lookup(log["item_id"].to_numpy(dtype=object)[order])
    counts = np.bincount(user_rank, minlength=len(user_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sequences = Sequences(np.asarray(user_ids, dtype=object)[order_users], offsets, items, timestamps[order])
    return sequences, item_vocab


def _natural_key(s):
    s = str(s)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def check_item_indices(items: np.ndarray, num_items: int, where: str = "sequences") -> None:
    """Raises DataError if any item index is outside [0, num_items)."""
    items = np.asarray(items)
    if items.size and (items.min() < 0 or items.max() >= num_items):
        bad = items[(items < 0) | (items >= num_items)][0]
        raise DataError(f"item index {int(bad)} outside the vocabulary of {num_items} indices", path=where)
