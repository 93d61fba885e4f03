"""Tests for the RL exports: TF-Agents `PolicySaver` versions (`save_policy`) and the string-in /
string-out candidate recommender (`export_candidate_recommender` with `q_network_scorer` and
`bandit_scorer`), reloaded in fresh processes the way a server would load them."""

import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from tfmarl.export import (bandit_scorer, existing_versions, export_candidate_recommender, q_network_scorer,
                           save_policy)
from tfmarl.rl import BanditSlatePolicy, QSlatePolicy

K = 3


def run_python(code, *, legacy_keras):
    """Runs ``code`` in a fresh interpreter (outside the repository) and returns its last stdout line as JSON."""
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd="/", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exports(rl_world, rl_dqn, rl_bandit, tmp_path_factory):
    base = tmp_path_factory.mktemp("rl_exports")
    policies = base / "policies"
    paths = types.SimpleNamespace(policies=policies)
    paths.dqn_policy = save_policy(rl_dqn.agent.policy, policies)
    paths.bandit_policy = save_policy(rl_bandit.agent.policy, policies)
    paths.q = export_candidate_recommender(
        rl_world.model, q_network_scorer(rl_dqn.q_network, rl_world.config.history_length), base / "q",
        variables=rl_dqn.q_network.variables, k=K, num_candidates=rl_world.num_candidates,
        metadata={"agent": "double_dqn"})
    paths.bandit = export_candidate_recommender(
        rl_world.model, bandit_scorer(rl_bandit.agent.policy, rl_world.model, arm_features=rl_bandit.arm_features),
        base / "bandit", variables=rl_bandit.agent.policy.variables(), k=K, num_candidates=rl_world.num_candidates)
    return paths


@pytest.fixture(scope="module")
def requests(rl_world):
    """String histories for the serving signature, and their index form (right-padded to 6)."""
    vocabulary = rl_world.user_model.vocabulary
    history = rl_world.session_env(batch_size=4, seed=9).reset().observation["history"][:, :6].copy()
    history[1, 3:] = 0  # a shorter history
    strings = vocabulary.decode(history).astype(str).tolist()
    cold = [["not-an-item", "", "", "", "", ""], [""] * 6]  # unknown ids only; padding only
    return types.SimpleNamespace(history=history, strings=strings, cold=cold, tokens=set(vocabulary.tokens),
                                 vocabulary=vocabulary)


def expected_slates(rl_world, history, score_candidates):
    """The in-process top K over the retrieved candidates for ``score_candidates(candidates) -> [B, N]``."""
    candidates = rl_world.retriever(history)["candidates"]
    scores = score_candidates(candidates)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(scores, order, axis=1)


@pytest.mark.slow
def test_save_policy_writes_new_versions(exports):
    assert exports.dqn_policy == exports.policies / "1" and exports.bandit_policy == exports.policies / "2"
    assert existing_versions(exports.policies) == [1, 2]
    assert sorted(p.name for p in exports.policies.iterdir()) == ["1", "2"]  # no temporary directories left
    for version in (exports.dqn_policy, exports.bandit_policy):
        assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert exports.q.name == "1" and exports.bandit.name == "1"
    info = json.loads((exports.q / "assets.extra" / "tfmarl.json").read_text())
    assert info["k"] == K and info["num_candidates"] == 8 and info["agent"] == "double_dqn"
    assert info["signature"] == "serving_default" and info["num_items"] == 32


def test_q_network_export_serves_the_q_policy_slates(rl_world, rl_dqn, exports, requests):
    serve = tf.saved_model.load(str(exports.q)).signatures["serving_default"]
    out = serve(history=tf.constant(requests.strings))
    ids, scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
    policy = QSlatePolicy(rl_dqn.q_network, K)

    def q_at_session_start(candidates):
        return policy.q_values({"history": requests.history, "step": np.zeros(len(candidates), np.int32),
                                "candidates": candidates})

    items, values = expected_slates(rl_world, requests.history, q_at_session_start)
    np.testing.assert_array_equal(ids, requests.vocabulary.decode(items).astype(str))
    np.testing.assert_allclose(scores, values, rtol=1e-4, atol=1e-5)


def test_bandit_export_serves_the_bandit_policy_slates(rl_world, rl_bandit, exports, requests):
    serve = tf.saved_model.load(str(exports.bandit)).signatures["serving_default"]
    out = serve(history=tf.constant(requests.strings))
    ids, scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
    policy = BanditSlatePolicy(rl_bandit.agent.policy, rl_world.retriever, K, arm_features=rl_bandit.arm_features)
    candidates, predicted = policy.scores({"history": requests.history})
    items, values = expected_slates(rl_world, requests.history, lambda c: predicted)
    np.testing.assert_array_equal(ids, requests.vocabulary.decode(items).astype(str))
    np.testing.assert_array_equal(ids, requests.vocabulary.decode(policy({"history": requests.history})).astype(str))
    np.testing.assert_allclose(scores, values, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_candidate_recommender_exports_load_with_tensorflow_alone(exports, requests):
    code = f"""
        import json, sys
        import tensorflow as tf
        result = {{}}
        for name, path in (("q", {str(exports.q)!r}), ("bandit", {str(exports.bandit)!r})):
            serve = tf.saved_model.load(path).signatures["serving_default"]
            out = serve(history=tf.constant({requests.strings + requests.cold!r}))
            result[name] = {{"ids": out["item_ids"].numpy().astype(str).tolist(),
                             "scores": out["scores"].numpy().tolist(),
                             "dtypes": [out["item_ids"].dtype.name, out["scores"].dtype.name]}}
        result["modules"] = sorted(m for m in ("tfmarl", "tf_agents", "tensorflow_probability", "tf_keras")
                                   if m in sys.modules)
        print(json.dumps(result))
    """
    result = run_python(code, legacy_keras=False)
    assert result["modules"] == []
    rows = requests.strings + requests.cold
    for name in ("q", "bandit"):
        ids, scores = np.array(result[name]["ids"]), np.array(result[name]["scores"], np.float32)
        assert result[name]["dtypes"] == ["string", "float32"]
        assert ids.shape == (len(rows), K) and scores.shape == (len(rows), K)
        assert set(ids.ravel()) <= requests.tokens  # real items only: no "", no "[OOV]"
        assert all(len(set(row)) == K for row in ids)
        assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 0).all()
        for row, history in zip(ids, rows):
            assert not set(row) & set(history)
        np.testing.assert_array_equal(ids[-2], ids[-1])  # unknown ids are ignored: cold start
        # The fresh process answers what this process answers.
        here = tf.saved_model.load(str(getattr(exports, name))).signatures["serving_default"](
            history=tf.constant(rows))
        np.testing.assert_array_equal(ids, here["item_ids"].numpy().astype(str))


@pytest.fixture(scope="module")
def policy_reload(rl_world, rl_dqn, rl_bandit, exports):
    """Reloads both PolicySaver versions in a fresh process (legacy Keras, TensorFlow Probability, no
    TF-Agents) and runs their ``action`` signature on real time steps, loading them as documented
    (legacy Keras, TFP's distributions loaded first)."""
    dqn_observation = rl_world.candidate_env(batch_size=3, seed=5).reset().observation
    bandit_env = rl_world.bandit_env(batch_size=3, seed=5, arm_features=rl_bandit.arm_features)
    bandit_observation = bandit_env.reset().observation
    inputs = {}
    for key, observation in (("1", dqn_observation), ("2", bandit_observation)):
        feed = {"0/step_type": [0, 0, 0], "0/reward": [0.0] * 3, "0/discount": [1.0] * 3}
        feed.update({f"0/observation/{k}": np.asarray(v).tolist() for k, v in observation.items()})
        inputs[key] = feed
    code = f"""
        import json, sys
        import tensorflow_probability
        import tensorflow as tf
        path = {str(exports.policies)!r}
        result = {{}}
        tensorflow_probability.distributions.Deterministic  # loads the lazy module: registers its TypeSpecs
        for version, feed in {inputs!r}.items():
            action = tf.saved_model.load(path + "/" + version).signatures["action"]
            specs = {{spec.name: spec for spec in action.structured_input_signature[1].values()}}
            assert sorted(specs) == sorted(feed), (sorted(specs), sorted(feed))
            out = action(**{{name: tf.constant(value, specs[name].dtype) for name, value in feed.items()}})
            result[version] = {{key: value.numpy().tolist() for key, value in out.items()}}
        result["modules"] = sorted(m for m in ("tfmarl", "tf_agents", "tensorflow_probability") if m in sys.modules)
        print(json.dumps(result))
    """
    result = run_python(code, legacy_keras=True)
    expected_dqn = rl_dqn.agent.policy.action(ts.restart(tf.nest.map_structure(tf.constant, dqn_observation), 3))
    expected_bandit = rl_bandit.agent.policy.action(
        ts.restart(tf.nest.map_structure(tf.constant, bandit_observation), 3))
    return types.SimpleNamespace(result=result, dqn=expected_dqn, bandit=expected_bandit)


@pytest.mark.slow
def test_policy_saver_exports_run_without_tf_agents(policy_reload, rl_world):
    result = policy_reload.result
    assert result["modules"] == ["tensorflow_probability"]
    dqn = np.array(result["1"]["action"])
    assert dqn.shape == (3,) and ((dqn >= 0) & (dqn < rl_world.num_candidates)).all()
    np.testing.assert_array_equal(dqn, policy_reload.dqn.action.numpy())
    bandit = result["2"]
    np.testing.assert_array_equal(bandit["action"], policy_reload.bandit.action.numpy())
    np.testing.assert_allclose(bandit["info/predicted_rewards_mean"],
                               policy_reload.bandit.info.predicted_rewards_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bandit["info/chosen_arm_features"],
                               policy_reload.bandit.info.chosen_arm_features.numpy(), rtol=1e-6)


def test_export_at_the_largest_allowed_num_candidates_recommends_only_new_real_items(rl_world, requests, tmp_path):
    largest = rl_world.user_model.num_items - 2

    def prefer_low_indices(history, candidates, item_vectors):  # any scorer is allowed; this one likes the masked ones
        return -tf.cast(candidates, tf.float32)

    path = export_candidate_recommender(rl_world.model, prefer_low_indices, tmp_path, k=K, num_candidates=largest)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    ids = serve(history=tf.constant(requests.strings))["item_ids"].numpy().astype(str)
    for row, history in zip(ids, requests.strings):
        assert set(row) <= requests.tokens and not set(row) & set(history)
