"""Candidate retrieval from a pretrained `SequentialRecommender`.

RL policies act on the N candidates the pretrained two-tower model retrieves for a history, so the
catalog can be large while action spaces stay small.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.agents.system import mask_excluded


class CandidateRetriever:
    """Top-N items (history excluded) for batches of histories, plus the features RL needs.

    Args:
      model: a pretrained `SequentialRecommender` (frozen here: nothing is trained through it).
      num_candidates: N.

    Calling it with ``history`` int32 [B, L] (right-padded with 0) returns a dict of numpy arrays:
    ``candidates`` int32 [B, N] (best first), ``scores`` float32 [B, N] (the pretrained scores),
    ``user_state`` float32 [B, D]. ``item_vectors`` float32 [num_items, D] holds the pretrained
    item representations.
    """

    def __init__(self, model, num_candidates: int = 50):
        if num_candidates < 1 or num_candidates > model.num_items - 2:
            raise ValueError(f"num_candidates must be in [1, {model.num_items - 2}], got {num_candidates}")
        self.model = model
        self.num_candidates = int(num_candidates)
        self.num_items = int(model.num_items)
        self.max_length = int(model.max_length)
        self.item_vectors = model.item_vectors(training=False).numpy()
        self.dim = self.item_vectors.shape[1]
        items = tf.constant(self.item_vectors)
        spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[spec])
        def retrieve(history):
            state = model.user_state(history[:, -self.max_length:], items, training=False)
            scores = model.system_agent.score(state, items)
            top = tf.math.top_k(mask_excluded(scores, history), k=self.num_candidates)
            return top.indices, top.values, state

        self._retrieve = retrieve

    def __call__(self, history) -> dict:
        history = np.asarray(history, np.int32)
        if history.ndim != 2:
            raise ValueError(f"history must be [batch, length], got shape {history.shape}")
        history = _compact_right(history)
        candidates, scores, state = self._retrieve(tf.constant(history))
        return {"candidates": candidates.numpy(), "scores": scores.numpy(), "user_state": state.numpy()}


def _compact_right(history: np.ndarray) -> np.ndarray:
    """Moves each row's items (> 0) to the left, keeping order, so padding is on the right."""
    valid = history > 0
    if valid.all() or not valid.any() or (np.diff(valid.astype(np.int8), axis=1) <= 0).all():
        return history  # already right-padded
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(history, order, axis=1) * np.take_along_axis(valid, order, axis=1)
