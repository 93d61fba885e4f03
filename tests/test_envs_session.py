"""Tests for `tfmarl.envs.session`: the batched interest-evolution `SessionEnvironment` and its
action helpers (`random_slates`, `first_repeat`)."""

import dataclasses

import numpy as np
import pytest
from tf_agents.environments import utils as env_utils
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from tfmarl.envs import SessionConfig, SessionEnvironment, first_repeat, myopic_oracle_policy, random_slates

import fakes
from fakes import random_policy


@pytest.fixture(scope="module")
def tiny_model():
    return fakes.tiny_model()


def test_environment_rejects_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="users"):
        SessionEnvironment(tiny_model, users="test")
    with pytest.raises(ValueError, match="users must lie"):
        SessionEnvironment(tiny_model, users=np.array([0, 500]))
    with pytest.raises(ValueError, match="reward"):
        SessionEnvironment(tiny_model, reward="vector")
    with pytest.raises(ValueError, match="slate_size"):
        SessionEnvironment(tiny_model, SessionConfig(slate_size=121))


# --- TF-Agents contract ----------------------------------------------------------------------


@pytest.mark.parametrize("reward", ["scalar", "signals"])
def test_validate_py_environment(tiny_model, reward):
    # validate_py_environment acts with uniformly random actions from the action spec, which for
    # slates of several items may repeat an item (which the environment rightly rejects); with one
    # item per slate every random action is valid. Batched slates are checked below.
    env = SessionEnvironment(tiny_model, SessionConfig(slate_size=1), batch_size=4, seed=0, reward=reward)
    env_utils.validate_py_environment(env, episodes=3)


@pytest.mark.parametrize("reward", ["scalar", "signals"])
def test_batched_time_steps_match_specs(tiny_model, reward):
    env = SessionEnvironment(tiny_model, batch_size=8, seed=1, reward=reward)
    assert env.batched and env.batch_size == 8
    assert set(env.observation_spec()) == {"history", "step"}  # nothing about the hidden state
    assert env.action_spec().shape == (10,) and env.action_spec().minimum == 2
    assert env.action_spec().maximum == tiny_model.num_items - 1
    spec = array_spec.add_outer_dims_nest(env.time_step_spec(), (8,))
    policy = random_policy(env)
    time_step = env.reset()
    assert (time_step.step_type == ts.StepType.FIRST).all()
    for _ in range(40):
        assert array_spec.check_arrays_nest(time_step, spec)
        slate = policy(time_step.observation)
        assert array_spec.check_arrays_nest(slate, array_spec.add_outer_dims_nest(env.action_spec(), (8,)))
        time_step = env.step(slate)


def test_deterministic_by_seed(tiny_model):
    def rollout(seed):
        env = SessionEnvironment(tiny_model, batch_size=16, seed=seed)
        policy = random_policy(env, seed=5)
        steps, infos = [env.reset()], []
        for _ in range(30):
            steps.append(env.step(policy(steps[-1].observation)))
            infos.append(env.last_info)
        return steps, infos

    (a, ia), (b, ib), (c, _) = rollout(3), rollout(3), rollout(4)
    for x, y in zip(a, b):
        for u, v in zip(_flat(x), _flat(y)):
            np.testing.assert_array_equal(u, v)
    for x, y in zip(ia, ib):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x.reward, y.reward) for x, y in zip(a, c))


def _flat(time_step):
    yield time_step.step_type
    yield time_step.reward
    yield time_step.discount
    yield time_step.observation["history"]
    yield time_step.observation["step"]


def test_auto_reset_of_single_elements(tiny_model):
    env = SessionEnvironment(tiny_model, SessionConfig(max_steps=6), batch_size=6, seed=2)
    policy = random_policy(env)
    time_step = env.reset()
    seen_last = False
    for _ in range(30):
        last = time_step.is_last()
        slate = policy(time_step.observation)
        slate[last] = 0  # the action of an element that restarts is ignored, even an invalid one
        previous_steps = time_step.observation["step"].copy()
        time_step = env.step(slate)
        if last.any():
            seen_last = True
            assert (time_step.step_type[last] == ts.StepType.FIRST).all()
            assert (time_step.reward[last] == 0).all() and (time_step.discount[last] == 1).all()
            assert (time_step.observation["step"][last] == 0).all()
            assert (env.last_info["chosen_slot"][last] == -1).all()
        going = ~last
        assert (time_step.step_type[going] != ts.StepType.FIRST).all()
        np.testing.assert_array_equal(time_step.observation["step"][going], previous_steps[going] + 1)
        ending = time_step.is_last()
        assert (time_step.discount[ending] == 0).all() and (time_step.discount[~ending] == 1).all()
        assert (time_step.observation["step"] <= 6).all()
    assert seen_last


def test_history_shows_consumed_items(tiny_model):
    env = SessionEnvironment(tiny_model, SessionConfig(history_length=5), batch_size=32, users="all", seed=0)
    time_step = env.reset()
    history = time_step.observation["history"]
    for b, user in enumerate(env._user):
        items = tiny_model.history(user)[-5:]
        np.testing.assert_array_equal(history[b, :len(items)], items)
        assert not history[b, len(items):].any()
    policy = myopic_oracle_policy(env)
    for _ in range(3):
        before = time_step.observation["history"]
        time_step = env.step(policy(time_step.observation))
        info = env.last_info
        for b in np.flatnonzero(info["click"] > 0):
            row, old = time_step.observation["history"][b], before[b]
            length = np.count_nonzero(old)
            expected = np.append(old[:length], info["chosen_item"][b])[-5:]
            np.testing.assert_array_equal(row[:len(expected)], expected)
        assert ((info["chosen_slot"] >= 0) == (info["click"] > 0)).all()
        assert (info["chosen_item"][info["click"] == 0] == 0).all()


def test_bad_actions_are_rejected(tiny_model):
    env = SessionEnvironment(tiny_model, SessionConfig(slate_size=3), batch_size=2, seed=0)
    env.reset()
    good = np.array([[2, 3, 4], [5, 6, 7]], dtype=np.int32)
    cases = [
        (good[:1], "shape"), (good[:, :2], "shape"), (good.astype(np.float32), "integer"),
        (np.array([[2, 3, 4], [5, 6, 122]]), r"action\[1, 2\] = 122 is outside"),
        (np.array([[2, -1, 4], [5, 6, 7]]), "outside"),
        (np.array([[2, 3, 4], [1, 6, 7]]), "reserved index"), (np.array([[0, 3, 4], [5, 6, 7]]), "reserved"),
        (np.array([[2, 3, 4], [5, 6, 5]]), "slate 1 recommends item 5 more than once"),
    ]
    for action, message in cases:
        with pytest.raises(ValueError, match=message):
            env.step(action)
    env.step(good)  # still usable


def test_nan_parameters_are_caught(tiny_model):
    broken = dataclasses.replace(tiny_model, item_quality=tiny_model.item_quality.copy())
    env = SessionEnvironment(broken, batch_size=16, seed=0)
    policy = myopic_oracle_policy(env)
    time_step = env.reset()
    broken.item_quality[2:] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite reward"):
        for _ in range(5):  # the first step with a click trips the guard
            time_step = env.step(policy(time_step.observation))


def test_user_pools(tiny_model):
    for pool, users in (("train", tiny_model.train_users), ("heldout", tiny_model.heldout_users),
                        (np.array([3, 4]), [3, 4])):
        env = SessionEnvironment(tiny_model, SessionConfig(max_steps=3), batch_size=32, users=pool, seed=0)
        policy, time_step, drawn = random_policy(env), env.reset(), set()
        for _ in range(12):
            drawn.update(env._user.tolist())
            time_step = env.step(policy(time_step.observation))
        assert drawn <= set(np.asarray(users).tolist())
    assert len(drawn) == 2


def test_rewards_follow_the_weights(tiny_model):
    weights = {"click": 1.0, "satisfaction": 0.5, "conversion": 2.0}
    scalar = SessionEnvironment(tiny_model, SessionConfig(reward_weights=weights), batch_size=64, seed=0)
    signals = SessionEnvironment(tiny_model, SessionConfig(reward_weights=weights), batch_size=64, seed=0,
                                 reward="signals")
    a, b = scalar.reset(), signals.reset()
    policy = random_policy(scalar)
    for _ in range(10):
        slate = policy(a.observation)
        a, b = scalar.step(slate), signals.step(slate)
        assert set(b.reward) == {"click", "satisfaction", "conversion"}
        combined = sum(w * b.reward[s] for s, w in weights.items())
        np.testing.assert_allclose(a.reward, combined, rtol=1e-5, atol=1e-5)
        info = signals.last_info
        np.testing.assert_array_equal(b.reward["click"], info["click"])
        assert (info["conversion"] <= info["click"]).all() and (info["satisfaction"][info["click"] == 0] == 0).all()


def test_oracle_click_probabilities_match_choices(tiny_model):
    env = SessionEnvironment(tiny_model, batch_size=4000, users=np.array([5]), seed=0)
    env.reset()
    slate = np.tile(np.argsort(-env.oracle_click_probabilities()[0])[:10], (4000, 1)).astype(np.int32)
    probabilities = env.oracle_click_probabilities(slate)
    assert probabilities.shape == (4000, 10) and probabilities.sum(axis=1).max() <= 1.0
    alone = env.oracle_click_probabilities()
    assert alone.shape == (4000, tiny_model.num_items) and not alone[:, :2].any()
    env.step(slate)
    slot = env.last_info["chosen_slot"]
    empirical = np.bincount(slot[slot >= 0], minlength=10) / len(slot)
    np.testing.assert_allclose(empirical, probabilities[0], atol=0.03)
    satisfaction = env.oracle_expected_satisfaction(slate[:, :3])
    assert satisfaction.shape == (4000, 3) and np.isfinite(satisfaction).all()


def test_random_slates():
    rng = np.random.default_rng(0)
    slates = random_slates(rng, 500, 10, 30)
    assert slates.shape == (500, 10) and slates.dtype == np.int32
    assert slates.min() >= 2 and slates.max() <= 29
    assert all(len(set(row)) == 10 for row in slates.tolist())
    assert len(np.unique(slates)) == 28
    np.testing.assert_array_equal(random_slates(np.random.default_rng(1), 5, 3, 30),
                                  random_slates(np.random.default_rng(1), 5, 3, 30))
    with pytest.raises(ValueError):
        random_slates(rng, 2, 29, 30)


def test_first_repeat_names_the_first_slate_and_value():
    assert first_repeat(np.array([[2, 3, 4], [5, 6, 7]])) is None
    assert first_repeat(np.array([[2, 3, 4], [9, 6, 9], [3, 3, 8]])) == (1, 9)
    assert first_repeat(np.array([[4, 4, 2, 2]])) == (0, 2)  # the smallest repeated value of the row
    assert first_repeat(np.zeros((0, 3), np.int32)) is None
