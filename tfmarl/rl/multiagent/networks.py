"""Value networks of the multi-agent roles (TF-Agents `Network`s over frozen pretrained features).

Every role reads the pretrained User agent's state (``observation["user_state"]``) and the
pretrained Content agent's item vectors (a constant table), through trainable adapters that
start as the identity, so roles train fast and start from the pretrained geometry.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.networks import network


def _adapter(dim, name):
    return tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=tf.keras.initializers.Identity(), name=name)


def _mlp(hidden_units, name):
    layers = [tf.keras.layers.Dense(u, activation="relu", name=f"{name}_{i}") for i, u in enumerate(hidden_units)]
    return layers + [tf.keras.layers.Dense(1, name=f"{name}_out")]


class CandidateValueNetwork(network.Network):
    """Q(s, c) for every candidate c of an observation: [B, N].

    Inputs: ``user_state`` [B, D], ``candidates`` [B, N] item indices, ``step`` [B]. Features per
    candidate: [s ⊙ v, v, s, step / max_steps] into an MLP, plus a learned multiple of <s, v>.
    """

    def __init__(self, observation_spec, item_vectors, hidden_units=(64,), max_steps: int = 50,
                 name="CandidateValueNetwork"):
        super().__init__(observation_spec, state_spec=(), name=name)
        items = np.asarray(item_vectors, np.float32)
        self._items = tf.constant(items)
        dim = items.shape[1]
        self._user_adapter = _adapter(dim, "user_adapter")
        self._item_adapter = _adapter(dim, "item_adapter")
        self._mlp = _mlp(tuple(hidden_units), "q")
        self._dot_scale = tf.Variable(1.0, name="dot_scale")
        self._max_steps = float(max_steps)

    def call(self, observation, step_type=None, network_state=(), training=False):
        s = self._user_adapter(tf.cast(observation["user_state"], tf.float32))  # [B, D]
        v = self._item_adapter(tf.gather(self._items, tf.cast(observation["candidates"], tf.int32)))  # [B, N, D]
        n = tf.shape(v)[1]
        s_n = tf.tile(s[:, None, :], [1, n, 1])
        step = tf.tile(tf.cast(observation["step"], tf.float32)[:, None, None] / self._max_steps, [1, n, 1])
        x = tf.concat([s_n * v, v, s_n, step], axis=-1)
        for layer in self._mlp:
            x = layer(x, training=training)
        return tf.squeeze(x, -1) + self._dot_scale * tf.reduce_sum(s_n * v, -1), network_state


class FacetValueNetwork(network.Network):
    """Q_U(s, k) for every facet k: [B, F], from the facet centroids in item space."""

    def __init__(self, observation_spec, centroids, hidden_units=(64,), max_steps: int = 50,
                 name="FacetValueNetwork"):
        super().__init__(observation_spec, state_spec=(), name=name)
        centroids = np.asarray(centroids, np.float32)
        self._centroids = tf.constant(centroids)
        self._user_adapter = _adapter(centroids.shape[1], "user_adapter")
        self._mlp = _mlp(tuple(hidden_units), "q")
        self._max_steps = float(max_steps)

    def call(self, observation, step_type=None, network_state=(), training=False):
        s = self._user_adapter(tf.cast(observation["user_state"], tf.float32))  # [B, D]
        f = tf.shape(self._centroids)[0]
        s_f = tf.tile(s[:, None, :], [1, f, 1])
        c = tf.tile(self._centroids[None], [tf.shape(s)[0], 1, 1])
        step = tf.tile(tf.cast(observation["step"], tf.float32)[:, None, None] / self._max_steps, [1, f, 1])
        x = tf.concat([s_f * c, c, s_f, step], axis=-1)
        for layer in self._mlp:
            x = layer(x, training=training)
        return tf.squeeze(x, -1), network_state
