"""Tests for `tfmarl.envs.candidates`: `CandidateSessionEnvironment`'s observations and action checks,
and the TF-Agents contract (`validate_py_environment`) for slates of several items, session
environments included."""

import dataclasses
import threading
import types

import numpy as np
import pytest
from tf_agents.environments import utils as env_utils
from tf_agents.policies import random_py_policy

from tfmarl.envs import CandidateSessionEnvironment, SessionEnvironment

import fakes
from fakes import make_retrieve

N = fakes.NUM_CANDIDATES
CONFIG = fakes.SMALL_CONFIG


@pytest.fixture(scope="module")
def model():
    return fakes.small_model()


def candidate_env(model, config=CONFIG, batch_size=4, seed=0, retrieve=None, **kwargs):
    session = SessionEnvironment(model, config, batch_size=batch_size, seed=seed)
    return CandidateSessionEnvironment(session, retrieve or make_retrieve(model), N, **kwargs)


def test_retrieve_stand_in_gives_distinct_unseen_items(model):
    env = candidate_env(model)
    observation = env.reset().observation
    candidates, history = observation["candidates"], observation["history"]
    assert (candidates >= 2).all()
    for row in range(4):
        assert len(set(candidates[row])) == N and not set(candidates[row]) & set(history[row])


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
        candidate_env(model, item_facets=model.item_category),
    ]
    for env in envs:
        assert env.action_spec().shape == (3,)
        env_utils.validate_py_environment(env, episodes=6)


def test_candidate_observations_and_slate_mapping(model):
    env = candidate_env(model, item_facets=model.item_category)
    assert env.num_candidates == N and env.batch_size == 4
    observation = env.reset().observation
    # Item ids only: policies encode the visible history with the agents' layers themselves.
    assert set(observation) == {"history", "step", "candidates", "candidate_facets"}
    candidates = observation["candidates"]
    np.testing.assert_array_equal(observation["candidate_facets"], model.item_category[candidates])
    positions = np.array([[0, 1, 2], [7, 6, 5], [3, 0, 4], [1, 2, 3]], np.int32)
    slate = env.items_for(positions)
    np.testing.assert_array_equal(slate, np.take_along_axis(candidates, positions, axis=1))
    env.step(positions)
    info = env.last_info
    for row in np.flatnonzero(info["click"] > 0):
        assert info["chosen_item"][row] == slate[row, info["chosen_slot"][row]]
    with pytest.raises(ValueError, match="slate positions must have shape"):
        env.items_for(positions[:2])


def test_candidate_env_rejects_bad_arguments(model):
    session = SessionEnvironment(model, CONFIG, batch_size=4, seed=0)
    largest = model.num_items - 2 - CONFIG.history_length
    for n in (CONFIG.slate_size - 1, largest + 1):
        with pytest.raises(ValueError, match=rf"num_candidates must be in \[slate_size=3, .*={largest}\], got {n}"):
            CandidateSessionEnvironment(session, make_retrieve(model, n), n)
    with pytest.raises(ValueError, match=f"item_facets must be {model.num_items} non-negative facet ids"):
        CandidateSessionEnvironment(session, make_retrieve(model), N, item_facets=np.zeros(5, np.int32))
    env = CandidateSessionEnvironment(session, make_retrieve(model, N - 1), N)
    with pytest.raises(ValueError, match=r"retrieve returned shape \(4, 7\), expected \(4, 8\)"):
        env.reset()


def test_begin_step_retrieves_in_a_worker_and_matches_step(model):
    """`begin_step` returns the session's step at once and retrieves the next candidates in its
    worker thread; ``result()`` gives what `step` gives, episode ends included."""
    threads = []
    retrieve = make_retrieve(model)

    def recording_retrieve(history):
        threads.append(threading.current_thread().name)
        return retrieve(history)

    stepped, begun = candidate_env(model, seed=3), candidate_env(model, seed=3, retrieve=recording_retrieve)
    expected, time_step = stepped.reset(), begun.reset()
    rng = np.random.default_rng(0)
    for _ in range(2 * CONFIG.max_steps + 1):  # across episode ends
        positions = np.stack([rng.permutation(N)[:3] for _ in range(4)]).astype(np.int32)
        expected = stepped.step(positions)
        pending = begun.begin_step(positions)
        assert "candidates" not in pending.session_step.observation
        np.testing.assert_array_equal(pending.session_step.step_type, expected.step_type)
        np.testing.assert_array_equal(pending.session_step.reward, expected.reward)
        np.testing.assert_array_equal(begun.last_info["chosen_slot"], stepped.last_info["chosen_slot"])
        time_step = pending.result()
        assert begun.current_time_step() is time_step
        for key, value in expected.observation.items():
            np.testing.assert_array_equal(time_step.observation[key], value)
        np.testing.assert_array_equal(begun.last_user_state, stepped.last_user_state)
    assert threads[0] == "MainThread" and set(threads[1:]) == {"tfmarl-retrieval_0"}  # reset retrieves in place
    # A step begun and not awaited is settled by the next call, in order.
    pending = begun.begin_step(positions)
    again = begun.step(positions)
    expected = stepped.step(positions)
    expected = stepped.step(positions)
    np.testing.assert_array_equal(again.observation["candidates"], expected.observation["candidates"])
    assert pending.result().observation["history"].shape == again.observation["history"].shape
    begun.close()
    stepped.close()


def test_begin_step_errors(model):
    env = candidate_env(model)
    with pytest.raises(ValueError, match=r"begin_step before reset\(\)"):
        env.begin_step(np.zeros((4, 3), np.int32))
    calls = []
    retrieve = make_retrieve(model)

    def failing_once(history):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("retrieval service down")
        return retrieve(history)

    env = candidate_env(model, retrieve=failing_once)
    env.reset()
    positions = np.tile(np.arange(3, dtype=np.int32), (4, 1))
    pending = env.begin_step(positions)
    with pytest.raises(RuntimeError, match="retrieval service down"):
        pending.result()
    assert env.reset().observation["candidates"].shape == (4, N)  # the failure is raised once, then gone
    with pytest.raises(ValueError, match="slate positions must have shape"):
        env.begin_step(positions[:2])  # checked before anything is retrieved
    env.close()
