"""The policy adapter with the real tfmarl policies: DQN (greedy and ε-exploring), a bandit,
multi-agent, the pretrained ranking model and an exported SavedModel, as off-policy targets on a
slate log generated in the `rl_world` simulator."""

import numpy as np
import pytest

from tfmarl.evaluation.ope import SlateLogSimulator, evaluate_policy_offline, target_probabilities
from tfmarl.rl import QSlatePolicy, RandomSlatePolicy, make_algorithm

K = 3
SMALL = dict(hidden_units=(8,), replay_batch_size=16)


@pytest.fixture(scope="module")
def world(rl_world):
    simulator = SlateLogSimulator.from_user_model(rl_world.user_model, rl_world.retriever, slate_size=K,
                                                  epsilon=0.5, num_contexts=40, config=rl_world.config, seed=0)
    log, contexts = simulator.sample(300, seed=1)
    return simulator, log, contexts


def _options(rl_world):
    return dict(session_config=rl_world.config, candidates=rl_world.num_candidates, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def dqn(rl_world):
    algorithm = make_algorithm("dqn", rl_world.model, rl_world.user_model, **_options(rl_world), **SMALL)
    algorithm.train(20)
    return algorithm


@pytest.fixture(scope="module")
def multiagent(rl_world):
    algorithm = make_algorithm("multiagent", rl_world.model, rl_world.user_model, **_options(rl_world), **SMALL,
                               facets=3, domains=2, warmup_steps=5)
    algorithm.train(15)
    return algorithm


def _observation(log):
    return {"history": log.history.astype(np.int32), "step": np.zeros(len(log), np.int32),
            "candidates": log.candidates.astype(np.int32)}


def _check_indicator(log, policy, target):
    slates = np.asarray(policy(_observation(log)))
    np.testing.assert_array_equal(target.slates, slates)
    np.testing.assert_array_equal(target.position, (slates == log.slates).astype(float))
    np.testing.assert_array_equal(target.cascade[:, -1], (slates == log.slates).all(axis=1).astype(float))


def _check_estimates(log, policy, simulator):
    estimates = evaluate_policy_offline(log, policy, num_bootstrap=50, seed=0)
    assert list(estimates) == ["sips", "iips", "rips", "pseudo_inverse", "cascade_dr"]
    for name, estimate in estimates.items():
        assert np.isfinite(estimate.value) and estimate.ci_low <= estimate.ci_high, name
    truth = simulator.value(simulator.target_slates(policy))
    assert 0 < truth < K
    return estimates


def test_dqn_policy_is_an_indicator_of_its_greedy_slate(world, dqn):
    simulator, log, _ = world
    policy = dqn.slate_policy()
    assert isinstance(policy, QSlatePolicy)
    _check_indicator(log, policy, target_probabilities(log, policy))
    _check_estimates(log, policy, simulator)


def test_exploring_dqn_gets_its_closed_form_distribution(world, dqn, rl_world):
    _, log, _ = world
    policy = QSlatePolicy(dqn.q_network, K, retriever=rl_world.retriever, epsilon=0.4, seed=3)
    target = target_probabilities(log, policy)
    assert policy.epsilon == 0.4  # restored after computing the greedy slates
    assert not target.conditional_is_marginal
    np.testing.assert_allclose(target.support_probs.sum(axis=2), 1.0, atol=1e-12)
    # Monte Carlo: the policy itself, drawn many times on a few logged rounds.
    rows, draws = np.arange(6), 3000
    repeated = log.subset(np.repeat(rows, draws))
    sampled = policy(_observation(repeated)).reshape(len(rows), draws, K)
    logged = log.slates[rows][:, None, :]
    np.testing.assert_allclose((sampled == logged).mean(axis=1), target.position[rows], atol=0.03)
    np.testing.assert_allclose(np.cumprod(sampled == logged, axis=2).mean(axis=1), target.cascade[rows], atol=0.03)
    assert target.position[rows].max() < 1 and target.position.min() > 0  # logged items are all candidates
    with pytest.raises(ValueError, match="cascade_dr needs"):
        evaluate_policy_offline(log, policy, estimators=("cascade_dr",), num_bootstrap=0)
    assert np.isfinite(evaluate_policy_offline(log, policy, estimators=("rips",), num_bootstrap=0)["rips"].value)


def test_bandit_policy_is_an_indicator_and_a_random_policy_is_refused(world, rl_world):
    simulator, log, _ = world
    linucb = make_algorithm("linucb", rl_world.model, rl_world.user_model, **_options(rl_world))
    linucb.train(10)
    policy = linucb.slate_policy()
    _check_indicator(log, policy, target_probabilities(log, policy))
    _check_estimates(log, policy, simulator)
    # A policy that samples and says nothing of its law cannot be scored as an indicator.
    with pytest.raises(ValueError, match="RandomSlatePolicy is stochastic"):
        target_probabilities(log, RandomSlatePolicy(rl_world.user_model.num_items, K, seed=0))


@pytest.mark.slow
def test_multiagent_policy_is_an_indicator_and_its_sampling_twin_is_refused(world, multiagent):
    simulator, log, _ = world
    policy = multiagent.slate_policy()
    _check_indicator(log, policy, target_probabilities(log, policy))
    _check_estimates(log, policy, simulator)
    with pytest.raises(ValueError, match="stochastic"):
        target_probabilities(log, multiagent.slate_policy(sample=True))


def test_ranking_model_is_its_top_k_over_the_catalog(world, rl_world):
    simulator, log, _ = world
    target = target_probabilities(log, rl_world.model)
    scores = rl_world.model.score_catalog(log.history[:, -rl_world.model.max_length:].astype(np.int32),
                                          training=False).numpy().astype(np.float64)
    scores[:, :2] = -np.inf
    np.put_along_axis(scores, log.history, -np.inf, axis=1)
    np.testing.assert_array_equal(target.slates, np.argsort(-scores, axis=1, kind="stable")[:, :K])
    assert not (target.slates[:, :, None] == log.history[:, None, :]).any()
    np.testing.assert_array_equal(target.position, (target.slates == log.slates).astype(float))
    assert np.isfinite(evaluate_policy_offline(log, rl_world.model, num_bootstrap=20)["iips"].value)
    assert 0 < simulator.value(simulator.target_slates(rl_world.model)) < K


@pytest.mark.slow
def test_saved_model_targets_equal_the_in_process_policy(world, dqn, multiagent, tmp_path):
    _, log, _ = world
    for algorithm in (dqn, multiagent):
        path = algorithm.export(tmp_path / algorithm.name, k=K, warmup=False)
        exported = target_probabilities(log, str(path))
        in_process = target_probabilities(log, algorithm.slate_policy())
        np.testing.assert_array_equal(exported.slates, in_process.slates)
        np.testing.assert_array_equal(exported.position, in_process.position)
        got = evaluate_policy_offline(log, path, estimators=("iips", "rips"), num_bootstrap=0)
        want = evaluate_policy_offline(log, in_process, estimators=("iips", "rips"), num_bootstrap=0)
        assert got["iips"].value == want["iips"].value and got["rips"].value == want["rips"].value
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        target_probabilities(log, str(tmp_path))
