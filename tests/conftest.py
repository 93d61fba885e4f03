"""Shared fixtures. Legacy Keras must be selected before anything imports TensorFlow."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfmarl  # noqa: E402,F401  (selects tf_keras)
import tensorflow as tf  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

from fakes import RLWorld, cycle_sequences  # noqa: E402  (the shared fakes, one place)

# Two logical CPUs for the tf.distribute tests; must happen before TensorFlow initialises devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

# Grappler, TensorFlow's graph optimizer, rewrites each tf.function graph when it first runs. This
# suite builds many small models and runs most of their functions a few times, so that rewriting
# costs more than it saves (the first train step of a DQN agent takes about twice as long with it).
# It is meant to leave what a graph computes unchanged, and that is what the tests check. It stays
# on in the processes the tests start (the CLI, the notebook, fresh-process export checks).
# TFMARL_TEST_GRAPPLER=1 turns it back on here.
# XLA (tfmarl.rl.xla) compiles the RL loop's per-step calls once per shape; the suite's runs are a
# few steps each, far too short to repay that, so it is off here (and in the processes the tests
# start), except in the tests that compare it with the plain calls.
os.environ.setdefault("TFMARL_XLA", "0")
if os.environ.get("TFMARL_TEST_GRAPPLER") != "1":
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(scope="session")
def cycle_split():
    from tfmarl.data import leave_one_out

    return leave_one_out(cycle_sequences())


@pytest.fixture(scope="session")
def cycle_vocab():
    from tfmarl.data import Vocabulary

    return Vocabulary([f"m{i}" for i in range(30)])


@pytest.fixture(scope="session")
def cycle_log_dir(tmp_path_factory):
    """Where `trained_cycle_model`'s pretraining wrote its TensorBoard logs."""
    return tmp_path_factory.mktemp("cycle_tensorboard")


@pytest.fixture(scope="session")
def trained_cycle_model(cycle_split, cycle_vocab, cycle_log_dir):
    """A small transformer recommender trained on the cycle data (shared: training costs seconds).
    Its TensorBoard logs (`cycle_log_dir`) serve test_training's TensorBoard test, which would
    otherwise train a model of its own."""
    from tfmarl.training import SequentialRecommender, pretrain

    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(item_vocabulary=cycle_vocab, dim=32, max_length=12, k=5)
    pretrain(model, cycle_split.train, cycle_split.valid, epochs=8, batch_size=32, learning_rate=5e-3,
             verbose=0, log_dir=cycle_log_dir)
    return model


@pytest.fixture(scope="session")
def exported_cycle(tmp_path_factory, trained_cycle_model):
    """`trained_cycle_model` exported once, as version 1 of the model "cycle" (``<tmp>/cycle/1``),
    for the serving tests, which only read it: a test that adds or breaks versions copies it into
    a base directory of its own."""
    from tfmarl.export import export_recommender

    return export_recommender(trained_cycle_model, tmp_path_factory.mktemp("exported") / "cycle")


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs, shared: separate instances in one process
    can collide on collective-op keys."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# --- RL fixtures (tests/test_rl*.py, tests/test_evaluation_ope_adapter.py) -----------------------------------

@pytest.fixture(scope="session")
def rl_world():
    return RLWorld()


@pytest.fixture(scope="session")
def rl_dqn(rl_world, tmp_path_factory):
    """A Double DQN agent trained briefly on the world's candidate environment, with TensorBoard logs."""
    import types

    from tfmarl.rl import linear_schedule, build_dqn, train_dqn

    tf.keras.utils.set_random_seed(0)
    env = rl_world.candidate_env(batch_size=4, seed=0)
    agent, q_network = build_dqn(env, rl_world.model, double=True, hidden_units=(16,), target_update_period=10)
    log_dir = tmp_path_factory.mktemp("dqn_logs")
    result = train_dqn(agent, q_network, env, 30, batch_size=16, warmup_steps=5, epsilon=linear_schedule(0.5, 0.1, 20),
                       log_dir=log_dir, log_every=10, seed=0)
    return types.SimpleNamespace(env=env, agent=agent, q_network=q_network, result=result, log_dir=log_dir)


@pytest.fixture(scope="session")
def rl_bandit(rl_world):
    """LinUCB trained briefly on the world's per-arm bandit environment with crossed arm features."""
    import types

    from tfmarl.rl import build_bandit, train_bandit

    env = rl_world.bandit_env(batch_size=8, seed=0, arm_features="crossed")
    agent = build_bandit("linucb", env)
    result = train_bandit(agent, env, 10, log_every=5, seed=0)
    return types.SimpleNamespace(env=env, agent=agent, result=result, arm_features="crossed")
