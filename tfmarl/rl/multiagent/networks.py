"""`MultiAgentNetwork`: the User, Content and System agents with their RL heads, in one network.

The encoders are the agents' own Keras layers, warm-started from pretraining:

    state      s = UserAgent(ContentAgent(history))       [B, D]  (the visible history, item ids)
    candidates v = ContentAgent(candidates)               [B, N, D]

and each agent's RL head reads that one encoding:

- **User agent — interest head**: Q_U(s, f) for every interest facet f [B, F], from the facet
  centroids in item space. Its policy (softmax over Q_U / temperature) allocates the slate's slots.
- **Content agents — proposal heads**, one per domain: Q_C^m(s, c) for every candidate [B, M, N]
  (each domain's agent proposes the candidates of its facets).
- **System agent — critic head**: Q(s, c) = a * SystemAgent.score(s, v_c) + g(s, v_c) [B, N], the
  pretrained interaction (dot / MLP / DCN) plus a learned correction; the centralised critic every
  head's TD target bootstraps from, and the value the slate is ordered by.

Heads see [s ⊙ v, v, s, step / max_steps] through identity-initialised adapters plus a learned
multiple of <s, v>, so they start from the pretrained geometry. It is a TF-Agents `Network`, built
from the agents' configs (``copy()`` makes the target network with its own weights);
`warm_start` copies the pretrained weights in.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.networks import network

from tfmarl.agents import ContentAgent, SystemAgent, UserAgent


# Up to this catalog size `encode` runs the Content agent over the whole catalog once per call.
CATALOG_PASS_MAX_ITEMS = 50_000


def _adapter(dim, name):
    return tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=tf.keras.initializers.Identity(), name=name)


class _ValueHead(tf.keras.layers.Layer):
    """Q(s, x) for every row of ``x`` [B, X, D]: an MLP on [s ⊙ x, x, s, step] plus a learned
    multiple of <s, x>."""

    def __init__(self, dim: int, hidden_units=(64,), dot_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.user_adapter = _adapter(dim, "user_adapter")
        self.item_adapter = _adapter(dim, "item_adapter")
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", name=f"hidden_{i}")
                       for i, u in enumerate(hidden_units)]
        self.out = tf.keras.layers.Dense(1, name="out")
        self.dot_scale = self.add_weight("dot_scale", shape=(), initializer=tf.keras.initializers.Constant(dot_scale))

    def call(self, state, items, step, base=None):
        s = self.user_adapter(state)[:, None, :]  # [B, 1, D]
        v = self.item_adapter(items)  # [B, X, D]
        s_x = tf.broadcast_to(s, tf.shape(v))
        step = tf.broadcast_to(step[:, None, None], tf.concat([tf.shape(v)[:2], [1]], 0))
        x = tf.concat([s_x * v, v, s_x, step], axis=-1)
        for layer in self.hidden:
            x = layer(x)
        affinity = tf.reduce_sum(s_x * v, -1) if base is None else base
        return tf.squeeze(self.out(x), -1) + self.dot_scale * affinity


class MultiAgentNetwork(network.Network):
    """Observation {"history": [B, L], "step": [B], "candidates": [B, N], ...} -> head values
    {"interest": [B, F], "proposals": [B, M, N], "critic": [B, N] (if ``use_critic``)}.

    Args:
      observation_spec: the candidate environment's observation spec.
      user_agent_config, content_agent_config, system_agent_config: ``get_config()`` of the
        agents to build (a pretrained `SequentialRecommender`'s; see `warm_start`).
      centroids: facet centroids [F, D] (`Facets.centroids`).
      num_proposers: M, the Content agents' proposal heads (one per domain).
      use_critic: build the System agent's critic head.
      hidden_units: widths of every head's MLP.
      max_steps: session cap, to scale the step feature.
    """

    def __init__(self, observation_spec, user_agent_config: dict, content_agent_config: dict,
                 system_agent_config: dict, centroids, num_proposers: int, *, use_critic: bool = True,
                 hidden_units=(64,), max_steps: int = 50, name="MultiAgentNetwork"):
        super().__init__(observation_spec, state_spec=(), name=name)
        self.user_agent = UserAgent.from_config(dict(user_agent_config, name="user_agent"))
        self.content_agent = ContentAgent.from_config(dict(content_agent_config, name="content_agent"))
        self.system_agent = SystemAgent.from_config(dict(system_agent_config, name="system_agent")) if use_critic \
            else None
        self._centroids = tf.constant(np.asarray(centroids, np.float32))
        dim = int(self._centroids.shape[1])
        hidden_units = tuple(hidden_units)
        self.interest_head = _ValueHead(dim, hidden_units, dot_scale=0.0, name="interest_head")
        self.proposal_heads = [_ValueHead(dim, hidden_units, name=f"proposal_head_{m}") for m in range(num_proposers)]
        self.critic_head = _ValueHead(dim, hidden_units, name="critic_head") if use_critic else None
        self._max_steps = float(max_steps)

    @property
    def num_proposers(self) -> int:
        return len(self.proposal_heads)

    @property
    def encoders(self) -> list:
        """The agents' layers (what ``trainable_encoders`` fine-tunes)."""
        return [layer for layer in (self.user_agent, self.content_agent, self.system_agent) if layer is not None]

    @property
    def encoder_variables(self) -> list:
        return [v for layer in self.encoders for v in layer.trainable_variables]

    def head(self, name: str) -> tf.keras.layers.Layer:
        """The head named ``interest``, ``proposal_<m>`` or ``critic``."""
        if name.startswith("proposal_"):
            return self.proposal_heads[int(name[len("proposal_"):])]
        head = {"interest": self.interest_head, "critic": self.critic_head}.get(name)
        if head is None:
            raise ValueError(f"no head named {name!r}")
        return head

    def encode(self, observation):
        """(state [B, D], candidate vectors [B, N, D]) of an observation: the shared pass."""
        history = tf.cast(observation["history"], tf.int32)
        candidates = tf.cast(observation["candidates"], tf.int32)
        # Dropout stays off: the encoders fine-tune (or not) on TD targets, not on noise.
        if self.content_agent.num_items <= CATALOG_PASS_MAX_ITEMS:
            # Encoding the catalog once and gathering beats encoding B x (L + N) ids one by one.
            catalog = self.content_agent.catalog(training=False)
            history_items, items = tf.gather(catalog, history), tf.gather(catalog, candidates)
        else:
            history_items = self.content_agent(history, training=False)
            items = self.content_agent(candidates, training=False)
        state = self.user_agent(history_items, mask=history > 0, training=False)
        return state, items

    def heads(self, state, items, step, names=("interest", "proposals", "critic")) -> dict:
        """The values of the heads in ``names`` (default: all) from one encoding."""
        step = tf.cast(step, tf.float32) / self._max_steps
        out = {}
        if "interest" in names:
            centroids = tf.broadcast_to(self._centroids[None],
                                        tf.concat([tf.shape(state)[:1], tf.shape(self._centroids)], 0))
            out["interest"] = self.interest_head(state, centroids, step)
        if "proposals" in names:
            out["proposals"] = tf.stack([head(state, items, step) for head in self.proposal_heads], axis=1)
        if "critic" in names and self.critic_head is not None:
            out["critic"] = self.critic_head(state, items, step, base=self.system_agent.score(state, items))
        return out

    def call(self, observation, step_type=None, network_state=(), training=False):
        state, items = self.encode(observation)
        return self.heads(state, items, observation["step"]), network_state

    def warm_start(self, model) -> None:
        """Copies a pretrained `SequentialRecommender`'s agents' weights into the encoders."""
        self.create_variables()
        self.user_agent.set_weights(model.user_agent.get_weights())
        self.content_agent.set_weights(model.content_agent.get_weights())
        if self.system_agent is not None:
            self.system_agent.set_weights(model.system_agent.get_weights())
