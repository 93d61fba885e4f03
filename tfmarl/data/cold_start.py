"""Cold-start protocols: held-out (cold) items and held-out (cold) users.

Cold items never occur in training or in the warm validation/test sets; the cold test asks a
model to rank them for users whose (warm) history precedes their first cold interaction.
Cold users are held out of training entirely; each is evaluated from prefixes of several
history lengths (`HISTORY_BUCKETS`), so the ranking can be reported against how much a new user
has done. Does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmarl.data.sequences import Sequences
from tfmarl.data.splits import EvalSet, leave_one_out
from tfmarl.data.vocab import NUM_RESERVED

# Inclusive ranges of history length; None is no upper bound.
HISTORY_BUCKETS = ((1, 1), (2, 5), (6, 20), (21, None))


def bucket_name(low, high) -> str:
    """``(1, 1) -> "1"``, ``(2, 5) -> "2-5"``, ``(21, None) -> ">20"``."""
    low = int(low)
    if high is None:
        return f">{low - 1}"
    high = int(high)
    return str(low) if low == high else f"{low}-{high}"


def check_buckets(buckets) -> tuple:
    """The buckets as a tuple of ``(low, high)`` pairs; ValueError unless each is a valid
    inclusive range of history lengths (``1 <= low <= high``, ``high`` may be None)."""
    out = []
    for bucket in buckets:
        try:
            low, high = bucket
        except (TypeError, ValueError):
            raise ValueError(f"a bucket must be a (low, high) pair, got {bucket!r}") from None
        if not _is_int(low) or low < 1:
            raise ValueError(f"bucket {bucket!r}: low must be a positive history length")
        if high is not None and (not _is_int(high) or high < low):
            raise ValueError(f"bucket {bucket!r}: high must be None or at least low")
        out.append((int(low), None if high is None else int(high)))
    if not out:
        raise ValueError("buckets is empty")
    return tuple(out)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    return fraction


def _user_of(sequences: Sequences) -> np.ndarray:
    """The user row of every flat interaction."""
    return np.repeat(np.arange(len(sequences)), sequences.lengths)


@dataclasses.dataclass
class ColdItemSplit:
    """`cold_item_split`'s result."""

    train: Sequences  # warm interactions minus the leave-one-out targets
    valid: EvalSet  # warm leave-one-out validation (early stopping)
    warm_test: EvalSet  # warm leave-one-out test (the warm ranking should not drop)
    test: EvalSet  # cold test: every target is a cold item
    cold_items: np.ndarray  # int32, sorted: never in train, valid or warm_test


def cold_item_split(sequences: Sequences, fraction: float = 0.1, *, how: str = "random", seed: int = 0,
                    min_length: int = 3) -> ColdItemSplit:
    """Holds a ``fraction`` of the items out of training (cold items).

    ``how="random"``: a seeded random ``fraction`` of the items occurring in ``sequences`` is
    cold. ``how="newest"``: the items first seen last (earliest timestamp latest; ties go to the
    higher item index) are cold. Reserved indices (padding, OOV) are never cold.

    The warm sequences are ``sequences`` with every cold-item interaction removed;
    ``train``/``valid``/``warm_test`` are `leave_one_out` of them. The cold test holds each user
    with a cold interaction and at least one warm interaction before the first one: the history
    is the user's warm items before that first cold interaction (in order), the targets the
    distinct cold items the user interacted with anywhere (in order of first interaction).

    Raises:
      ValueError: ``fraction`` outside (0, 1), an unknown ``how``, a split with no cold or no
        warm item, or an empty cold test.
    """
    fraction = _check_fraction(fraction)
    if how not in ("random", "newest"):
        raise ValueError(f"how must be 'random' or 'newest', got {how!r}")
    items = np.unique(sequences.items)
    items = items[items >= NUM_RESERVED]
    n_cold = int(round(fraction * len(items)))
    if n_cold < 1:
        raise ValueError(f"fraction {fraction} of {len(items)} items leaves no cold item")
    if n_cold >= len(items):
        raise ValueError(f"fraction {fraction} of {len(items)} items leaves no warm item")
    if how == "random":
        cold = np.random.default_rng(seed).choice(items, n_cold, replace=False)
    else:
        first_seen = np.full(int(items.max()) + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first_seen, sequences.items, sequences.timestamps)
        # Latest first, ties toward the higher index: lexsort's last key is the primary one.
        order = np.lexsort((-items, -first_seen[items]))
        cold = items[order[:n_cold]]
    cold_items = np.sort(cold).astype(np.int32)

    is_cold_item = np.zeros(int(max(sequences.items.max(), cold_items.max())) + 1, bool)
    is_cold_item[cold_items] = True
    is_cold = is_cold_item[sequences.items]
    warm = leave_one_out(sequences.select(~is_cold), min_length)

    # First cold position of each user (the user's end when none).
    user_of = _user_of(sequences)
    first_cold = sequences.offsets[1:].copy()
    cold_pos = np.flatnonzero(is_cold)
    np.minimum.at(first_cold, user_of[cold_pos], cold_pos)
    evaluated = np.flatnonzero((first_cold < sequences.offsets[1:]) & (first_cold > sequences.offsets[:-1]))
    histories, targets = [], []
    for u in evaluated.tolist():
        start, first, end = sequences.offsets[u], first_cold[u], sequences.offsets[u + 1]
        histories.append(sequences.items[start:first])
        rest = sequences.items[first:end]
        targets.append(list(dict.fromkeys(rest[is_cold[first:end]].tolist())))
    if not histories:
        raise ValueError("the cold test is empty: no user has a warm interaction before a cold one")
    test = EvalSet.from_lists(sequences.user_ids[evaluated], histories, targets)
    return ColdItemSplit(warm.train, warm.valid, warm.test, test, cold_items)


@dataclasses.dataclass
class ColdUserSplit:
    """`cold_user_split`'s result."""

    train: Sequences  # warm users' sequences minus the leave-one-out targets
    valid: EvalSet  # warm users' leave-one-out validation
    test: EvalSet  # cold users: one instance per (user, bucket) the user is long enough for
    history_lengths: np.ndarray  # int64, per test instance (== len(test.user_history(i)))
    buckets: tuple


def cold_user_split(sequences: Sequences, fraction: float = 0.1, *, seed: int = 0, buckets=HISTORY_BUCKETS,
                    min_length: int = 3, max_instances_per_user: int | None = None) -> ColdUserSplit:
    """Holds a seeded random ``fraction`` of the users out of training entirely (cold users).

    For each cold user and each bucket ``(low, high)`` with ``low`` below the user's length, one
    test instance: the history is the user's first ``h`` items, ``h`` drawn uniformly (seeded)
    from ``[low, min(high, length - 1)]``, and the target is the next item (position ``h``). An
    instance whose target already occurs in its history is skipped (rankings exclude history
    items). ``max_instances_per_user`` keeps a seeded random subset of at most that many of a
    user's instances (in bucket order). The warm users give ``train``/``valid`` through
    `leave_one_out` (their leave-one-out test targets stay out of train too).

    Raises:
      ValueError: ``fraction`` outside (0, 1), a split with no cold or no warm user, invalid
        buckets or ``max_instances_per_user``, or an empty cold test.
    """
    fraction = _check_fraction(fraction)
    buckets = check_buckets(buckets)
    if max_instances_per_user is not None and int(max_instances_per_user) < 1:
        raise ValueError(f"max_instances_per_user must be positive or None, got {max_instances_per_user}")
    n_users = len(sequences)
    n_cold = int(round(fraction * n_users))
    if n_cold < 1:
        raise ValueError(f"fraction {fraction} of {n_users} users leaves no cold user")
    if n_cold >= n_users:
        raise ValueError(f"fraction {fraction} of {n_users} users leaves no warm user")
    rng = np.random.default_rng(seed)
    cold_users = np.sort(rng.choice(n_users, n_cold, replace=False))
    is_cold_user = np.zeros(n_users, bool)
    is_cold_user[cold_users] = True
    warm = leave_one_out(sequences.select(~is_cold_user[_user_of(sequences)]), min_length)

    user_ids, histories, targets = [], [], []
    for u in cold_users.tolist():
        items = sequences[u]
        n = len(items)
        instances = []
        for low, high in buckets:
            if low >= n:
                continue
            h = int(rng.integers(low, min(n - 1 if high is None else high, n - 1) + 1))
            if items[h] in items[:h]:
                continue
            instances.append(h)
        if max_instances_per_user is not None and len(instances) > max_instances_per_user:
            keep = np.sort(rng.choice(len(instances), int(max_instances_per_user), replace=False))
            instances = [instances[i] for i in keep]
        for h in instances:
            user_ids.append(sequences.user_ids[u])
            histories.append(items[:h])
            targets.append(items[h:h + 1])
    if not histories:
        raise ValueError("the cold test is empty: no cold user is long enough for any bucket")
    test = EvalSet.from_lists(user_ids, histories, targets)
    return ColdUserSplit(warm.train, warm.valid, test, np.diff(test.history_offsets), buckets)
