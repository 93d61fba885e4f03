"""Candidate retrieval from a pretrained `SequentialRecommender`.

RL policies act on the N candidates the pretrained two-tower model retrieves for a history, so the
catalog can be large while action spaces stay small.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.agents.blocks import NEG_INF, history_window
from tfmarl.agents.system import mask_excluded
from tfmarl.rl.xla import step_function


class CandidateRetriever:
    """Top-N items (history excluded) for batches of histories, plus the features RL needs.

    Args:
      model: a pretrained `SequentialRecommender` (frozen here: nothing is trained through it).
      num_candidates: N.

    Calling it with ``history`` int32 [B, L] (right-padded with 0) returns a dict of numpy arrays:
    ``candidates`` int32 [B, N] (best first), ``scores`` float32 [B, N] (the pretrained scores),
    ``user_state`` float32 [B, D]. ``available`` (bool [num_items], optional; default the
    ``available`` attribute) leaves out the items that do not exist yet (catalog churn), so every
    policy built on this retriever proposes only items that exist. Histories may be padded
    anywhere; the model reads their last ``max_length`` items. A history that leaves fewer than N
    items to recommend is an error. ``item_vectors`` float32 [num_items, D] holds the pretrained
    item representations.

    ``new_item_candidates`` (M) reserves up to M of the N places for the best-scored new items
    (those the model's Content agent does not know: `ContentAgent.set_known_items`, encoded from
    their features), which rarely outscore trained items but must be proposed for anyone to learn
    whether they are good; the other places go to the best of the rest, and the N candidates come
    best first by score.
    """

    def __init__(self, model, num_candidates: int = 50, available=None, new_item_candidates: int = 0):
        if num_candidates < 1 or num_candidates > model.num_items - 2:
            raise ValueError(f"num_candidates must be in [1, {model.num_items - 2}], got {num_candidates}")
        self.model = model
        self.num_candidates = int(num_candidates)
        # The catalog's availability when a call does not pass one: None (every item), a bool
        # mask or a callable returning one (e.g. ``lambda: env.available_items`` under churn).
        self.available = available
        if not 0 <= new_item_candidates <= num_candidates:
            raise ValueError(f"new_item_candidates must be in [0, num_candidates={num_candidates}], "
                             f"got {new_item_candidates}")
        self.new_item_candidates = int(new_item_candidates)
        unknown = tf.constant(model.content_agent.known_items.numpy() == 0)
        self.num_items = int(model.num_items)
        self.max_length = int(model.max_length)
        self.item_vectors = model.item_vectors(training=False).numpy()
        self.dim = self.item_vectors.shape[1]
        items = tf.constant(self.item_vectors)
        spec = tf.TensorSpec([None, None], tf.int32)

        def scored(history, available):
            # The window keeps min(history width, max_length) columns whatever the rows hold (right
            # padding does not change a causal encoding), so a fixed-width batch has one shape.
            width = tf.clip_by_value(tf.shape(history)[1], 1, self.max_length)  # a constant when XLA compiles
            window = history_window(history, self.max_length, width=width)
            state = model.user_state(window, items, training=False)
            scores = tf.where(available[None, :], model.system_agent.score(state, items), NEG_INF)
            scores = mask_excluded(scores, history)
            if not self.new_item_candidates:
                top = tf.math.top_k(scores, k=self.num_candidates)
                return top.indices, top.values, state
            new = tf.math.top_k(tf.where(unknown[None, :], scores, NEG_INF), k=self.new_item_candidates)
            valid = new.values > NEG_INF / 2  # fewer new items than M: the places go to the rest
            taken = tf.reduce_any(
                tf.range(self.num_items)[None, :, None] == tf.where(valid, new.indices, -1)[:, None, :], axis=-1)
            rest = tf.math.top_k(tf.where(taken, NEG_INF, scores), k=self.num_candidates)
            merged = tf.concat([new.indices, rest.indices], 1)
            values = tf.concat([new.values, rest.values], 1)
            # Selection key: the valid new items first, then the rest in their order.
            rank = 1.0 - (2.0 * tf.range(self.num_candidates, dtype=tf.float32) + 1.0) / self.num_candidates
            key = tf.concat([tf.where(valid, 2.0, -2.0), tf.broadcast_to(rank, tf.shape(rest.values))], 1)
            picked = tf.math.top_k(key, k=self.num_candidates).indices
            picked_values = tf.gather(values, picked, batch_dims=1)
            order = tf.math.top_k(picked_values, k=self.num_candidates)
            merged = tf.gather(merged, picked, batch_dims=1)
            return tf.gather(merged, order.indices, batch_dims=1), order.values, state

        # One trace for every batch shape (XLA compiles each shape it meets); the window is
        # computed inside the compiled call.
        self._retrieve = step_function(scored, input_signature=[spec, tf.TensorSpec([self.num_items], tf.bool)])
        self._everything = np.ones(self.num_items, bool)

    def __call__(self, history, available=None) -> dict:
        history = np.asarray(history, np.int32)
        if history.ndim != 2:
            raise ValueError(f"history must be [batch, length], got shape {history.shape}")
        if available is None:
            available = self.available() if callable(self.available) else self.available
        if available is None:
            available = self._everything
        else:
            available = np.asarray(available, bool)
            if available.shape != (self.num_items,):
                raise ValueError(f"available must be a bool mask of shape ({self.num_items},), got {available.shape}")
        candidates, scores, state = self._retrieve(tf.constant(history), tf.constant(available))
        scores = scores.numpy()
        if (scores <= NEG_INF / 2).any():
            row = int(np.flatnonzero((scores <= NEG_INF / 2).any(axis=1))[0])
            left = int((scores[row] > NEG_INF / 2).sum())
            raise ValueError(f"history row {row} leaves only {left} items to recommend, fewer than "
                             f"num_candidates={self.num_candidates}: use fewer candidates")
        return {"candidates": candidates.numpy(), "scores": scores, "user_state": state.numpy()}
