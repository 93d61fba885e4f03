"""Contextual bandits with per-arm features: TF-Agents agents built on the tfmarl agents' features.

`build_bandit` builds LinUCB, LinTS, NeuralLinUCB or NeuralEpsilonGreedy for a per-arm
environment (e.g. `tfmarl.envs.PerArmBanditEnvironment`). The neural agents use
`PerArmTowerNetwork`: two towers whose elementwise product is the arm encoding, initialised as
the identity over pretrained user/item vectors (or pretrained with `pretrain_towers`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf
from tf_agents.bandits.agents import lin_ucb_agent, linear_thompson_sampling_agent, neural_epsilon_greedy_agent
from tf_agents.bandits.agents import neural_linucb_agent
from tf_agents.bandits.policies import greedy_reward_prediction_policy, linear_bandit_policy, neural_linucb_policy
from tf_agents.bandits.policies import policy_utilities
from tf_agents.policies import epsilon_greedy_policy, greedy_policy
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import policy_step

from tfmarl.rl import tf_agents_compat as compat
from tfmarl.rl.networks import PerArmRewardNetwork, PerArmTowerNetwork

BANDITS = ("linucb", "lints", "neural_linucb", "neural_epsilon_greedy")
PREDICTED_REWARDS_MEAN = policy_utilities.InfoFields.PREDICTED_REWARDS_MEAN
INFO = (PREDICTED_REWARDS_MEAN,)


def _tensor_specs(env):
    """TF-Agents tensor specs for a py environment (or pass-through for a TF one)."""
    time_step_spec, action_spec = env.time_step_spec(), env.action_spec()
    if not isinstance(action_spec, tf.TensorSpec):
        time_step_spec = tensor_spec.from_spec(time_step_spec)
        action_spec = tensor_spec.from_spec(action_spec)
    return time_step_spec, action_spec


def build_bandit(name: str, env, *, alpha: float = 1.0, tikhonov_weight: float = 1.0,
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
        info_fields_to_inherit_from_greedy=[PREDICTED_REWARDS_MEAN])


# --- behaviour probabilities: what the agent's own policy, then ε-uniform exploration, plays ---

_EXACT_AGENTS = "'linucb', 'neural_linucb' or 'neural_epsilon_greedy'"


@dataclasses.dataclass(frozen=True)
class _OwnMixture:
    """A TF-Agents policy's own ε-mixture: with probability ``epsilon()`` a uniform arm (over the
    ``num_actions`` arms when ``honours_num_actions``, else over ``random_mask`` or all arms), else
    the greedy arm: the masked argmax (first index on ties, as TF's argmax) of ``predicted_rewards_mean``."""

    epsilon: Callable[[], float]
    honours_num_actions: bool = True
    random_mask: np.ndarray | None = None


def _emits_mean(policy) -> bool:
    return PREDICTED_REWARDS_MEAN in compat.emitted_info(policy)


def _reward_layer_phase(policy) -> bool:
    """Whether a NeuralLinUCB policy currently acts from its reward layer (its ε-greedy phase)."""
    active = compat.reward_layer_active(policy, distributed=tf.distribute.has_strategy())
    return bool(np.asarray(tf.convert_to_tensor(active)))


def _own_mixture(policy) -> _OwnMixture | None:
    """How ``policy`` (a TF-Agents bandit policy) draws its own arm: None when it is deterministic
    given the context, else its ε-mixture. Raises ValueError when its action distribution is not
    available exactly."""
    name = type(policy).__name__
    if isinstance(policy, linear_bandit_policy.LinearBanditPolicy):
        if compat.exploration_strategy(policy) == linear_bandit_policy.ExplorationStrategy.optimistic:
            return None  # LinUCB: argmax of the upper confidence bounds
        raise ValueError(
            f"off-policy logs need exact propensities, and {name} (Thompson sampling, 'lints') has none: "
            "it plays the argmax of rewards sampled from each arm's posterior, and the probability that an "
            "arm wins that draw has no closed form (a Monte-Carlo estimate is not exact, and its error "
            "biases IPS/DR). Log with " + _EXACT_AGENTS + " (with exploration_epsilon > 0 for coverage), "
            "or train 'lints' without ope_log.")
    if isinstance(policy, neural_linucb_policy.NeuralLinUCBPolicy):
        if policy.observation_and_action_constraint_splitter is not None:
            raise ValueError(f"exact propensities of {name} with an observation action mask are not supported")
        if not compat.epsilon_greedy(policy):
            return None  # UCB on the encodings, or the reward layer's argmax: deterministic
        if not _emits_mean(policy):
            raise ValueError(f"exact propensities of {name} with epsilon_greedy > 0 need the greedy arm, read "
                             "from predicted_rewards_mean: build the agent with emit_policy_info including it")
        eps = float(compat.epsilon_greedy(policy))
        return _OwnMixture(lambda: eps if _reward_layer_phase(policy) else 0.0)
    if isinstance(policy, epsilon_greedy_policy.EpsilonGreedyPolicy):
        inner = policy.wrapped_policy
        if not isinstance(inner, greedy_reward_prediction_policy.GreedyRewardPredictionPolicy):
            raise ValueError(f"exact propensities of {name} need a GreedyRewardPredictionPolicy inside, "
                             f"not {type(inner).__name__}")
        if compat.constraints(inner):
            raise ValueError(f"exact propensities of {name} are not available with constraints: TF-Agents "
                             "samples the feasibility mask of the greedy arm")
        if policy.observation_and_action_constraint_splitter is not None:
            raise ValueError(f"exact propensities of {name} with an observation action mask are not supported")
        if not _emits_mean(inner) or PREDICTED_REWARDS_MEAN not in tuple(policy.info_fields_to_inherit_from_greedy):
            raise ValueError(
                f"exact propensities of {name} need the greedy arm, read from predicted_rewards_mean: build "
                "the agent with emit_policy_info including it and info_fields_to_inherit_from_greedy=["
                "'predicted_rewards_mean'] (build_bandit does)")
        # Its RandomTFPolicy draws over the num_actions arms with per-arm features (ignoring the
        # exploration mask), else over the exploration mask, else over all arms.
        per_arm = compat.accepts_per_arm_features(compat.random_policy(policy))
        mask = compat.exploration_mask(policy)
        return _OwnMixture(lambda: float(np.asarray(compat.epsilon_fn(policy)())), honours_num_actions=per_arm,
                           random_mask=None if per_arm or mask is None else np.asarray(mask, bool))
    if isinstance(policy, greedy_reward_prediction_policy.GreedyRewardPredictionPolicy):
        if compat.constraints(policy):
            raise ValueError(f"exact propensities of {name} are not available with constraints: TF-Agents "
                             "samples the feasibility mask")
        return None
    if isinstance(policy, greedy_policy.GreedyPolicy):
        return None
    raise ValueError(f"cannot compute exact propensities for {name}; off-policy logs support "
                     f"the policies of {_EXACT_AGENTS}")


def check_exact_propensities(policy) -> None:
    """Raises ValueError, saying why, unless `policy_probabilities` can compute ``policy``'s exact
    action distribution (LinUCB, NeuralLinUCB, NeuralEpsilonGreedy; not Thompson sampling)."""
    _own_mixture(policy)


def _one_hot(action: np.ndarray, num_arms: int) -> np.ndarray:
    return np.eye(num_arms)[action]


def _valid_arms(num_actions, batch: int, num_arms: int) -> np.ndarray:
    """[B, N] bool: the arms allowed by the observation's ``num_actions`` (all when None)."""
    if num_actions is None:
        return np.ones((batch, num_arms), bool)
    return np.arange(num_arms) < np.asarray(num_actions).reshape(-1, 1)


def policy_probabilities(policy, step: policy_step.PolicyStep, num_arms: int, num_actions=None) -> np.ndarray:
    """The exact probability [B, N] that ``policy`` picks each arm in the round it returned ``step``
    for (read before the agent trains on that round).

    ``policy`` None, or a deterministic policy (LinUCB, NeuralLinUCB): a one-hot of
    ``step.action``. An ε-greedy policy (NeuralEpsilonGreedy; NeuralLinUCB with epsilon_greedy in its
    reward-layer phase): ε/M on each of the M arms its uniform draw covers (the greedy arm included:
    the draw can coincide with it) plus 1 - ε on the greedy arm. Raises ValueError for policies
    whose distribution has no closed form (Thompson sampling), see `check_exact_propensities`.
    """
    action = np.asarray(step.action).astype(np.int64).reshape(-1)
    rows = np.arange(len(action))
    mixture = None if policy is None else _own_mixture(policy)
    if mixture is None:
        return _one_hot(action, num_arms)
    epsilon = mixture.epsilon()
    valid = _valid_arms(num_actions, len(action), num_arms)
    greedy = np.argmax(np.where(valid, predicted_rewards(step), -np.inf), axis=1)
    if mixture.honours_num_actions:
        drawn = valid
    elif mixture.random_mask is not None:
        drawn = np.broadcast_to(mixture.random_mask, valid.shape)
    else:
        drawn = np.ones_like(valid)
    probs = epsilon * drawn / drawn.sum(axis=1, keepdims=True) + (1 - epsilon) * _one_hot(greedy, num_arms)
    impossible = probs[rows, action] <= 0
    if impossible.any():
        i = int(np.argmax(impossible))
        raise RuntimeError(f"{type(policy).__name__} played arm {action[i]} in row {i}, which its own "
                           f"distribution gives probability 0 (greedy arm {greedy[i]}, ε={epsilon})")
    return probs


def behaviour_probabilities(step: policy_step.PolicyStep, num_arms: int, epsilon: float, *, policy=None,
                            num_actions=None) -> np.ndarray:
    """The behaviour distribution [B, N] of `explore` on top of the policy's ``step``: ε-uniform
    over the valid arms, else the policy's own draw (`policy_probabilities`). Rows sum to 1."""
    own = policy_probabilities(policy, step, num_arms, num_actions)
    if epsilon <= 0:
        return own
    valid = _valid_arms(num_actions, own.shape[0], num_arms)
    return epsilon * valid / valid.sum(axis=1, keepdims=True) + (1 - epsilon) * own


def explore(step: policy_step.PolicyStep, per_arm, epsilon: float, rng: np.random.Generator, *, policy=None,
            num_actions=None):
    """ε-uniform exploration on top of a policy step, with exact propensities for off-policy logs.

    Returns ``(step with the new actions and matching chosen-arm features, propensities [B])``:
    the probability that the behaviour (the policy's own draw, then ε-uniform) picks each chosen
    arm, from `behaviour_probabilities`.

    Args:
      policy: the policy that returned ``step``, so that its own randomness (NeuralEpsilonGreedy's
        ε-mixture) enters the propensities; None means the step's action is deterministic given
        the context (LinUCB). Thompson sampling raises ValueError (see `check_exact_propensities`).
      num_actions: the observation's ``num_actions`` [B] (valid arms are the first ones), if any.
    """
    own = step.action.numpy()
    b, n = per_arm.shape[0], per_arm.shape[1]
    probs = behaviour_probabilities(step, n, epsilon, policy=policy, num_actions=num_actions)
    rows = np.arange(b)
    if epsilon <= 0:
        return step, probs[rows, own]
    switch = rng.random(b) < epsilon
    high = n if num_actions is None else np.asarray(num_actions).reshape(-1)
    action = np.where(switch, rng.integers(0, high, b), own).astype(own.dtype)
    info = step.info
    if isinstance(info, policy_utilities.PerArmPolicyInfo) and not isinstance(info.chosen_arm_features, tuple):
        chosen = tf.gather(per_arm, action, batch_dims=1)
        info = info._replace(chosen_arm_features=tf.cast(chosen, info.chosen_arm_features.dtype))
    return policy_step.PolicyStep(tf.constant(action), step.state, info), probs[rows, action]


def predicted_rewards(step: policy_step.PolicyStep) -> np.ndarray:
    """The agent's mean reward estimate for every arm, [B, A] (needs PREDICTED_REWARDS_MEAN info)."""
    value = getattr(step.info, "predicted_rewards_mean", ())
    if isinstance(value, tuple):
        raise ValueError("the policy does not emit predicted_rewards_mean")
    return value.numpy()
