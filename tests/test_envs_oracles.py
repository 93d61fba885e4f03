"""Tests for `tfmarl.envs.oracles`: the oracle baselines and the long-term objective they expose."""

import numpy as np
import pytest

from tfmarl.envs import SessionEnvironment, myopic_oracle_policy, quality_variety_oracle_policy, run_episodes
from tfmarl.envs.oracles import _capped_top

import fakes
from fakes import random_policy


@pytest.fixture(scope="module")
def default_model():
    return fakes.default_model()


def test_myopic_oracle_takes_the_most_clickable_items(default_model):
    env = SessionEnvironment(default_model, batch_size=8, seed=0)
    env.reset()
    slate = myopic_oracle_policy(env)(None)
    assert slate.shape == (8, 10) and slate.dtype == np.int32 and slate.min() >= 2
    p = env.oracle_click_probabilities()
    chosen = np.take_along_axis(p, slate.astype(np.int64), axis=1)
    p[np.arange(8)[:, None], slate] = -1.0
    assert (chosen.min(axis=1) >= p.max(axis=1)).all()


def test_quality_variety_oracle_caps_categories(default_model):
    env = SessionEnvironment(default_model, batch_size=8, seed=0)
    env.reset()
    slate = quality_variety_oracle_policy(env, per_category=2)(None)
    assert slate.shape == (8, 10) and all(len(set(row)) == 10 for row in slate.tolist())
    for row in default_model.item_category[slate]:
        assert np.bincount(row).max() <= 2


def test_capped_top_fills_with_the_best_rest_when_categories_run_out():
    score = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    categories = np.array([0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(_capped_top(score, categories, 2, 3, 1), [[0, 3, 1], [5, 2, 4]])
    np.testing.assert_array_equal(_capped_top(score, categories, 2, 4, 2), [[0, 1, 3, 4], [5, 4, 2, 1]])


def test_long_term_beats_myopic_beats_random(default_model):
    env = SessionEnvironment(default_model, batch_size=200, users="heldout", seed=0)
    returns = {}
    for name, policy in [("random", random_policy(env)), ("myopic", myopic_oracle_policy(env)),
                         ("quality_variety", quality_variety_oracle_policy(env))]:
        result = run_episodes(env, policy, 400, seed=1)
        returns[name] = result["return"].mean()
        assert (result["length"] < env.config.max_steps).mean() > 0.9
        if name == "myopic":
            myopic_length, myopic_ctr = result["length"].mean(), result["ctr"].mean()
        if name == "quality_variety":
            assert result["length"].mean() > 1.2 * myopic_length  # longer sessions...
            assert result["ctr"].mean() < myopic_ctr  # ...despite fewer clicks per slate
    assert returns["myopic"] > 2 * returns["random"]
    assert returns["quality_variety"] > 1.15 * returns["myopic"]
