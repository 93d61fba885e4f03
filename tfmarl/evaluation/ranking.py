"""Full-catalog ranking evaluation: HR@K, NDCG@K, MRR@K, Recall@K and coverage@K.

Every catalog item is ranked for each user (no sampled negatives). Items in the user's input
history are excluded from the ranking, as are the reserved indices (padding, OOV); ties are
broken toward the lower item index, so results are deterministic. With one target per user
(leave-one-out), Recall@K equals HR@K. ``candidates`` restricts the ranking to a set of items
(e.g. the cold items of a cold-start split).
"""

from __future__ import annotations

import math
import time
import weakref

import numpy as np
import tensorflow as tf

from tfmarl.agents.blocks import NEG_INF
from tfmarl.agents.system import mask_excluded
from tfmarl.data.pipelines import evaluation_dataset
from tfmarl.data.splits import EvalSet
from tfmarl.data.vocab import NUM_RESERVED


def evaluate_ranking(model, data, ks=(10,), *, batch_size: int = 256, max_length: int | None = None,
                     num_items: int | None = None, candidates=None, per_user: bool = False) -> dict:
    """Ranks the whole catalog for each user of ``data`` and averages the metrics over users.

    Args:
      model: anything with ``score_catalog(history) -> [B, num_items]`` (e.g. a
        `SequentialRecommender`), or a callable with that signature.
      data: an `EvalSet`, or a dataset of dicts with ``history``, ``exclude`` and ``targets``
        (see `tfmarl.data.evaluation_dataset`).
      ks: cut-offs.
      max_length: history items fed to the model (default: ``model.max_length``).
      num_items: catalog size (default: ``model.num_items``); used for coverage.
      candidates: optional int array of item indices. When given, only these items are ranked
        (every other item is excluded, like history items); targets outside the candidates
        are dropped (a user left with none is not evaluated), coverage@K is the fraction of the
        candidates recommended, and the deepest cut-off ranked is the number of candidates.

      per_user: also return ``per_user``: {"hr@K"/"ndcg@K"/"mrr@K"/"recall@K": float64 array
        with one value per evaluated user, in the data's order} (for paired bootstrap intervals).

    Returns:
      dict with ``hr@K``, ``ndcg@K``, ``mrr@K``, ``recall@K``, ``coverage@K`` for each K, plus
      ``users`` (number evaluated) and ``seconds`` (and ``per_user`` when asked).
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
    if candidates is None:
        k_max = min(ks[-1], num_items - NUM_RESERVED)
        extra = ()
    else:
        candidates = _check_candidates(candidates, num_items)
        k_max = min(ks[-1], len(candidates))
        mask = np.zeros(num_items, bool)
        mask[candidates] = True
        extra = (tf.constant(mask),)
    discounts = 1.0 / np.log2(np.arange(k_max) + 2.0)

    cumulative = np.cumsum(discounts)
    rank_batch = _ranker(score_fn, k_max, candidates is not None)

    start = time.perf_counter()
    parts = {f"{m}@{k}": [] for k in ks for m in ("hr", "ndcg", "mrr", "recall")}
    recommended = {k: np.zeros(num_items, bool) for k in ks}
    users = 0
    for batch in data:
        top, hits, n_targets = (t.numpy() for t in rank_batch(
            *(tf.cast(batch[key], tf.int32) for key in ("history", "exclude", "targets")), *extra))
        keep = n_targets > 0
        top, hits, n_targets = top[keep], hits[keep], n_targets[keep]
        users += len(top)
        for k in ks:
            h = hits[:, :k]
            any_hit = h.any(1)
            first = np.where(any_hit, h.argmax(1), 0)
            ideal = cumulative[np.minimum(np.minimum(n_targets, k), k_max) - 1]
            parts[f"hr@{k}"].append(any_hit.astype(np.float64))
            parts[f"recall@{k}"].append(h.sum(1) / n_targets)
            parts[f"ndcg@{k}"].append((h * discounts[:h.shape[1]]).sum(1) / ideal)
            parts[f"mrr@{k}"].append(np.where(any_hit, 1.0 / (first + 1), 0.0))
            recommended[k][top[:, :k].ravel()] = True
    if users == 0:
        raise ValueError("evaluation data holds no user with a target")
    values = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    results = {name: array.sum() / users for name, array in values.items()}
    for k in ks:
        if candidates is None:
            results[f"coverage@{k}"] = float(recommended[k][NUM_RESERVED:].sum()) / (num_items - NUM_RESERVED)
        else:
            results[f"coverage@{k}"] = float(recommended[k][candidates].sum()) / len(candidates)
    results["users"] = users
    results["seconds"] = time.perf_counter() - start
    results = {k: (float(v) if not isinstance(v, int) else v) for k, v in results.items()}
    if per_user:
        results["per_user"] = values
    return results


def _check_candidates(candidates, num_items: int) -> np.ndarray:
    """Sorted distinct candidate indices; ValueError if empty or outside the real items."""
    arr = np.asarray(candidates)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"candidates must be a 1-D array of item indices, got shape {arr.shape} "
                         f"and dtype {arr.dtype}")
    arr = np.unique(arr.astype(np.int64))
    if arr.size == 0:
        raise ValueError("candidates is empty: no item to rank")
    if arr[0] < NUM_RESERVED or arr[-1] >= num_items:
        bad = arr[(arr < NUM_RESERVED) | (arr >= num_items)][0]
        raise ValueError(f"candidate item index {int(bad)} outside the real items "
                         f"[{NUM_RESERVED}, {num_items})")
    return arr


_RANKERS = weakref.WeakKeyDictionary()


def _ranker(score_fn, k_max: int, with_candidates: bool = False):
    """A traced (history, exclude, targets[, candidate mask]) -> (top items, hits, target counts)
    function.

    Cached per model so that ranking every epoch does not retrace; the cache holds the model
    only weakly. The candidate mask is an argument (not a captured constant), so one traced
    function serves every candidate set.
    """
    owner = getattr(score_fn, "__self__", None)
    if owner is None:
        return _make_ranker(score_fn, k_max, with_candidates)
    cache = _RANKERS.setdefault(owner, {})
    key = (score_fn.__name__, k_max, with_candidates)
    if key not in cache:
        owner_ref, name = weakref.ref(owner), score_fn.__name__
        cache[key] = _make_ranker(lambda history: getattr(owner_ref(), name)(history), k_max, with_candidates)
    return cache[key]


def _make_ranker(score_fn, k_max: int, with_candidates: bool = False):
    spec = tf.TensorSpec([None, None], tf.int32)

    def hits_and_counts(top, targets, valid):
        hits = tf.reduce_any((top[:, :, None] == targets[:, None, :]) & valid[:, None, :], axis=-1)
        return hits, tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)

    if not with_candidates:
        @tf.function(input_signature=(spec, spec, spec))
        def rank_batch(history, exclude, targets):
            scores = tf.cast(score_fn(history), tf.float32)
            top = tf.math.top_k(mask_excluded(scores, exclude), k=k_max).indices  # [B, K]
            return (top, *hits_and_counts(top, targets, targets > 0))

        return rank_batch

    @tf.function(input_signature=(spec, spec, spec, tf.TensorSpec([None], tf.bool)))
    def rank_candidates(history, exclude, targets, candidate_mask):
        scores = tf.cast(score_fn(history), tf.float32)
        scores = tf.where(candidate_mask[None, :], scores, tf.cast(NEG_INF, scores.dtype))
        top = tf.math.top_k(mask_excluded(scores, exclude), k=k_max).indices  # [B, K]
        # Only candidate targets count, so a non-candidate filling a short list is never a hit.
        valid = (targets > 0) & tf.gather(candidate_mask, targets)
        return (top, *hits_and_counts(top, targets, valid))

    return rank_candidates


def ndcg_single(rank: int, k: int) -> float:
    """NDCG@k of one target at 0-based ``rank`` (reference formula, for tests and docs)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
