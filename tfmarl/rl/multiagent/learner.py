"""`MultiAgentLearner`: centralised training of the agents' RL heads, one joint TD step at a time.

Every train step encodes the sampled observations and next observations in **one pass** of the
shared agents (`MultiAgentNetwork.encode`), evaluates every head on it (the item heads at their
chosen candidates in one stacked pass, `MultiAgentNetwork.stacked_values`), and takes one
gradient step on the sum of the heads' TD losses:

- critic (System agent): Double DQN on the global reward,
  ``y = r + gamma * Q'(s', argmax_c Q(s', c))``;
- interest head (User agent) and proposal heads (Content agents): their own rewards, bootstrapped
  from the same centralised value of the next observation, ``y = r_role + gamma * Q'(s', argmax_c
  Q(s', c))`` (the target critic is evaluated at one candidate per row, not all N); without a
  critic (the ablation) each head bootstraps from its own target (a proposal head over its
  domain's candidates only).

Losses are TF-Agents' (element-wise Huber, per-example weights, transitions out of a LAST step
masked); each head's gradients are clipped by their global norm. With ``trainable_encoders`` the
agents' layers fine-tune end to end at ``encoder_learning_rate``; otherwise only the heads learn.
The target network is a copy of the whole network, synced every ``target_update_period`` steps.

TF-Agents' `DqnAgent` trains one Q-network per `train` call, so it cannot share one encoder pass
between several heads: this learner keeps TF-Agents' pieces (Network, specs, losses, `Periodically`
target updates, replay buffer and checkpointer in the trainer) and writes the joint step itself.

Distribution: build the learner inside ``strategy.scope()`` (or pass ``strategy``); `train`
runs the step on every replica with ``strategy.run``, each replica taking its share of the sampled
batch, and the optimizers sum the replicas' gradients (losses are scaled by the global batch).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import common

from tfmarl.rl.multiagent.composition import compose_slate
from tfmarl.rl.multiagent.networks import MultiAgentNetwork


def _counter(name):
    return tf.Variable(0, dtype=tf.int64, name=name, trainable=False,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class MultiAgentLearner:
    """The agents' RL heads for a `CandidateSessionEnvironment` with ``item_facets``, and their
    joint training step.

    Args:
      env: the environment (for specs, slate size and session cap).
      model: the pretrained `SequentialRecommender` whose agents the network is built from (and
        warm-started with).
      facets: a `Facets` (item facets, centroids, facet -> domain).
      use_critic: without it (the no-critic ablation) every head bootstraps from itself and the
        composition falls back on the proposal heads' values.
      num_content_agents: 1 merges all domains into a single Content agent (an ablation);
        default one per domain.
      trainable_encoders: fine-tune the User, Content and System agents' layers end to end
        (default: frozen, only the heads learn).
      learning_rate: the heads'; encoder_learning_rate: the agents' layers' when trainable.
      target_entropy: the interest policy's entropy target, as a fraction of log(F).
      new_item_slots: slots of every slate that go to the best new candidates by the critic (items
        the Content agent never trained on: `ContentAgent.set_known_items`), when there are any;
        acting, training and exports alike (`compose`). Default 0: new items compete as any other.
      strategy: a `tf.distribute.Strategy` to build and train under (default: the current one).
    """

    def __init__(self, env, model, facets, *, use_critic: bool = True, num_content_agents: int | None = None,
                 trainable_encoders: bool = False, gamma: float = 0.9, learning_rate: float = 1e-3,
                 encoder_learning_rate: float = 1e-4, hidden_units=(64,), target_update_period: int = 100,
                 gradient_clipping: float | None = 10.0, target_entropy: float = 0.7,
                 initial_temperature: float = 1.0, new_item_slots: int = 0,
                 strategy: tf.distribute.Strategy | None = None):
        if new_item_slots < 0:
            raise ValueError(f"new_item_slots must be >= 0, got {new_item_slots}")
        self.new_item_slots = int(new_item_slots)
        self.facets = facets
        self.use_critic = bool(use_critic)
        self.trainable_encoders = bool(trainable_encoders)
        self.gamma = float(gamma)
        self.gradient_clipping = gradient_clipping
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
        history_length = int(env.observation_spec()["history"].shape[0])
        if model.user_agent.encoder == "transformer" and history_length > model.user_agent.max_length:
            raise ValueError(f"the environment shows {history_length} history items but the transformer User agent "
                             f"covers max_length={model.user_agent.max_length}: lower SessionConfig.history_length")
        observation_spec = tensor_spec.from_spec(env.observation_spec())
        self.strategy = strategy or tf.distribute.get_strategy()
        # Under a non-default strategy (passed in, or the current scope's) the step runs through
        # strategy.run; the default one (what `make_algorithm` passes outside any scope) is none.
        self._distributed = tf.distribute.has_strategy() or self.strategy is not tf.distribute.get_strategy()
        with self.strategy.scope():
            self.network = MultiAgentNetwork(
                observation_spec, model.user_agent.get_config(), model.content_agent.get_config(),
                model.system_agent.get_config(), facets.centroids, self.num_content_agents, use_critic=use_critic,
                hidden_units=tuple(hidden_units), max_steps=env.session.config.max_steps, name="multiagent")
            self.network.warm_start(model)
            self.target_network = self.network.copy(name="multiagent_target")
            self.target_network.create_variables()
            common.soft_variables_update(self.network.variables, self.target_network.variables, tau=1.0)
            self.optimizer = tf.keras.optimizers.Adam(learning_rate)
            self.encoder_optimizer = tf.keras.optimizers.Adam(encoder_learning_rate) if trainable_encoders else None
            self.log_temperature = tf.Variable(np.log(initial_temperature), dtype=tf.float32, name="log_temperature")
            self.temperature_optimizer = tf.keras.optimizers.Adam(0.01)
            self.train_step = _counter("multiagent_train_step")
            self._update_target = common.Periodically(
                lambda: common.soft_variables_update(self.network.variables, self.target_network.variables, tau=1.0),
                target_update_period, "update_target_network")
        self.target_entropy = float(target_entropy) * float(np.log(facets.num_facets))

    # --- names -------------------------------------------------------------------------------
    @property
    def heads(self) -> list:
        """The heads' names: ``interest`` (User agent), ``proposal_<m>`` (Content agents),
        ``critic`` (System agent)."""
        return ["interest", *(f"proposal_{m}" for m in range(self.num_content_agents))] + (
            ["critic"] if self.use_critic else [])

    @property
    def variables(self) -> list:
        """What an export must hold: the online network's variables and the temperature."""
        return [self.log_temperature, *self.network.variables]

    def checkpoint_objects(self) -> dict:
        objects = {"network": self.network, "target_network": self.target_network, "optimizer": self.optimizer,
                   "log_temperature": self.log_temperature, "temperature_optimizer": self.temperature_optimizer,
                   "train_step": self.train_step, "update_target": self._update_target}
        if self.encoder_optimizer is not None:
            objects["encoder_optimizer"] = self.encoder_optimizer
        return objects

    @property
    def distributed(self) -> bool:
        """Whether the learner trains under a `tf.distribute` strategy (``strategy.run``)."""
        return self._distributed

    @property
    def temperature(self):
        return tf.exp(self.log_temperature)

    @property
    def stores_states(self) -> bool:
        """Whether the replay holds each observation's User-agent state (``"state"`` [D]): with
        frozen agents an observation's encoding never changes, so it is computed once, when the
        observation is acted on, and train steps read it instead of re-running the User agent."""
        return not self.trainable_encoders

    @property
    def state_dim(self) -> int:
        return int(self.network.user_agent.dim)

    # --- acting ------------------------------------------------------------------------------
    def owner_values(self, proposals, candidate_facets):
        """Each candidate's value by its owning Content agent: [B, M, N] -> [B, N]."""
        owner = tf.gather(self.facet_owner, tf.cast(candidate_facets, tf.int32))
        return tf.gather(tf.transpose(proposals, [0, 2, 1]), owner, batch_dims=2)

    def values(self, observation):
        """(interest Q [B, F], proposal Q per candidate by its owner [B, N], critic Q [B, N] or None)."""
        out, _ = self.network(observation, training=False)
        return (out["interest"], self.owner_values(out["proposals"], observation["candidate_facets"]),
                out.get("critic"))

    def facet_probabilities(self, q_interest):
        return tf.nn.softmax(q_interest / self.temperature, axis=-1)

    def act(self, observation, sample: bool = False, seed=None):
        """Slate positions [B, K] (decentralised execution) and the facet probabilities."""
        positions, probs, _ = self.act_with_state(observation, sample=sample, seed=seed)
        return positions, probs

    def act_with_state(self, observation, sample: bool = False, seed=None, state=None):
        """`act`, plus the User agent's state [B, D] of the observation (what the replay stores).
        A ``state`` passed in (the same agents' encoding, computed elsewhere) is used as is."""
        if state is None:
            state, items = self.network.encode(observation)
        else:
            items = self.network.encode_items(observation["candidates"])
        out = self.network.heads(state, items, observation["step"], candidates=observation["candidates"])
        content_q = self.owner_values(out["proposals"], observation["candidate_facets"])
        probs = self.facet_probabilities(out["interest"])
        positions, _ = self.compose(probs, content_q, out.get("critic"), observation, sample=sample, seed=seed)
        return positions, probs, state

    def compose(self, facet_probs, content_q, critic_q, observation, *, sample: bool = False, seed=None):
        """`compose_slate` of ``observation``'s candidates, with this learner's ``new_item_slots``."""
        new = None
        if self.new_item_slots:
            known = self.network.content_agent.known_items
            new = tf.gather(known, tf.cast(observation["candidates"], tf.int32)) < 0.5
        return compose_slate(facet_probs, content_q, critic_q, observation["candidate_facets"], self.slate_size,
                             sample=sample, seed=seed, new_candidates=new, new_item_slots=self.new_item_slots)

    # --- training ----------------------------------------------------------------------------
    def _domain_masks(self, candidate_facets):
        """[B, M, N]: the candidates each Content agent may propose (one kept valid where none is)."""
        owner = tf.gather(self.facet_owner, tf.cast(candidate_facets, tf.int32))  # [B, N]
        mask = tf.equal(owner[:, None, :], tf.range(self.num_content_agents)[None, :, None])
        none = ~tf.reduce_any(mask, -1, keepdims=True)
        return mask | (none & tf.one_hot(0, tf.shape(mask)[-1], on_value=True, off_value=False)[None, None])

    def _bootstrap(self, online_encoding, target_encoding, nxt) -> dict:
        """The value of the next observations ``nxt`` in every head's TD target (no gradient), from
        the online and the target network's (state, candidate vectors) of them."""
        next_state, next_items = target_encoding
        if self.use_critic:  # Double DQN: the online critic picks, its target values that one candidate
            online = self.network.head_values("critic", *online_encoding, nxt["step"], nxt["candidates"])
            best = tf.argmax(online, axis=-1, output_type=tf.int32)[:, None]
            value = self.target_network.head_values(
                "critic", next_state, tf.gather(next_items, best, batch_dims=1), nxt["step"])[:, 0]
            return {name: tf.stop_gradient(value) for name in self.heads}
        target = self.target_network.heads(next_state, next_items, nxt["step"], names=("interest", "proposals"),
                                           candidates=nxt["candidates"])
        out = {"interest": tf.reduce_max(target["interest"], -1)}
        masked = tf.where(self._domain_masks(nxt["candidate_facets"]), target["proposals"], -np.inf)
        for m in range(self.num_content_agents):
            out[f"proposal_{m}"] = tf.reduce_max(masked[:, m], -1)
        return tf.nest.map_structure(tf.stop_gradient, out)

    def _replica_step(self, sample, global_batch: int):
        ctx = tf.distribute.get_replica_context()
        n, i = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
        if n > 1:  # this replica's share of the sampled batch
            sample = tf.nest.map_structure(lambda t: t[i::n], sample)
        now = tf.nest.map_structure(lambda t: t[:, 0], sample["observation"])
        nxt = tf.nest.map_structure(lambda t: t[:, 1], sample["observation"])
        b = tf.shape(sample["step_type"])[0]
        valid = tf.cast(~tf.equal(sample["step_type"][:, 0], ts.StepType.LAST), tf.float32)
        discount = tf.cast(sample["discount"][:, 0], tf.float32)
        # One variable group per head (clipped on its own, as TF-Agents clips each agent's), and
        # the agents' layers when they fine-tune.
        groups = [self.network.head(name).trainable_variables for name in self.heads]
        if self.trainable_encoders:
            groups.append(self.network.encoder_variables)
        with tf.GradientTape() as tape:
            if "state" in sample:  # frozen agents: the states were computed when acting
                state = tf.concat([sample["state"][:, 0], sample["state"][:, 1]], 0)
                next_items = self.network.encode_items(nxt["candidates"])
                # Of the current candidates only the chosen ones are read: encode just those.
                chosen_items = lambda chosen: self.network.encode_items(  # noqa: E731
                    tf.gather(now["candidates"], chosen, batch_dims=1))
            else:
                both = tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), now, nxt)
                state, items = self.network.encode(both)  # the one shared pass
                next_items = items[b:]
                chosen_items = lambda chosen: tf.gather(items[:b], chosen, batch_dims=1)  # noqa: E731
            # A TD loss needs each head's value at its own action only: one candidate per row
            # (all F facets for the interest head, whose entropy the temperature also follows).
            actions = {name: tf.cast(sample["actions"][name][:, 0], tf.int32) for name in self.heads}
            interest = self.network.head_values("interest", state[:b], None, now["step"])
            current = {"interest": tf.gather(interest, actions["interest"], batch_dims=1)}
            # The item heads together, one chosen candidate each per row: [k, B, 1, D] rows.
            item_heads = self.heads[1:]
            chosen = chosen_items(tf.stack([actions[name] for name in item_heads], 1))  # [B, k, D]
            values = self.network.stacked_values(item_heads, state[:b], tf.transpose(chosen, [1, 0, 2])[:, :, None],
                                                 now["step"])
            current.update({name: values[i, :, 0] for i, name in enumerate(item_heads)})
            if self.trainable_encoders:
                target_encoding = self.target_network.encode(nxt)
            else:  # frozen agents: the target's layers equal the online ones, so their encoding is shared
                target_encoding = (state[b:], next_items)
            bootstrap = self._bootstrap((state[b:], next_items), target_encoding, nxt)
            losses = {}
            for name in self.heads:
                q = current[name]
                y = tf.stop_gradient(tf.cast(sample["rewards"][name][:, 0], tf.float32)
                                     + self.gamma * discount * bootstrap[name])
                per_example = common.element_wise_huber_loss(y, q) * valid * sample["weights"][name][:, 0]
                losses[name] = tf.reduce_sum(per_example) / tf.cast(global_batch, tf.float32)
            total = tf.add_n(list(losses.values()))
        grads = tape.gradient(total, [v for group in groups for v in group])
        head_updates, start = [], 0
        for index, group in enumerate(groups):
            pairs = self._clip(grads[start:start + len(group)], group)
            start += len(group)
            if index < len(self.heads):
                head_updates += pairs
            else:
                self.encoder_optimizer.apply_gradients(pairs)
        self.optimizer.apply_gradients(head_updates)
        losses["entropy"] = self._temperature_step(tf.stop_gradient(interest), n)
        self.train_step.assign_add(1)
        return losses

    def _clip(self, grads, variables) -> list:
        """(gradient, variable) pairs of one group, clipped by their global norm."""
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if self.gradient_clipping and pairs:
            clipped, _ = tf.clip_by_global_norm([g for g, _ in pairs], self.gradient_clipping)
            pairs = list(zip(clipped, [v for _, v in pairs]))
        return pairs

    def _temperature_step(self, q_interest, num_replicas: int):
        """One step of the temperature toward the target entropy (it grows when the interest
        policy is too certain). Returns the policy entropy (of this replica's share)."""
        with tf.GradientTape() as tape:
            probs = tf.nn.softmax(q_interest / tf.exp(self.log_temperature), axis=-1)
            entropy = -tf.reduce_mean(tf.reduce_sum(probs * tf.math.log(probs + 1e-12), axis=-1))
            loss = self.log_temperature * tf.stop_gradient(entropy - self.target_entropy) / float(num_replicas)
        self.temperature_optimizer.apply_gradients([(tape.gradient(loss, self.log_temperature), self.log_temperature)])
        return entropy

    def train(self, sample) -> dict:
        """One joint step on ``sample`` (the trainer's replay layout, [batch, 2] per field): every
        head's loss (global mean) and the interest policy's entropy. `gradient_step`, then
        `sync_target`."""
        losses = self.gradient_step(sample)
        self.sync_target()
        return losses

    def sync_target(self) -> None:
        """Copies the online network into the target network every ``target_update_period``-th
        call (one call per train step).

        Kept out of `gradient_step` so that an XLA-compiled step does not hold it: there the
        conditional copy makes every call write back all of both networks' variables (~15% of
        the step measured at the benchmark's shapes), whether the copy runs or not."""
        self._update_target()

    def gradient_step(self, sample) -> dict:
        """`train` without the target network's sync: the heads' gradient step and the
        temperature's."""
        global_batch = sample["step_type"].shape[0] or tf.shape(sample["step_type"])[0]
        if not self._distributed:
            return self._replica_step(sample, global_batch)
        per_replica = self.strategy.run(self._replica_step, args=(sample, global_batch))
        out = {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
               for name, value in per_replica.items() if name != "entropy"}
        out["entropy"] = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica["entropy"], axis=None)
        return out
