"""Action and numeric checks of the candidate and per-arm bandit environments, and the TF-Agents
contract (`validate_py_environment`) for slates of several items."""

import dataclasses
import types

import numpy as np
import pytest
from tf_agents.environments import utils as env_utils
from tf_agents.policies import random_py_policy

from tfmarl.data.synthetic import generate_synthetic
from tfmarl.envs import SessionConfig, SessionEnvironment, fit_user_model
from tfmarl.envs.bandit import PerArmBanditEnvironment
from tfmarl.envs.candidates import CandidateSessionEnvironment

N = 8  # candidates per observation
CONFIG = SessionConfig(slate_size=3, history_length=6, max_steps=4, no_click_utility=2.0)


@pytest.fixture(scope="module")
def model():
    # 42 item indices, short sessions: every test here runs in well under a second.
    return fit_user_model(generate_synthetic(n_users=60, n_items=40, interactions_per_user=10, seed=0),
                          dim=8, iterations=5, seed=0)


def make_retrieve(model, num_candidates=N):
    """A numpy stand-in for `CandidateRetriever`: the first items of a fixed random order that are
    not in the history, and the mean history item vector as the user state."""
    order = np.random.default_rng(0).permutation(np.arange(2, model.num_items))
    rank = np.full(model.num_items, np.inf)
    rank[order] = np.arange(len(order))

    def retrieve(history):
        history = np.asarray(history)
        ranks = np.broadcast_to(rank, (len(history), model.num_items)).copy()
        np.put_along_axis(ranks, history, np.inf, axis=1)  # padding 0 is excluded anyway
        candidates = np.argsort(ranks, axis=1, kind="stable")[:, :num_candidates].astype(np.int32)
        vectors = model.item_vectors[history]
        count = np.maximum((history > 0).sum(axis=1, keepdims=True), 1)
        return {"candidates": candidates, "user_state": (vectors.sum(axis=1) / count).astype(np.float32)}

    return retrieve


def candidate_env(model, config=CONFIG, batch_size=4, seed=0, retrieve=None, **kwargs):
    session = SessionEnvironment(model, config, batch_size=batch_size, seed=seed)
    return CandidateSessionEnvironment(session, retrieve or make_retrieve(model), N, **kwargs)


def bandit_env(model, batch_size=4, seed=0, **kwargs):
    return PerArmBanditEnvironment(model, make_retrieve(model), model.item_vectors, N, config=CONFIG,
                                   batch_size=batch_size, seed=seed, **kwargs)


def test_retrieve_stand_in_gives_distinct_unseen_items(model):
    env = candidate_env(model)
    observation = env.reset().observation
    candidates, history = observation["candidates"], observation["history"]
    assert (candidates >= 2).all()
    for row in range(4):
        assert len(set(candidates[row])) == N and not set(candidates[row]) & set(history[row])


# --- the per-arm bandit ----------------------------------------------------------------------


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


# --- the candidate environment ---------------------------------------------------------------


@pytest.mark.parametrize("positions, message", [
    # Float positions used to be floored silently (0.9 -> 0, 1.7 -> 1).
    (np.tile([0.9, 1.7, 2.2], (4, 1)), r"got non-integer dtype float64 with shape \(4, 3\), e.g. action\[0, 0\] = 0.9"),
    (np.tile([0.0, np.nan, 2.0], (4, 1)), r"got non-integer dtype float64 .* action\[0, 1\] = nan"),
    (np.tile(np.array([0, 1, N], np.int32), (4, 1)), rf"got action\[0, 2\] = {N}"),
    (np.array([[0, 1, 2], [0, -1, 2], [0, 1, 2], [0, 1, 2]], np.int32), r"got action\[1, 1\] = -1"),
])
def test_candidate_env_rejects_non_integer_and_out_of_range_positions(model, positions, message):
    env = candidate_env(model)
    env.reset()
    with pytest.raises(ValueError, match=r"slate positions must lie in \[0, 8\); " + message):
        env.step(positions)
    env.step(np.tile(np.arange(3, dtype=np.int32), (4, 1)))  # still usable


def test_candidate_env_names_repeated_positions_not_items(model):
    retrieve = make_retrieve(model)

    def repeating(history):  # candidates 0 and 1 are the same item
        out = retrieve(history)
        out["candidates"][:, 1] = out["candidates"][:, 0]
        return out

    for env in (candidate_env(model), candidate_env(model, retrieve=repeating)):
        env.reset()
        slate = np.tile(np.array([0, 2, 1], np.int32), (4, 1))
        slate[2] = [4, 3, 4]
        with pytest.raises(ValueError, match="slate 2 picks candidate position 4 more than once"):
            env.step(slate)
    # Distinct positions over repeated candidates still reach the session, which rejects the items.
    with pytest.raises(ValueError, match="recommends item .* more than once"):
        env.step(np.tile(np.array([0, 1, 2], np.int32), (4, 1)))


# --- the TF-Agents contract ------------------------------------------------------------------


class DistinctRandomPolicy(random_py_policy.RandomPyPolicy):
    """`RandomPyPolicy` whose slates hold distinct values: a uniformly random subset of the
    action spec's range, in random order."""

    def _action(self, time_step, policy_state, seed=None):
        step = super()._action(time_step, policy_state, seed)
        spec = self.action_spec
        low, high, k = int(spec.minimum), int(spec.maximum), spec.shape[-1]
        keys = self._rng.random_sample(step.action.shape[:-1] + (high - low + 1,))
        slate = np.argsort(keys, axis=-1)[..., :k] + low
        return step._replace(action=slate.astype(spec.dtype))


def test_validate_candidate_env_with_single_item_slates(model):
    # validate_py_environment draws every slot of the action uniformly and independently, so a
    # slate of several positions often repeats one, which the environment rightly rejects; with
    # one position per slate each random action is valid, and the stock validator runs as is.
    env = candidate_env(model, dataclasses.replace(CONFIG, slate_size=1))
    env_utils.validate_py_environment(env, episodes=6)


def test_validate_envs_with_distinct_random_slates(model, monkeypatch):
    # For slates of several items, validate_py_environment runs with its random policy swapped for
    # one that samples distinct slates: the environments' outputs are still checked against specs.
    # (The validator's module reference is swapped, not RandomPyPolicy itself, which its own
    # super() call looks up by name.)
    monkeypatch.setattr(env_utils, "random_py_policy", types.SimpleNamespace(RandomPyPolicy=DistinctRandomPolicy))
    envs = [
        SessionEnvironment(model, CONFIG, batch_size=4, seed=0),
        SessionEnvironment(model, CONFIG, batch_size=4, seed=0, reward="signals"),
        candidate_env(model),
        candidate_env(model, include_state=True, item_facets=model.item_category),
    ]
    for env in envs:
        assert env.action_spec().shape == (3,)
        env_utils.validate_py_environment(env, episodes=6)
