"""The propensities tfmarl's bandit training loop logs (`BanditLogWriter`) are the behaviour's exact ones."""

import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.bandits.environments import bandit_py_environment
from tf_agents.policies import greedy_policy
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from tfmarl.evaluation.ope import BanditLogWriter, read_logs
from tfmarl.rl import build_bandit, train_bandit
from tfmarl.rl.bandits import behaviour_probabilities, explore

# (h) the propensities the bandit training loop logs are the behaviour's exact ones

BANDIT_ARMS, BANDIT_DIM = 5, 3


class FixedArmsBandit(bandit_py_environment.BanditPyEnvironment):
    """A batched per-arm bandit that shows the same context and arms in every row and round, so one
    batched policy call makes B independent draws from a single action distribution. Arm j pays its
    first feature; with ``num_actions`` only the first ``num_actions`` arms are valid."""

    def __init__(self, batch_size, num_actions=None, seed=0):
        rng = np.random.default_rng(seed)
        self._b, self._num_actions = batch_size, num_actions
        self._global = rng.normal(size=BANDIT_DIM).astype(np.float32)
        self._arms = rng.normal(size=(BANDIT_ARMS, BANDIT_DIM)).astype(np.float32)
        spec = {"global": array_spec.ArraySpec((BANDIT_DIM,), np.float32),
                "per_arm": array_spec.ArraySpec((BANDIT_ARMS, BANDIT_DIM), np.float32)}
        if num_actions is not None:
            spec["num_actions"] = array_spec.BoundedArraySpec((), np.int32, minimum=1, maximum=BANDIT_ARMS)
        super().__init__(spec, array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=BANDIT_ARMS - 1))

    @property
    def batched(self):
        return True

    @property
    def batch_size(self):
        return self._b

    def _observe(self):
        observation = {"global": np.tile(self._global, (self._b, 1)), "per_arm": np.tile(self._arms, (self._b, 1, 1))}
        if self._num_actions is not None:
            observation["num_actions"] = np.full(self._b, self._num_actions, np.int32)
        return observation

    def _apply_action(self, action):
        action = np.asarray(action)
        assert ((action >= 0) & (action < (self._num_actions or BANDIT_ARMS))).all(), action
        return self._arms[action, 0]


def _first_step(env):
    observation = env.reset().observation
    return observation, ts.restart(tf.nest.map_structure(tf.constant, observation), batch_size=env.batch_size)


def _two_levels(probs, low, high):
    """Every row of ``probs`` holds ``high`` on one arm and ``low`` on all others."""
    ordered = np.sort(probs, axis=1)
    np.testing.assert_allclose(ordered[:, :-1], low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ordered[:, -1], high, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_actions", [None, 3], ids=["all_arms", "num_actions"])
def test_neural_epsilon_greedy_propensities_match_its_action_frequencies(num_actions):
    # NeuralEpsilonGreedy's own mixture: TF-Agents' uniform draw covers the M valid arms, the
    # greedy arm included, so that arm gets 1 - ε + ε/M and the others ε/M; our ε-uniform
    # exploration comes on top. 4000 identical rows are 4000 independent draws.
    b, inner = 4000, 0.4
    env = FixedArmsBandit(b, num_actions)
    tf.keras.utils.set_random_seed(0)
    agent = build_bandit("neural_epsilon_greedy", env, epsilon=inner)
    policy = agent.collect_policy
    observation, time_step = _first_step(env)
    per_arm, valid_count = observation["per_arm"], num_actions or BANDIT_ARMS
    valid = (np.arange(BANDIT_ARMS) < valid_count).astype(float)
    greedy = greedy_policy.GreedyPolicy(policy.wrapped_policy).action(time_step).action.numpy()
    assert len(set(greedy)) == 1 and greedy[0] < valid_count
    greedy = int(greedy[0])
    own = inner * valid / valid_count + (1 - inner) * np.eye(BANDIT_ARMS)[greedy]
    rng = np.random.default_rng(0)
    for outer in (0.0, 0.25):
        expected = outer * valid / valid_count + (1 - outer) * own
        step = policy.action(time_step)
        probs = behaviour_probabilities(step, BANDIT_ARMS, outer, policy=policy,
                                        num_actions=observation.get("num_actions"))
        np.testing.assert_allclose(probs, np.broadcast_to(expected, probs.shape), rtol=0, atol=1e-12)
        explored, propensity = explore(step, per_arm, outer, rng, policy=policy,
                                       num_actions=observation.get("num_actions"))
        action = explored.action.numpy()
        np.testing.assert_allclose(propensity, expected[action], rtol=0, atol=1e-12)
        assert (propensity < 1).all()  # the bug: a stochastic policy's arms logged with propensity 1
        frequency = np.bincount(action, minlength=BANDIT_ARMS) / b
        se = np.sqrt(expected * (1 - expected) / b)
        assert (np.abs(frequency - expected) <= 4 * se).all(), (frequency, expected)  # invalid arms: exactly 0
        if outer == 0:  # the check has the power to tell apart a uniform draw that skips the greedy arm
            assert abs((1 - inner) - expected[greedy]) > 8 * se[greedy]


def test_train_bandit_logs_the_neural_epsilon_greedy_mixture(tmp_path):
    inner, n = 0.3, BANDIT_ARMS
    env = FixedArmsBandit(16)
    tf.keras.utils.set_random_seed(0)
    agent = build_bandit("neural_epsilon_greedy", env, epsilon=inner)
    for outer in (0.0, 0.2):
        with BanditLogWriter(tmp_path / f"log{outer}") as writer:
            train_bandit(agent, env, 4, exploration_epsilon=outer, ope_log=writer, seed=0)
        log = read_logs(tmp_path / f"log{outer}")
        assert len(log) == 64 and log.behaviour_probs.shape == (64, n)
        low = outer / n + (1 - outer) * inner / n
        high = low + (1 - outer) * (1 - inner)
        _two_levels(log.behaviour_probs, low, high)
        np.testing.assert_allclose(log.propensities, log.behaviour_probs[np.arange(64), log.actions], rtol=0,
                                   atol=1e-12)
        assert np.isclose(log.propensities, low).any() and np.isclose(log.propensities, high).any()


def test_thompson_sampling_refuses_off_policy_logs(tmp_path):
    env = FixedArmsBandit(8)
    agent = build_bandit("lints", env)
    trained = int(agent.train_step_counter.numpy())  # the global step, shared with other agents
    with BanditLogWriter(tmp_path / "log") as writer:
        with pytest.raises(ValueError, match=r"Thompson sampling.*no closed form.*Log with 'linucb'"):
            train_bandit(agent, env, 3, exploration_epsilon=0.1, ope_log=writer)
        assert writer.rows_written == 0
    assert int(agent.train_step_counter.numpy()) == trained  # refused before any round ran
    assert not list((tmp_path / "log").glob("shard-*"))
    observation, time_step = _first_step(env)
    with pytest.raises(ValueError, match="Thompson sampling"):
        explore(agent.collect_policy.action(time_step), observation["per_arm"], 0.1, np.random.default_rng(0),
                policy=agent.collect_policy)
    assert train_bandit(agent, env, 2, exploration_epsilon=0.1).steps == 2  # without logs it trains


@pytest.mark.parametrize("name", ["linucb", "neural_linucb"])
def test_deterministic_agents_log_distributions_that_sum_to_one(tmp_path, name):
    epsilon, n = 0.3, BANDIT_ARMS
    env = FixedArmsBandit(16)
    tf.keras.utils.set_random_seed(0)
    agent = build_bandit(name, env)
    for outer, (low, high) in ((epsilon, (epsilon / n, epsilon / n + 1 - epsilon)), (0.0, (0.0, 1.0))):
        with BanditLogWriter(tmp_path / f"log{outer}") as writer:
            train_bandit(agent, env, 4, exploration_epsilon=outer, ope_log=writer, seed=0)
        log = read_logs(tmp_path / f"log{outer}")
        rows = np.arange(len(log))
        np.testing.assert_allclose(log.behaviour_probs.sum(axis=1), 1, rtol=0, atol=1e-12)
        _two_levels(log.behaviour_probs, low, high)
        np.testing.assert_allclose(log.propensities, log.behaviour_probs[rows, log.actions], rtol=0, atol=1e-12)
        if outer == 0:
            assert (log.propensities == 1).all()
