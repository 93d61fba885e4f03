"""Tests for `tfmarl.envs.bandit`: `PerArmBanditEnvironment`'s arms, rewards, regret and checks."""

import dataclasses

import numpy as np
import pytest

from tfmarl.envs import PerArmBanditEnvironment

import fakes
from fakes import make_retrieve

N = fakes.NUM_CANDIDATES
CONFIG = fakes.SMALL_CONFIG


@pytest.fixture(scope="module")
def model():
    return fakes.small_model()


def bandit_env(model, batch_size=4, seed=0, **kwargs):
    return PerArmBanditEnvironment(model, make_retrieve(model), model.item_vectors, N, config=CONFIG,
                                   batch_size=batch_size, seed=seed, **kwargs)


@pytest.mark.parametrize("action, message", [
    (np.array([0.5, 1.7, 0.0, 1.0]), r"got non-integer dtype float64 with shape \(4,\), e.g. action\[0\] = 0.5"),
    (np.array([0.0, np.nan, 1.0, 2.0]), r"got non-integer dtype float64 .* action\[1\] = nan"),
    (np.array([0.0, 1.0, 2.0, 3.0]), r"got non-integer dtype float64"),  # whole floats too, as SessionEnvironment
    (np.array([True, False, True, True]), r"got non-integer dtype bool"),
    (np.array([0, 1, N, 2], np.int32), rf"got action\[2\] = {N} \(values in \[0, {N}\]\)"),
    (np.array([0, -3, 1, 2], np.int64), r"got action\[1\] = -3"),
])
def test_bandit_rejects_non_integer_and_out_of_range_arms(model, action, message):
    env = bandit_env(model)
    env.reset()
    with pytest.raises(ValueError, match=r"actions must be 4 arm indices in \[0, 8\); " + message):
        env.step(action)
    env.step(np.array([0, 1, 2, N - 1], np.int32))  # still usable


def test_bandit_catches_non_finite_click_probabilities(model):
    broken = dataclasses.replace(model, user_vectors=model.user_vectors.copy())
    broken.user_vectors[3] = np.nan  # user 3's probabilities are NaN; user 5's are fine
    env = PerArmBanditEnvironment(broken, make_retrieve(broken), broken.item_vectors, N, config=CONFIG,
                                  batch_size=8, users=np.array([3, 5]), seed=0)
    with pytest.raises(FloatingPointError, match="non-finite click probabilities") as info:
        env.reset()  # a NaN probability used to lose every draw: reward 0, silently
    rows = np.flatnonzero(env.session._user == 3)
    assert 0 < len(rows) < 8  # both users drawn, so the message must single out user 3's rows
    assert f"batch elements {rows.tolist()} (users {[3] * len(rows)})" in str(info.value)
    # A healthy model is unaffected, and rewards stay 0/1.
    healthy = bandit_env(model, batch_size=8)
    healthy.reset()
    assert set(np.unique(healthy.step(np.zeros(8, np.int32)).reward)) <= {0.0, 1.0}


def test_bandit_observation_rewards_and_regret(model):
    env = bandit_env(model, batch_size=6, arm_features="crossed")
    observation = env.reset().observation
    state, arms = observation["global"], observation["per_arm"]
    assert state.shape == (6, 8) and arms.shape == (6, N, 16) and arms.dtype == np.float32
    items = model.item_vectors[env.candidates]
    np.testing.assert_array_equal(arms[..., :8], items)
    np.testing.assert_allclose(arms[..., 8:], state[:, None, :] * items, rtol=1e-6)
    p = env.expected_rewards()
    assert p.shape == (6, N) and ((p >= 0) & (p <= 1)).all()
    env.step(p.argmax(axis=1).astype(np.int32))
    np.testing.assert_array_equal(env.last_regret, np.zeros(6))
    np.testing.assert_array_equal(env.last_expected_reward, p.max(axis=1))
    p = env.expected_rewards()  # the next round's candidates
    reward = env.step(p.argmin(axis=1).astype(np.int32)).reward
    np.testing.assert_allclose(env.last_regret, p.max(axis=1) - p.min(axis=1))
    assert (env.last_regret >= 0).all() and set(np.unique(reward)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="arm_features must be one of"):
        bandit_env(model, arm_features="concat")
