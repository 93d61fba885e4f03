"""Fitting the parameters of the session simulator (`UserModel`) from interaction logs.

`fit_user_model` turns an `Interactions` log into everything `SessionEnvironment` needs:

* user and item vectors from implicit-feedback matrix factorisation (weighted ALS after Hu,
  Koren & Volinsky 2008, in numpy). The user vectors are centred (the average user's affinity to
  every item is 0: affinity is taste relative to the average user, popularity is left to
  ``item_bias``), and both are scaled so that ``user_vectors @ item_vectors.T`` over random
  (user, item) pairs has standard deviation 1;
* an item popularity propensity (centred log count), the part of a click that has nothing to do
  with how satisfying an item is;
* an item quality (standardised satisfaction): the item's mean user-centred rating shrunk toward
  zero, or, without ratings, how closely the item matches the users who consumed it (mean cosine
  of user and item vectors, shrunk), a signal that does not grow with popularity;
* a primary category per item (the item table's first category, or k-means clusters);
* each user's time-ordered history, and a deterministic train / held-out split of the users.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import pathlib

import numpy as np

from tfmarl.atomic import atomic_savez
from tfmarl.data.errors import DataError
from tfmarl.data.interactions import Interactions
from tfmarl.data.sequences import Sequences, build_sequences
from tfmarl.data.vocab import NUM_RESERVED, Vocabulary

RESERVED_BIAS = -1.0e4  # item_bias of the padding and OOV rows: never chosen
NO_CATEGORY = "(none)"  # category of items the item table does not categorise
FORMAT = "tfmarl.envs.UserModel"
FORMAT_VERSION = 1
_DENSE_BLOCK = 1 << 22  # entries of the dense weight block used by one ALS matrix product


@dataclasses.dataclass
class UserModel:
    """The fitted parameters of the session simulator.

    Item arrays are indexed by item-vocabulary index (N = ``len(item_vocab) + 2`` rows); rows 0
    (padding) and 1 (OOV) are reserved: zero vectors, quality 0, category 0 and a very negative
    bias, and are never recommended. User arrays are indexed by user number 0..U-1.

    Attributes:
      item_vectors: float32 [N, d].
      item_bias: float32 [N], centred log-popularity (reserved rows: ``RESERVED_BIAS``).
      item_quality: float32 [N], standardised satisfaction signal (mean 0, std 1 over real items).
      item_category: int32 [N], primary category in [0, num_categories).
      num_categories: number of categories.
      user_vectors: float32 [U, d].
      user_ids: str [U] (object array), the log's user ids.
      user_histories: `Sequences` with each user's real item indices in time order (row u is
        user u). Sessions start from the last ``history_length`` of them.
      train_users, heldout_users: disjoint int64 arrays of user numbers, sorted.
      item_vocab: the item ids of vocabulary indices 2..N-1.
      category_names: names of the categories (``"cluster 3"`` for k-means clusters).
      metadata: JSON-serialisable facts about the fit (dim, seed, alpha, auc, ...).
    """

    item_vectors: np.ndarray
    item_bias: np.ndarray
    item_quality: np.ndarray
    item_category: np.ndarray
    num_categories: int
    user_vectors: np.ndarray
    user_ids: np.ndarray
    user_histories: Sequences
    train_users: np.ndarray
    heldout_users: np.ndarray
    item_vocab: list
    category_names: list = dataclasses.field(default_factory=list)
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.item_vectors = np.asarray(self.item_vectors, dtype=np.float32)
        self.item_bias = np.asarray(self.item_bias, dtype=np.float32)
        self.item_quality = np.asarray(self.item_quality, dtype=np.float32)
        self.item_category = np.asarray(self.item_category, dtype=np.int32)
        self.user_vectors = np.asarray(self.user_vectors, dtype=np.float32)
        self.user_ids = np.asarray(self.user_ids, dtype=object)
        self.train_users = np.asarray(self.train_users, dtype=np.int64)
        self.heldout_users = np.asarray(self.heldout_users, dtype=np.int64)
        self.item_vocab = [str(t) for t in self.item_vocab]
        self.num_categories = int(self.num_categories)
        if not self.category_names:
            self.category_names = [f"cluster {c}" for c in range(self.num_categories)]
        self.category_names = [str(c) for c in self.category_names]
        n, u = len(self.item_vocab) + NUM_RESERVED, len(self.user_ids)
        if self.item_vectors.ndim != 2 or self.item_vectors.shape[0] != n:
            raise ValueError(f"item_vectors must have shape [{n}, d], got {self.item_vectors.shape}")
        d = self.item_vectors.shape[1]
        for name in ("item_bias", "item_quality", "item_category"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape [{n}], got {getattr(self, name).shape}")
        if self.user_vectors.shape != (u, d):
            raise ValueError(f"user_vectors must have shape [{u}, {d}], got {self.user_vectors.shape}")
        if len(self.user_histories) != u:
            raise ValueError(f"user_histories has {len(self.user_histories)} users, expected {u}")
        items = self.user_histories.items
        if items.size and (items.min() < NUM_RESERVED or items.max() >= n):
            raise ValueError(f"user_histories holds item indices outside the real items [2, {n})")
        if self.num_categories < 1 or self.item_category.min() < 0 or self.item_category.max() >= self.num_categories:
            raise ValueError(f"item_category must lie in [0, num_categories={self.num_categories})")
        if len(self.category_names) != self.num_categories:
            raise ValueError(f"{len(self.category_names)} category names for {self.num_categories} categories")
        for name in ("train_users", "heldout_users"):
            users = getattr(self, name)
            if users.ndim != 1 or (users.size and (users.min() < 0 or users.max() >= u)):
                raise ValueError(f"{name} must be a 1-d array of user numbers in [0, {u})")
        if np.intersect1d(self.train_users, self.heldout_users).size:
            raise ValueError("train_users and heldout_users overlap")

    # --- summary -------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        """Number of item indices, the two reserved ones included (the vocabulary size)."""
        return int(self.item_vectors.shape[0])

    @property
    def num_users(self) -> int:
        return int(self.user_vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.item_vocab)

    def history(self, user: int) -> np.ndarray:
        """User ``user``'s item indices, oldest first."""
        return self.user_histories[int(user)]

    def affinity(self, users, items) -> np.ndarray:
        """``user_vectors[users] . item_vectors[items]`` (broadcasting users against items)."""
        return np.sum(self.user_vectors[np.asarray(users)] * self.item_vectors[np.asarray(items)], axis=-1)

    def __repr__(self):
        return (f"UserModel(users={self.num_users}, items={self.num_items - NUM_RESERVED}, dim={self.dim}, "
                f"categories={self.num_categories}, train={len(self.train_users)}, "
                f"heldout={len(self.heldout_users)})")

    # --- persistence ---------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the model to one ``.npz`` file (arrays plus a JSON header), atomically.

        The file is written to a temporary name in the same directory and renamed over
        ``path``, so readers never see half a file. It loads without pickle.
        """
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT, "version": FORMAT_VERSION, "num_categories": self.num_categories,
            "item_vocab": self.item_vocab, "category_names": self.category_names, "metadata": self.metadata,
        }
        arrays = {
            "header": np.asarray(json.dumps(header)),
            "item_vectors": self.item_vectors, "item_bias": self.item_bias, "item_quality": self.item_quality,
            "item_category": self.item_category, "user_vectors": self.user_vectors,
            "user_ids": np.asarray([str(u) for u in self.user_ids], dtype=str),
            "history_offsets": self.user_histories.offsets, "history_items": self.user_histories.items,
            "history_timestamps": self.user_histories.timestamps,
            "train_users": self.train_users, "heldout_users": self.heldout_users,
        }
        atomic_savez(path, arrays)

    @classmethod
    def load(cls, path) -> "UserModel":
        """Reads a model written by `save`. Raises DataError if the file is not one."""
        path = pathlib.Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise DataError(f"not a saved UserModel ({error})", path=path) from error
        if "header" not in arrays:
            raise DataError("not a saved UserModel (no header)", path=path)
        header = json.loads(str(arrays["header"]))
        if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
            raise DataError(f"unsupported format {header.get('format')!r} version {header.get('version')!r}",
                            path=path)
        user_ids = arrays["user_ids"].astype(object)
        histories = Sequences(user_ids, arrays["history_offsets"].astype(np.int64),
                              arrays["history_items"].astype(np.int32),
                              arrays["history_timestamps"].astype(np.int64))
        return cls(
            item_vectors=arrays["item_vectors"], item_bias=arrays["item_bias"],
            item_quality=arrays["item_quality"], item_category=arrays["item_category"],
            num_categories=header["num_categories"], user_vectors=arrays["user_vectors"], user_ids=user_ids,
            user_histories=histories, train_users=arrays["train_users"], heldout_users=arrays["heldout_users"],
            item_vocab=header["item_vocab"], category_names=header["category_names"],
            metadata=header["metadata"],
        )


# --- fitting ---------------------------------------------------------------------------------


def fit_user_model(
    interactions: Interactions,
    item_vocab: Vocabulary | None = None,
    *,
    dim: int = 16,
    heldout_fraction: float = 0.2,
    num_categories: int | None = None,
    seed: int = 0,
    iterations: int = 15,
    regularization: float = 0.1,
    alpha: float | None = None,
    rating_shrinkage: float = 10.0,
) -> UserModel:
    """Fits the simulator's `UserModel` to an interaction log; deterministic by ``seed``.

    Args:
      interactions: the log (and optionally the item table, for categories).
      item_vocab: the item vocabulary to index with; by default every item id of the log and of
        the item table. Every item of the log must be in it.
      dim: dimension d of the user and item vectors.
      heldout_fraction: fraction of the users put in ``heldout_users`` (in [0, 1)).
      num_categories: when given, items are clustered into this many categories by k-means on
        their vectors (even if there is an item table); by default the item table's first
        category is used, or k-means with min(16, number of items) clusters without a table.
      seed: seeds the factor initialisation, the user split, k-means and the AUC estimate.
      iterations: weighted-ALS sweeps (each solves users, then items).
      regularization: L2 weight of the ALS solves.
      alpha: confidence of an observed (user, item) pair is ``1 + alpha * count``; by default the
        ratio of unobserved to observed pairs, capped to [1, 40] (positives and negatives then
        weigh about the same in total).
      rating_shrinkage: pseudo-count of the shrinkage of an item's mean rating toward the mean.

    Returns:
      The `UserModel`. ``metadata["auc"]`` is the AUC of ``user . item`` for observed pairs
      against random pairs (an in-sample fit check).

    Raises:
      TypeError / ValueError for bad arguments, DataError for an empty log or item ids that are
      not in ``item_vocab``.
    """
    if not isinstance(interactions, Interactions):
        raise TypeError(f"interactions must be an Interactions, got {type(interactions).__name__}")
    dim = _integer("dim", dim, 1)
    iterations = _integer("iterations", iterations, 1)
    seed = _integer("seed", seed, 0)
    if num_categories is not None:
        num_categories = _integer("num_categories", num_categories, 1)
    heldout_fraction = _real("heldout_fraction", heldout_fraction, 0.0)
    if heldout_fraction >= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    regularization = _real("regularization", regularization, 0.0)
    rating_shrinkage = _real("rating_shrinkage", rating_shrinkage, 0.0)
    if alpha is not None:
        alpha = _real("alpha", alpha, 0.0)
    log = interactions.log
    if len(log) == 0:
        raise DataError("no interactions to fit a user model to", path=interactions.name)
    if item_vocab is None:
        item_vocab = Vocabulary(interactions.item_ids())
    elif not isinstance(item_vocab, Vocabulary):
        raise TypeError(f"item_vocab must be a Vocabulary, got {type(item_vocab).__name__}")
    else:
        ids = log["item_id"].astype(str).unique()
        unknown = [t for t in ids if t not in item_vocab]
        if unknown:
            raise DataError(f"{len(unknown)} item id(s) of the log are not in item_vocab, e.g. "
                            f"{', '.join(map(repr, unknown[:5]))}", path=interactions.name, column="item_id")

    rng = np.random.default_rng(seed)
    sequences, item_vocab = build_sequences(interactions, item_vocab)
    n_users, n_items = len(sequences), item_vocab.size
    users_of = np.repeat(np.arange(n_users, dtype=np.int64), sequences.lengths)
    key, counts = np.unique(users_of * n_items + sequences.items, return_counts=True)
    rows, cols = key // n_items, (key % n_items).astype(np.int64)
    n_pairs = len(key)
    if alpha is None:
        alpha = float(np.clip((n_users * (n_items - NUM_RESERVED) - n_pairs) / n_pairs, 1.0, 40.0))
    weights = (alpha * counts).astype(np.float32)

    user_vectors, item_vectors = _weighted_als(rows, cols, weights, n_users, n_items, dim, iterations,
                                               regularization, rng)
    # Centre the users: the average user's affinity to every item is then 0, so affinity is taste
    # relative to the average user and popularity lives in item_bias alone (uncentred ALS scores
    # grow with popularity and would count it twice in the click model).
    user_vectors = user_vectors - user_vectors.mean(axis=0)
    user_vectors, item_vectors = _standardise_affinity(user_vectors, item_vectors, n_items, rng)
    auc = _auc(user_vectors, item_vectors, rows, cols, n_items, rng)

    item_counts = np.bincount(cols, minlength=n_items).astype(np.float64)
    bias = np.log1p(item_counts)
    bias -= bias[NUM_RESERVED:].mean()
    bias[:NUM_RESERVED] = RESERVED_BIAS

    if "rating" in log.columns:
        quality, quality_source = _rating_quality(interactions, sequences, item_vocab, rating_shrinkage), "rating"
    else:
        quality = _fit_quality(user_vectors, item_vectors, rows, cols, n_items, rating_shrinkage)
        quality_source = "fit"

    if num_categories is None and interactions.items is not None:
        category, names = _table_categories(interactions, item_vocab)
        category_source = "item table"
    else:
        k = num_categories if num_categories is not None else 16
        k = min(k, n_items - NUM_RESERVED)
        category = _kmeans_categories(item_vectors, k, rng)
        names = [f"cluster {c}" for c in range(k)]
        category_source = "k-means"

    order = np.random.default_rng([seed, 1]).permutation(n_users)
    n_heldout = int(round(heldout_fraction * n_users))
    if heldout_fraction > 0 and n_users >= 2:
        n_heldout = min(max(n_heldout, 1), n_users - 1)
    heldout, train = np.sort(order[:n_heldout]), np.sort(order[n_heldout:])

    metadata = {
        "name": interactions.name, "dim": dim, "seed": seed, "iterations": iterations,
        "regularization": regularization, "alpha": alpha, "heldout_fraction": heldout_fraction,
        "rating_shrinkage": rating_shrinkage, "auc": auc, "quality_source": quality_source,
        "category_source": category_source, "num_interactions": int(len(log)), "num_pairs": int(n_pairs),
    }
    return UserModel(
        item_vectors=item_vectors, item_bias=bias, item_quality=quality, item_category=category,
        num_categories=len(names), user_vectors=user_vectors, user_ids=sequences.user_ids,
        user_histories=sequences, train_users=train, heldout_users=heldout, item_vocab=item_vocab.tokens,
        category_names=names, metadata=metadata,
    )


def _integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


# --- matrix factorisation --------------------------------------------------------------------


def _weighted_als(rows, cols, weights, n_users, n_items, dim, iterations, reg, rng):
    """Implicit-feedback ALS: minimises sum_ui c_ui (p_ui - x_u.y_i)^2 + reg (|x|^2 + |y|^2).

    p_ui = 1 for observed pairs (confidence c = 1 + weight) and 0 otherwise (c = 1). Each solve
    is exact: A_u = Y'Y + Y' diag(c_u - 1) Y + reg I, b_u = Y' c_u p_u, with the sparse part
    computed as dense BLAS products over blocks of rows.
    """
    x = (rng.standard_normal((n_users, dim)) * 0.1).astype(np.float32)
    y = (rng.standard_normal((n_items, dim)) * 0.1).astype(np.float32)
    y[:NUM_RESERVED] = 0.0
    by_user = _csr(rows, cols, weights, n_users)
    by_item = _csr(cols, rows, weights, n_items)
    for _ in range(iterations):
        x = _als_solve(y, by_user, reg)
        y = _als_solve(x, by_item, reg)
    return x, y


def _csr(rows, cols, values, n_rows):
    order = np.argsort(rows, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))]).astype(np.int64)
    return offsets, cols[order], values[order]


def _als_solve(other, csr, reg):
    offsets, cols, values = csr
    n_rows, (m, d) = len(offsets) - 1, other.shape
    other = other.astype(np.float32)
    gram = (other.T @ other).astype(np.float64)
    outer = (other[:, :, None] * other[:, None, :]).reshape(m, d * d)
    out = np.zeros((n_rows, d), dtype=np.float32)
    block = max(1, _DENSE_BLOCK // max(m, 1))
    eye = reg * np.eye(d)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        lo, hi = offsets[start], offsets[stop]
        local = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
        w = np.zeros((stop - start, m), dtype=np.float32)
        w[local, cols[lo:hi]] = values[lo:hi]
        a = (w @ outer).reshape(-1, d, d).astype(np.float64) + gram + eye
        w[local, cols[lo:hi]] += 1.0  # confidence c = 1 + weight on observed pairs, preference 1
        b = (w @ other).astype(np.float64)
        out[start:stop] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return out


def _standardise_affinity(x, y, n_items, rng):
    """Balances the norms of user and item vectors, then scales both so that user.item over
    random (user, real item) pairs has standard deviation 1."""
    real = y[NUM_RESERVED:]
    nx, ny = np.linalg.norm(x, axis=1).mean(), np.linalg.norm(real, axis=1).mean()
    if nx > 0 and ny > 0:
        k = np.sqrt(ny / nx)
        x, y = x * k, y / k
    users = rng.integers(len(x), size=100_000)
    items = rng.integers(NUM_RESERVED, n_items, size=100_000)
    spread = float(np.std(np.sum(x[users] * y[items], axis=1)))
    if spread > 0:
        x, y = x / np.sqrt(spread), y / np.sqrt(spread)
    return x.astype(np.float32), y.astype(np.float32)


def _auc(x, y, rows, cols, n_items, rng, samples=100_000):
    """AUC of user.item: observed pairs against random (user, real item) pairs."""
    pick = rng.integers(len(rows), size=samples)
    positive = np.sum(x[rows[pick]] * y[cols[pick]], axis=1)
    negative = np.sum(x[rng.integers(len(x), size=samples)] * y[rng.integers(NUM_RESERVED, n_items, size=samples)],
                      axis=1)
    scores = np.concatenate([positive, negative])
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return float((ranks[:samples].sum() - samples * (samples + 1) / 2) / (samples * samples))


# --- item signals ----------------------------------------------------------------------------


def _standardise(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Real items standardised over the known ones; unknown and reserved rows 0."""
    out = np.zeros(len(values), dtype=np.float64)
    if known.any():
        v = values[known]
        spread = v.std()
        out[known] = (v - v.mean()) / (spread if spread > 0 else 1.0)
    out[:NUM_RESERVED] = 0.0
    return out.astype(np.float32)


def _rating_quality(interactions, sequences, vocab, shrinkage):
    """Mean user-centred rating per item, shrunk toward 0 by ``shrinkage`` pseudo-ratings."""
    log = interactions.log
    ratings = log["rating"].to_numpy(np.float64)
    items = vocab.lookup(log["item_id"].to_numpy(dtype=object)).astype(np.int64)
    user_codes = log["user_id"].astype(str).factorize()[0]
    user_mean = np.bincount(user_codes, ratings) / np.bincount(user_codes)
    residual = ratings - user_mean[user_codes]
    n = vocab.size
    total = np.bincount(items, residual, minlength=n)
    count = np.bincount(items, minlength=n).astype(np.float64)
    shrunk = total / (count + shrinkage) if shrinkage > 0 else np.divide(total, np.maximum(count, 1))
    known = count > 0
    known[:NUM_RESERVED] = False
    return _standardise(shrunk, known)


def _fit_quality(x, y, rows, cols, n_items, shrinkage):
    """Without ratings: how closely an item matches the users who consumed it.

    The mean cosine between the item's vector and its consumers' vectors, shrunk toward the
    global mean. Cosines ignore vector norms, so the signal does not grow with popularity.
    """
    nx = np.linalg.norm(x, axis=1)
    ny = np.linalg.norm(y, axis=1)
    cos = np.sum(x[rows] * y[cols], axis=1) / np.maximum(nx[rows] * ny[cols], 1e-12)
    total = np.bincount(cols, cos, minlength=n_items)
    count = np.bincount(cols, minlength=n_items).astype(np.float64)
    mean = cos.mean()
    shrunk = (total + shrinkage * mean) / (count + shrinkage) if shrinkage > 0 else total / np.maximum(count, 1)
    known = count > 0
    known[:NUM_RESERVED] = False
    return _standardise(shrunk, known)


def _table_categories(interactions, vocab):
    """Primary category = an item's first category in the table; items without one get
    ``NO_CATEGORY``. Categories are numbered in order of their names."""
    table = interactions.items
    first = {item: (cats[0] if len(cats) else NO_CATEGORY) for item, cats in zip(table.index, table["categories"])}
    primary = [first.get(t, NO_CATEGORY) for t in vocab.tokens]
    names = sorted(set(primary) - {NO_CATEGORY})
    if NO_CATEGORY in primary or not names:
        names.append(NO_CATEGORY)
    index = {name: k for k, name in enumerate(names)}
    category = np.zeros(vocab.size, dtype=np.int32)
    category[NUM_RESERVED:] = [index[p] for p in primary]
    return category, names


def _kmeans_categories(y, k, rng, iterations=25):
    """k-means (k-means++ start) on the row-normalised real item vectors."""
    points = y[NUM_RESERVED:].astype(np.float64)
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    n = len(points)
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(n)]
    closest = np.sum((points - centres[0]) ** 2, axis=1)
    for c in range(1, k):
        total = closest.sum()
        pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres[c] = points[pick]
        closest = np.minimum(closest, np.sum((points - centres[c]) ** 2, axis=1))
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        distance = (points ** 2).sum(1)[:, None] - 2 * points @ centres.T + (centres ** 2).sum(1)[None, :]
        labels = distance.argmin(axis=1)
        for c in range(k):
            members = labels == c
            if members.any():
                centres[c] = points[members].mean(axis=0)
    category = np.zeros(len(y), dtype=np.int32)
    category[NUM_RESERVED:] = labels
    return category
