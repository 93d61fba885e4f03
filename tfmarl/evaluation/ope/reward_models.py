"""Reward models r̂ for the direct method and doubly robust estimators, and cross-fitting.

A reward model is an object with ``fit(log, weights) -> predictor``: ``weights`` [n] are
non-negative per-round fitting weights (0 = round not used; bootstrap counts otherwise). For a
`BanditLog` the predictor maps round indices ``rows`` to r̂ of every arm, [len(rows), A]; for a
`SlateLog` it maps ``(rows, items)`` with items int [len(rows), K, S] to r̂ of each item at each
position, the same shape. `cross_fit` splits the rounds into K folds and predicts every fold
with a model fitted on the other folds only, so no round is predicted by a model that saw it.
"""

from __future__ import annotations

import numpy as np

from tfmarl.evaluation.ope.logs import BanditLog


def _reward_features(log: BanditLog) -> np.ndarray:
    """Per-(round, arm) regression features, float64 [n, A, p].

    Arm features alone, or with a context [n, d]: when d equals the arm-feature size k,
    [arm, context ⊙ arm] (a bilinear-diagonal cross, so context–arm affinity is learnable);
    otherwise [arm, context] (context broadcast to every arm).
    """
    if log.arm_features is None:
        raise ValueError("fit_reward_model needs log.arm_features (pass your own reward predictions otherwise)")
    arm = log.arm_features.astype(np.float64)
    if log.context is None:
        return arm
    context = np.broadcast_to(log.context.astype(np.float64)[:, None, :], arm.shape[:2] + log.context.shape[1:])
    if context.shape[-1] == arm.shape[-1]:
        return np.concatenate([arm, context * arm], axis=-1)
    return np.concatenate([arm, context], axis=-1)


def _ridge(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float):
    """Weighted ridge with an unpenalised intercept: (mean_x, beta, mean_y)."""
    total = weights.sum()
    mean_x, mean_y = weights @ x / total, weights @ y / total
    xc = x - mean_x
    gram = (xc * weights[:, None]).T @ xc + l2 * np.eye(x.shape[1])
    # lstsq rather than solve: with l2 = 0 and collinear features the Gram matrix is singular.
    beta = np.linalg.lstsq(gram, (xc * weights[:, None]).T @ (y - mean_y), rcond=None)[0]
    return mean_x, beta, mean_y


class RidgeRewardModel:
    """Ridge regression of the logged rewards on per-arm features of a `BanditLog`.

    Fits r ≈ b + φ(x_i, a_i)·β by minimising Σ_i w_i (r_i − b − φ_i·β)² + l2‖β‖², with φ from
    ``arm_features`` and, when present, ``context`` (see `fit_reward_model`). Assumes the
    expected reward is roughly linear in those features.
    """

    def __init__(self, l2: float = 1.0):
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)
        self._cache = (None, None)

    def _features(self, log: BanditLog) -> np.ndarray:
        if self._cache[0] is not log:  # refits inside a bootstrap reuse the features
            self._cache = (log, _reward_features(log))
        return self._cache[1]

    def fit(self, log: BanditLog, weights: np.ndarray):
        features = self._features(log)
        used = np.flatnonzero(weights > 0)
        logged = features[used, log.actions[used]]
        mean_x, beta, mean_y = _ridge(logged, log.rewards[used], weights[used].astype(np.float64), self.l2)
        return lambda rows: (features[rows] - mean_x) @ beta + mean_y


class TableRewardModel:
    """Mean reward per item (and, for slates, per item and position), shrunk toward the mean.

    r̂(a, k) = (Σ r + s · m_k) / (count + s) over the rounds where item a was shown at position k,
    with m_k the mean reward at position k and ``shrinkage`` s pseudo-observations. Items are
    ``arm_ids`` (else the arm index) for a `BanditLog` and the slate items for a `SlateLog`.
    Assumes the reward depends on the item and position only, not on the context.
    """

    def __init__(self, shrinkage: float = 5.0):
        if not shrinkage >= 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        self.shrinkage = float(shrinkage)

    def fit(self, log, weights: np.ndarray):
        if isinstance(log, BanditLog):
            items = log.arm_ids[np.arange(len(log)), log.actions] if log.arm_ids is not None else log.actions
            items, rewards = items[:, None], log.rewards[:, None]
        else:
            items, rewards = log.slates, log.rewards
        k = items.shape[1]
        size = int(max(items.max(), 0)) + 1
        w = np.broadcast_to(weights[:, None].astype(np.float64), items.shape)
        position = np.broadcast_to(np.arange(k), items.shape)
        flat = (items * k + position).ravel()
        counts = np.bincount(flat, weights=w.ravel(), minlength=size * k).reshape(size, k)
        sums = np.bincount(flat, weights=(w * rewards).ravel(), minlength=size * k).reshape(size, k)
        prior = sums.sum(axis=0) / np.maximum(counts.sum(axis=0), 1e-12)
        table = (sums + self.shrinkage * prior) / (counts + self.shrinkage + 1e-12)

        def lookup(item_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
            known = (item_ids >= 0) & (item_ids < size)
            return np.where(known, table[np.where(known, item_ids, 0), positions], prior[positions])

        if isinstance(log, BanditLog):
            num_arms = log.num_arms or int(log.actions.max()) + 1

            def predict(rows):
                ids = log.arm_ids[rows] if log.arm_ids is not None else np.tile(np.arange(num_arms), (len(rows), 1))
                return lookup(ids, np.zeros_like(ids))
            return predict

        def predict_slate(rows, slate_items):
            positions = np.broadcast_to(np.arange(k)[None, :, None], slate_items.shape)
            return lookup(slate_items, positions)
        return predict_slate


def default_reward_model(log):
    """Ridge on arm features when a `BanditLog` has them, else the per-item(-position) table."""
    if isinstance(log, BanditLog) and log.arm_features is not None:
        return RidgeRewardModel()
    return TableRewardModel()


def fold_ids(n: int, num_folds: int, seed) -> np.ndarray:
    """A balanced random fold number in [0, num_folds) for each of n rounds."""
    num_folds = int(num_folds)
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2 (cross-fitting needs rounds to hold out), got {num_folds}")
    if n < num_folds:
        raise ValueError(f"cross-fitting {num_folds} folds needs at least {num_folds} rounds, the log has {n}")
    return np.random.default_rng(seed).permutation(n) % num_folds


def cross_fit(model, log, folds: np.ndarray, weights: np.ndarray | None = None) -> list:
    """Fits ``model`` once per fold on the other folds' rounds (weighted by ``weights``, default 1).

    Returns [(rows of fold f, predictor fitted without fold f)]. A fold whose complement has no
    weight (possible in a bootstrap resample) is predicted by a model fitted on all weighted rounds
    of the other folds combined, never on its own rounds: it then gets the nearest honest fit.
    """
    weights = np.ones(len(folds)) if weights is None else np.asarray(weights, np.float64)
    out = []
    for f in np.unique(folds):
        rows = np.flatnonzero(folds == f)
        train = np.where(folds == f, 0.0, weights)
        if not train.sum() > 0:
            raise ValueError(f"cross-fitting: fold {int(f)} has no other rounds to fit on")
        out.append((rows, model.fit(log, train)))
    return out


def cross_predict(fitted: list, n: int, items: np.ndarray | None = None) -> np.ndarray:
    """Assembles the out-of-fold predictions of `cross_fit` for all n rounds (``items`` [n, K, S]
    for slate models)."""
    out = None
    for rows, predict in fitted:
        values = predict(rows) if items is None else predict(rows, items[rows])
        if out is None:
            out = np.empty((n,) + values.shape[1:])
        out[rows] = values
    return out


def fit_reward_model(log: BanditLog, *, l2: float = 1.0) -> np.ndarray:
    """A baseline reward model: ridge regression of the logged rewards on per-arm features,
    fitted on all rounds and evaluated on the same ones.

    Fits r ≈ b + φ(x_i, a_i)·β on the logged (round, action) pairs by minimising
    Σ_i (r_i − b − φ_i·β)² + l2‖β‖² (the intercept b is not penalised). Features: arm features
    alone; with a context of the same size, [arm, context ⊙ arm]; with a context of another
    size, [arm, context]. Fitting and evaluating on the same log makes DM optimistic about the
    model: the estimators cross-fit `RidgeRewardModel` by default instead.

    Returns:
      float64 [n, A], predicted reward r̂(x_i, a) of every arm of every round.
    """
    if not isinstance(log, BanditLog):
        raise TypeError(f"log must be a BanditLog, got {type(log).__name__}")
    if len(log) == 0:
        raise ValueError("the log is empty: nothing to estimate from")
    return RidgeRewardModel(l2).fit(log, np.ones(len(log)))(np.arange(len(log)))
