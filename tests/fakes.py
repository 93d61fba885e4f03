"""The tests' shared fakes, in one place: small fitted worlds, a random slate policy and a numpy
stand-in for `tfmarl.rl.CandidateRetriever` (the `tfmarl.envs` tests), the cycle sequences and the
`RLWorld` behind the session fixtures of conftest.py, and `event_values`, a reader of the
TensorBoard event files a test wrote. Holds no tests.

The worlds are cached, so the test modules that use them fit each one once per session; tests
that break a model do it on a `dataclasses.replace` copy.
"""

import functools
import pathlib

import numpy as np

import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow)
import tensorflow as tf

from tfmarl.data.synthetic import generate_synthetic
from tfmarl.envs import SessionConfig, fit_user_model, random_slates


@functools.lru_cache(maxsize=None)
def tiny_data():
    """200 users x 120 items, 20 interactions each, ratings and a 12-category item table."""
    return generate_synthetic(n_users=200, n_items=120, interactions_per_user=20, seed=0)


@functools.lru_cache(maxsize=None)
def tiny_model():
    return fit_user_model(tiny_data(), seed=0)


@functools.lru_cache(maxsize=None)
def default_model():
    # The default SessionConfig is calibrated for catalogs of hundreds of items and more (see
    # SessionConfig); the generator's default world (1000 users x 500 items) fits in < 1 s.
    return fit_user_model(generate_synthetic(seed=0), seed=0)


@functools.lru_cache(maxsize=None)
def small_model():
    """42 item indices and 8-d vectors: candidate and bandit tests run in well under a second."""
    return fit_user_model(generate_synthetic(n_users=60, n_items=40, interactions_per_user=10, seed=0),
                          dim=8, iterations=5, seed=0)


SMALL_CONFIG = SessionConfig(slate_size=3, history_length=6, max_steps=4, no_click_utility=2.0)
NUM_CANDIDATES = 8


def random_policy(env, seed=0):
    """Uniformly random distinct slates for ``env``'s batch."""
    rng = np.random.default_rng(seed)
    return lambda observation: random_slates(rng, env.batch_size, env.config.slate_size, env.num_items)


def make_retrieve(model, num_candidates=NUM_CANDIDATES):
    """A numpy stand-in for `CandidateRetriever`: the first items of a fixed random order that are
    not in the history, and the mean history item vector as the user state."""
    order = np.random.default_rng(0).permutation(np.arange(2, model.num_items))
    rank = np.full(model.num_items, np.inf)
    rank[order] = np.arange(len(order))

    def retrieve(history):
        history = np.asarray(history)
        ranks = np.broadcast_to(rank, (len(history), model.num_items)).copy()
        np.put_along_axis(ranks, history, np.inf, axis=1)  # padding 0 is excluded anyway
        candidates = np.argsort(ranks, axis=1, kind="stable")[:, :num_candidates].astype(np.int32)
        vectors = model.item_vectors[history]
        count = np.maximum((history > 0).sum(axis=1, keepdims=True), 1)
        return {"candidates": candidates, "user_state": (vectors.sum(axis=1) / count).astype(np.float32)}

    return retrieve


# --- the session fixtures' worlds (conftest.py) ------------------------------------------------


def cycle_sequences(num_users=120, num_items=30, seed=0):
    """Users walk a cycle of items (i -> i + 1): the next item is fully predictable."""
    from tfmarl.data import Sequences

    rng = np.random.default_rng(seed)
    lists = [[2 + (s + j) % num_items for j in range(int(rng.integers(6, 20)))]
             for s in rng.integers(0, num_items, num_users)]
    return Sequences.from_lists([f"u{u}" for u in range(num_users)], lists)


class RLWorld:
    """A small simulated world shared by the RL tests: a `UserModel` fitted on a synthetic log
    (30 items), a randomly initialised (untrained) one-layer `SequentialRecommender` over its
    vocabulary, a `CandidateRetriever` of N=8 candidates and short sessions (slate of 3, at most
    4 steps, history window 6 = the recommender's max_length)."""

    num_candidates = 8

    def __init__(self):
        from tfmarl.data.synthetic import generate_synthetic
        from tfmarl.envs import SessionConfig, fit_user_model
        from tfmarl.rl import CandidateRetriever
        from tfmarl.training import SequentialRecommender

        self.user_model = fit_user_model(
            generate_synthetic(n_users=120, n_items=30, interactions_per_user=12, seed=0), dim=8, seed=0)
        tf.keras.utils.set_random_seed(0)
        self.model = SequentialRecommender(item_vocabulary=self.user_model.vocabulary, dim=8, max_length=6,
                                           num_layers=1, num_heads=1, dropout=0.0, k=5)
        self.model.build_all()
        self.config = SessionConfig(slate_size=3, history_length=6, max_steps=4, no_click_utility=2.0)
        self.retriever = CandidateRetriever(self.model, self.num_candidates)

    def session_env(self, batch_size=4, seed=0):
        from tfmarl.envs import SessionEnvironment

        return SessionEnvironment(self.user_model, self.config, batch_size=batch_size, seed=seed)

    def candidate_env(self, batch_size=4, seed=0):
        from tfmarl.envs.candidates import CandidateSessionEnvironment

        return CandidateSessionEnvironment(self.session_env(batch_size, seed), self.retriever, self.num_candidates)

    def bandit_env(self, batch_size=8, seed=0, arm_features="item"):
        from tfmarl.envs.bandit import PerArmBanditEnvironment

        return PerArmBanditEnvironment(self.user_model, self.retriever, self.retriever.item_vectors,
                                       self.num_candidates, config=self.config, batch_size=batch_size, seed=seed,
                                       arm_features=arm_features)


def event_values(log_dir) -> dict:
    """tag -> [(step, value)] from the TensorBoard event files under ``log_dir``."""
    values = {}
    for path in sorted(pathlib.Path(log_dir).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                data = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                values.setdefault(value.tag, []).append((event.step, data))
    return values
