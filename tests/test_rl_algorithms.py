"""The one RL algorithm interface: registry, train (resumable), slate_policy, export, learn_from,
and the export contract of every export kind (ranking, DQN, bandit, multi-agent)."""

import functools
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.envs.candidates import begin_step
from tfmarl.rl import ALGORITHMS, Algorithm, make_algorithm

SMALL = {"dqn": dict(hidden_units=(8,), replay_batch_size=16, warmup_steps=3),
         "linucb": {}, "lints": {}, "neural_linucb": dict(encoder_train_steps=2), "neural_epsilon_greedy": {},
         "multiagent": dict(facets=3, domains=2, hidden_units=(8,), replay_batch_size=16, warmup_steps=3,
                            floors={"diversity": 0.1})}


def build(rl_world, name, **kwargs):
    return make_algorithm(name, rl_world.model, rl_world.user_model, session_config=rl_world.config,
                          candidates=rl_world.num_candidates, batch_size=4, seed=0, **{**SMALL[name], **kwargs})


@pytest.fixture(scope="module")
def trained(rl_world, tmp_path_factory):
    """One trained algorithm of each family (DQN, LinUCB, multi-agent), with checkpoints."""
    root = tmp_path_factory.mktemp("algorithms")
    out = {}
    for name, steps in (("dqn", 8), ("linucb", 3), ("multiagent", 8)):
        algorithm = build(rl_world, name, checkpoint_dir=root / name)
        out[name] = (algorithm, algorithm.train(steps), root / name, steps)
    return out


def test_registry_names_every_family_and_config_choices_match():
    from tfmarl.cli.config import RLConfig
    import dataclasses

    assert set(ALGORITHMS) == {"dqn", "linucb", "lints", "neural_linucb", "neural_epsilon_greedy", "multiagent"}
    assert all(issubclass(cls, Algorithm) for cls in ALGORITHMS.values())
    choices = next(f for f in dataclasses.fields(RLConfig) if f.name == "algorithm").metadata["choices"]
    assert set(choices) == set(ALGORITHMS) | {"none"}  # the CLI offers exactly the registry
    with pytest.raises(ValueError, match="unknown RL algorithm 'ppo'; choose one of dqn"):
        make_algorithm("ppo", None, None)


@pytest.mark.slow
def test_each_family_trains_and_its_slate_policy_acts(rl_world, trained):
    env = rl_world.session_env(batch_size=4, seed=5)
    observation = env.reset().observation
    for name, (algorithm, result, _, steps) in trained.items():
        assert result.steps == steps and result.train_steps_per_second > 0, name
        assert algorithm.slate_policy().deterministic, name  # off-policy evaluation scores it by its slates
        slate = algorithm.slate_policy()(observation)
        assert slate.shape == (4, rl_world.config.slate_size) and slate.dtype == np.int32
        assert all(len(set(row)) == len(row) for row in slate)  # distinct items
        assert not (slate[:, :, None] == observation["history"][:, None, :]).any()  # history excluded
        assert (slate >= 2).all()


@pytest.mark.slow
def test_training_resumes_from_the_checkpoint_directory(rl_world, trained):
    for name, (algorithm, _, directory, steps) in trained.items():
        again = build(rl_world, name, checkpoint_dir=directory)
        result = again.train(steps)  # finished: restores, trains no further
        assert result.start_step == steps and result.steps == steps, name
        observation = rl_world.session_env(batch_size=4, seed=6).reset().observation
        np.testing.assert_array_equal(again.slate_policy()(observation), algorithm.slate_policy()(observation))
        more = again.train(steps + 2)
        assert more.start_step == steps and more.steps == steps + 2


def test_sampling_policies_say_so(rl_world, trained):
    from tfmarl.rl import QSlatePolicy, RandomSlatePolicy

    assert not RandomSlatePolicy(30, 3).deterministic
    assert not trained["multiagent"][0].slate_policy(sample=True).deterministic
    assert not QSlatePolicy(trained["dqn"][0].q_network, 3, epsilon=0.1).deterministic


def test_learn_from_is_offered_where_supported(rl_world, trained):
    with pytest.raises(TypeError, match="dqn learns only by stepping its simulator.*supported by: multiagent"):
        trained["dqn"][0].learn_from([])
    result = trained["multiagent"][0].learn_from([])
    assert result.steps == result.start_step  # an empty stream: nothing learned


def test_single_replica_families_refuse_a_multi_replica_strategy(rl_world, mirrored):
    with pytest.raises(ValueError, match="dqn trains on one replica; under MirroredStrategy with 2 replicas"):
        build(rl_world, "dqn", strategy=mirrored)


def test_multiagent_outside_a_strategy_trains_without_strategy_run(trained, mirrored):
    """`make_algorithm` hands the learner the default strategy outside any scope: that is no
    distribution (so its step functions may compile with XLA), a real one is."""
    assert not trained["multiagent"][0].learner.distributed
    from tfmarl.rl.multiagent import MultiAgentLearner

    learner = trained["multiagent"][0].learner
    with mirrored.scope():
        assert MultiAgentLearner(trained["multiagent"][0].env, trained["multiagent"][0].model, learner.facets,
                                 hidden_units=(8,)).distributed


@pytest.mark.slow
def test_multiagent_trains_under_mirrored(rl_world, mirrored):
    algorithm = build(rl_world, "multiagent", strategy=mirrored)
    assert algorithm.learner.network.variables[0].__class__.__name__ == "MirroredVariable"
    result = algorithm.train(6)
    assert result.steps == 6 and np.isfinite([p["loss/critic"] for p in result.curve if "loss/critic" in p]).all()


@pytest.mark.slow
def test_every_export_kind_keeps_the_contract_in_a_fresh_process(rl_world, trained, tmp_path):
    """``scores`` non-increasing along ``item_ids`` for the ranking, DQN, bandit and multi-agent
    exports, on a batch mixing a one-item history, one with an unknown id and an empty one; loaded
    with TensorFlow only."""
    from tfmarl.export import export_recommender

    paths = {"ranking": export_recommender(rl_world.model, tmp_path / "ranking", k=3, warmup=False)}
    for name, (algorithm, *_) in trained.items():
        paths[name] = algorithm.export(tmp_path / name, k=3, warmup=False)
    ids = rl_world.model.item_vocabulary.tokens
    batch = [[ids[0], "", "", ""], [ids[0], ids[1], ids[2], "__unknown__"], ["", "", "", ""]]
    code = f"""
import json, sys, numpy as np, tensorflow as tf
out = {{}}
for name, path in {json.dumps({k: str(v) for k, v in paths.items()})}.items():
    got = tf.saved_model.load(path).signatures["serving_default"](history=tf.constant({batch!r}))
    out[name] = {{k: v.numpy().astype(str if v.dtype == tf.string else float).tolist() for k, v in got.items()}}
out["leaked"] = [m for m in ("tfmarl", "tf_agents") if m in sys.modules]
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("leaked") == []
    for name, got in out.items():
        scores = np.asarray(got["scores"])
        assert scores.shape == (3, 3), name
        assert (np.diff(scores, axis=1) <= 0).all(), (name, scores)  # the slate's order is the scores' order
        assert not {ids[0]} & set(got["item_ids"][0]) and not {ids[0], ids[1], ids[2]} & set(got["item_ids"][1])
        assert all(len(set(row)) == 3 for row in got["item_ids"])
    assert set(out["multiagent"]) == {"item_ids", "scores", "values"}  # raw critic values ride along
    assert set(out["dqn"]) == set(out["ranking"]) == {"item_ids", "scores"}


def test_frozen_multiagent_replays_the_retrievers_user_states(rl_world, trained):
    """With frozen agents the replay holds the states the environment's retrieval computed
    (`states_from_env`), and the slate policy acts on the retrieval's state: they must be the
    learner's own encoding of the same histories."""
    from tfmarl.rl.multiagent import MultiAgentSlatePolicy

    algorithm = trained["multiagent"][0]
    observation = rl_world.session_env(batch_size=4, seed=7).reset().observation
    np.testing.assert_array_equal(algorithm.slate_policy()(observation),
                                  MultiAgentSlatePolicy(algorithm.learner, algorithm.retriever)(observation))
    from tfmarl.rl import QSlatePolicy

    dqn = trained["dqn"][0]
    np.testing.assert_array_equal(dqn.slate_policy()(observation),
                                  QSlatePolicy(dqn.q_network, dqn.slate_size, retriever=dqn.retriever)(observation))
    sample = algorithm.trainer.sample()
    for frame in (0, 1):
        np.testing.assert_allclose(
            sample["state"][:, frame].numpy(),
            algorithm.learner.network.encode_state(sample["observation"]["history"][:, frame]).numpy(),
            rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multiagent", "dqn"])
def test_training_overlaps_retrieval_without_changing_what_it_learns(rl_world, name):
    """The RL loops step their candidate environment with `begin_step` (the next retrieval runs
    while the step trains): the same weights and learning curve as stepping in turn."""
    runs = []
    for overlapped in (True, False):
        tf.keras.utils.set_random_seed(0)
        algorithm = build(rl_world, name)
        calls, env = [], algorithm.env
        overlapping = env.begin_step
        # Stepping in turn: `begin_step`'s fallback for an environment that has only `step`.
        in_turn = functools.partial(begin_step, types.SimpleNamespace(step=env.step))
        env.begin_step = (lambda action: calls.append(1) or overlapping(action)) if overlapped else in_turn
        result = algorithm.train(8)
        assert len(calls) == (8 if overlapped else 0)
        network = algorithm.learner.network if name == "multiagent" else algorithm.q_network
        runs.append(([v.numpy() for v in network.variables], result.curve))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]
