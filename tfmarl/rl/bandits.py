"""Contextual bandits with per-arm features: TF-Agents agents built on the tfmarl agents' features.

`make_bandit_agent` builds LinUCB, LinTS, NeuralLinUCB or NeuralEpsilonGreedy for a per-arm
environment (e.g. `tfmarl.envs.PerArmBanditEnvironment`). The neural agents use
`PerArmTowerNetwork`: two towers whose elementwise product is the arm encoding, initialised as
the identity over pretrained user/item vectors (or pretrained with `pretrain_towers`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.bandits.agents import lin_ucb_agent, linear_thompson_sampling_agent, neural_epsilon_greedy_agent
from tf_agents.bandits.agents import neural_linucb_agent
from tf_agents.bandits.policies import policy_utilities
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import policy_step

from tfmarl.rl.networks import PerArmRewardNetwork, PerArmTowerNetwork

BANDITS = ("linucb", "lints", "neural_linucb", "neural_epsilon_greedy")
INFO = (policy_utilities.InfoFields.PREDICTED_REWARDS_MEAN,)


def _tensor_specs(env):
    """TF-Agents tensor specs for a py environment (or pass-through for a TF one)."""
    time_step_spec, action_spec = env.time_step_spec(), env.action_spec()
    if not isinstance(action_spec, tf.TensorSpec):
        time_step_spec = tensor_spec.from_spec(time_step_spec)
        action_spec = tensor_spec.from_spec(action_spec)
    return time_step_spec, action_spec


def make_bandit_agent(name: str, env, *, alpha: float = 1.0, tikhonov_weight: float = 1.0,
                      encoder: PerArmTowerNetwork | None = None, encoding_network_num_train_steps: int = -1,
                      epsilon: float = 0.05, learning_rate: float = 1e-3, arm_slice: int | None = None):
    """A per-arm TF-Agents bandit agent for ``env``'s specs.

    Args:
      name: "linucb", "lints", "neural_linucb" or "neural_epsilon_greedy".
      alpha: exploration width of the UCB agents.
      tikhonov_weight: ridge regularisation of the linear agents.
      encoder: the towers for the neural agents (default: linear towers over the features,
        initialised as the identity — the pretrained vectors' product).
      encoding_network_num_train_steps: NeuralLinUCB trains its encoder with SGD for this many
        train calls before switching to LinUCB on the encodings; negative = towers already
        trained (e.g. by `pretrain_towers`), LinUCB from the start.
      epsilon: exploration of NeuralEpsilonGreedy.
      arm_slice: neural agents read only the first ``arm_slice`` arm features.
    """
    if name not in BANDITS:
        raise ValueError(f"unknown bandit {name!r}; choose one of {', '.join(BANDITS)}")
    time_step_spec, action_spec = _tensor_specs(env)
    observation_spec = time_step_spec.observation
    if name == "linucb":
        # Eigendecomposition once per train step beats a conjugate-gradient solve per arm per action.
        return lin_ucb_agent.LinearUCBAgent(time_step_spec, action_spec, alpha=alpha, tikhonov_weight=tikhonov_weight,
                                            use_eigendecomp=True, accepts_per_arm_features=True,
                                            emit_policy_info=INFO, dtype=tf.float32)
    if name == "lints":
        return linear_thompson_sampling_agent.LinearThompsonSamplingAgent(
            time_step_spec, action_spec, alpha=alpha, tikhonov_weight=tikhonov_weight, use_eigendecomp=True,
            accepts_per_arm_features=True, emit_policy_info=INFO, dtype=tf.float32)
    if name == "neural_linucb":
        encoder = encoder or PerArmTowerNetwork(observation_spec, arm_slice=arm_slice)
        return neural_linucb_agent.NeuralLinUCBAgent(
            time_step_spec, action_spec, encoding_network=encoder,
            encoding_network_num_train_steps=encoding_network_num_train_steps, encoding_dim=encoder.encoding_dim,
            optimizer=tf.keras.optimizers.Adam(learning_rate), alpha=alpha, accepts_per_arm_features=True,
            emit_policy_info=INFO, dtype=tf.float32)
    network = PerArmRewardNetwork(observation_spec, arm_slice=arm_slice)
    return neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent(
        time_step_spec, action_spec, reward_network=network, optimizer=tf.keras.optimizers.Adam(learning_rate),
        epsilon=epsilon, accepts_per_arm_features=True, emit_policy_info=INFO,
        info_fields_to_inherit_from_greedy=[policy_utilities.InfoFields.PREDICTED_REWARDS_MEAN])


def explore(step: policy_step.PolicyStep, per_arm, epsilon: float, rng: np.random.Generator):
    """ε-uniform exploration on top of a policy step, with exact propensities for off-policy logs.

    Returns ``(step with the new actions and matching chosen-arm features, propensities [B])``:
    the probability that the behaviour (policy, then ε-uniform) picks each chosen arm.
    """
    greedy = step.action.numpy()
    b, n = per_arm.shape[0], per_arm.shape[1]
    if epsilon <= 0:
        return step, np.ones(b)
    switch = rng.random(b) < epsilon
    action = np.where(switch, rng.integers(0, n, b), greedy).astype(greedy.dtype)
    propensity = epsilon / n + (1 - epsilon) * (action == greedy)
    info = step.info
    if isinstance(info, policy_utilities.PerArmPolicyInfo) and not isinstance(info.chosen_arm_features, tuple):
        chosen = tf.gather(per_arm, action, batch_dims=1)
        info = info._replace(chosen_arm_features=tf.cast(chosen, info.chosen_arm_features.dtype))
    return policy_step.PolicyStep(tf.constant(action), step.state, info), propensity


def predicted_rewards(step: policy_step.PolicyStep) -> np.ndarray:
    """The agent's mean reward estimate for every arm, [B, A] (needs PREDICTED_REWARDS_MEAN info)."""
    value = getattr(step.info, "predicted_rewards_mean", ())
    if isinstance(value, tuple):
        raise ValueError("the policy does not emit predicted_rewards_mean")
    return value.numpy()
