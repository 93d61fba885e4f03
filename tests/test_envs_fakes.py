"""Shared fakes of the `tfmarl.envs` tests: small fitted worlds, a random slate policy and a numpy
stand-in for `tfmarl.rl.CandidateRetriever`. Holds no tests.

The worlds are cached, so the test modules that use them fit each one once per session; tests
that break a model do it on a `dataclasses.replace` copy.
"""

import functools

import numpy as np

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
