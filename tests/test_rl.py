"""Tests for the RL layer: the per-arm bandit and candidate environments, the TF-Agents bandits and
(Double) DQN built from the tfmarl agents, slate policies, the training loops (checkpoints,
TensorBoard, off-policy logs) and candidate retrieval.

Learning is checked on tiny problems whose answer is known: a per-arm bandit whose reward is
linear in crossed features (regret must fall far below that of a random policy), and a two-step
session in which the myopic choice loses (DQN must learn to give up a reward now for a larger one
later). The session simulator itself is tested in test_envs_session.py.
"""

import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)

import types

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.agents.dqn import dqn_agent
from tf_agents.bandits.environments import bandit_py_environment
from tf_agents.bandits.policies import policy_utilities
from tf_agents.drivers import py_driver
from tf_agents.environments import py_environment
from tf_agents.environments import utils as env_utils
from tf_agents.specs import array_spec
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts

from fakes import event_values
from tfmarl.envs import run_episodes
from tfmarl.envs.bandit import PerArmBanditEnvironment
from tfmarl.envs.candidates import CandidateSessionEnvironment
from tfmarl.evaluation import BanditLogWriter, ips, read_logs
from tfmarl.rl import (BANDITS, BanditSlatePolicy, CandidateRetriever, GreedySlatePolicy, PerArmTowerNetwork,
                       PopularSlatePolicy, QSlatePolicy, RandomSlatePolicy, SlatePyPolicy, consumed_positions, explore,
                       linear_schedule, loops, build_bandit, build_dqn, predicted_rewards, pretrain_towers,
                       top_positions, train_bandit, train_dqn)
from tfmarl.rl.policies import explore_positions
from tfmarl.training import SequentialRecommender


def distinct_rows(a) -> bool:
    ordered = np.sort(np.asarray(a), axis=1)
    return bool((ordered[:, 1:] != ordered[:, :-1]).all())


def tf_first_step(observation, batch_size):
    return ts.restart(tf.nest.map_structure(tf.constant, observation), batch_size=batch_size)


# --- a per-arm bandit whose answer is known --------------------------------------------------


class LinearPerArmEnvironment(bandit_py_environment.BanditPyEnvironment):
    """Global features g ~ N(0, I_d), arms a_j ~ N(0, I_d); the expected reward of arm j is g·a_j
    and the observed reward adds N(0, noise²). Per-arm features are [a_j, g ⊙ a_j], so the
    expected reward is linear in them (the sum of the crossed half): a linear bandit on
    [global, arm] can represent it exactly, and towers over (g, a_j) with identity initialisation
    start from exactly the crossed encoding."""

    def __init__(self, dim=3, num_arms=5, batch_size=16, noise=0.1, seed=0):
        self._d, self._n, self._b, self._noise = dim, num_arms, batch_size, noise
        self._rng = np.random.default_rng(seed)
        observation_spec = {"global": array_spec.ArraySpec((dim,), np.float32),
                            "per_arm": array_spec.ArraySpec((num_arms, 2 * dim), np.float32)}
        action_spec = array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=num_arms - 1)
        super().__init__(observation_spec, action_spec)
        self.last_regret = np.zeros(batch_size)
        rng = np.random.default_rng(12345)  # regret of a uniformly random arm, by Monte Carlo
        mean = np.einsum("sd,snd->sn", rng.standard_normal((20000, dim)), rng.standard_normal((20000, num_arms, dim)))
        self.random_policy_regret = float((mean.max(1) - mean.mean(1)).mean())

    @property
    def batched(self):
        return True

    @property
    def batch_size(self):
        return self._b

    def _observe(self):
        g = self._rng.standard_normal((self._b, self._d)).astype(np.float32)
        a = self._rng.standard_normal((self._b, self._n, self._d)).astype(np.float32)
        self._mean = np.einsum("bd,bnd->bn", g, a)
        return {"global": g, "per_arm": np.concatenate([a, g[:, None, :] * a], axis=-1)}

    def _apply_action(self, action):
        action = np.asarray(action)
        chosen = self._mean[np.arange(self._b), action]
        self.last_regret = self._mean.max(axis=1) - chosen
        return (chosen + self._noise * self._rng.standard_normal(self._b)).astype(np.float32)


# --- a two-step session where the myopic choice loses -----------------------------------------

BAIT, INVEST, JACKPOT, DUD = 2, 3, 4, 5
IMMEDIATE = {BAIT: 1.0, INVEST: 0.0, JACKPOT: 2.0, DUD: 0.0}
GAMMA = 0.9
TRUE_Q = {BAIT: 1.0, INVEST: GAMMA * 2.0, JACKPOT: 2.0, DUD: 0.0}


class TwoStepEnvironment(py_environment.PyEnvironment):
    """Candidate-environment layout ({"history", "step", "candidates"}, slate positions) with a
    slate of one item the user always consumes. Step 0 offers {BAIT, INVEST} in random order:
    BAIT pays 1 and ends the session, INVEST pays 0 and leads to step 1, which offers
    {JACKPOT, DUD}: JACKPOT pays 2, DUD 0, and the session ends. The best return is 2 (INVEST,
    then JACKPOT); the myopic policy takes BAIT (return 1), a random one averages 1. Sessions
    restart like `SessionEnvironment`'s: after LAST, the next step returns FIRST with reward 0.
    """

    num_items = 6
    num_candidates = 2

    def __init__(self, batch_size=8, seed=0):
        super().__init__(handle_auto_reset=False)
        self._b = batch_size
        self._rng = np.random.default_rng(seed)
        self.session = types.SimpleNamespace(config=types.SimpleNamespace(slate_size=1, max_steps=2))
        item = dict(minimum=0, maximum=self.num_items - 1)
        self._observation_spec = {
            "history": array_spec.BoundedArraySpec((2,), np.int32, name="history", **item),
            "step": array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=2, name="step"),
            "candidates": array_spec.BoundedArraySpec((2,), np.int32, name="candidates", **item)}
        self._action_spec = array_spec.BoundedArraySpec((1,), np.int32, minimum=0, maximum=1, name="slate_positions")

    @property
    def batched(self):
        return True

    @property
    def batch_size(self):
        return self._b

    def observation_spec(self):
        return self._observation_spec

    def action_spec(self):
        return self._action_spec

    def _pairs(self, first, second):
        flip = self._rng.random(self._b) < 0.5
        return np.where(flip[:, None], [second, first], [first, second]).astype(np.int32)

    def _observation(self):
        return {"history": self._history.copy(), "step": self._steps.copy(), "candidates": self._candidates.copy()}

    def _reset(self):
        b = self._b
        self._history = np.zeros((b, 2), np.int32)
        self._steps = np.zeros(b, np.int32)
        self._candidates = self._pairs(BAIT, INVEST)
        self._done = np.zeros(b, bool)
        self.last_info = {"click": np.zeros(b, np.float32), "chosen_slot": np.full(b, -1, np.int32)}
        return ts.TimeStep(np.zeros(b, np.int32), np.zeros(b, np.float32), np.ones(b, np.float32), self._observation())

    def _step(self, action):
        b, rows = self._b, np.arange(self._b)
        action = np.asarray(action)
        assert action.shape == (b, 1), action.shape
        item = self._candidates[rows, action[:, 0]]
        restart, active = self._done.copy(), ~self._done
        reward = np.where(active, [IMMEDIATE[i] for i in item], 0.0).astype(np.float32)
        ended = active & ((item == BAIT) | (self._steps == 1))
        self._history[active, self._steps[active]] = item[active]
        self._steps[active] += 1
        self._candidates[active] = self._pairs(JACKPOT, DUD)[active]
        self._history[restart], self._steps[restart] = 0, 0
        self._candidates[restart] = self._pairs(BAIT, INVEST)[restart]
        self._done = ended
        self.last_info = {"click": active.astype(np.float32), "chosen_slot": np.where(active, 0, -1).astype(np.int32)}
        step_type = np.where(restart, 0, np.where(ended, 2, 1)).astype(np.int32)
        return ts.TimeStep(step_type, reward, np.where(ended, 0.0, 1.0).astype(np.float32), self._observation())


def mean_return(env, positions_fn, num_episodes=48):
    """Mean undiscounted return of ``positions_fn(observation) -> [B, 1]`` over finished sessions."""
    time_step, totals, running = env.reset(), [], np.zeros(env.batch_size)
    while len(totals) < num_episodes:
        next_step = env.step(positions_fn(time_step.observation))
        active = ~time_step.is_last()
        running += np.where(active, next_step.reward, 0.0)
        for b in np.flatnonzero(active & next_step.is_last()):
            totals.append(running[b])
            running[b] = 0.0
        time_step = next_step
    return float(np.mean(totals))


@pytest.fixture(scope="module", params=[True, False], ids=["double_dqn", "dqn"])
def micro_dqn(request):
    double = request.param
    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(num_items=TwoStepEnvironment.num_items, dim=8, max_length=2, num_layers=1,
                                  num_heads=1, dropout=0.0)
    model.build_all()
    env = TwoStepEnvironment(seed=0)
    agent, q_network = build_dqn(env, model, double=double, gamma=GAMMA, learning_rate=1e-2,
                                      target_update_period=10, hidden_units=(16,))
    result = train_dqn(agent, q_network, env, 100, batch_size=16, warmup_steps=10, epsilon=0.5, log_every=20, seed=0)
    return types.SimpleNamespace(double=double, agent=agent, q_network=q_network, result=result)


# --- environments ----------------------------------------------------------------------------


@pytest.mark.parametrize("arm_features", ["item", "crossed"])
def test_bandit_environment_follows_its_specs(rl_world, arm_features):
    env = rl_world.bandit_env(batch_size=4, seed=0, arm_features=arm_features)
    assert isinstance(env, bandit_py_environment.BanditPyEnvironment) and env.batched and env.batch_size == 4
    env_utils.validate_py_environment(env, episodes=8)

    time_step = env.reset()
    observation, d, n = time_step.observation, rl_world.retriever.dim, rl_world.num_candidates
    assert (time_step.step_type == ts.StepType.FIRST).all()
    # Global features: the retriever's user state for the visible history; arms: its candidates.
    history = env.session.current_time_step().observation["history"]
    retrieved = rl_world.retriever(history)
    np.testing.assert_array_equal(env.candidates, retrieved["candidates"])
    np.testing.assert_allclose(observation["global"], retrieved["user_state"], rtol=1e-5, atol=1e-6)
    items = rl_world.retriever.item_vectors[env.candidates]
    per_arm = observation["per_arm"]
    assert per_arm.shape == (4, n, 2 * d if arm_features == "crossed" else d) and per_arm.dtype == np.float32
    np.testing.assert_allclose(per_arm[..., :d], items)
    if arm_features == "crossed":
        np.testing.assert_allclose(per_arm[..., d:], observation["global"][:, None, :] * items, rtol=1e-6)
    next_step = env.step(np.zeros(4, np.int32))
    assert (next_step.step_type == ts.StepType.LAST).all()
    assert set(np.unique(next_step.reward)) <= {0.0, 1.0}


def test_bandit_environment_rejects_bad_actions_and_arguments(rl_world):
    env = rl_world.bandit_env(batch_size=4, seed=0)
    env.reset()
    n = rl_world.num_candidates
    for bad in (np.array([0, 1, n, 2]), np.array([0, -1, 1, 2]), np.zeros(5), np.zeros(3), np.zeros((4, 2))):
        with pytest.raises(ValueError, match=r"actions must be 4 arm indices in \[0, 8\)"):
            env.step(bad.astype(np.int32))
    env.step(np.array([0, 1, 2, n - 1], np.int32))  # still usable
    with pytest.raises(ValueError, match="arm_features must be one of"):
        rl_world.bandit_env(arm_features="both")

    def short(history):
        out = rl_world.retriever(history)
        return {"candidates": out["candidates"][:, :3], "user_state": out["user_state"]}

    wrong = PerArmBanditEnvironment(rl_world.user_model, short, rl_world.retriever.item_vectors, n,
                                    config=rl_world.config, batch_size=4)
    with pytest.raises(ValueError, match=r"retrieve returned candidates of shape \(4, 3\), expected \(4, 8\)"):
        wrong.reset()


def test_bandit_environment_regret_and_oracle(rl_world):
    env = rl_world.bandit_env(batch_size=16, seed=3)
    env.reset()
    rng, rows = np.random.default_rng(0), np.arange(16)
    regrets = []
    for _ in range(5):
        probs = env.expected_rewards()
        assert probs.shape == (16, rl_world.num_candidates) and ((probs > 0) & (probs < 1)).all()
        np.testing.assert_allclose(probs, env.session.oracle_click_probabilities()[rows[:, None], env.candidates])
        action = rng.integers(0, rl_world.num_candidates, 16).astype(np.int32)
        env.step(action)
        np.testing.assert_allclose(env.last_expected_reward, probs[rows, action])
        np.testing.assert_allclose(env.last_optimal_reward, probs.max(axis=1))
        np.testing.assert_allclose(env.last_regret, env.last_optimal_reward - env.last_expected_reward)
        assert (env.last_regret >= 0).all()
        regrets.append(env.last_regret.mean())
    assert np.mean(regrets) > 0.01  # random arms are not all optimal
    for _ in range(3):  # the oracle's argmax has no regret
        env.step(env.expected_rewards().argmax(axis=1).astype(np.int32))
        np.testing.assert_array_equal(env.last_regret, 0.0)
        assert (env.last_optimal_reward > 0).all()


def test_bandit_environment_is_deterministic_by_seed(rl_world):
    def run(seed):
        env = rl_world.bandit_env(batch_size=4, seed=seed)
        steps = [env.reset()]
        for t in range(4):
            steps.append(env.step(np.full(4, t, np.int32)))
        return steps, env.last_regret.copy()

    (a, regret_a), (b, regret_b), (c, _) = run(5), run(5), run(6)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    np.testing.assert_array_equal(regret_a, regret_b)
    assert any(not np.array_equal(x.observation["global"], y.observation["global"]) for x, y in zip(a, c))


def test_candidate_environment_specs_and_dynamics(rl_world):
    env = rl_world.candidate_env(batch_size=4, seed=0)
    n, k = rl_world.num_candidates, rl_world.config.slate_size
    assert env.batched and env.batch_size == 4 and env.num_candidates == n
    assert env.action_spec() == array_spec.BoundedArraySpec((k,), np.int32, minimum=0, maximum=n - 1)
    assert env.observation_spec()["candidates"].shape == (n,)
    batched_spec = array_spec.add_outer_dims_nest(env.time_step_spec(), (4,))
    rng = np.random.default_rng(0)
    time_step, sessions_ended, clicks = env.reset(), 0, 0
    for _ in range(14):
        assert array_spec.check_arrays_nest(time_step, batched_spec)
        observation = time_step.observation
        candidates, history = observation["candidates"], observation["history"]
        np.testing.assert_array_equal(candidates, rl_world.retriever(history)["candidates"])
        assert (candidates >= 2).all() and distinct_rows(candidates)
        for row in range(4):
            assert not set(candidates[row]) & set(history[row][history[row] > 0])
        positions = np.argsort(rng.random((4, n)), axis=1)[:, :k].astype(np.int32)
        items = env.items_for(positions)
        np.testing.assert_array_equal(items, np.take_along_axis(candidates, positions, axis=1))
        time_step = env.step(positions)
        info = env.last_info
        for row in np.flatnonzero(info["click"] > 0):
            assert info["chosen_item"][row] == items[row, info["chosen_slot"][row]]
            # DQN stores the consumed candidate's position
            assert candidates[row, consumed_positions(positions, info)[row]] == info["chosen_item"][row]
        clicks += int(info["click"].sum())
        sessions_ended += int(time_step.is_last().sum())
    assert sessions_ended > 0 and clicks > 0  # sessions end (max_steps=4) and restart; users click


def test_candidate_environment_rejects_bad_slates_and_arguments(rl_world):
    env = rl_world.candidate_env(batch_size=4, seed=0)
    env.reset()
    good = np.tile(np.arange(3, dtype=np.int32), (4, 1))
    bad = {
        "position past N": (good + 6, r"slate positions must lie in \[0, 8\)"),
        "negative position": (good - 1, r"slate positions must lie in \[0, 8\)"),
        "slate too long": (np.tile(np.arange(4, dtype=np.int32), (4, 1)), "slate positions must have shape"),
        "wrong batch": (good[:3], "slate positions must have shape"),
        "duplicate position": (np.tile(np.array([0, 0, 1], np.int32), (4, 1)), "more than once"),
    }
    for action, message in bad.values():
        with pytest.raises(ValueError, match=message):
            env.step(action)
    env.step(good)  # still usable
    with pytest.raises(ValueError, match="num_candidates"):
        CandidateSessionEnvironment(rl_world.session_env(), rl_world.retriever, 2)  # fewer than a slate
    with pytest.raises(ValueError, match="num_candidates"):
        CandidateSessionEnvironment(rl_world.session_env(), rl_world.retriever, 31)  # more than the 30 items
    wrong = CandidateSessionEnvironment(rl_world.session_env(), lambda h: np.zeros((len(h), 5), np.int32), 8)
    with pytest.raises(ValueError, match=r"retrieve returned shape \(4, 5\), expected \(4, 8\)"):
        wrong.reset()
    # retrieve may return the candidates array itself
    plain = CandidateSessionEnvironment(rl_world.session_env(seed=3),
                                        lambda h: rl_world.retriever(h)["candidates"], 8)
    np.testing.assert_array_equal(plain.reset().observation["candidates"],
                                  rl_world.candidate_env(seed=3).reset().observation["candidates"])


# --- bandits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BANDITS)
def test_bandit_agent_learns_a_linear_problem(name):
    env = LinearPerArmEnvironment(seed=1)
    options = {"neural_linucb": dict(arm_slice=3),
               "neural_epsilon_greedy": dict(arm_slice=3, learning_rate=0.05, epsilon=0.02)}.get(name, {})
    tf.keras.utils.set_random_seed(0)
    agent = build_bandit(name, env, **options)
    rounds = 60 if name == "neural_epsilon_greedy" else 30  # SGD on the reward network is slower
    result = train_bandit(agent, env, rounds, log_every=1, seed=0)
    assert (result.start_step, result.steps) == (0, rounds) and len(result.curve) == rounds
    regret = np.array([point["regret"] for point in result.curve])
    assert np.isfinite([point["loss"] for point in result.curve]).all()
    random_regret = env.random_policy_regret  # about 1.9
    early, late = regret[:2].mean(), regret[-10:].mean()
    if name == "neural_epsilon_greedy":
        # SGD through the towers and a randomly initialised linear head: it always learns, but from
        # some initialisations (head weights of the wrong sign) it converges slowly, and a lucky
        # initialisation can start out good; so only the random policy is a robust baseline.
        assert late < 0.5 * random_regret, (name, regret)
    else:
        # The first round is uninformed (all arms tie); the linear models then solve the problem.
        assert late < 0.1 * random_regret and late < 0.25 * early, (name, regret)


def test_build_bandit_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown bandit 'ucb'"):
        build_bandit("ucb", LinearPerArmEnvironment())


def test_pretrain_towers_fits_a_product_structure():
    rng = np.random.default_rng(0)
    n, global_dim, arm_dim, encoding_dim = 3000, 4, 5, 3
    user_map, item_map = rng.standard_normal((global_dim, encoding_dim)), rng.standard_normal((arm_dim, encoding_dim))

    def sample(count):
        g = rng.standard_normal((count, global_dim)).astype(np.float32)
        a = rng.standard_normal((count, arm_dim)).astype(np.float32)
        return g, a, np.sum((g @ user_map) * (a @ item_map), axis=1)

    g, a, rewards = sample(n)
    rewards = rewards + 0.05 * rng.standard_normal(n)
    spec = {"global": tf.TensorSpec([global_dim], tf.float32), "per_arm": tf.TensorSpec([6, arm_dim], tf.float32)}
    encoder = PerArmTowerNetwork(spec, encoding_dim=encoding_dim)
    tf.keras.utils.set_random_seed(0)
    mse = pretrain_towers(encoder, g, a, rewards, epochs=30, batch_size=256, learning_rate=2e-2)
    variance = float(np.var(rewards))  # about 15
    assert mse < 0.02 * variance, (mse, variance)
    # It generalises: the encoding of fresh (user, arm) pairs sums to their reward.
    g2, a2, truth = sample(500)
    encoding = encoder.encode({"global": tf.constant(g2), "per_arm": tf.constant(a2[:, None, :])})
    assert encoding.shape == (500, 1, encoding_dim)
    predicted = tf.reduce_sum(encoding, axis=-1)[:, 0].numpy()
    assert np.mean((predicted - truth) ** 2) < 0.05 * variance
    with pytest.raises(ValueError, match="NaN or inf"):
        pretrain_towers(encoder, g[:4], a[:4], np.array([1.0, np.nan, 0.0, 0.0]))


def test_explore_propensities_and_chosen_arm_features():
    env = LinearPerArmEnvironment(batch_size=2000, seed=4)
    agent = build_bandit("linucb", env)
    train_bandit(agent, env, 2, seed=0)  # some data, so the greedy arms vary
    time_step = env.reset()
    per_arm = time_step.observation["per_arm"]
    step = agent.policy.action(tf_first_step(time_step.observation, 2000))
    assert isinstance(step.info, policy_utilities.PerArmPolicyInfo)
    greedy = step.action.numpy()
    assert len(np.unique(greedy)) > 1
    epsilon, n = 0.3, 5
    explored, propensity = explore(step, per_arm, epsilon, np.random.default_rng(0))
    action = explored.action.numpy()
    np.testing.assert_allclose(propensity, epsilon / n + (1 - epsilon) * (action == greedy), rtol=0, atol=1e-12)
    assert abs((action != greedy).mean() - epsilon * (n - 1) / n) < 0.05
    np.testing.assert_allclose(explored.info.chosen_arm_features.numpy(), per_arm[np.arange(2000), action])
    np.testing.assert_array_equal(explored.info.predicted_rewards_mean.numpy(),  # other info fields untouched
                                  step.info.predicted_rewards_mean.numpy())
    # Same rng, same draws.
    again, _ = explore(step, per_arm, epsilon, np.random.default_rng(0))
    np.testing.assert_array_equal(again.action.numpy(), action)
    # ε = 0: the policy's own step, propensity 1; ε = 1: uniform.
    same, ones = explore(step, per_arm, 0.0, np.random.default_rng(0))
    assert same is step and (ones == 1).all()
    _, uniform = explore(step, per_arm, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(uniform, 1 / n)
    # predicted_rewards reads the mean estimates, and refuses policies that do not emit them.
    assert predicted_rewards(step).shape == (2000, n)
    with pytest.raises(ValueError, match="predicted_rewards_mean"):
        predicted_rewards(policy_step.PolicyStep(step.action, (), ()))


# --- DQN -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dqn_learns_that_investing_pays_later(micro_dqn):
    assert isinstance(micro_dqn.agent, dqn_agent.DdqnAgent) == micro_dqn.double
    assert isinstance(micro_dqn.agent, dqn_agent.DqnAgent)
    curve = micro_dqn.result.curve
    assert [point["step"] for point in curve] == [20, 40, 60, 80, 100]
    losses = [point["loss"] for point in curve]
    assert max(losses[-2:]) < 0.25 * losses[0], losses  # the TD loss falls
    assert micro_dqn.agent.train_step_counter.numpy() == 100 - 10

    env, policy = TwoStepEnvironment(seed=7), QSlatePolicy(micro_dqn.q_network, 1)
    # Q approaches the true discounted values: Q(BAIT) = 1, Q(INVEST) = 0.9 * 2, Q(JACKPOT) = 2, Q(DUD) = 0.
    observation = env.reset().observation
    learned = {}
    for _ in range(2):
        q = policy.q_values(observation)
        for item, value in zip(observation["candidates"].ravel(), q.ravel()):
            learned.setdefault(int(item), []).append(value)
        invest = np.argmax(observation["candidates"] == INVEST, axis=1)[:, None].astype(np.int32)
        observation = env.step(invest).observation
    for item, value in TRUE_Q.items():
        assert abs(np.mean(learned[item]) - value) < 0.3, (item, learned[item])
    assert min(learned[INVEST]) > max(learned[BAIT])  # unlike the immediate reward

    rng = np.random.default_rng(0)

    def myopic(observation):
        immediate = np.vectorize(IMMEDIATE.get)(observation["candidates"])
        return np.argmax(immediate, axis=1)[:, None].astype(np.int32)

    def uniform(observation):
        return rng.integers(0, 2, (len(observation["step"]), 1)).astype(np.int32)

    greedy_return = mean_return(env, policy.positions)
    assert greedy_return == pytest.approx(2.0)
    assert mean_return(env, myopic) == pytest.approx(1.0)
    assert mean_return(env, uniform) < 1.5


def test_consumed_positions_maps_the_chosen_slot():
    positions = np.array([[5, 1, 7], [2, 0, 3], [6, 4, 1]], np.int32)
    out = consumed_positions(positions, {"chosen_slot": np.array([-1, 2, 1], np.int32)})
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [5, 3, 4])  # no click: slot 0's position


def test_linear_schedule():
    schedule = linear_schedule(1.0, 0.1, 10)
    assert [round(schedule(s), 6) for s in (0, 5, 10, 50)] == [1.0, 0.55, 0.1, 0.1]


@pytest.mark.slow
def test_dqn_trains_on_the_candidate_environment(rl_dqn):
    assert isinstance(rl_dqn.agent, dqn_agent.DdqnAgent)
    result, curve = rl_dqn.result, rl_dqn.result.curve
    assert (result.start_step, result.steps) == (0, 30)
    assert result.env_steps_per_second > 0 and result.train_steps_per_second > 0
    assert [point["step"] for point in curve] == [10, 20, 30]
    schedule = linear_schedule(0.5, 0.1, 20)
    for point in curve:
        assert point["epsilon"] == pytest.approx(schedule(point["step"] - 1))
        assert np.isfinite(point["loss"]) and np.isfinite(point["q_mean"])
        assert point["sessions"] > 0 and 0 <= point["ctr"] <= 1 and point["session_length"] == 4  # max_steps
        assert point["session_return"] == pytest.approx(point["ctr"] * point["session_length"])  # click rewards
    assert rl_dqn.agent.train_step_counter.numpy() == 30 - 5


@pytest.mark.slow
def test_dqn_loss_reads_q_at_the_action_alone_and_frozen_agents_replay_states(rl_world, rl_dqn):
    """The agents' `_compute_q_values` evaluates one candidate per row: equal to gathering the
    action's value from all N. Frozen agents with ``replay_states`` store the retrieval's user
    state in every observation, which equals the Q-network's own encoding of the history."""
    from tf_agents.trajectories import time_step as ts

    from tfmarl.rl import build_dqn, train_dqn

    env = rl_world.candidate_env(batch_size=4, seed=1)
    observation = {k: tf.constant(v) for k, v in env.reset().observation.items()}
    step = ts.TimeStep(tf.fill([4], ts.StepType.MID), tf.zeros([4]), tf.ones([4]), observation)
    actions = tf.constant([0, 3, 1, 2], tf.int32)
    full, _ = rl_dqn.q_network(observation)
    np.testing.assert_allclose(rl_dqn.agent._compute_q_values(step, actions).numpy(),  # noqa: SLF001
                               tf.gather(full, actions, batch_dims=1).numpy(), rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="replay_states needs frozen agents"):
        build_dqn(env, rl_world.model, replay_states=True)
    tf.keras.utils.set_random_seed(0)
    agent, q_network = build_dqn(env, rl_world.model, hidden_units=(8,), trainable_encoders=False, replay_states=True)
    frozen = [w.copy() for w in q_network.agents[0].get_weights()]
    train_dqn(agent, q_network, env, 8, batch_size=8, warmup_steps=3)
    for a, b in zip(frozen, q_network.agents[0].get_weights()):
        np.testing.assert_array_equal(a, b)  # the User agent did not move
    state = q_network.encode_state(observation["history"]).numpy()
    np.testing.assert_allclose(rl_world.retriever(observation["history"].numpy())["user_state"], state,
                               rtol=1e-4, atol=1e-5)
    with_state = dict(observation, state=tf.constant(state))
    np.testing.assert_allclose(q_network(with_state)[0].numpy(), q_network(observation)[0].numpy(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.slow
def test_train_dqn_resumes_from_a_checkpoint(rl_world, tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    options = dict(batch_size=8, warmup_steps=3, replay_capacity=256, checkpoint_dir=directory, checkpoint_every=4,
                   log_every=4, seed=0)

    def new_agent(seed):
        tf.keras.utils.set_random_seed(seed)
        env = rl_world.candidate_env(batch_size=4, seed=seed)
        agent, q_network = build_dqn(env, rl_world.model, double=False, hidden_units=(8,),
                                          target_update_period=5)
        return env, agent, q_network

    env, agent, q_network = new_agent(1)
    first = train_dqn(agent, q_network, env, 8, **options)
    assert (first.start_step, first.steps) == (0, 8)
    state = tf.train.get_checkpoint_state(str(directory))
    assert state.model_checkpoint_path.endswith("ckpt-8") and len(state.all_model_checkpoint_paths) == 1  # keeps 1
    saved = [v.numpy() for v in q_network.variables]
    assert agent.train_step_counter.numpy() == 8 - 3

    env, fresh, fresh_q = new_agent(2)
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(saved, fresh_q.variables))
    restored = {}
    original = loops._checkpointer

    def spy(checkpoint_dir, **objects):  # records the state right after the restore
        checkpointer = original(checkpoint_dir, **objects)
        restored.update(step=int(objects["global_step"].numpy()), frames=int(objects["replay_buffer"].num_frames()),
                        counter=int(objects["agent"].train_step_counter.numpy()),
                        variables=[v.numpy() for v in fresh_q.variables])
        return checkpointer

    monkeypatch.setattr(loops, "_checkpointer", spy)
    second = train_dqn(fresh, fresh_q, env, 16, **dict(options, checkpoint_every=8))
    assert (second.start_step, second.steps) == (8, 16)
    assert restored["step"] == 8 and restored["counter"] == 8 - 3
    assert restored["frames"] == 8 * 4  # the replay buffer came back: 8 steps of 4 sessions
    assert len(restored["variables"]) == len(saved)
    for before, after in zip(saved, restored["variables"]):
        np.testing.assert_array_equal(before, after)
    assert [point["step"] for point in second.curve] == [12, 16]
    assert fresh.train_step_counter.numpy() == (8 - 3) + (16 - 8 - 3)
    assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-16")


def test_train_bandit_resumes_from_a_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    agent = build_bandit("linucb", LinearPerArmEnvironment(seed=2))
    first = train_bandit(agent, LinearPerArmEnvironment(seed=2), 4, checkpoint_dir=directory, checkpoint_every=2,
                         log_every=2)
    assert (first.start_step, first.steps) == (0, 4)
    saved = [v.numpy() for v in agent.variables]

    fresh = build_bandit("linucb", LinearPerArmEnvironment(seed=3))
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(saved, fresh.variables))
    restored = {}
    original = loops._checkpointer

    def spy(checkpoint_dir, **objects):
        checkpointer = original(checkpoint_dir, **objects)
        restored.update(step=int(objects["global_step"].numpy()), variables=[v.numpy() for v in fresh.variables])
        return checkpointer

    monkeypatch.setattr(loops, "_checkpointer", spy)
    second = train_bandit(fresh, LinearPerArmEnvironment(seed=3), 7, checkpoint_dir=directory, log_every=1)
    assert (second.start_step, second.steps) == (4, 7) and restored["step"] == 4
    assert len(restored["variables"]) == len(saved)
    for before, after in zip(saved, restored["variables"]):
        np.testing.assert_array_equal(before, after)
    assert [point["step"] for point in second.curve] == [5, 6, 7]
    assert tf.train.latest_checkpoint(str(directory)).endswith("ckpt-7")


# --- TensorBoard and off-policy logs ---------------------------------------------------------


@pytest.mark.slow
def test_xla_dqn_scores_as_the_plain_one_and_trains(rl_world, monkeypatch):
    """TFMARL_XLA (off elsewhere in the suite): the Q-slate policy's values compiled with XLA equal
    the plain ones, and `train_dqn` runs its agent's step with XLA."""
    from tfmarl.rl import build_dqn, train_dqn

    env = rl_world.candidate_env(batch_size=4, seed=1)
    tf.keras.utils.set_random_seed(0)
    agent, q_network = build_dqn(env, rl_world.model, hidden_units=(8,), trainable_encoders=False, replay_states=True)
    observation = env.reset().observation
    plain = QSlatePolicy(q_network, 3).q_values(observation)
    monkeypatch.setenv("TFMARL_XLA", "1")
    compiled = QSlatePolicy(q_network, 3)
    assert compiled._q_values._jit_compile
    np.testing.assert_allclose(compiled.q_values(observation), plain, rtol=1e-5, atol=1e-6)
    result = train_dqn(agent, q_network, env, 10, batch_size=8, warmup_steps=3, log_every=5)
    assert int(agent.train_step_counter.numpy()) == 7 and all(np.isfinite(p["loss"]) for p in result.curve)


def test_train_dqn_writes_tensorboard_summaries(rl_dqn):
    values = event_values(rl_dqn.log_dir)
    for tag in ("dqn/loss", "dqn/epsilon", "dqn/session_return", "dqn/ctr", "dqn/q_mean", "dqn/session_length",
                "dqn/q_values"):
        assert [step for step, _ in values.get(tag, [])] == [10, 20, 30], tag
    for key in ("loss", "epsilon", "session_return", "ctr"):
        logged = [float(value) for _, value in values[f"dqn/{key}"]]
        np.testing.assert_allclose(logged, [point[key] for point in rl_dqn.result.curve], rtol=1e-6)


def test_train_bandit_writes_tensorboard_summaries(tmp_path):
    env = LinearPerArmEnvironment(seed=5)
    result = train_bandit(build_bandit("lints", env), env, 6, log_dir=tmp_path, log_every=3)
    values = event_values(tmp_path)
    for key in ("reward", "regret", "loss"):
        assert [step for step, _ in values[f"bandit/{key}"]] == [3, 6], key
        np.testing.assert_allclose([float(v) for _, v in values[f"bandit/{key}"]],
                                   [point[key] for point in result.curve], rtol=1e-6)


def test_bandit_loop_writes_off_policy_logs(rl_world, tmp_path):
    env = rl_world.bandit_env(batch_size=8, seed=4)
    agent = build_bandit("linucb", env)
    epsilon, n, rounds = 0.2, rl_world.num_candidates, 12
    with BanditLogWriter(tmp_path / "log", flush_every=30) as writer:
        result = train_bandit(agent, env, rounds, exploration_epsilon=epsilon, ope_log=writer, log_every=4, seed=0)
    assert len(list((tmp_path / "log").glob("shard-*.npz"))) == 3
    log = read_logs(tmp_path / "log")
    assert len(log) == rounds * 8 and log.num_arms == n
    assert log.arm_ids.shape == (96, n) and log.context.shape == (96, rl_world.retriever.dim)
    assert log.arm_features.shape == (96, n, rl_world.retriever.dim)
    # Propensities: ε/N for an explored arm that is not the policy's, ε/N + 1 - ε for the policy's.
    low, high = epsilon / n, epsilon / n + 1 - epsilon
    assert ((log.propensities > 0) & (log.propensities <= 1)).all()
    assert (np.isclose(log.propensities, low) | np.isclose(log.propensities, high)).all()
    assert abs(np.isclose(log.propensities, high).mean() - high) < 0.15
    # The logged arms are the shown candidates and their features.
    assert (log.arm_ids >= 2).all() and distinct_rows(log.arm_ids)
    np.testing.assert_allclose(log.arm_features, rl_world.retriever.item_vectors[log.arm_ids])
    assert set(np.unique(log.rewards)) <= {0.0, 1.0}
    per_window = log.rewards.reshape(3, 4 * 8).mean(axis=1)
    np.testing.assert_allclose(per_window, [point["reward"] for point in result.curve], rtol=1e-6)
    # With the behaviour policy as target, IPS is the mean logged reward.
    estimate = ips(log, log.propensities, num_bootstrap=0)
    assert estimate.value == pytest.approx(log.rewards.mean())
    assert estimate.effective_sample_size == pytest.approx(len(log))


# --- slate policies --------------------------------------------------------------------------


def test_random_slate_policy(rl_world):
    observation = {"history": np.zeros((200, 6), np.int32), "step": np.zeros(200, np.int32)}
    slates = RandomSlatePolicy(32, 3, seed=0)(observation)
    assert slates.shape == (200, 3) and slates.dtype == np.int32
    assert (slates >= 2).all() and (slates < 32).all() and distinct_rows(slates)
    assert len(np.unique(slates)) == 30
    np.testing.assert_array_equal(RandomSlatePolicy(32, 3, seed=0)(observation), slates)
    assert not np.array_equal(RandomSlatePolicy(32, 3, seed=1)(observation), slates)
    stats = run_episodes(rl_world.session_env(batch_size=4, seed=0), RandomSlatePolicy(32, 3, seed=0), 8)
    assert len(stats["return"]) == 8 and (stats["length"] == 4).all()


def test_popular_slate_policy_orders_by_counts_and_skips_the_history():
    counts = np.array([100, 50, 5, 9, 1, 7, 3, 9, 0, 2, 8, 4])  # reserved 0, 1 never recommended
    # popularity order: 3 (9), 7 (9, tie -> lower index), 10 (8), 5 (7), 2 (5), 11 (4), 6 (3), 9, 4, 8
    policy = PopularSlatePolicy(counts, 4)
    history = np.array([[0, 0, 0], [3, 10, 0], [7, 3, 5]], np.int32)
    slates = policy({"history": history, "step": np.zeros(3, np.int32)})
    np.testing.assert_array_equal(slates, [[3, 7, 10, 5], [7, 5, 2, 11], [10, 2, 11, 6]])


def test_greedy_slate_policy_is_the_retrievers_top_k(rl_world):
    observation = rl_world.session_env(batch_size=6, seed=2).reset().observation
    slates = GreedySlatePolicy(rl_world.retriever, 3)(observation)
    np.testing.assert_array_equal(slates, rl_world.retriever(observation["history"])["candidates"][:, :3])
    top = rl_world.model({"history": tf.constant(observation["history"])})["items"].numpy()
    np.testing.assert_array_equal(slates, top[:, :3])
    with pytest.raises(ValueError, match="fewer candidates"):
        GreedySlatePolicy(rl_world.retriever, 9)


def test_q_slate_policy(rl_world, rl_dqn):
    observation = rl_world.candidate_env(batch_size=6, seed=7).reset().observation
    policy = QSlatePolicy(rl_dqn.q_network, 3)
    q = policy.q_values(observation)
    assert q.shape == (6, rl_world.num_candidates) and np.isfinite(q).all()
    positions = policy.positions(observation)
    np.testing.assert_array_equal(positions, top_positions(q, 3))
    chosen = np.take_along_axis(q, positions, axis=1)
    assert (np.diff(chosen, axis=1) <= 0).all()
    shown = np.zeros(q.shape, bool)
    np.put_along_axis(shown, positions, True, axis=1)
    assert (chosen[:, -1] >= np.where(shown, -np.inf, q).max(axis=1)).all()  # nothing better left out
    slates = policy(observation)
    np.testing.assert_array_equal(slates, np.take_along_axis(observation["candidates"], positions, axis=1))
    # Plain session observations: candidates come from the retriever.
    plain = {"history": observation["history"], "step": observation["step"]}
    with pytest.raises(ValueError, match="no retriever"):
        policy(plain)
    retrieving = QSlatePolicy(rl_dqn.q_network, 3, retriever=rl_world.retriever)
    np.testing.assert_array_equal(retrieving(plain), slates)
    # Exploration replaces slots but keeps slates duplicate-free.
    explorer = QSlatePolicy(rl_dqn.q_network, 3, epsilon=0.5, seed=0)
    explored = np.concatenate([explorer.positions(observation) for _ in range(10)])
    assert ((explored >= 0) & (explored < 8)).all() and distinct_rows(explored)
    assert (explored != np.tile(positions, (10, 1))).any()
    stats = run_episodes(rl_world.session_env(batch_size=4, seed=0), retrieving, 8)
    assert len(stats["return"]) == 8 and stats["coverage"] > 0


def test_explore_positions_keeps_slates_distinct():
    rng = np.random.default_rng(0)
    greedy = np.stack([rng.permutation(8)[:3] for _ in range(800)])
    np.testing.assert_array_equal(explore_positions(greedy, 8, 0.0, rng), greedy)
    full = explore_positions(greedy, 8, 1.0, rng)
    assert full.shape == greedy.shape and ((full >= 0) & (full < 8)).all() and distinct_rows(full)
    assert (full != greedy).mean() > 0.6
    assert np.abs(np.bincount(full.ravel(), minlength=8) / full.size - 1 / 8).max() < 0.03  # uniform
    half = explore_positions(greedy, 8, 0.5, rng)
    assert distinct_rows(half) and 0.4 < (half != greedy).mean() < 0.6  # 0.5 * 7/8 ≈ 0.44 + slack
    everything = explore_positions(np.tile(np.arange(8), (50, 1)), 8, 1.0, rng)  # K = N: permutations
    np.testing.assert_array_equal(np.sort(everything, axis=1), np.tile(np.arange(8), (50, 1)))


def test_top_positions_is_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, -1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(top_positions(scores, 3), [[1, 3, 2], [0, 2, 3]])
    np.testing.assert_array_equal(top_positions(np.array([[1.0, 3.0, 3.0, 0.0]]), 2), [[1, 2]])


def test_top_positions_breaks_ties_to_the_lower_index():
    np.testing.assert_array_equal(top_positions(np.array([[0.0, 0.0, 1.0, 1.0]]), 1), [[2]])
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (200, 20)).astype(float)
    np.testing.assert_array_equal(top_positions(scores, 5), np.argsort(-scores, axis=1, kind="stable")[:, :5])


def test_bandit_slate_policy_matches_the_bandit_environment(rl_world, rl_bandit):
    env = rl_world.bandit_env(batch_size=5, seed=11, arm_features=rl_bandit.arm_features)
    time_step = env.reset()
    history = env.session.current_time_step().observation["history"]
    observation = {"history": history, "step": np.zeros(5, np.int32)}
    policy = BanditSlatePolicy(rl_bandit.agent.policy, rl_world.retriever, 3, arm_features=rl_bandit.arm_features)
    candidates, scores = policy.scores(observation)
    np.testing.assert_array_equal(candidates, env.candidates)
    expected = predicted_rewards(rl_bandit.agent.policy.action(tf_first_step(time_step.observation, 5)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(scores, axis=1).min() > 0  # trained: the estimates differ
    slates = policy(observation)
    np.testing.assert_array_equal(slates, np.take_along_axis(candidates, top_positions(scores, 3), axis=1))
    assert distinct_rows(slates)
    for row in range(5):
        assert not set(slates[row]) & set(history[row][history[row] > 0])


def test_slate_py_policy_runs_in_a_py_driver(rl_world):
    env = rl_world.session_env(batch_size=4, seed=0)
    policy = SlatePyPolicy(GreedySlatePolicy(rl_world.retriever, 3), env.time_step_spec(), env.action_spec())
    trajectories = []
    driver = py_driver.PyDriver(env, policy, observers=[trajectories.append], max_steps=20)
    final, _ = driver.run(env.reset())
    assert sum(int((~t.is_boundary()).sum()) for t in trajectories) >= 20
    assert any(t.is_last().any() for t in trajectories)  # sessions ended on the way (max_steps=4)
    action_spec = array_spec.add_outer_dims_nest(env.action_spec(), (4,))
    for t in trajectories:
        assert array_spec.check_arrays_nest(t.action, action_spec)
        np.testing.assert_array_equal(t.action, rl_world.retriever(t.observation["history"])["candidates"][:, :3])
    # Any slate policy plugs in, e.g. the random one.
    random_policy = SlatePyPolicy(RandomSlatePolicy(env.num_items, 3), env.time_step_spec(), env.action_spec())
    step = random_policy.action(final)
    assert step.action.shape == (4, 3) and distinct_rows(step.action)


# --- candidate retrieval ---------------------------------------------------------------------


def test_retriever_candidates_exclude_history_and_are_sorted(rl_world):
    retriever, model = rl_world.retriever, rl_world.model
    history = rl_world.session_env(batch_size=6, seed=2).reset().observation["history"].copy()
    history[0] = 0  # no history: cold start
    out = retriever(history)
    assert out["candidates"].shape == (6, 8) and out["candidates"].dtype == np.int32
    assert out["scores"].shape == (6, 8) and out["scores"].dtype == np.float32
    assert out["user_state"].shape == (6, retriever.dim)
    assert (out["candidates"] >= 2).all() and distinct_rows(out["candidates"])
    assert (np.diff(out["scores"], axis=1) <= 0).all()
    for row in range(6):
        assert not set(out["candidates"][row]) & set(history[row])
    # The pretrained model's own scores, history and reserved indices masked.
    scores = model.score_catalog(tf.constant(history)).numpy()
    scores[:, :2] = -np.inf
    np.put_along_axis(scores, history.astype(np.int64), -np.inf, axis=1)
    np.testing.assert_array_equal(out["candidates"], np.argsort(-scores, axis=1, kind="stable")[:, :8])
    np.testing.assert_allclose(out["scores"], np.take_along_axis(scores, out["candidates"], axis=1), rtol=1e-5)
    np.testing.assert_allclose(out["user_state"], model.user_state(tf.constant(history)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(retriever.item_vectors, model.item_vectors().numpy())


def test_retriever_handles_histories_that_are_not_right_padded(rl_world):
    right = np.array([[5, 9, 12, 0, 0, 0], [7, 0, 0, 0, 0, 0], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0]], np.int32)
    left = np.array([[0, 0, 0, 5, 9, 12], [0, 0, 7, 0, 0, 0], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0]], np.int32)
    gaps = np.array([[5, 0, 9, 0, 0, 12], [0, 0, 0, 0, 0, 7], [3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0]], np.int32)
    expected = rl_world.retriever(right)
    for history in (left, gaps):
        out = rl_world.retriever(history)
        np.testing.assert_array_equal(out["candidates"], expected["candidates"])
        np.testing.assert_allclose(out["user_state"], expected["user_state"], rtol=1e-5, atol=1e-6)


def test_xla_retriever_answers_as_the_plain_one(rl_world, monkeypatch):
    """TFMARL_XLA (off elsewhere in the suite) compiles retrieval with XLA: same candidates, also
    with places reserved for new items and with histories of every padding layout."""
    history = rl_world.session_env(batch_size=6, seed=2).reset().observation["history"].copy()
    history[0], history[1, :3] = 0, 0  # cold start, left padding
    for new_items in (0, 2):
        plain = CandidateRetriever(rl_world.model, 8, new_item_candidates=new_items)(history)
        monkeypatch.setenv("TFMARL_XLA", "1")
        compiled = CandidateRetriever(rl_world.model, 8, new_item_candidates=new_items)(history)
        monkeypatch.setenv("TFMARL_XLA", "0")
        np.testing.assert_array_equal(compiled["candidates"], plain["candidates"])
        np.testing.assert_allclose(compiled["scores"], plain["scores"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled["user_state"], plain["user_state"], rtol=1e-5, atol=1e-6)


def test_retriever_rejects_bad_input(rl_world):
    with pytest.raises(ValueError, match="history must be"):
        rl_world.retriever(np.array([5, 9, 12]))
    with pytest.raises(ValueError, match="history must be"):
        rl_world.retriever(np.zeros((1, 2, 3), np.int32))
    for bad in (0, 31):
        with pytest.raises(ValueError, match="num_candidates"):
            CandidateRetriever(rl_world.model, bad)


def test_retriever_uses_the_items_of_a_long_right_padded_history(rl_world):
    short = np.array([[5, 9, 12, 0, 0, 0]], np.int32)  # max_length = 6
    wide = np.zeros((1, 10), np.int32)
    wide[0, :3] = [5, 9, 12]
    expected, out = rl_world.retriever(short), rl_world.retriever(wide)
    np.testing.assert_allclose(out["user_state"], expected["user_state"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["candidates"], expected["candidates"])


def test_candidates_are_always_real_unconsumed_items(rl_world):
    """Retrieval excludes the reserved indices and the visible history, so the environment accepts at
    most num_items - 2 - history_length candidates, and every candidate is a real, unconsumed item."""
    history_length = rl_world.session_env(batch_size=1, seed=0).config.history_length
    largest = rl_world.user_model.num_items - 2 - history_length
    with pytest.raises(ValueError, match="num_candidates"):
        CandidateSessionEnvironment(rl_world.session_env(batch_size=4, seed=0),
                                    CandidateRetriever(rl_world.model, largest + 1), largest + 1)
    env = CandidateSessionEnvironment(rl_world.session_env(batch_size=4, seed=0),
                                      CandidateRetriever(rl_world.model, largest), largest)
    observation = env.reset().observation
    assert (observation["history"] > 0).any(axis=1).all()
    for candidates, history in zip(observation["candidates"], observation["history"]):
        assert (candidates >= 2).all() and not set(candidates) & set(history[history > 0])
    # The retriever itself refuses a history that leaves fewer than N items.
    everything = np.arange(2, rl_world.user_model.num_items, dtype=np.int32)[None, :]
    with pytest.raises(ValueError, match="fewer than num_candidates"):
        CandidateRetriever(rl_world.model, 8)(everything[:, :-3])
