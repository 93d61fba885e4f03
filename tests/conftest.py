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

# Two logical CPUs for the tf.distribute tests; must happen before TensorFlow initialises devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def cycle_sequences(num_users=120, num_items=30, seed=0):
    """Users walk a cycle of items (i -> i + 1): the next item is fully predictable."""
    from tfmarl.data import Sequences

    rng = np.random.default_rng(seed)
    lists = [[2 + (s + j) % num_items for j in range(int(rng.integers(6, 20)))]
             for s in rng.integers(0, num_items, num_users)]
    return Sequences.from_lists([f"u{u}" for u in range(num_users)], lists)


@pytest.fixture(scope="session")
def cycle_split():
    from tfmarl.data import leave_one_out

    return leave_one_out(cycle_sequences())


@pytest.fixture(scope="session")
def cycle_vocab():
    from tfmarl.data import Vocabulary

    return Vocabulary([f"m{i}" for i in range(30)])


@pytest.fixture(scope="session")
def trained_cycle_model(cycle_split, cycle_vocab):
    """A small transformer recommender trained on the cycle data (shared: training costs seconds)."""
    from tfmarl.training import SequentialRecommender, pretrain

    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(item_vocabulary=cycle_vocab, dim=32, max_length=12, k=5)
    pretrain(model, cycle_split.train, cycle_split.valid, epochs=8, batch_size=32, learning_rate=5e-3,
             verbose=0)
    return model


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs, shared: separate instances in one process
    can collide on collective-op keys."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
