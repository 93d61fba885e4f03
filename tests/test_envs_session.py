"""Tests for the fitted user model and the batched interest-evolution session environment."""

import dataclasses
import os

import numpy as np
import pytest
from tf_agents.environments import utils as env_utils
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from tfmarl.data import DataError, Interactions, Vocabulary
from tfmarl.data.synthetic import generate_synthetic
from tfmarl.envs import (SessionConfig, SessionEnvironment, UserModel, fit_user_model, myopic_oracle_policy,
                         quality_variety_oracle_policy, random_slates, run_episodes)


@pytest.fixture(scope="module")
def tiny_data():
    return generate_synthetic(n_users=200, n_items=120, interactions_per_user=20, seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_data):
    return fit_user_model(tiny_data, seed=0)


@pytest.fixture(scope="module")
def default_model():
    # The default SessionConfig is calibrated for catalogs of hundreds of items and more (see
    # SessionConfig); the generator's default world (1000 users x 500 items) fits in < 1 s.
    return fit_user_model(generate_synthetic(seed=0), seed=0)


def random_policy(env, seed=0):
    rng = np.random.default_rng(seed)
    return lambda observation: random_slates(rng, env.batch_size, env.config.slate_size, env.num_items)


# --- the fitted model ----------------------------------------------------------------------


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


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("slate_size", 0, "slate_size"), ("max_steps", 2.5, "max_steps"), ("boredom_decay", 1.5, "boredom_decay"),
    ("initial_budget", float("nan"), "initial_budget"), ("step_cost", -1.0, "step_cost"),
    ("reward_weights", {"clicks": 1.0}, "unknown signal 'clicks'"),
    ("reward_weights", {"click": "1"}, r"reward_weights\['click'\]"), ("interest_step", 2.0, "interest_step"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        SessionConfig(**{field: value})


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


# --- sessions and the long-term objective -----------------------------------------------------


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
    with pytest.raises(ValueError):
        run_episodes(env, random_policy(env), 0)


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
