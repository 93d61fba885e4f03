"""The System agent: scores users against items and composes the final top-K slate."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmarl.agents.blocks import NEG_INF, serializable
from tfmarl.data.vocab import NUM_RESERVED

INTERACTIONS = ("dot", "mlp", "dcn")


@serializable
class SystemAgent(tf.keras.layers.Layer):
    """Scores user states against item vectors and returns the top-K items.

    ``score = <user, item>`` (``interaction="dot"``), plus a learned pairwise term
    ``g([user, item, user * item])`` for ``"mlp"`` (a ReLU MLP) or ``"dcn"`` (TFRS cross layers
    then a linear head). The dot product stays in the score so retrieval by inner product remains
    meaningful; the pairwise term refines it.

    Call: ``(states [B, D], items [N, D], exclude [B, M] int or None)`` ->
    ``(scores [B, k], indices [B, k])``. Reserved indices (0 = padding, 1 = OOV) and every index in
    ``exclude`` are never returned unless fewer than k others exist; ties go to the lower index.

    Args:
      k: slate size.
      interaction: "dot", "mlp" or "dcn".
      hidden_units: MLP widths (for "mlp"; the DCN head uses the first).
      num_cross_layers: cross layers (for "dcn").
    """

    def __init__(self, k: int = 10, interaction: str = "dot", hidden_units=(64,), num_cross_layers: int = 2,
                 **kwargs):
        super().__init__(**kwargs)
        if interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.k = int(k)
        self.interaction = interaction
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.num_cross_layers = int(num_cross_layers)

    def build(self, input_shape=None):
        if self.interaction == "mlp":
            self.pair_layers = [tf.keras.layers.Dense(u, activation="relu", name=f"mlp_{i}")
                                for i, u in enumerate(self.hidden_units)]
        elif self.interaction == "dcn":
            self.pair_layers = [tfrs.layers.dcn.Cross(name=f"cross_{i}") for i in range(self.num_cross_layers)]
            self.pair_layers.append(tf.keras.layers.Dense(self.hidden_units[0], activation="relu", name="dcn_hidden"))
        if self.interaction != "dot":
            self.pair_head = tf.keras.layers.Dense(1, name="pair_head")
        super().build(input_shape)

    @property
    def is_factorized(self) -> bool:
        """True when scores are plain inner products (so any nearest-neighbour index can retrieve)."""
        return self.interaction == "dot"

    def score(self, states, items):
        """states [B, D]; items [N, D] (shared) or [B, C, D] (per row) -> scores [B, N] / [B, C]."""
        if not self.built:
            self.build()
        per_row = items.shape.rank == 3
        if per_row:
            dot = tf.einsum("bd,bcd->bc", states, items)
        else:
            dot = tf.matmul(states, items, transpose_b=True)
        if self.is_factorized:
            return dot
        u = tf.expand_dims(states, 1)  # [B, 1, D]
        i = items if per_row else tf.expand_dims(items, 0)  # [B|1, C, D]
        shape = tf.shape(u * i)
        u, i = tf.broadcast_to(u, shape), tf.broadcast_to(i, shape)
        x = tf.concat([u, i, u * i], axis=-1) if self.interaction == "mlp" else tf.concat([u, i], axis=-1)
        if self.interaction == "dcn":
            x0 = x
            for layer in self.pair_layers[:-1]:
                x = layer(x0, x)
            x = self.pair_layers[-1](x)
        else:
            for layer in self.pair_layers:
                x = layer(x)
        return dot + tf.squeeze(self.pair_head(x), -1)

    def call(self, states, items, exclude=None, k=None):
        """Top ``k`` of the whole catalog ``items`` [N, D] for ``states`` [B, D], the reserved and
        ``exclude`` indices masked: (values, indices) [B, k]. Per-row candidates: use `score`."""
        if items.shape.rank != 2:
            raise ValueError(f"SystemAgent ranks the catalog: items must be [num_items, dim], got shape {items.shape}; "
                             "score per-row candidates [B, C, D] with SystemAgent.score")
        scores = mask_excluded(self.score(states, items), exclude)
        return tf.math.top_k(scores, k=min(k or self.k, items.shape[0] or self.k))

    def get_config(self):
        return {**super().get_config(), "k": self.k, "interaction": self.interaction,
                "hidden_units": list(self.hidden_units), "num_cross_layers": self.num_cross_layers}


def mask_excluded(scores, exclude=None):
    """Sets reserved columns (padding, OOV) and each row's ``exclude`` indices to NEG_INF.

    scores: [B, N]; exclude: int [B, M] (0-padded) or None.
    """
    reserved = tf.range(tf.shape(scores)[1]) < NUM_RESERVED
    scores = tf.where(reserved[None, :], tf.cast(NEG_INF, scores.dtype), scores)
    if exclude is None:
        return scores
    exclude = tf.cast(exclude, tf.int32)
    rows = tf.broadcast_to(tf.range(tf.shape(exclude)[0])[:, None], tf.shape(exclude))
    index = tf.reshape(tf.stack([rows, exclude], axis=-1), [-1, 2])
    fill = tf.fill([tf.shape(index)[0]], tf.cast(NEG_INF, scores.dtype))
    return tf.tensor_scatter_nd_update(scores, index, fill)
