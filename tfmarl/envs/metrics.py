"""Rollout metrics of slate policies in a `SessionEnvironment`: `run_episodes`, `slate_diversity`.

Numpy only (the environment is duck-typed), so `slate_diversity` is cheap to import wherever a
slate is scored, e.g. the multi-agent reward.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Callable

import numpy as np

from tfmarl.data.vocab import NUM_RESERVED
from tfmarl.envs.config import SIGNALS

if TYPE_CHECKING:
    from tfmarl.envs.session import SessionEnvironment


def slate_diversity(slate_vectors) -> np.ndarray:
    """Intra-list diversity of each slate: 1 - the mean cosine similarity over its K(K-1)
    ordered pairs of distinct positions, float64 [B] from item vectors [B, K, D].

    Ranges over [0, 2]: 0 for K copies of one direction, 1 for orthogonal items. Zero vectors
    (the reserved rows) count as orthogonal to everything; slates of one item score 0.
    """
    v = np.asarray(slate_vectors)
    if v.ndim != 3:
        raise ValueError(f"slate_diversity takes item vectors of shape [batch, slate_size, dim], got shape {v.shape}")
    if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise ValueError(f"slate_diversity takes numeric item vectors, got dtype {v.dtype}")
    v = v.astype(np.float64, copy=False)
    k = v.shape[1]
    if k < 2:
        return np.zeros(len(v))
    unit = v / np.maximum(np.sqrt(np.einsum("bkd,bkd->bk", v, v))[..., None], 1e-12)
    # The sum over ordered pairs i != j of <u_i, u_j> is |sum_i u_i|^2 - sum_i |u_i|^2: no K x K Gram matrix.
    total = unit.sum(axis=1)
    pairs = np.einsum("bd,bd->b", total, total) - np.einsum("bkd,bkd->b", unit, unit)
    return 1.0 - pairs / (k * (k - 1))


def run_episodes(env: SessionEnvironment, policy_fn: Callable[[dict], np.ndarray], num_episodes: int, *,
                 seed: int | None = None) -> dict:
    """Runs ``policy_fn`` in ``env`` until ``num_episodes`` sessions have been recorded.

    ``policy_fn(observation) -> int [B, slate_size]`` gets the batched observation dict. Batch
    element b records its first ``num_episodes // B`` (+1 for the first ``num_episodes % B``
    elements) sessions, so the sample is not biased toward short sessions. ``seed`` re-seeds
    the environment first (`SessionEnvironment.seed`); the environment is reset either way.

    Returns a dict of per-episode float64 arrays ``return`` (sum of the weighted reward signals,
    whatever the env's reward mode), ``clicks``, ``ctr`` (clicks / steps), ``length`` (steps),
    ``satisfaction`` (summed over clicks), ``conversions``, ``new_item_clicks`` (clicks on the
    items that arrived during the run: catalog churn, `SessionEnvironment.new_items`); and over all recorded steps
    ``recommended_items`` (sorted unique item indices shown), ``coverage`` (their fraction of the
    real items) and ``diversity`` (the mean `slate_diversity` of the slates shown, over the
    simulator's item vectors).
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, numbers.Integral) or num_episodes < 1:
        raise ValueError(f"num_episodes must be an integer >= 1, got {num_episodes!r}")
    if seed is not None:
        env.seed(seed)
    b, n = env.batch_size, env.num_items
    weights = np.array([env.config.reward_weights.get(s, 0.0) for s in SIGNALS])
    quota = num_episodes // b + (np.arange(b) < num_episodes % b)
    recorded = np.zeros(b, dtype=np.int64)
    totals = np.zeros((6, b))  # return, clicks, steps, satisfaction, conversions, new-item clicks
    episodes = []
    shown = np.zeros(n, dtype=bool)
    vectors = env.user_model.item_vectors.astype(np.float64)
    diversity_sum, slates = 0.0, 0
    time_step = env.reset()
    while (recorded < quota).any():
        slate = policy_fn(time_step.observation)
        starting = time_step.is_last()
        time_step = env.step(slate)
        info = env.last_info
        counting = ~starting & (recorded < quota)
        if counting.any():
            signals = np.stack([info["click"], info["satisfaction"], info["conversion"]]).astype(np.float64)
            step_values = np.stack([weights @ signals, signals[0], np.ones(b), signals[1], signals[2],
                                    info.get("new_item_click", np.zeros(b))])
            totals[:, counting] += step_values[:, counting]
            chosen = np.asarray(slate, dtype=np.int64)[counting]
            shown[chosen.ravel()] = True
            diversity_sum += float(np.sum(slate_diversity(vectors[chosen])))
            slates += len(chosen)
            ended = counting & time_step.is_last()
            if ended.any():
                episodes.append(totals[:, ended].copy())
                totals[:, ended] = 0.0
                recorded[ended] += 1
    values = np.concatenate(episodes, axis=1)
    items = np.flatnonzero(shown)
    return {
        "return": values[0], "clicks": values[1], "ctr": values[1] / np.maximum(values[2], 1),
        "length": values[2], "satisfaction": values[3], "conversions": values[4], "new_item_clicks": values[5],
        "recommended_items": items, "coverage": len(items) / max(n - NUM_RESERVED, 1),
        "diversity": diversity_sum / max(slates, 1),
    }
