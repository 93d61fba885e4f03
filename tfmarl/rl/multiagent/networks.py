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
from tfmarl.agents.blocks import copy_weights
from tfmarl.agents.content import CATALOG_PASS_MAX_ITEMS


def _adapter(dim, name):
    return tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=tf.keras.initializers.Identity(), name=name)


class _ValueHead(tf.keras.layers.Layer):
    """Q(s, x) for every row of ``x`` [B, X, D]: an MLP on [s ⊙ x', x', s', step] (x' = A x and
    s' = U s, the identity-initialised adapters) plus a learned multiple of <s', x'>.

    The values are computed without materialising the [B, X, 3D + 1] input (`stacked_call`,
    which also evaluates several heads in one pass). The weights are the plain layers'
    (`naive_call` computes the same values the direct way).
    """

    def __init__(self, dim: int, hidden_units=(64,), dot_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.user_adapter = _adapter(dim, "user_adapter")
        self.item_adapter = _adapter(dim, "item_adapter")
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", name=f"hidden_{i}")
                       for i, u in enumerate(hidden_units)]
        self.out = tf.keras.layers.Dense(1, name="out")
        self.dot_scale = self.add_weight("dot_scale", shape=(), initializer=tf.keras.initializers.Constant(dot_scale))

    def build(self, input_shape=None):
        self.user_adapter.build((None, self.dim))
        self.item_adapter.build((None, self.dim))
        width = 3 * self.dim + 1
        for layer in [*self.hidden, self.out]:
            layer.build((None, width))
            width = layer.units
        super().build(input_shape)

    def call(self, state, items, step, base=None, adapted_items=None):
        """Q [B, X]. ``adapted_items`` [B, X, D], when given, are ``items`` already multiplied by
        the item adapter (e.g. gathered from the adapted catalog): the adapter is then skipped;
        [X, D] are rows shared by every state (the interest head's facet centroids), ``items``
        unused. Otherwise the cheaper of adapting the X rows and folding the adapter into the
        per-state weights is taken (by the static X). `stacked_call` of this head alone."""
        if adapted_items is not None:
            return stacked_call([self], state, step, adapted_items=adapted_items[None], bases=[base])[0]
        return stacked_call([self], state, step, items=items[None], bases=[base])[0]

    def naive_call(self, state, items, step, base=None):
        """`call` computed the direct way (the reference its tests compare with)."""
        s = self.user_adapter(state)[:, None, :]
        v = self.item_adapter(items)
        s_x = tf.broadcast_to(s, tf.shape(v))
        step = tf.broadcast_to(tf.cast(step, s.dtype)[:, None, None], tf.concat([tf.shape(v)[:2], [1]], 0))
        x = tf.concat([s_x * v, v, s_x, step], axis=-1)
        for layer in [*self.hidden, self.out]:
            x = layer(x)
        affinity = tf.reduce_sum(s_x * v, -1) if base is None else base
        return tf.squeeze(x, -1) + self.dot_scale * affinity


def stacked_call(heads, state, step, items=None, adapted_items=None, bases=None):
    """`_ValueHead` values of k heads of one architecture at once: Q [k, B, X], head i on the same
    ``state`` [B, D] and ``step`` [B] and its own rows: ``items[i]`` [B, X, D], or
    ``adapted_items[i]`` (rows already multiplied by its item adapter; [X, D] when every state
    has the same rows); plus ``bases[i]`` [B, X] (None: <s', x'>).

    The first layer never builds the [B, X, 3D + 1] input: its state and step blocks are the same
    for every row. Few rows (X <= H, known statically) are adapted and go through
    ``[s' ⊙ x', x'] [K1; K2]``, one plain product; many go through ``x' (diag(s') K1 + K2)``, one
    D x H product per row, with the adapter folded into those per-state weights when the rows
    are not adapted yet. Rows shared by every state go through ``s' (diag(x') K1) + x' K2``: one
    [B, D] x [D, X H] product, half the arithmetic of the few-rows form and a shape the CPU runs
    faster. With few rows every layer is one batched product over the heads instead of k small
    ones (at a train step's shapes each product's fixed cost outweighs its arithmetic); many rows
    go head by head, which XLA's CPU code runs faster.
    """
    k = len(heads)
    first = [(h.hidden or [h.out])[0] for h in heads]
    d, units = heads[0].dim, first[0].units
    rows = (items if adapted_items is None else adapted_items).shape[-2]
    few = rows is not None and rows <= units
    bases = bases or [None] * k
    if k > 1 and not few:
        return tf.stack([stacked_call([head], state, step, bases=[bases[i]],
                                      items=None if items is None else items[i:i + 1],
                                      adapted_items=None if adapted_items is None else adapted_items[i:i + 1])[0]
                         for i, head in enumerate(heads)])
    kernel = tf.stack([layer.kernel for layer in first])  # [k, 3D + 1, H]
    adapters = tf.stack([h.item_adapter.kernel for h in heads])  # [k, D, D]
    s = tf.einsum("bd,kde->kbe", state, tf.stack([h.user_adapter.kernel for h in heads]))  # [k, B, D]
    shared = (tf.einsum("kbd,kdh->kbh", s, kernel[:, 2 * d:3 * d])
              + tf.cast(step, s.dtype)[None, :, None] * kernel[:, None, 3 * d]
              + tf.stack([layer.bias for layer in first])[:, None, :])  # [k, B, H]
    x = adapted_items
    shared_rows = x is not None and x.shape.rank == 3  # [k, X, D]: the same rows for every state
    if shared_rows:
        per_row = x[..., None] * kernel[:, None, :d]  # diag(x') K1 [k, X, D, H]
        pre = (tf.einsum("kbd,kxdh->kbxh", s, per_row)
               + tf.einsum("kxd,kdh->kxh", x, kernel[:, d:2 * d])[:, None])
    elif few:  # adapting the rows costs X D^2 per state, folding the adapter into the weights D^2 H
        if x is None:
            x = tf.einsum("kbxd,kde->kbxe", items, adapters)
        pre = tf.einsum("kbxd,kdh->kbxh", tf.concat([s[:, :, None] * x, x], -1), kernel[:, :2 * d])
    else:
        per_row = s[..., None] * kernel[:, None, :d] + kernel[:, None, d:2 * d]  # diag(s') K1 + K2 [k, B, D, H]
        if x is None:
            per_row = tf.einsum("kde,kbeh->kbdh", adapters, per_row)
        values = items if x is None else x
        pre = tf.matmul(values[0], per_row[0])[None]  # one head (k = 1)
    out = first[0].activation(pre + shared[:, :, None])
    for depth in range(1, len(heads[0].hidden) + 1):
        layers = [(h.hidden + [h.out])[depth] for h in heads]
        out = layers[0].activation(tf.einsum("kbxh,khg->kbxg", out, tf.stack([layer.kernel for layer in layers]))
                                   + tf.stack([layer.bias for layer in layers])[:, None, None, :])
    if all(base is not None for base in bases):
        affinity = tf.stack(bases)
    else:
        if shared_rows:
            affinity = tf.einsum("kxd,kbd->kbx", x, s)
        elif x is not None:  # <s', x'>
            affinity = tf.reduce_sum(x * s[:, :, None], -1)
        else:  # <s', x A> = x · (s' A^T)
            affinity = tf.einsum("kbxd,kbd->kbx", items, tf.einsum("kbe,kde->kbd", s, adapters))
        affinity = tf.stack([affinity[i] if base is None else base for i, base in enumerate(bases)])
    scales = tf.stack([h.dot_scale for h in heads])[:, None, None]
    return out[..., 0] + scales * affinity


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

    def encode_items(self, ids):
        """Content-agent vectors of item ids (any shape) -> [..., D]."""
        ids = tf.cast(ids, tf.int32)
        # Dropout stays off: the encoders fine-tune (or not) on TD targets, not on noise.
        if self.content_agent.num_items <= CATALOG_PASS_MAX_ITEMS:
            # Encoding the catalog once and gathering beats encoding every id one by one.
            return tf.gather(self.content_agent.catalog(training=False), ids)
        return self.content_agent(ids, training=False)

    def encode_state(self, history, history_items=None):
        """The User agent's state [B, D] of visible histories int [B, L] (right-padded with 0)."""
        history = tf.cast(history, tf.int32)
        if history_items is None:
            history_items = self.encode_items(history)
        return self.user_agent(history_items, mask=history > 0, training=False)

    def encode(self, observation):
        """(state [B, D], candidate vectors [B, N, D]) of an observation: the shared pass."""
        history = tf.cast(observation["history"], tf.int32)
        candidates = tf.cast(observation["candidates"], tf.int32)
        if self.content_agent.num_items <= CATALOG_PASS_MAX_ITEMS:
            catalog = self.content_agent.catalog(training=False)  # one catalog pass for both gathers
            return (self.encode_state(history, tf.gather(catalog, history)), tf.gather(catalog, candidates))
        return self.encode_state(history), self.encode_items(candidates)

    def heads(self, state, items, step, names=("interest", "proposals", "critic"), candidates=None) -> dict:
        """The values of the heads in ``names`` (default: all) from one encoding: ``interest``
        [B, F], ``proposals`` [B, M, X], ``critic`` [B, X] for the X items ``items`` [B, X, D].
        With the items' ids ``candidates`` [B, X] (and a catalog small enough for
        `encode_items`' catalog pass) each head applies its item adapter to the catalog once and
        gathers, instead of adapting B x X vectors: worth it when B x X is large next to the
        catalog (acting on every candidate), not for a few items per row (leave ``candidates``
        out)."""
        out = {}
        if "interest" in names:
            out["interest"] = self.head_values("interest", state, None, step)
        stacked = [f"proposal_{m}" for m in range(self.num_proposers)] if "proposals" in names else []
        if "critic" in names and self.critic_head is not None:
            stacked.append("critic")
        if stacked:
            values = self.stacked_values(stacked, state, items, step, candidates)  # [k, B, X]
            if "proposals" in names:
                out["proposals"] = tf.transpose(values[:self.num_proposers], [1, 0, 2])
            if "critic" in stacked:
                out["critic"] = values[-1]
        return out

    def stacked_values(self, names, state, items, step, candidates=None):
        """`head_values` of several item heads (``proposal_<m>``, ``critic``) at once: [k, B, X]
        (`stacked_call`). ``items`` [B, X, D] are every head's rows (acting on the candidates,
        whose ids ``candidates`` let each head adapt the catalog once, as in `heads`), or
        [k, B, X, D], head i's own rows (a train step's chosen items)."""
        if "interest" in names:
            raise ValueError("the interest head reads the facet centroids: use head_values('interest', ...)")
        heads = [self.head(name) for name in names]
        if not all(head.built for head in heads):  # the first call (create_variables) builds them one by one
            shared = items.shape.rank == 3
            return tf.stack([self.head_values(name, state, items if shared else items[i], step, candidates)
                             for i, name in enumerate(names)])
        shared = items.shape.rank == 3
        bases = [self.system_agent.score(state, items if shared else items[i]) if name == "critic" else None
                 for i, name in enumerate(names)]
        step = tf.cast(step, tf.float32) / self._max_steps
        if shared and candidates is not None and self.content_agent.num_items <= CATALOG_PASS_MAX_ITEMS:
            catalog = self.content_agent.catalog(training=False)
            adapted = tf.stack([tf.gather(tf.matmul(catalog, head.item_adapter.kernel), tf.cast(candidates, tf.int32))
                                for head in heads])  # [k, B, X, D]
            return stacked_call(heads, state, step, adapted_items=adapted, bases=bases)
        if shared:
            items = tf.broadcast_to(items[None], tf.concat([[len(heads)], tf.shape(items)], 0))
        return stacked_call(heads, state, step, items=items, bases=bases)

    def head_values(self, name, state, items, step, candidates=None):
        """One head's values [B, X] for ``items`` [B, X, D] (ids ``candidates`` [B, X], as in
        `heads`); the interest head's rows are the facet centroids (``items`` is ignored)."""
        step = tf.cast(step, tf.float32) / self._max_steps
        head = self.head(name)
        if name == "interest":  # every state's rows are the F centroids
            return head(state, None, step, adapted_items=head.item_adapter(self._centroids))
        adapted = None
        if candidates is not None and self.content_agent.num_items <= CATALOG_PASS_MAX_ITEMS:
            catalog = self.content_agent.catalog(training=False)
            adapted = tf.gather(head.item_adapter(catalog), tf.cast(candidates, tf.int32))
        base = self.system_agent.score(state, items) if name == "critic" else None
        return head(state, items, step, base=base, adapted_items=adapted)

    def call(self, observation, step_type=None, network_state=(), training=False):
        state, items = self.encode(observation)
        return self.heads(state, items, observation["step"], candidates=observation["candidates"]), network_state

    def warm_start(self, model) -> None:
        """Copies a pretrained `SequentialRecommender`'s agents' weights into the encoders."""
        self.create_variables()
        copy_weights(model.user_agent, self.user_agent)
        copy_weights(model.content_agent, self.content_agent)
        if self.system_agent is not None:
            copy_weights(model.system_agent, self.system_agent)
