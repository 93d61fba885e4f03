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
from tfmarl.agents.blocks import copy_weights
from tfmarl.agents.content import CATALOG_PASS_MAX_ITEMS

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
    candidate's vector from the `ContentAgent`; both pass through identity-initialised linear
    adapters (s' = U s, v' = A v: what RL can re-map when the agents stay frozen), then a small MLP
    on [s' ⊙ v', v', s', step] plus the scaled inner product <s', v'> gives the Q-value.
    `warm_start` copies the agents' pretrained weights in.

    With ``trainable_encoders=False`` the agents stay as pretrained (only the MLP learns) and an
    observation may carry the state it would compute, ``"state"`` [B, D] (the replay then stores
    it once instead of re-running the User agent in every train step); without one the network
    encodes the history. The MLP's first layer is evaluated without materialising its
    [B, N, 3D + 1] input: the state and step blocks are shared by a row's candidates and
    ``(s ⊙ v) K1 + v K2 = v (diag(s) K1 + K2)``.

    Args:
      observation_spec: the candidate environment's observation spec.
      user_agent_config, content_agent_config: `get_config()` of the agents to build.
      hidden_units: MLP widths.
      max_steps: session cap, to scale the step feature.
      trainable_encoders: whether RL fine-tunes the User and Content agents.
    """

    def __init__(self, observation_spec, user_agent_config: dict, content_agent_config: dict,
                 hidden_units=(64,), max_steps: int = 50, trainable_encoders: bool = True, name="CandidateQNetwork"):
        super().__init__(observation_spec, state_spec=(), name=name)
        self._user = UserAgent.from_config(dict(user_agent_config, name="user_agent"))
        self._content = ContentAgent.from_config(dict(content_agent_config, name="content_agent"))
        self.trainable_encoders = bool(trainable_encoders)
        self._user.trainable = self._content.trainable = self.trainable_encoders
        dim = int(self._user.dim)
        identity = tf.keras.initializers.Identity()
        self._user_adapter = tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=identity,
                                                   name="user_adapter")
        self._item_adapter = tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=identity,
                                                   name="item_adapter")
        self._hidden = [tf.keras.layers.Dense(u, activation="relu", name=f"q_hidden_{i}")
                        for i, u in enumerate(hidden_units)]
        self._out = tf.keras.layers.Dense(1, name="q_out")
        self._dot_scale = tf.Variable(0.0, name="dot_scale")  # starts ignoring the pretrained affinity
        self._max_steps = float(max_steps)

    @property
    def stores_states(self) -> bool:
        """Whether observations may carry the User agent's ``"state"`` (frozen agents only)."""
        return not self.trainable_encoders

    @property
    def state_dim(self) -> int:
        return int(self._user.dim)

    def encode_state(self, history, training=False):
        history = tf.cast(history, tf.int32)
        return self._user(self._content(history, training=training), mask=history > 0, training=training)

    def call(self, observation, step_type=None, network_state=(), training=False):
        return self.q_values(observation, observation["candidates"], training=training), network_state

    def q_values(self, observation, candidates, training=False):
        """Q [B, X] of the items ``candidates`` int [B, X] (e.g. the observation's candidates, or
        one chosen candidate per row) in the observation's state."""
        if self.stores_states and "state" in observation:
            state = tf.cast(observation["state"], tf.float32)
        else:
            state = self.encode_state(observation["history"], training=training)
        state = self._user_adapter(state)
        candidates = tf.cast(candidates, tf.int32)
        if self._content.num_items <= CATALOG_PASS_MAX_ITEMS:  # adapt the catalog once, then gather
            items = tf.gather(self._item_adapter(self._content.catalog(training=training)), candidates)
        else:
            items = self._item_adapter(self._content(candidates, training=training))  # [B, X, D]
        step = tf.cast(observation["step"], tf.float32) / self._max_steps
        layers = self._hidden + [self._out]
        first, d = layers[0], self.state_dim
        if not first.built:
            first.build((None, 3 * d + 1))
        k = first.kernel
        per_row = state[:, :, None] * k[None, :d] + k[None, d:2 * d]  # diag(s') K1 + K2: [B, D, H]
        shared = tf.matmul(state, k[2 * d:3 * d]) + step[:, None] * k[3 * d:] + first.bias  # [B, H]
        x = first.activation(tf.matmul(items, per_row) + shared[:, None, :])
        for layer in layers[1:]:
            x = layer(x, training=training)
        affinity = tf.matmul(items, state[:, :, None])[..., 0]
        return tf.squeeze(x, -1) + self._dot_scale * affinity

    def warm_start(self, model) -> None:
        """Copies the pretrained agents' weights (a `SequentialRecommender`'s) into this network."""
        self.create_variables()
        copy_weights(model.user_agent, self._user)
        copy_weights(model.content_agent, self._content)

    @property
    def agents(self):
        return self._user, self._content
