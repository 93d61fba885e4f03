"""Candidate retrieval from a pretrained `SequentialRecommender`.

RL policies act on the N candidates the pretrained two-tower model retrieves for a history, so the
catalog can be large while action spaces stay small.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.agents.blocks import NEG_INF, history_window
from tfmarl.agents.system import mask_excluded


class CandidateRetriever:
    """Top-N items (history excluded) for batches of histories, plus the features RL needs.

    Args:
      model: a pretrained `SequentialRecommender` (frozen here: nothing is trained through it).
      num_candidates: N.

    Calling it with ``history`` int32 [B, L] (right-padded with 0) returns a dict of numpy arrays:
    ``candidates`` int32 [B, N] (best first), ``scores`` float32 [B, N] (the pretrained scores),
    ``user_state`` float32 [B, D]. Histories may be padded anywhere; the model reads their last
    ``max_length`` items. A history that leaves fewer than N items to recommend is an error. ``item_vectors`` float32 [num_items, D] holds the pretrained
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
            window = history_window(history, self.max_length)
            state = model.user_state(window, items, training=False)
            scores = model.system_agent.score(state, items)
            top = tf.math.top_k(mask_excluded(scores, history), k=self.num_candidates)
            return top.indices, top.values, state

        self._retrieve = retrieve

    def __call__(self, history) -> dict:
        history = np.asarray(history, np.int32)
        if history.ndim != 2:
            raise ValueError(f"history must be [batch, length], got shape {history.shape}")
        candidates, scores, state = self._retrieve(tf.constant(history))
        scores = scores.numpy()
        if (scores <= NEG_INF / 2).any():
            row = int(np.flatnonzero((scores <= NEG_INF / 2).any(axis=1))[0])
            left = int((scores[row] > NEG_INF / 2).sum())
            raise ValueError(f"history row {row} leaves only {left} items to recommend, fewer than "
                             f"num_candidates={self.num_candidates}: use fewer candidates")
        return {"candidates": candidates.numpy(), "scores": scores, "user_state": state.numpy()}
