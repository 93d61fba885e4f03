"""Keras building blocks shared by the agents (tf_keras layers)."""

from __future__ import annotations

import tensorflow as tf

serializable = tf.keras.utils.register_keras_serializable(package="tfmarl")

# Large negative instead of -inf: keeps softmax over fully masked rows finite (uniform), not NaN.
NEG_INF = -1e9


def embedding_initializer():
    """A fresh initializer per weight: a reused unseeded instance repeats its values."""
    return tf.keras.initializers.TruncatedNormal(stddev=0.02)


@serializable
class CausalSelfAttention(tf.keras.layers.Layer):
    """Multi-head self-attention where position j sees positions <= j that are not padding.

    One fused QKV projection keeps the op count (and CPU time per step) low.
    """

    def __init__(self, num_heads: int = 2, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads:
            raise ValueError(f"model dim {dim} is not divisible by num_heads={self.num_heads}")
        self.qkv = tf.keras.layers.Dense(3 * dim, name="qkv")
        self.out = tf.keras.layers.Dense(dim, name="out")
        self.qkv.build(input_shape)
        self.out.build(input_shape)
        self.attention_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def call(self, x, attention_bias, training=None):
        # x: [B, L, D]; attention_bias: [B, 1, L, L] additive (0 or NEG_INF).
        B, L = tf.shape(x)[0], tf.shape(x)[1]
        D = x.shape[-1]
        H = self.num_heads
        qkv = tf.reshape(self.qkv(x), [B, L, 3, H, D // H])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, H, L, Dh]
        # One unstack, not three slices: each slice's gradient is a full-size tensor of zeros.
        q, k, v = tf.unstack(qkv)
        scores = tf.matmul(q, k, transpose_b=True) * (float(D // H) ** -0.5) + attention_bias
        weights = self.attention_dropout(tf.nn.softmax(scores, axis=-1), training=training)
        context = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])  # [B, L, H, Dh]
        return self.out(tf.reshape(context, [B, L, D]))

    def call_at(self, x, attention_bias, index, training=None):
        """`call`'s output at one position per row, ``index`` int [B, 1] -> [B, 1, D]: keys and
        values for every position, the query (and everything after attention) for that one only."""
        B, L = tf.shape(x)[0], tf.shape(x)[1]
        D = x.shape[-1]
        H = self.num_heads
        kernel, bias = self.qkv.kernel, self.qkv.bias
        query = tf.gather(x, index, batch_dims=1) @ kernel[:, :D] + bias[:D]  # [B, 1, D]
        kv = tf.transpose(tf.reshape(x @ kernel[:, D:] + bias[D:], [B, L, 2, H, D // H]), [2, 0, 3, 1, 4])
        k, v = tf.unstack(kv)  # [B, H, L, Dh]
        q = tf.transpose(tf.reshape(query, [B, 1, H, D // H]), [0, 2, 1, 3])  # [B, H, 1, Dh]
        row_bias = tf.gather(attention_bias[:, 0], index, batch_dims=1)[:, None]  # [B, 1, 1, L]
        scores = tf.matmul(q, k, transpose_b=True) * (float(D // H) ** -0.5) + row_bias
        weights = self.attention_dropout(tf.nn.softmax(scores, axis=-1), training=training)
        return self.out(tf.reshape(tf.matmul(weights, v), [B, 1, D]))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


@serializable
class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, num_heads: int = 2, ffn_multiplier: int = 4, dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.ffn_multiplier = int(ffn_multiplier)
        self.dropout = float(dropout)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = CausalSelfAttention(self.num_heads, self.dropout, name="attention")
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="ffn_norm")
        self.ffn_in = tf.keras.layers.Dense(self.ffn_multiplier * dim, activation="gelu", name="ffn_in")
        self.ffn_out = tf.keras.layers.Dense(dim, name="ffn_out")
        self.drop = tf.keras.layers.Dropout(self.dropout)
        for layer in (self.attention_norm, self.attention, self.ffn_norm, self.ffn_in):
            layer.build(input_shape)
        self.ffn_out.build(tf.TensorShape(input_shape)[:-1].concatenate([self.ffn_multiplier * dim]))
        super().build(input_shape)

    def call(self, x, attention_bias, training=None):
        x = x + self.drop(self.attention(self.attention_norm(x), attention_bias, training=training),
                          training=training)
        return x + self.drop(self.ffn_out(self.ffn_in(self.ffn_norm(x))), training=training)

    def call_at(self, x, attention_bias, index, training=None):
        """`call`'s output at one position per row, ``index`` int [B, 1] -> [B, 1, D], computing
        the other positions only as far as that one needs (their keys and values)."""
        attended = self.attention.call_at(self.attention_norm(x), attention_bias, index, training=training)
        x = tf.gather(x, index, batch_dims=1) + self.drop(attended, training=training)
        return x + self.drop(self.ffn_out(self.ffn_in(self.ffn_norm(x))), training=training)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads,
                "ffn_multiplier": self.ffn_multiplier, "dropout": self.dropout}


def _is_weight(value) -> bool:
    # ShardedVariable (ParameterServerStrategy) is a weight but not a tf.Variable.
    return isinstance(value, tf.Variable) or type(value).__name__ == "ShardedVariable"


def copy_weights(source, target) -> None:
    """Copies every weight of layer ``source`` into the matching weight of ``target`` (a layer of
    the same config), matched by attribute path (``knowledge.query_projection.kernel``), not by
    `get_weights` order, which lists trainable weights first and so changes when one of the two
    is frozen (nor by variable name, which is not unique when a layer builds its sublayers
    outside a call)."""
    def by_path(layer):
        named = {}
        for path, variable in layer._flatten(predicate=_is_weight, with_path=True):
            if not any(isinstance(part, str) and part.startswith("_") for part in path):  # Keras' own lists
                named.setdefault(id(variable), (path, variable))
        if len(named) != len({id(v) for v in layer.weights}):
            raise ValueError(f"{layer.name}: some weights are not attributes of the layer or its sublayers")
        return {path: variable for path, variable in named.values()}

    sources, targets = by_path(source), by_path(target)
    if set(sources) != set(targets):
        raise ValueError(f"{source.name} and {target.name} have different weights: "
                         f"{sorted(map(str, set(sources) ^ set(targets)))}")
    for path, variable in targets.items():
        variable.assign(sources[path])


def causal_attention_bias(mask):
    """[B, L] bool validity mask -> [B, 1, L, L] additive bias: causal and no attention to padding."""
    L = tf.shape(mask)[1]
    causal = tf.linalg.band_part(tf.ones([L, L], tf.bool), -1, 0)
    allowed = tf.logical_and(causal[None, :, :], mask[:, None, :])
    return tf.where(allowed, 0.0, NEG_INF)[:, None, :, :]


def history_window(indices, max_length: int, width: int | None = None):
    """Each row's known items (index >= 2, i.e. not padding or OOV), in order, then its last
    ``max_length`` of them, right-padded with 0: [B, 1..max_length] (exactly ``width`` columns
    when given). Works on any padding layout (left, right or gaps).

    Dense ops only (each item's place in the window from a running count, then one segment sum
    that writes every place once), O(B x L): no ragged ops, so XLA compiles it with its caller."""
    indices = tf.convert_to_tensor(indices)
    known = indices >= 2
    counts = tf.cumsum(tf.cast(known, tf.int32), axis=1)  # known items up to and including each column
    total = tf.reduce_sum(tf.cast(known, tf.int32), axis=1, keepdims=True)
    if width is None:  # at least one column: a batch of empty histories still has a (padding) position
        width = tf.maximum(tf.minimum(tf.reduce_max(total), max_length), 1)
    # An item's place: its rank among the row's known items, less those that fall before the window.
    place = counts - 1 - tf.maximum(total - max_length, 0)
    rows = tf.shape(indices)[0]
    kept = known & (place >= 0) & (place < width)
    segment = tf.where(kept, tf.range(rows)[:, None] * width + place, rows * width)  # the rest: one spare slot
    window = tf.math.unsorted_segment_sum(tf.reshape(tf.where(kept, indices, 0), [-1]),
                                          tf.reshape(segment, [-1]), rows * width + 1)[:-1]
    return tf.reshape(window, [rows, width])


def last_position(mask):
    """(index int [B] of each row's last real position in a right-padded ``mask`` [B, L], 0 for a
    row without one; has_any bool [B])."""
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    return tf.maximum(lengths - 1, 0), lengths > 0


def last_valid(sequence, mask):
    """Gathers, per row, the vector at the last True position of ``mask``.

    Returns (vectors [B, D], has_any [B] bool); rows without a True position give row 0's vector
    at position 0, so callers must substitute where ``has_any`` is False.
    """
    index, has_any = last_position(mask)
    return tf.gather(sequence, index, batch_dims=1), has_any
