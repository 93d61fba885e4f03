"""The three roles as TF-Agents agents, and the System agent's slate composition.

- **User agent — interest explorer.** A `FacetValueNetwork` Q_U(s, k) over interest facets; its
  policy is softmax(Q_U / tau) with a learnable temperature tau, tuned so the policy keeps a
  target entropy (it keeps exploring the user's different interests). For each slot it picks
  a facet.
- **Content agents — item proposers.** One per domain (a group of facets); each scores the
  retrieved candidates of its facets with a `CandidateValueNetwork` Q_C(s, i) and proposes, for
  every facet it owns, the items the allocation asks for. Agents compete for slots through the
  User agent's allocation.
- **System agent — coordinator and critic.** A centralised critic Q(s, i) trained on the global
  (adaptive) reward; it composes the final slate from the proposals (filling and ordering by
  its value), computes each agent's reward (a difference reward: an agent is credited with the
  global reward when the user consumed its item — without that item the click would not have
  happened — and 0 otherwise), and owns the `AdaptiveReward`.

Training is centralised: every role's TD target bootstraps from the critic's target network,
``y = r_role + gamma * max_c Q_critic'(s', c)`` (`CriticBootstrapDqnAgent`, a documented
extension of TF-Agents' `DqnAgent`). Execution is decentralised: each role acts on its own
network (`compose_slate`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.agents.dqn import dqn_agent
from tf_agents.specs import tensor_spec
from tf_agents.utils import common

from tfmarl.rl.multiagent.networks import CandidateValueNetwork, FacetValueNetwork
from tfmarl.rl.policies import SlatePolicy

BIG = 1e4  # separates proposed items from fill-ins in the composition key


class CriticBootstrapDqnAgent(dqn_agent.DqnAgent):
    """A `DqnAgent` whose TD target bootstraps from a centralised critic.

    ``y = r + gamma * max_c Q_critic_target(s', c)``, with ``critic`` a `DqnAgent` over the same
    observations. With ``critic=None`` it is a plain (independent) `DqnAgent`.
    """

    def __init__(self, *args, critic: dqn_agent.DqnAgent | None = None, **kwargs):
        self._critic = critic
        super().__init__(*args, **kwargs)

    def _compute_next_q_values(self, next_time_steps, info):
        if self._critic is None:
            return super()._compute_next_q_values(next_time_steps, info)
        # pylint: disable=protected-access  (the critic's target network is its own attribute)
        q, _ = self._critic._target_q_network(next_time_steps.observation, step_type=next_time_steps.step_type,
                                              training=False)
        return tf.reduce_max(q, axis=-1)


def domain_mask_splitter(domain_facets):
    """Observation -> (observation, mask [B, N]): candidates whose facet belongs to the domain."""
    facets = tf.constant(np.asarray(domain_facets, np.int32))

    def split(observation):
        if isinstance(observation["candidates"], tf.TypeSpec):
            spec = observation["candidates"]
            return observation, tensor_spec.BoundedTensorSpec(spec.shape, tf.int32, 0, 1)
        candidate_facets = tf.cast(observation["candidate_facets"], tf.int32)
        mask = tf.reduce_any(candidate_facets[..., None] == facets, axis=-1)
        # Rows where the domain has no candidate keep one valid action (masked argmax needs one).
        mask = tf.logical_or(mask, tf.logical_and(~tf.reduce_any(mask, -1, keepdims=True),
                                                  tf.one_hot(0, tf.shape(mask)[-1], on_value=True,
                                                             off_value=False)[None]))
        return observation, tf.cast(mask, tf.int32)

    return split


def allocate_slots(facet_probs, k: int, sample: bool, seed=None):
    """Slots per facet, [B, F] ints summing to k: sampled from the facet policy while training,
    largest-remainder rounding of k * probs when acting greedily."""
    f = tf.shape(facet_probs)[1]
    if sample:
        draws = tf.random.categorical(tf.math.log(facet_probs + 1e-12), k, dtype=tf.int32, seed=seed)
        return tf.reduce_sum(tf.one_hot(draws, f, dtype=tf.int32), axis=1)
    share = facet_probs * float(k)
    base = tf.cast(tf.floor(share), tf.int32)
    extra = k - tf.reduce_sum(base, axis=1, keepdims=True)
    order = tf.argsort(tf.argsort(-(share - tf.floor(share)), axis=1, stable=True), axis=1, stable=True)
    return base + tf.cast(order < extra, tf.int32)


def compose_slate(facet_probs, content_q, critic_q, candidate_facets, k: int, *, sample: bool = False, seed=None):
    """The System agent's composition.

    Each facet gets its allocated number of slots; inside a facet the owning Content agent's
    best candidates (by Q_C) fill them; slots a facet cannot fill go to the best remaining
    candidates by the critic (by Q_C without a critic). The slate is ordered by the critic.

    Args: facet_probs [B, F]; content_q [B, N] (each candidate scored by its owner);
      critic_q [B, N] or None; candidate_facets int [B, N].
    Returns ``(positions int32 [B, k], key [B, N])`` where ``key`` ranks the candidates (its top k
    are the slate).
    """
    quota = allocate_slots(facet_probs, k, sample, seed)  # [B, F]
    facets = tf.cast(candidate_facets, tf.int32)
    n = tf.shape(content_q)[1]
    index = tf.range(n)
    same = tf.equal(facets[:, :, None], facets[:, None, :])
    better = (content_q[:, None, :] > content_q[:, :, None]) | (
        tf.equal(content_q[:, None, :], content_q[:, :, None]) & (index[None, None, :] < index[None, :, None]))
    rank = tf.reduce_sum(tf.cast(same & better, tf.int32), axis=-1)  # rank within own facet
    selected = rank < tf.gather(quota, facets, batch_dims=1)
    order_value = critic_q if critic_q is not None else content_q
    key = tf.where(selected, BIG, 0.0) + tf.tanh(order_value / 100.0)  # keeps BIG dominant
    return tf.math.top_k(key, k=k).indices, key


class MultiAgentRoles:
    """Builds the User agent, the Content agents and the System agent's critic as TF-Agents agents
    for a `CandidateSessionEnvironment` observing ``user_state`` and ``candidate_facets``.

    Args:
      env: the environment (for specs).
      item_vectors: pretrained item vectors [num_items, D] (a `CandidateRetriever`'s).
      facets: a `Facets` (item facets, centroids, facet -> domain).
      use_critic: without it (the no-critic ablation) every role bootstraps from itself and the
        composition falls back on the Content agents' values.
      num_content_agents: 1 merges all domains into a single Content agent (an ablation);
        default one per domain.
      target_entropy: the User agent's policy entropy target, as a fraction of log(F).
    """

    def __init__(self, env, item_vectors, facets, *, use_critic: bool = True, num_content_agents: int | None = None,
                 gamma: float = 0.9, learning_rate: float = 1e-3, hidden_units=(64,), target_update_period: int = 100,
                 target_entropy: float = 0.7, initial_temperature: float = 1.0):
        self.facets = facets
        self.use_critic = use_critic
        self.num_content_agents = int(num_content_agents or facets.num_domains)
        if self.num_content_agents not in (1, facets.num_domains):
            raise ValueError(f"num_content_agents must be 1 or the number of domains ({facets.num_domains})")
        self.domains = ([np.arange(facets.num_facets, dtype=np.int32)] if self.num_content_agents == 1
                        else [facets.domain_facets(d) for d in range(facets.num_domains)])
        facet_owner = np.zeros(facets.num_facets, np.int32)
        for m, owned in enumerate(self.domains):
            facet_owner[owned] = m
        self.facet_owner = tf.constant(facet_owner)
        self.slate_size = env.session.config.slate_size
        time_step_spec = tensor_spec.from_spec(env.time_step_spec())
        observation_spec = time_step_spec.observation
        n = env.num_candidates
        max_steps = env.session.config.max_steps
        candidate_action = tensor_spec.BoundedTensorSpec((), tf.int32, 0, n - 1, name="candidate")
        facet_action = tensor_spec.BoundedTensorSpec((), tf.int32, 0, facets.num_facets - 1, name="facet")

        def counter(name):
            return tf.Variable(0, dtype=tf.int64, name=name)

        common_args = dict(epsilon_greedy=0.0, gamma=gamma, target_update_period=target_update_period,
                           td_errors_loss_fn=common.element_wise_huber_loss, gradient_clipping=10.0)
        self.critic = None
        if use_critic:
            self.critic = dqn_agent.DdqnAgent(
                time_step_spec, candidate_action,
                q_network=CandidateValueNetwork(observation_spec, item_vectors, hidden_units, max_steps, name="critic"),
                optimizer=tf.keras.optimizers.Adam(learning_rate), train_step_counter=counter("critic_step"),
                name="system_critic", **common_args)
        self.content = [
            CriticBootstrapDqnAgent(
                time_step_spec, candidate_action,
                q_network=CandidateValueNetwork(observation_spec, item_vectors, hidden_units, max_steps,
                                                name=f"content_{m}"),
                optimizer=tf.keras.optimizers.Adam(learning_rate), critic=self.critic,
                observation_and_action_constraint_splitter=domain_mask_splitter(owned),
                train_step_counter=counter(f"content_{m}_step"), name=f"content_agent_{m}", **common_args)
            for m, owned in enumerate(self.domains)]
        self.user = CriticBootstrapDqnAgent(
            time_step_spec, facet_action,
            q_network=FacetValueNetwork(observation_spec, facets.centroids, hidden_units, max_steps, name="user"),
            optimizer=tf.keras.optimizers.Adam(learning_rate), critic=self.critic,
            train_step_counter=counter("user_step"), name="user_agent", **common_args)
        self.log_temperature = tf.Variable(np.log(initial_temperature), dtype=tf.float32, name="log_temperature")
        self.target_entropy = float(target_entropy) * float(np.log(facets.num_facets))
        self.temperature_optimizer = tf.keras.optimizers.Adam(0.01)
        for agent in self.agents.values():
            agent.initialize()

    @property
    def agents(self) -> dict:
        """Role name -> TF-Agents agent."""
        out = {"user": self.user, **{f"content_{m}": a for m, a in enumerate(self.content)}}
        if self.critic is not None:
            out["critic"] = self.critic
        return out

    @property
    def variables(self) -> list:
        """Every role network's variables and the temperature (what an export must hold)."""
        out = [self.log_temperature]
        for agent in self.agents.values():
            out.extend(agent._q_network.variables)  # pylint: disable=protected-access
        return out

    @property
    def temperature(self):
        return tf.exp(self.log_temperature)

    def values(self, observation):
        """Every role's values: facet Q [B, F], content Q per candidate (by owner) [B, N], critic Q."""
        q_user, _ = self.user._q_network(observation, training=False)  # pylint: disable=protected-access
        owner = tf.gather(self.facet_owner, tf.cast(observation["candidate_facets"], tf.int32))
        per_agent = tf.stack([a._q_network(observation, training=False)[0] for a in self.content])  # [M, B, N]
        content_q = tf.gather(tf.transpose(per_agent, [1, 2, 0]), owner, batch_dims=2)
        critic_q = (self.critic._q_network(observation, training=False)[0]  # pylint: disable=protected-access
                    if self.critic is not None else None)
        return q_user, content_q, critic_q

    def facet_probabilities(self, q_user):
        return tf.nn.softmax(q_user / self.temperature, axis=-1)

    def act(self, observation, sample: bool = False, seed=None):
        """Slate positions [B, K] (decentralised execution) and the facet probabilities."""
        q_user, content_q, critic_q = self.values(observation)
        probs = self.facet_probabilities(q_user)
        positions, _ = compose_slate(probs, content_q, critic_q, observation["candidate_facets"], self.slate_size,
                                     sample=sample, seed=seed)
        return positions, probs

    def update_temperature(self, observation):
        """One step of the temperature toward the target entropy (tau grows when the facet policy is
        too certain). Returns the policy entropy."""
        q_user, _ = self.user._q_network(observation, training=False)  # pylint: disable=protected-access
        q_user = tf.stop_gradient(q_user)
        with tf.GradientTape() as tape:
            probs = tf.nn.softmax(q_user / tf.exp(self.log_temperature), axis=-1)
            entropy = -tf.reduce_mean(tf.reduce_sum(probs * tf.math.log(probs + 1e-12), axis=-1))
            loss = self.log_temperature * tf.stop_gradient(entropy - self.target_entropy)
        self.temperature_optimizer.apply_gradients(
            [(tape.gradient(loss, self.log_temperature), self.log_temperature)])
        return entropy


class MultiAgentSlatePolicy(SlatePolicy):
    """Decentralised execution of trained `MultiAgentRoles` on plain session observations
    (``{"history", "step"}``): retrieval, the roles' values, then the System agent's composition
    (greedy allocation unless ``sample``)."""

    def __init__(self, roles: MultiAgentRoles, retriever, *, sample: bool = False):
        super().__init__(roles.slate_size)
        self._retriever = retriever
        self._facet_of = roles.facets.item_facet
        self._act = tf.function(lambda observation: roles.act(observation, sample=sample)[0])

    def __call__(self, observation):
        got = self._retriever(observation["history"])
        candidates = got["candidates"]
        full = {"history": observation["history"], "step": observation["step"], "candidates": candidates,
                "user_state": got["user_state"], "candidate_facets": self._facet_of[candidates]}
        positions = self._act({k: tf.convert_to_tensor(v) for k, v in full.items()}).numpy()
        return np.take_along_axis(candidates, positions, axis=1).astype(np.int32)
