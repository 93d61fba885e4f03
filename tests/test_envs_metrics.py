"""Tests for `tfmarl.envs.metrics`: `slate_diversity` and the rollout metrics of `run_episodes`."""

import itertools

import numpy as np
import pytest

from tfmarl.envs import SessionConfig, SessionEnvironment, run_episodes, slate_diversity

import fakes
from fakes import random_policy


@pytest.fixture(scope="module")
def tiny_model():
    return fakes.tiny_model()


def brute_force_diversity(slates):
    """1 - the mean cosine over ordered pairs i != j, one pair at a time (zero vectors: cosine 0)."""
    out = []
    for slate in np.asarray(slates, np.float64):
        cosines = []
        for i, j in itertools.permutations(range(len(slate)), 2):
            norms = np.linalg.norm(slate[i]) * np.linalg.norm(slate[j])
            cosines.append(float(slate[i] @ slate[j]) / norms if norms > 0 else 0.0)
        out.append(1.0 - np.mean(cosines) if cosines else 0.0)
    return np.array(out)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_slate_diversity_matches_a_pairwise_loop(k):
    rng = np.random.default_rng(k)
    slates = rng.normal(size=(6, k, 5)) * rng.uniform(0.1, 10.0, size=(6, k, 1))  # norms must not matter
    slates[0, 1] = 0.0  # a reserved (zero) row among the items
    slates[1] = slates[1, :1]  # k copies of one vector
    got = slate_diversity(slates)
    assert got.shape == (6,) and got.dtype == np.float64
    np.testing.assert_allclose(got, brute_force_diversity(slates), rtol=1e-12, atol=1e-12)
    assert abs(got[1]) < 1e-12
    np.testing.assert_allclose(slate_diversity(slates.astype(np.float32)), got, atol=1e-6)


def test_slate_diversity_known_values_and_edge_cases():
    same, orthogonal = [[1.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 3.0]]
    np.testing.assert_allclose(slate_diversity(np.array([same, orthogonal, [[1.0, 0.0], [-1.0, 0.0]]])),
                               [0.0, 1.0, 2.0], atol=1e-12)
    np.testing.assert_array_equal(slate_diversity(np.ones((4, 1, 3))), np.zeros(4))  # one item: no pairs
    assert slate_diversity(np.zeros((0, 5, 3))).shape == (0,)
    np.testing.assert_allclose(slate_diversity(np.array([[[1, 0], [0, 1]]])), [1.0])  # integer vectors
    for bad, message in ((np.ones((4, 3)), r"shape \[batch, slate_size, dim\], got shape \(4, 3\)"),
                         (np.array([[["a", "b"]]]), "numeric item vectors, got dtype <U1")):
        with pytest.raises(ValueError, match=message):
            slate_diversity(bad)


def test_run_episodes_and_sessions_end(tiny_model):
    env = SessionEnvironment(tiny_model, batch_size=32, seed=0)
    result = run_episodes(env, random_policy(env), 100, seed=0)
    for key in ("return", "clicks", "ctr", "length", "satisfaction", "conversions"):
        assert result[key].shape == (100,)
    assert (result["length"] >= 1).all() and (result["length"] <= env.config.max_steps).all()
    assert (result["length"] < env.config.max_steps).mean() > 0.9  # sessions end by themselves
    np.testing.assert_array_equal(result["return"], result["clicks"])  # default reward: clicks
    assert ((result["ctr"] >= 0) & (result["ctr"] <= 1)).all()
    assert 0 < result["coverage"] <= 1 and 0 < result["diversity"] <= 2
    assert result["recommended_items"].min() >= 2
    again = run_episodes(env, random_policy(env), 100, seed=0)
    np.testing.assert_array_equal(result["return"], again["return"])
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_episodes must be an integer >= 1"):
            run_episodes(env, random_policy(env), bad)


def test_run_episodes_diversity_and_coverage_of_a_fixed_slate(tiny_model):
    env = SessionEnvironment(tiny_model, SessionConfig(slate_size=4), batch_size=4, seed=0)
    slate = np.array([2, 9, 30, 77], np.int32)
    result = run_episodes(env, lambda observation: np.tile(slate, (4, 1)), 10, seed=0)
    assert result["length"].shape == (10,)  # 10 // 4 sessions per element, +1 for the first two
    np.testing.assert_allclose(result["diversity"], slate_diversity(tiny_model.item_vectors[slate][None])[0],
                               rtol=1e-12)
    np.testing.assert_array_equal(result["recommended_items"], np.sort(slate))
    assert result["coverage"] == 4 / (tiny_model.num_items - 2)
    single = SessionEnvironment(tiny_model, SessionConfig(slate_size=1), batch_size=4, seed=0)
    assert run_episodes(single, lambda observation: np.full((4, 1), 5, np.int32), 4)["diversity"] == 0.0


def test_run_episodes_return_uses_the_weights_in_either_reward_mode(tiny_model):
    config = SessionConfig(reward_weights={"click": 1.0, "satisfaction": 0.5, "conversion": 2.0})
    results = []
    for mode in ("scalar", "signals"):
        env = SessionEnvironment(tiny_model, config, batch_size=16, seed=0, reward=mode)
        results.append(run_episodes(env, random_policy(env), 40, seed=3))
    for result in results:
        expected = result["clicks"] + 0.5 * result["satisfaction"] + 2.0 * result["conversions"]
        np.testing.assert_allclose(result["return"], expected, rtol=1e-9, atol=1e-9)
        assert result["conversions"].sum() > 0 and result["satisfaction"].any()  # all three signals count
    np.testing.assert_array_equal(results[0]["return"], results[1]["return"])
