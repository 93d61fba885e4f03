"""tf.data pipelines: padded next-item training windows and evaluation batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.data.sequences import Sequences
from tfmarl.data.splits import EvalSet


def next_item_windows(sequences: Sequences, max_length: int, stride: int | None = None):
    """Cuts each user's sequence into right-padded next-item training windows.

    Window ``w`` of a user holds ``history = s[a:a+L]`` and ``targets = s[a+1:a+L+1]``, so the
    state after position ``j`` predicts the item at ``j + 1``. Windows start every ``stride``
    items (default ``L // 2``) and the last one ends at the sequence's end, so every target
    has at least ``L - stride`` items of context (except at the start). Each target is weighted
    1 exactly once over all windows: ``target_weights`` is 0 where an earlier window already
    trained it, and at padding. The first item of each sequence is predicted from the empty
    history: ``first_item`` holds it in a user's first window, 0 elsewhere.

    Returns:
      dict of numpy arrays: ``history`` int32 [W, L], ``targets`` int32 [W, L],
      ``target_weights`` float32 [W, L], ``first_item`` int32 [W].
    """
    L = int(max_length)
    if L < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    stride = max(1, L // 2) if stride is None else int(stride)
    if not 1 <= stride <= L:
        raise ValueError(f"stride must be in [1, max_length={L}], got {stride}")
    starts_user, starts_pos = [], []
    for u, n in enumerate(sequences.lengths.tolist()):
        starts = list(range(0, max(n - 1 - L, 0) + 1, stride))
        last = max(n - 1 - L, 0)
        if starts[-1] != last:
            starts.append(last)
        starts_user.extend([u] * len(starts))
        starts_pos.extend(starts)
    starts_user = np.asarray(starts_user, np.int64)
    starts_pos = np.asarray(starts_pos, np.int64)
    W = len(starts_user)
    lengths = sequences.lengths[starts_user]
    base = sequences.offsets[starts_user] + starts_pos
    j = np.arange(L + 1)[None, :]
    valid = (starts_pos[:, None] + j) < lengths[:, None]  # [W, L+1]
    flat = np.where(valid, base[:, None] + j, 0)
    window = np.where(valid, sequences.items[flat], 0).astype(np.int32)
    history, targets = window[:, :L], window[:, 1:]
    target_valid = valid[:, 1:]
    # A target is new in this window unless the previous window of the same user reached it.
    prev_end = np.full(W, -1, np.int64)  # last target position (within the sequence) trained before
    same_user = np.zeros(W, bool)
    same_user[1:] = starts_user[1:] == starts_user[:-1]
    prev_reach = starts_pos[:-1] + L  # target positions a+1..a+L
    prev_end[1:] = np.where(same_user[1:], np.minimum(prev_reach, lengths[1:] - 1), -1)
    target_pos = starts_pos[:, None] + 1 + np.arange(L)[None, :]
    weights = (target_valid & (target_pos > prev_end[:, None])).astype(np.float32)
    first_item = np.where(starts_pos == 0, sequences.items[sequences.offsets[starts_user]], 0).astype(np.int32)
    first_item[lengths == 0] = 0
    return {"history": history, "targets": targets, "target_weights": weights, "first_item": first_item}


def training_dataset(sequences: Sequences, max_length: int = 50, batch_size: int = 128, *,
                     stride: int | None = None, shuffle: bool = True, seed: int | None = 0,
                     drop_remainder: bool = False, repeat: bool = False) -> tf.data.Dataset:
    """Next-item training batches (see `next_item_windows` for the features).

    Shuffles the windows each epoch (deterministically for a given ``seed``), batches, prefetches.
    """
    windows = next_item_windows(sequences, max_length, stride)
    ds = tf.data.Dataset.from_tensor_slices(windows)
    if shuffle:
        ds = ds.shuffle(len(windows["first_item"]), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def count_targets(sequences: Sequences) -> int:
    """Next-item targets one training epoch covers (every item of every sequence)."""
    return int(sequences.num_interactions)


def evaluation_dataset(eval_set: EvalSet, max_length: int = 50, batch_size: int = 256) -> tf.data.Dataset:
    """Evaluation batches.

    Features: ``history`` int32 [B, L] (each user's last ``L`` history items, oldest first,
    right-padded with 0), ``exclude`` int32 [B, M] (the whole history, 0-padded: ranked out),
    ``targets`` int32 [B, T] (0-padded).
    """
    L = int(max_length)
    n = len(eval_set)
    h_off, t_off = eval_set.history_offsets, eval_set.target_offsets
    h_len = np.diff(h_off)
    last = np.zeros((n, L), np.int32)
    take = np.minimum(h_len, L)
    j = np.arange(L)[None, :]
    src = (h_off[1:] - take)[:, None] + j
    ok = j < take[:, None]
    last[ok] = eval_set.history[src[ok]]
    exclude = tf.RaggedTensor.from_row_splits(eval_set.history, h_off)
    targets = tf.RaggedTensor.from_row_splits(eval_set.targets, t_off)
    ds = tf.data.Dataset.from_tensor_slices({"history": last, "exclude": exclude, "targets": targets})
    return ds.batch(batch_size).map(
        lambda b: {"history": b["history"], "exclude": b["exclude"].to_tensor(),
                   "targets": b["targets"].to_tensor()}).prefetch(tf.data.AUTOTUNE)
