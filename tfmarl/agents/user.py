"""The User agent: encodes a user's history into a state."""

from __future__ import annotations

import tensorflow as tf

from tfmarl.agents.blocks import (TransformerBlock, causal_attention_bias, last_position, last_valid,
                                 serializable)
from tfmarl.agents.blocks import embedding_initializer as _init

ENCODERS = ("transformer", "gru", "lstm")


@serializable
class UserAgent(tf.keras.layers.Layer):
    """Encodes a history of item vectors into user states.

    Input: ``history`` float [B, L, D_in] item vectors (from a `ContentAgent`), oldest first and
    right-padded, with ``mask`` bool [B, L] marking real items. Output: the state after the last
    real item, [B, dim]; with ``return_sequences=True`` the state after every position,
    [B, L, dim], where position j depends on items 0..j only (causal), so training can use every
    position. A history with no real item gets the learned ``cold_start`` state.

    Args:
      encoder: "transformer" (causal self-attention with learned positions and a padding mask),
        "gru" or "lstm".
      dim: state size; item vectors are projected to it when their size differs.
      max_length: longest history the transformer's position table covers.
      num_layers, num_heads, dropout: encoder shape (heads apply to the transformer).
    """

    def __init__(self, encoder: str = "transformer", dim: int = 64, max_length: int = 50,
                 num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if dim < 1 or max_length < 1 or num_layers < 1:
            raise ValueError("dim, max_length and num_layers must be positive")
        self.encoder = encoder
        self.dim = int(dim)
        self.max_length = int(max_length)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        self.input_projection = None
        if input_dim != self.dim:
            self.input_projection = tf.keras.layers.Dense(self.dim, use_bias=False, name="input_projection")
            self.input_projection.build(input_shape)
        seq_shape = tf.TensorShape([None, None, self.dim])
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        if self.encoder == "transformer":
            self.positions = self.add_weight(
                "positions", shape=[self.max_length, self.dim],
                initializer=_init())
            self.input_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="input_norm")
            self.input_norm.build(seq_shape)
            self.blocks = [TransformerBlock(self.num_heads, dropout=self.dropout, name=f"block_{i}")
                           for i in range(self.num_layers)]
            for block in self.blocks:
                block.build(seq_shape)
            self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="output_norm")
            self.output_norm.build(seq_shape)
        else:
            cell = tf.keras.layers.GRU if self.encoder == "gru" else tf.keras.layers.LSTM
            self.rnns = [cell(self.dim, return_sequences=True, dropout=self.dropout, name=f"{self.encoder}_{i}")
                         for i in range(self.num_layers)]
            for rnn in self.rnns:
                rnn.build(seq_shape)
        self.cold_start = self.add_weight(
            "cold_start", shape=[self.dim], initializer=_init())
        super().build(input_shape)

    def call(self, history, mask=None, training=None, return_sequences=False):
        if mask is None:
            mask = tf.ones(tf.shape(history)[:2], tf.bool)
        mask = tf.cast(mask, tf.bool)
        x = history if self.input_projection is None else self.input_projection(history)
        if self.encoder == "transformer":
            x = self._check_length(x)
            length = tf.shape(x)[1]
            x = self.input_norm(x + self.positions[None, :length])
            x = self.input_dropout(x, training=training)
            bias = causal_attention_bias(mask)
            if not return_sequences:  # only the last real position is read: the last block computes just it
                index, has_any = last_position(mask)
                for block in self.blocks[:-1]:
                    x = block(x, bias, training=training)
                last = self.output_norm(self.blocks[-1].call_at(x, bias, index[:, None], training=training))[:, 0]
                return tf.where(has_any[:, None], last, self.cold_start[None, :])
            for block in self.blocks:
                x = block(x, bias, training=training)
            states = self.output_norm(x)
        else:
            states = self.input_dropout(x, training=training)
            for rnn in self.rnns:
                states = rnn(states, mask=mask, training=training)
        states = states * tf.cast(mask, states.dtype)[..., None]
        if return_sequences:
            return states
        last, has_any = last_valid(states, mask)
        return tf.where(has_any[:, None], last, self.cold_start[None, :])

    def _check_length(self, x):
        # Positions beyond the table would silently wrap in a gather; fail loudly instead.
        tf.debugging.assert_less_equal(
            tf.shape(x)[1], self.max_length,
            message=f"UserAgent: history longer than max_length={self.max_length}; keep the last "
                    f"max_length items")
        return x

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder, "dim": self.dim,
                "max_length": self.max_length, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "dropout": self.dropout}
