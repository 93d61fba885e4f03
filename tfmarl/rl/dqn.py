"""DQN / Double DQN over retrieved candidates, through TF-Agents' `DqnAgent`.

The Q-network (`CandidateQNetwork`) scores each of the N candidates of a
`CandidateSessionEnvironment` observation from the User and Content agents. The slate is the
top K by Q (`QSlatePolicy`); the transition stored for TD learning has as its action the
candidate the user consumed (slot 0's candidate when nothing was clicked), so Q(s, a) estimates
the discounted engagement that follows the user consuming item a — the SlateQ decomposition
with the max over candidates as the bootstrap.

Two things keep a train step cheap: the loss evaluates Q(s, a) at the action's candidate only
(`_ActionQ`: the N - 1 other values of the current observation are never read), and with frozen
agents (``trainable_encoders=False``) and ``replay_states`` the replay stores every observation's
User-agent state, so train steps never run the User agent.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.agents.dqn import dqn_agent
from tf_agents.specs import tensor_spec
from tf_agents.utils import common

from tfmarl.rl.networks import CandidateQNetwork
from tfmarl.rl.tf_agents_compat import check_overrides

check_overrides()


class _ActionQ:
    """Mixin for TF-Agents' `DqnAgent` / `DdqnAgent`: Q(s, a) of the loss from the action's
    candidate alone (`CandidateQNetwork.q_values` on one candidate per row) instead of all N
    values and a gather; the same numbers, N times less work. Overrides TF-Agents' private
    `_compute_q_values` (its 0.18.0 signature; see `tfmarl.rl.tf_agents_compat`)."""

    def _compute_q_values(self, time_steps, actions, training=False):
        observation = time_steps.observation
        chosen = tf.gather(observation["candidates"], tf.cast(actions, tf.int32)[:, None], batch_dims=1)
        return self._q_network.q_values(observation, chosen, training=training)[:, 0]


class CandidateDqnAgent(_ActionQ, dqn_agent.DqnAgent):
    """`DqnAgent` over retrieved candidates (see `_ActionQ`)."""


class CandidateDdqnAgent(_ActionQ, dqn_agent.DdqnAgent):
    """`DdqnAgent` (Double DQN) over retrieved candidates (see `_ActionQ`)."""


def build_dqn(env, model=None, *, user_agent_config: dict | None = None,
                   content_agent_config: dict | None = None, double: bool = True, gamma: float = 0.9,
                   learning_rate: float = 1e-3, target_update_period: int = 100, target_update_tau: float = 1.0,
                   hidden_units=(64,), gradient_clipping: float | None = 10.0, warm_start: bool = True,
                   trainable_encoders: bool = True, replay_states: bool = False, train_step_counter=None):
    """A (Double) DQN agent whose action is a candidate position of ``env`` (a
    `CandidateSessionEnvironment`).

    Args:
      model: a pretrained `SequentialRecommender`; its agents' configs (and, with ``warm_start``,
        weights) shape the Q-network's User and Content agents.
      user_agent_config, content_agent_config: agent configs when no ``model`` is given.
      double: Double DQN (`DdqnAgent`) instead of DQN.
      trainable_encoders: fine-tune the User and Content agents end to end (default), or keep
        them as pretrained and train the Q-head only.
      replay_states: (frozen agents only) the agent's observations carry ``"state"`` [D], the
        User agent's state of the visible history, so the replay stores it and train steps do
        not re-encode histories; `train_dqn` adds it from the environment's retrieval
        (`CandidateSessionEnvironment.last_user_state`, the same agents' encoding).
    Returns ``(agent, q_network)``; the agent is initialised (target network synced).
    """
    if replay_states and trainable_encoders:
        raise ValueError("replay_states needs frozen agents (trainable_encoders=False): fine-tuned agents would "
                         "make the stored states stale")
    if model is not None:
        user_agent_config = user_agent_config or model.user_agent.get_config()
        content_agent_config = content_agent_config or model.content_agent.get_config()
    if user_agent_config is None or content_agent_config is None:
        raise ValueError("pass a pretrained model or both agent configs")
    history_length = int(env.observation_spec()["history"].shape[0])
    if user_agent_config.get("encoder") == "transformer" and history_length > user_agent_config["max_length"]:
        raise ValueError(f"the environment shows {history_length} history items but the transformer User agent "
                         f"covers max_length={user_agent_config['max_length']}: lower the history length (SessionConfig.history_length)")
    time_step_spec = tensor_spec.from_spec(env.time_step_spec())
    network_observation_spec = time_step_spec.observation
    if replay_states:
        observation = dict(time_step_spec.observation,
                           state=tf.TensorSpec([int(user_agent_config["dim"])], tf.float32, name="state"))
        time_step_spec = time_step_spec._replace(observation=observation)
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int32, minimum=0, maximum=env.num_candidates - 1,
                                                name="consumed_candidate")
    q_network = CandidateQNetwork(network_observation_spec, user_agent_config, content_agent_config,
                                  hidden_units=tuple(hidden_units), max_steps=env.session.config.max_steps,
                                  trainable_encoders=trainable_encoders)
    q_network.create_variables()
    if model is not None and warm_start:
        q_network.warm_start(model)
    cls = CandidateDdqnAgent if double else CandidateDqnAgent
    agent = cls(time_step_spec, action_spec, q_network=q_network,
                optimizer=tf.keras.optimizers.Adam(learning_rate), epsilon_greedy=0.0, gamma=gamma,
                target_update_period=target_update_period, target_update_tau=target_update_tau,
                td_errors_loss_fn=common.element_wise_huber_loss, gradient_clipping=gradient_clipping,
                train_step_counter=train_step_counter or tf.Variable(
                    0, dtype=tf.int64, name="train_step", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA))
    agent.initialize()
    return agent, q_network


def consumed_positions(positions: np.ndarray, info: dict) -> np.ndarray:
    """The candidate position each user consumed from the shown slate, or slot 0's if none, [B]."""
    slot = np.asarray(info["chosen_slot"])
    rows = np.arange(len(slot))
    return positions[rows, np.maximum(slot, 0)].astype(np.int32)
