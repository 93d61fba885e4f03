"""Cold-start evaluation: ranking cold items, and ranking quality against history length."""

from __future__ import annotations

import numpy as np

from tfmarl.data.cold_start import HISTORY_BUCKETS, ColdItemSplit, bucket_name, check_buckets
from tfmarl.data.splits import EvalSet
from tfmarl.evaluation.ranking import evaluate_ranking


def evaluate_cold_items(model, split: ColdItemSplit, ks=(10,), **kwargs) -> dict:
    """Ranks a `ColdItemSplit`'s cold test two ways.

    ``all_catalog`` ranks every item (can the model surface cold items at all against the warm
    ones); ``cold_only`` ranks the cold items alone (can it order them). ``kwargs`` go to
    `evaluate_ranking`.

    Returns:
      ``{"all_catalog": metrics, "cold_only": metrics, "cold_items": number of cold items}``.
    """
    return {
        "all_catalog": evaluate_ranking(model, split.test, ks, **kwargs),
        "cold_only": evaluate_ranking(model, split.test, ks, candidates=split.cold_items, **kwargs),
        "cold_items": int(len(split.cold_items)),
    }


def evaluate_by_history_length(model, eval_set: EvalSet, ks=(10,), buckets=HISTORY_BUCKETS, history_lengths=None,
                               **kwargs) -> dict:
    """`evaluate_ranking` on the instances of each history-length bucket.

    Args:
      eval_set: the instances (e.g. `ColdUserSplit.test`).
      buckets: inclusive ``(low, high)`` history-length ranges (``high`` None: unbounded).
      history_lengths: per instance (default: the length of each history).
      kwargs: passed to `evaluate_ranking`.

    Returns:
      ``{bucket_name: metrics}`` in bucket order (e.g. ``"1"``, ``"2-5"``, ``">20"``); a bucket with
      no instance is ``{"users": 0}``.
    """
    buckets = check_buckets(buckets)
    if history_lengths is None:
        history_lengths = np.diff(eval_set.history_offsets)
    history_lengths = np.asarray(history_lengths)
    if history_lengths.shape != (len(eval_set),):
        raise ValueError(f"history_lengths has shape {history_lengths.shape}, expected ({len(eval_set)},)")
    report = {}
    for low, high in buckets:
        inside = (history_lengths >= low) & (history_lengths <= (np.inf if high is None else high))
        rows = np.flatnonzero(inside)
        name = bucket_name(low, high)
        report[name] = (evaluate_ranking(model, _subset(eval_set, rows), ks, **kwargs) if len(rows)
                        else {"users": 0})
    return report


def _subset(eval_set: EvalSet, rows: np.ndarray) -> EvalSet:
    """The instances ``rows`` of ``eval_set``, in that order."""
    rows = np.asarray(rows, np.int64)
    return EvalSet.from_lists(eval_set.user_ids[rows], [eval_set.user_history(i) for i in rows],
                              [eval_set.user_targets(i) for i in rows])
