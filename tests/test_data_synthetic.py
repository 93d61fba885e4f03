"""Tests for the synthetic interaction generator."""

import time

import numpy as np
import pandas as pd
import pytest

from tfmarl.data.interactions import Interactions
from tfmarl.data.synthetic import generate_synthetic

SMALL = dict(n_users=60, n_items=40, n_categories=5, interactions_per_user=12)


@pytest.fixture(scope="module")
def default_data():
    return generate_synthetic()


def test_shape_and_contract(default_data):
    data = default_data
    assert isinstance(data, Interactions) and data.name == "synthetic"
    log, items = data.log, data.items
    assert list(log.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert log["timestamp"].dtype == np.int64 and log["rating"].dtype == np.float64
    assert set(log["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(set(log["rating"])) == 5
    assert data.num_users == 1000
    assert set(log["user_id"]) == {str(u) for u in range(1, 1001)}
    assert list(items.index) == [str(i) for i in range(1, 501)]
    assert set(log["item_id"]) <= set(items.index)
    assert 0.8 * 50 * 1000 < data.num_interactions < 1.2 * 50 * 1000


def test_ground_truth_metadata(default_data):
    meta, items = default_data.metadata, default_data.items
    dim = meta["latent_dim"]
    assert meta["item_factors"].shape == (500, dim) and meta["item_factors"].dtype == np.float32
    assert meta["item_category"].shape == (500,)
    assert len(meta["category_names"]) == 12 == len(set(meta["category_names"]))
    final = meta["user_interests_final"]
    assert final.shape == (1000, 12) and np.allclose(final.sum(axis=1), 1.0, atol=1e-5)
    assert meta["seed"] == 0 and meta["n_users"] == 1000 and meta["interest_drift"] == 0.05
    assert meta["duplicates"] == 0
    # The first category of an item is its primary one; items have 1 to 3 distinct categories.
    names = meta["category_names"]
    for cats, primary in zip(items["categories"], meta["item_category"]):
        assert 1 <= len(cats) <= 3 and len(set(cats)) == len(cats)
        assert cats[0] == names[primary]


def test_deterministic_by_seed():
    a, b = generate_synthetic(**SMALL, seed=3), generate_synthetic(**SMALL, seed=3)
    pd.testing.assert_frame_equal(a.log, b.log)
    pd.testing.assert_frame_equal(a.items, b.items)
    for key in ("item_factors", "item_category", "user_interests_final"):
        np.testing.assert_array_equal(a.metadata[key], b.metadata[key])
    c = generate_synthetic(**SMALL, seed=4)
    assert not a.log.equals(c.log)
    assert not np.array_equal(a.metadata["item_factors"], c.metadata["item_factors"])


def test_no_repeated_item_per_user_and_increasing_time(default_data):
    log = default_data.log
    assert not log.duplicated(subset=["user_id", "item_id"]).any()
    assert (log.groupby("user_id", sort=False)["timestamp"].diff().dropna() > 0).all()
    assert log["timestamp"].is_monotonic_increasing  # the log is in time order
    assert log["timestamp"].min() >= 1_600_000_000


def test_sequences_capped_by_catalog_and_at_least_five():
    data = generate_synthetic(n_users=30, n_items=8, n_categories=3, interactions_per_user=50)
    sizes = data.log.groupby("user_id").size()
    assert (sizes == 8).all()  # every user sees the whole catalog, each item once
    assert not data.log.duplicated(subset=["user_id", "item_id"]).any()
    lengths = generate_synthetic(n_users=300, n_items=100, interactions_per_user=6).log.groupby("user_id").size()
    assert lengths.min() >= 5 and lengths.max() > 6


def test_titles_carry_category_signal(default_data):
    items, primary = default_data.items, default_data.metadata["item_category"]
    words = [set(title.split()) for title in items["title"]]
    same, other = [], []
    for i in range(0, 500, 5):
        for j in range(i + 1, 500, 3):
            overlap = len(words[i] & words[j]) / len(words[i] | words[j])
            (same if primary[i] == primary[j] else other).append(overlap)
    assert np.mean(same) > 5 * np.mean(other)
    assert all(len(title.split()) == 3 for title in items["title"])
    assert all(text.startswith(title) for title, text in zip(items["title"], items["text"]))


def test_choices_follow_interests_and_popularity():
    data = generate_synthetic(interest_drift=0.0, seed=1)
    meta, log = data.metadata, data.log
    users = log["user_id"].astype(int).to_numpy() - 1
    items = log["item_id"].astype(int).to_numpy() - 1
    interest = meta["user_interests_initial"][users, meta["item_category"][items]]
    assert interest.mean() > 2 / 12  # users pick their favourite categories more than by chance
    high = interest > np.median(interest)
    assert log["rating"][high].mean() > log["rating"][~high].mean() + 0.3
    np.testing.assert_allclose(meta["user_interests_final"], meta["user_interests_initial"], atol=1e-6)
    flat = generate_synthetic(popularity_skew=0.0, seed=1).log["item_id"].value_counts()
    skewed = generate_synthetic(popularity_skew=2.0, seed=1).log["item_id"].value_counts()
    assert skewed.iloc[:10].sum() > 2 * flat.iloc[:10].sum()


def test_interests_drift():
    meta = generate_synthetic(**SMALL, interest_drift=0.3).metadata
    change = np.abs(meta["user_interests_final"] - meta["user_interests_initial"]).sum(axis=1)
    assert change.mean() > 0.2


@pytest.mark.parametrize("n_categories", [1, 2, 30])
def test_few_or_many_categories(n_categories):
    data = generate_synthetic(n_users=20, n_items=60, n_categories=n_categories, interactions_per_user=10)
    assert len(data.metadata["category_names"]) == n_categories
    assert set(data.categories()) <= set(data.metadata["category_names"])
    assert data.items["title"].str.len().min() > 0


def test_tiny_config_is_fast():
    generate_synthetic(n_users=50, n_items=30)
    start = time.perf_counter()
    data = generate_synthetic(n_users=50, n_items=30)
    assert time.perf_counter() - start < 0.5
    assert data.num_users == 50


def test_a_million_interactions():
    start = time.perf_counter()
    data = generate_synthetic(n_users=21_000, interactions_per_user=50)
    elapsed = time.perf_counter() - start
    assert data.num_interactions >= 1_000_000
    assert not data.log.duplicated(subset=["user_id", "item_id"]).any()
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("kwargs", [
    dict(n_users=0), dict(n_items=-1), dict(n_categories=2.5), dict(interactions_per_user=True),
    dict(interest_drift=-0.1), dict(interest_drift=float("nan")), dict(popularity_skew="1"),
    dict(seed=-1), dict(seed=1.5), dict(start_time=-5), dict(start_time=1_600_000_000_000),
])
def test_invalid_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        generate_synthetic(**kwargs)
