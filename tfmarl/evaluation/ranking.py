"""Full-catalog ranking evaluation: HR@K, NDCG@K, MRR@K, Recall@K and coverage@K.

Every catalog item is ranked for each user (no sampled negatives). Items in the user's input
history are excluded from the ranking, as are the reserved indices (padding, OOV); ties are
broken toward the lower item index, so results are deterministic. With one target per user
(leave-one-out), Recall@K equals HR@K.
"""

from __future__ import annotations

import math
import time
import weakref

import numpy as np
import tensorflow as tf

from tfmarl.agents.system import mask_excluded
from tfmarl.data.pipelines import evaluation_dataset
from tfmarl.data.splits import EvalSet
from tfmarl.data.vocab import NUM_RESERVED


def evaluate_ranking(model, data, ks=(10,), *, batch_size: int = 256, max_length: int | None = None,
                     num_items: int | None = None) -> dict:
    """Ranks the whole catalog for each user of ``data`` and averages the metrics over users.

    Args:
      model: anything with ``score_catalog(history) -> [B, num_items]`` (e.g. a
        `SequentialRecommender`), or a callable with that signature.
      data: an `EvalSet`, or a dataset of dicts with ``history``, ``exclude`` and ``targets``
        (see `tfmarl.data.evaluation_dataset`).
      ks: cut-offs.
      max_length: history items fed to the model (default: ``model.max_length``).
      num_items: catalog size (default: ``model.num_items``); used for coverage.

    Returns:
      dict with ``hr@K``, ``ndcg@K``, ``mrr@K``, ``recall@K``, ``coverage@K`` for each K, plus
      ``users`` (number evaluated) and ``seconds``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    score_fn = getattr(model, "score_catalog", model)
    num_items = int(num_items or getattr(model, "num_items"))
    if isinstance(data, EvalSet):
        if len(data) == 0:
            raise ValueError("evaluation set is empty: no user to rank for")
        data = evaluation_dataset(data, max_length or getattr(model, "max_length", 50), batch_size)
    k_max = min(ks[-1], num_items - NUM_RESERVED)
    discounts = 1.0 / np.log2(np.arange(k_max) + 2.0)

    cumulative = np.cumsum(discounts)
    rank_batch = _ranker(score_fn, k_max)

    start = time.perf_counter()
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "mrr", "recall")}
    recommended = {k: np.zeros(num_items, bool) for k in ks}
    users = 0
    for batch in data:
        top, hits, n_targets = (t.numpy() for t in rank_batch(
            *(tf.cast(batch[key], tf.int32) for key in ("history", "exclude", "targets"))))
        keep = n_targets > 0
        top, hits, n_targets = top[keep], hits[keep], n_targets[keep]
        users += len(top)
        for k in ks:
            h = hits[:, :k]
            any_hit = h.any(1)
            first = np.where(any_hit, h.argmax(1), 0)
            ideal = cumulative[np.minimum(np.minimum(n_targets, k), k_max) - 1]
            sums[f"hr@{k}"] += any_hit.sum()
            sums[f"recall@{k}"] += (h.sum(1) / n_targets).sum()
            sums[f"ndcg@{k}"] += ((h * discounts[:h.shape[1]]).sum(1) / ideal).sum()
            sums[f"mrr@{k}"] += np.where(any_hit, 1.0 / (first + 1), 0.0).sum()
            recommended[k][top[:, :k].ravel()] = True
    if users == 0:
        raise ValueError("evaluation data holds no user with a target")
    results = {name: total / users for name, total in sums.items()}
    for k in ks:
        results[f"coverage@{k}"] = float(recommended[k][NUM_RESERVED:].sum()) / (num_items - NUM_RESERVED)
    results["users"] = users
    results["seconds"] = time.perf_counter() - start
    return {k: (float(v) if not isinstance(v, int) else v) for k, v in results.items()}


_RANKERS = weakref.WeakKeyDictionary()


def _ranker(score_fn, k_max: int):
    """A traced (history, exclude, targets) -> (top items, hits, target counts) function.

    Cached per model so that ranking every epoch does not retrace; the cache holds the model
    only weakly.
    """
    owner = getattr(score_fn, "__self__", None)
    if owner is None:
        return _make_ranker(score_fn, k_max)
    cache = _RANKERS.setdefault(owner, {})
    key = (score_fn.__name__, k_max)
    if key not in cache:
        owner_ref, name = weakref.ref(owner), score_fn.__name__
        cache[key] = _make_ranker(lambda history: getattr(owner_ref(), name)(history), k_max)
    return cache[key]


def _make_ranker(score_fn, k_max: int):
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=(spec, spec, spec))
    def rank_batch(history, exclude, targets):
        scores = tf.cast(score_fn(history), tf.float32)
        top = tf.math.top_k(mask_excluded(scores, exclude), k=k_max).indices  # [B, K]
        valid = targets > 0
        hits = tf.reduce_any((top[:, :, None] == targets[:, None, :]) & valid[:, None, :], axis=-1)
        return top, hits, tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)

    return rank_batch


def ndcg_single(rank: int, k: int) -> float:
    """NDCG@k of one target at 0-based ``rank`` (reference formula, for tests and docs)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
