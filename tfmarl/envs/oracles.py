"""ORACLE baseline policies for `SessionEnvironment`: upper references for evaluation only.

They read the simulator's hidden state through the environment's oracle helpers
(`oracle_click_probabilities`, `oracle_expected_satisfaction`), which learned policies never see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from tfmarl.data.vocab import NUM_RESERVED

if TYPE_CHECKING:
    from tfmarl.envs.session import SessionEnvironment


def myopic_oracle_policy(env: SessionEnvironment) -> Callable[[dict], np.ndarray]:
    """ORACLE baseline: each slate is the ``slate_size`` items with the highest true click
    probability right now (it maximises the immediate click probability and ignores what a
    click does to the session)."""
    k = env.config.slate_size

    def policy(observation):
        p = env.oracle_click_probabilities()[:, NUM_RESERVED:]
        return (np.argpartition(-p, k - 1, axis=1)[:, :k] + NUM_RESERVED).astype(np.int32)

    return policy


def quality_variety_oracle_policy(env: SessionEnvironment, *, click_weight: float = 1.0,
                                  per_category: int = 2) -> Callable[[dict], np.ndarray]:
    """ORACLE baseline that looks past the next click: items are scored by
    ``expected satisfaction + click_weight * log P(click if shown alone)`` and the slate takes the
    best ones with at most ``per_category`` per category (filled with the best remaining items
    when there are too few categories). Expected satisfaction already charges for boredom, so
    the policy serves satisfying items and rotates categories."""
    k, model = env.config.slate_size, env.user_model
    categories = model.item_category[NUM_RESERVED:]
    c = model.num_categories

    def policy(observation):
        with np.errstate(divide="ignore"):
            score = (env.oracle_expected_satisfaction()[:, NUM_RESERVED:]
                     + click_weight * np.log(env.oracle_click_probabilities()[:, NUM_RESERVED:]))
        return (_capped_top(score, categories, c, k, per_category) + NUM_RESERVED).astype(np.int32)

    return policy


def _capped_top(score: np.ndarray, categories: np.ndarray, num_categories: int, k: int, cap: int) -> np.ndarray:
    """Per row, the k best columns by score with at most ``cap`` per category (then the best rest)."""
    n = score.shape[1]
    t = min(n, max(4 * k * cap, k * num_categories))
    top = np.argpartition(-score, t - 1, axis=1)[:, :t] if t < n else np.broadcast_to(np.arange(n), score.shape)
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable"), axis=1)
    onehot = categories[top][:, :, None] == np.arange(num_categories)
    rank = (np.cumsum(onehot, axis=1, dtype=np.int32) * onehot).sum(axis=2)  # 1-based within category
    position = np.argsort(rank > cap, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(top, position, axis=1)
