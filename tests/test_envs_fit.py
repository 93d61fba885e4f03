"""Tests for `tfmarl.envs.fit`: the fitted user model (`fit_user_model`, `UserModel`)."""

import dataclasses
import os

import numpy as np
import pytest

from tfmarl.data import DataError, Interactions, Vocabulary
from tfmarl.envs import UserModel, fit_user_model

import fakes


@pytest.fixture(scope="module")
def tiny_data():
    return fakes.tiny_data()


@pytest.fixture(scope="module")
def tiny_model():
    return fakes.tiny_model()


@pytest.fixture(scope="module")
def default_model():
    return fakes.default_model()


def test_user_model_contract(tiny_data, tiny_model):
    m = tiny_model
    n, u, d = 122, 200, 16
    assert (m.num_items, m.num_users, m.dim) == (n, u, d)
    assert m.item_vectors.shape == (n, d) and m.item_vectors.dtype == np.float32
    assert m.user_vectors.shape == (u, d) and m.user_vectors.dtype == np.float32
    assert m.item_bias.dtype == m.item_quality.dtype == np.float32 and m.item_category.dtype == np.int32
    assert not m.item_vectors[:2].any() and (m.item_bias[:2] < -1000).all()
    assert (m.item_category[:2] == 0).all() and not m.item_quality[:2].any()
    assert abs(m.item_bias[2:].mean()) < 1e-5
    assert abs(m.item_quality[2:].mean()) < 1e-5 and abs(m.item_quality[2:].std() - 1) < 1e-3
    for array in (m.item_vectors, m.user_vectors, m.item_bias, m.item_quality):
        assert np.isfinite(array).all()
    # Categories are the item table's first category.
    assert m.num_categories == 12 and m.metadata["category_source"] == "item table"
    table = tiny_data.items
    for index in (2, 50, 121):
        token = m.item_vocab[index - 2]
        assert m.category_names[m.item_category[index]] == table.loc[token, "categories"][0]
    # Histories: the user's items, time-ordered, only real items.
    log = tiny_data.log
    user = m.user_ids[7]
    expected = log[log["user_id"] == user].sort_values("timestamp", kind="stable")["item_id"]
    np.testing.assert_array_equal(m.vocabulary.decode(m.history(7)), expected.to_numpy())
    assert m.user_histories.items.min() >= 2


def _auc(model, data, seed=0):
    vocab = model.vocabulary
    user_index = {uid: k for k, uid in enumerate(model.user_ids)}
    users = np.array([user_index[x] for x in data.log["user_id"]])
    items = vocab.lookup(data.log["item_id"].to_numpy(dtype=object))
    positive = model.affinity(users, items)
    rng = np.random.default_rng(seed)
    negative = model.affinity(rng.integers(model.num_users, size=len(users)),
                              rng.integers(2, model.num_items, size=len(users)))
    # P(positive > negative) over all pairs, via ranks.
    scores = np.concatenate([positive, negative])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable") + 1
    n = len(positive)
    return (ranks[:n].sum() - n * (n + 1) / 2) / (n * n)


def test_affinity_separates_observed_from_random_pairs(tiny_data, tiny_model, default_model):
    assert _auc(tiny_model, tiny_data) > 0.85
    assert tiny_model.metadata["auc"] > 0.85 and default_model.metadata["auc"] > 0.85
    # Standardised: user.item over random pairs has standard deviation ~1.
    scores = default_model.user_vectors @ default_model.item_vectors[2:].T
    assert 0.9 < scores.std() < 1.1


def test_heldout_split_is_disjoint_and_deterministic(tiny_data, tiny_model):
    m = tiny_model
    assert len(np.intersect1d(m.train_users, m.heldout_users)) == 0
    np.testing.assert_array_equal(np.union1d(m.train_users, m.heldout_users), np.arange(m.num_users))
    assert len(m.heldout_users) == 40
    again = fit_user_model(tiny_data, seed=0, iterations=2)
    np.testing.assert_array_equal(again.heldout_users, m.heldout_users)
    other = fit_user_model(tiny_data, seed=1, iterations=2, heldout_fraction=0.5)
    assert len(other.heldout_users) == 100 and not np.array_equal(other.heldout_users[:40], m.heldout_users)
    np.testing.assert_array_equal(fit_user_model(tiny_data, seed=0).user_vectors, m.user_vectors)


def test_fit_without_item_table_or_ratings(tiny_data):
    bare = Interactions(log=tiny_data.log.drop(columns=["rating"]), name="bare")
    m = fit_user_model(bare, num_categories=5, iterations=5)
    assert m.num_categories == 5 and m.metadata["category_source"] == "k-means"
    assert m.metadata["quality_source"] == "fit"
    assert set(np.unique(m.item_category[2:])) == set(range(5))
    assert np.isfinite(m.item_quality).all() and abs(m.item_quality[2:].std() - 1) < 1e-3


def test_fit_rejects_bad_input(tiny_data):
    with pytest.raises(DataError, match="not in item_vocab"):
        fit_user_model(tiny_data, Vocabulary([str(i) for i in range(1, 50)]))
    with pytest.raises(DataError, match="no interactions"):
        Interactions(log=tiny_data.log.iloc[:0])
    emptied = Interactions(log=tiny_data.log, name="emptied")
    emptied.log = tiny_data.log.iloc[:0]
    with pytest.raises(DataError, match="no interactions"):
        fit_user_model(emptied)
    with pytest.raises(TypeError, match="Interactions"):
        fit_user_model(tiny_data.log)
    for bad in (dict(dim=0), dict(heldout_fraction=1.0), dict(iterations=0), dict(regularization=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fit_user_model(tiny_data, **bad)


def test_fit_with_a_larger_vocabulary(tiny_data):
    vocab = Vocabulary([str(i) for i in range(1, 131)])  # 10 catalog items nobody consumed
    m = fit_user_model(tiny_data, vocab, iterations=3)
    assert m.num_items == 132 and not m.item_vectors[122:].any()
    assert np.isfinite(m.item_quality).all()


def test_save_load_roundtrip(tmp_path, tiny_model):
    path = tmp_path / "sub" / "model.npz"
    tiny_model.save(path)
    tiny_model.save(path)  # overwrite
    assert sorted(os.listdir(path.parent)) == ["model.npz"]  # no temporary files left behind
    loaded = UserModel.load(path)
    for field in dataclasses.fields(UserModel):
        a, b = getattr(tiny_model, field.name), getattr(loaded, field.name)
        if field.name == "user_histories":
            for part in ("user_ids", "offsets", "items", "timestamps"):
                np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError):
        UserModel.load(tmp_path / "junk.npz")
