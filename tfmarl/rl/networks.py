"""TF-Agents networks built from the tfmarl agents.

- `PerArmTowerNetwork`: per-arm bandit encoding ``T_u(global) ⊙ T_i(arm)`` (two towers, crossed by
  an elementwise product, so a linear model on the encoding can express user × item affinity).
- `PerArmRewardNetwork`: the same towers plus a linear head, [B, A] predicted rewards.
- `CandidateQNetwork`: Q(s, a) for each of N retrieved candidates, from a `UserAgent` (state of
  the visible history) and a `ContentAgent` (candidate items).

They subclass `tf_agents.networks.Network`, whose ``copy()`` rebuilds a network from its
constructor arguments: agents are therefore passed as configs, never as layer objects, so target
networks get their own weights.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.bandits.specs import utils as bandit_spec_utils
from tf_agents.networks import network

from tfmarl.agents import ContentAgent, UserAgent

GLOBAL = bandit_spec_utils.GLOBAL_FEATURE_KEY
PER_ARM = bandit_spec_utils.PER_ARM_FEATURE_KEY


def _relaxed_arm_spec(observation_spec):
    """The per-arm spec with the arm count unknown: training feeds one (chosen) arm per row."""
    spec = dict(observation_spec)
    arm = spec[PER_ARM]
    spec[PER_ARM] = tf.TensorSpec([None] + list(arm.shape[1:]), arm.dtype, name=getattr(arm, "name", None))
    return spec


def _tower(layers, output_dim, input_dim, name):
    """A Dense stack; the last layer starts as the identity when shapes allow (pretrained inputs
    then pass through unchanged until training moves them)."""
    stack = [tf.keras.layers.Dense(u, activation="relu", name=f"{name}_{i}") for i, u in enumerate(layers)]
    last_in = layers[-1] if layers else input_dim
    init = tf.keras.initializers.Identity() if last_in == output_dim else "glorot_uniform"
    stack.append(tf.keras.layers.Dense(output_dim, use_bias=False, kernel_initializer=init, name=f"{name}_out"))
    return stack


def _apply(stack, x, training=False):
    for layer in stack:
        x = layer(x, training=training)
    return x


class _PerArmNetwork(network.Network):
    """Accepts any number of arms per row (policies see N, training sees the chosen one)."""

    def __init__(self, observation_spec, name):
        super().__init__(_relaxed_arm_spec(observation_spec), state_spec=(), name=name)
        self._full_spec = observation_spec

    def create_variables(self, input_tensor_spec=None, **kwargs):
        # The base class samples an input from the spec, which needs the full (N-arm) shape.
        relaxed, self._input_tensor_spec = self._input_tensor_spec, self._full_spec
        try:
            return super().create_variables(**kwargs)
        finally:
            self._input_tensor_spec = relaxed


class PerArmTowerNetwork(_PerArmNetwork):
    """{"global": [B, Dg], "per_arm": [B, A, Da]} -> encodings [B, A, E] = T_u(global) ⊙ T_i(arm).

    Args:
      observation_spec: the per-arm observation spec of a bandit environment.
      encoding_dim: E (default: Dg).
      global_layers, arm_layers: hidden widths of the two towers (empty: linear towers).
      arm_slice: use only the first ``arm_slice`` arm features (e.g. the item vector of a
        [item, crossed] layout).
    """

    def __init__(self, observation_spec, encoding_dim: int | None = None, global_layers=(), arm_layers=(),
                 arm_slice: int | None = None, name="PerArmTowerNetwork"):
        super().__init__(observation_spec, name)
        global_dim = int(observation_spec[GLOBAL].shape[-1])
        arm_dim = int(arm_slice or observation_spec[PER_ARM].shape[-1])
        self.encoding_dim = int(encoding_dim or global_dim)
        self._arm_slice = arm_slice
        self._global_tower = _tower(tuple(global_layers), self.encoding_dim, global_dim, "user_tower")
        self._arm_tower = _tower(tuple(arm_layers), self.encoding_dim, arm_dim, "item_tower")

    def encode(self, observation, training=False):
        arms = observation[PER_ARM]
        if self._arm_slice:
            arms = arms[..., :self._arm_slice]
        users = _apply(self._global_tower, observation[GLOBAL], training)
        items = _apply(self._arm_tower, arms, training)
        return users[:, None, :] * items

    def call(self, observation, step_type=None, network_state=(), training=False):
        return self.encode(observation, training), network_state

    @property
    def towers(self):
        return self._global_tower, self._arm_tower


class PerArmRewardNetwork(PerArmTowerNetwork):
    """Per-arm predicted rewards [B, A]: a linear head on the towers' crossed encodings."""

    def __init__(self, observation_spec, encoding_dim: int | None = None, global_layers=(), arm_layers=(),
                 arm_slice: int | None = None, name="PerArmRewardNetwork"):
        super().__init__(observation_spec, encoding_dim, global_layers, arm_layers, arm_slice, name=name)
        # Starts as sum(T_u ⊙ T_i): the pretrained affinity, like the identity towers.
        self._head = tf.keras.layers.Dense(1, kernel_initializer="ones", name="reward_head")

    def call(self, observation, step_type=None, network_state=(), training=False):
        return tf.squeeze(self._head(self.encode(observation, training)), -1), network_state


def pretrain_towers(encoder: PerArmTowerNetwork, global_features, arm_features, rewards, *, epochs: int = 5,
                    batch_size: int = 512, learning_rate: float = 1e-2, seed: int = 0) -> float:
    """Fits the towers so that sum(T_u(global) ⊙ T_i(arm)) ≈ reward on logged triples.

    Args:
      global_features: [n, Dg]; arm_features: [n, Da] (the arm that was shown); rewards: [n].
    Returns the final mean squared error.
    """
    g = tf.constant(np.asarray(global_features, np.float32))
    a = tf.constant(np.asarray(arm_features, np.float32)[:, None, :])
    r = tf.constant(np.asarray(rewards, np.float32))
    if not np.isfinite(rewards).all():
        raise ValueError("rewards for tower pretraining hold NaN or inf")
    encoder.create_variables()
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    data = tf.data.Dataset.from_tensor_slices((g, a, r)).shuffle(len(rewards), seed=seed).batch(batch_size)

    @tf.function
    def step(gb, ab, rb):
        with tf.GradientTape() as tape:
            pred = tf.reduce_sum(encoder.encode({GLOBAL: gb, PER_ARM: ab}, training=True), axis=-1)[:, 0]
            loss = tf.reduce_mean(tf.square(pred - rb))
        grads = tape.gradient(loss, encoder.trainable_variables)
        optimizer.apply_gradients(zip(grads, encoder.trainable_variables))
        return loss

    loss = float("nan")
    for _ in range(epochs):
        losses = [step(gb, ab, rb) for gb, ab, rb in data]
        loss = float(tf.reduce_mean(losses))
    return loss


class CandidateQNetwork(network.Network):
    """Q(s, c_j) for the N candidates of an observation {"history": [B, L], "candidates": [B, N], "step": [B]}.

    The user state comes from a `UserAgent` over the Content-agent vectors of the history, each
    candidate's vector from the `ContentAgent`; a small MLP on [state ⊙ item, item, state, step]
    plus the scaled inner product gives the Q-value. `warm_start` copies the agents' pretrained
    weights in.

    Args:
      observation_spec: the candidate environment's observation spec.
      user_agent_config, content_agent_config: `get_config()` of the agents to build.
      hidden_units: MLP widths.
      max_steps: session cap, to scale the step feature.
    """

    def __init__(self, observation_spec, user_agent_config: dict, content_agent_config: dict,
                 hidden_units=(64,), max_steps: int = 50, name="CandidateQNetwork"):
        super().__init__(observation_spec, state_spec=(), name=name)
        self._user = UserAgent.from_config(dict(user_agent_config, name="user_agent"))
        self._content = ContentAgent.from_config(dict(content_agent_config, name="content_agent"))
        self._hidden = [tf.keras.layers.Dense(u, activation="relu", name=f"q_hidden_{i}")
                        for i, u in enumerate(hidden_units)]
        self._out = tf.keras.layers.Dense(1, name="q_out")
        self._dot_scale = tf.Variable(0.0, name="dot_scale")  # starts ignoring the pretrained affinity
        self._max_steps = float(max_steps)

    def call(self, observation, step_type=None, network_state=(), training=False):
        history = tf.cast(observation["history"], tf.int32)
        candidates = tf.cast(observation["candidates"], tf.int32)
        state = self._user(self._content(history, training=training), mask=history > 0, training=training)
        items = self._content(candidates, training=training)  # [B, N, D]
        n = tf.shape(items)[1]
        s = tf.tile(state[:, None, :], [1, n, 1])
        step = tf.cast(observation["step"], tf.float32)[:, None, None] / self._max_steps
        x = tf.concat([s * items, items, s, tf.tile(step, [1, n, 1])], axis=-1)
        for layer in self._hidden:
            x = layer(x, training=training)
        q = tf.squeeze(self._out(x), -1) + self._dot_scale * tf.reduce_sum(s * items, -1)
        return q, network_state

    def warm_start(self, model) -> None:
        """Copies the pretrained agents' weights (a `SequentialRecommender`'s) into this network."""
        self.create_variables()
        self._user.set_weights(model.user_agent.get_weights())
        self._content.set_weights(model.content_agent.get_weights())

    @property
    def agents(self):
        return self._user, self._content
