"""LightFM (hybrid matrix factorisation) as a benchmark-only cold-start peer.

    python benchmarks/lightfm_peer.py --synthetic --out /tmp/lightfm_synthetic.json
    python benchmarks/lightfm_peer.py --data ../shared/data/ml-100k --no-identity --cold 0.1

LightFM is a benchmark dependency only, never a `tfmarl` requirement: install it by hand
(``pip install --no-build-isolation lightfm==1.17`` needs setuptools, wheel, numpy and scipy
first; on recent setuptools the 1.17 sdist's ``setup.py`` fails with "'dict' object has no
attribute '__LIGHTFM_SETUP__'" and needs its ``__builtins__.__LIGHTFM_SETUP__ = True`` line
changed to ``import builtins; builtins.__LIGHTFM_SETUP__ = True``). This module imports
``lightfm`` only when a model is built, and TensorFlow only when scoring runs inside a graph.

How LightFM is made to fit tfmarl's protocol (`tfmarl.evaluation.evaluate_ranking` passes each
user's last ``max_length`` history items, not a user id):

* Items are LightFM item-feature rows aligned with tfmarl item indices (`item_feature_matrix`):
  an identity column per warm item (optional) plus one column per category / title token / ...
  value. Cold items have no identity column, so LightFM can rank them only through their
  features -- the cold-start comparison.
* Users are their histories: LightFM's user features are one column per item index, a user's row
  being the distinct items of their history, normalised to sum 1 (`history_feature_matrix`).
  Training users get the row of their train items (the last ``max_length`` of them, the window
  the evaluation feeds), and at scoring time each given history gets its row the same way. So
  LightFM, like the sequential models, sees only the history, and it can score any history,
  including users it never trained on. There is no per-user id embedding.
* Scoring is numpy on the learnt tables: ``user_repr = user_features @ user_embeddings``,
  ``score = user_repr @ item_repr.T + item_bias + user_bias`` with
  ``item_repr = item_features @ item_embeddings`` -- LightFM's ``predict``, for a whole catalog
  at once.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import scipy.sparse as sp

NUM_RESERVED = 2  # item index 0 = padding, 1 = OOV (tfmarl.data.vocab)


def item_feature_matrix(num_items, warm_items, feature_tables, *, identity=True) -> sp.csr_matrix:
    """Hybrid LightFM item features, row i = tfmarl item index i.

    Args:
      num_items: rows (the item vocabulary size, reserved indices included).
      warm_items: item indices seen in training (int array, or a boolean mask of length
        ``num_items``); None = every real item. Only these get an identity column: a cold item's
        id was never trained, so an identity column would only add a random vector to it.
      feature_tables: int arrays [num_items, W] (categories [N, max_categories], title token ids
        [N, L], knowledge-graph entity ids [N, M], ...); 0 = no value, any other value is an index.
        Each table gets one column per distinct non-zero value it holds.
      identity: add the identity columns (False: a pure content model).

    Returns:
      float32 CSR [num_items, n_identity + sum of distinct values per table]. Columns: the identity
      columns (warm items in increasing index order), then each table's values in increasing
      order. A row's present values (distinct, repeats in a row count once) weigh 1 and each
      non-empty row is normalised to sum 1, as `lightfm.data.Dataset` does. The reserved rows
      (padding, OOV) and items with no identity and no feature value are all-zero rows: LightFM
      accepts them (representation and bias 0, so such an item always scores exactly the user
      bias); tfmarl's evaluation never ranks the reserved rows anyway.
    """
    num_items = int(num_items)
    if num_items <= NUM_RESERVED:
        raise ValueError(f"num_items must exceed the {NUM_RESERVED} reserved indices, got {num_items}")
    warm = _warm_mask(num_items, warm_items)
    rows, cols = [], []
    n_cols = 0
    if identity:
        warm_idx = np.flatnonzero(warm)
        rows.append(warm_idx)
        cols.append(np.arange(len(warm_idx)))
        n_cols = len(warm_idx)
    for t, table in enumerate(feature_tables):
        table = np.asarray(table)
        if table.ndim == 1:
            table = table[:, None]
        if table.ndim != 2 or table.shape[0] != num_items:
            raise ValueError(f"feature table {t} has shape {table.shape}, expected ({num_items}, W)")
        if table.size and table.min() < 0:
            raise ValueError(f"feature table {t} holds negative values")
        r, c = np.nonzero(table)
        values = table[r, c]
        distinct, column = np.unique(values, return_inverse=True)
        rows.append(r)
        cols.append(n_cols + column)
        n_cols += len(distinct)
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return _binary_normalised(rows, cols, (num_items, n_cols))


def history_feature_matrix(histories, num_items, *, known=None, max_length=None) -> sp.csr_matrix:
    """LightFM user features of histories: row b = the distinct items of ``histories[b]``.

    ``histories`` is an int array [B, L] (0 = padding) or a list of 1-D arrays. Reserved indices
    (padding, OOV) are dropped, and so are items outside the boolean mask ``known`` (items no
    training user had, whose user-feature embedding was never trained). ``max_length`` keeps each
    list's last items. Rows are normalised to sum 1; an empty row stays all zero (the user then
    scores items by their item bias alone).
    """
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        lists = list(histories)
    else:
        lists = [np.asarray(h).reshape(-1) for h in histories]
    if max_length is not None:
        lists = [h[-int(max_length):] for h in lists]
    lengths = np.fromiter((len(h) for h in lists), np.int64, len(lists))
    rows = np.repeat(np.arange(len(lists)), lengths)
    cols = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    if cols.size and cols.max() >= num_items:
        raise ValueError(f"history item index {int(cols.max())} outside the {num_items} item indices")
    keep = cols >= NUM_RESERVED
    if known is not None:
        keep &= np.asarray(known, bool)[np.where(keep, cols, 0)]
    return _binary_normalised(rows[keep], cols[keep], (len(lists), int(num_items)))


class LightFMRanker:
    """LightFM on tfmarl's data, scoring histories as `tfmarl.evaluation.evaluate_ranking` expects.

    ``fit(user_histories)`` trains on (training user, item) pairs with `item_features` on the items
    and `history_feature_matrix` rows as user features (see the module docstring: a user is their
    history, not an id). ``negatives="seen"`` (default) trains on the item rows of the items in
    some training history only, so LightFM's sampled negatives never include cold items (they
    would be pushed down through their features on every epoch, as if known to be disliked);
    ``"all"`` trains on every row, reserved and cold ones included. Scoring always covers the
    whole catalog: the learnt feature embeddings apply to every row of `item_features`, less the
    feature columns no training row has (untrained: random embedding, zero bias), each row
    renormalised (`scoring_item_features`). ``score_catalog(history)`` maps an int [B, L] history (0 = padding) to
    float32 [B, num_items] scores; eagerly (numpy or eager tensor in) it returns numpy, inside a
    ``tf.function`` (as evaluate_ranking calls it) a float32 tensor via ``tf.numpy_function``.
    """

    def __init__(self, num_items, item_features, *, no_components=64, loss="warp", epochs=30,
                 learning_rate=0.05, item_alpha=1e-6, user_alpha=1e-6, num_threads=2, seed=0,
                 max_length=50, max_sampled=10, negatives="seen"):
        self.num_items = int(num_items)
        self.item_features = sp.csr_matrix(item_features, dtype=np.float32)
        if self.item_features.shape[0] != self.num_items:
            raise ValueError(f"item_features has {self.item_features.shape[0]} rows, expected {self.num_items}")
        self.no_components, self.loss, self.epochs = int(no_components), loss, int(epochs)
        self.learning_rate, self.item_alpha, self.user_alpha = learning_rate, item_alpha, user_alpha
        self.num_threads, self.seed, self.max_sampled = int(num_threads), int(seed), int(max_sampled)
        self.max_length = int(max_length) if max_length else None
        if negatives not in ("seen", "all"):
            raise ValueError(f"negatives must be 'seen' or 'all', got {negatives!r}")
        self.negatives = negatives
        self.model = None
        self.known_items = None  # bool [num_items]: items in some training history
        self.fit_seconds = None

    def fit(self, user_histories) -> "LightFMRanker":
        """Trains on ``user_histories``: each a training user's item indices (oldest first), e.g.
        the rows of `tfmarl.data.Sequences`. Every (user, item) pair is one positive interaction;
        reserved indices are skipped."""
        from lightfm import LightFM

        lists = [np.asarray(h, np.int64).reshape(-1) for h in user_histories]
        lists = [h[h >= NUM_RESERVED] for h in lists]
        if not any(len(h) for h in lists):
            raise ValueError("no training interaction")
        if max(int(h.max()) for h in lists if len(h)) >= self.num_items:
            raise ValueError(f"training item index outside the {self.num_items} item indices")
        rows = np.repeat(np.arange(len(lists)), [len(h) for h in lists])
        cols = np.concatenate(lists)
        if self.negatives == "seen":
            # LightFM samples WARP/BPR negatives uniformly over the rows of item_features: train on
            # the rows of the items some user had, so that cold items (and the reserved rows) are
            # never pushed down as negatives -- at training time they do not exist yet.
            train_items = np.unique(cols)
            train_item_features = self.item_features[train_items]
            cols = np.searchsorted(train_items, cols)
        else:
            train_items, train_item_features = np.arange(self.num_items), self.item_features
        interactions = sp.coo_matrix((np.ones(len(cols), np.float32), (rows, cols)),
                                     shape=(len(lists), len(train_items)))
        interactions.sum_duplicates()  # repeated items count once
        interactions.data[:] = 1.0
        user_features = history_feature_matrix(lists, self.num_items, max_length=self.max_length)
        self.known_items = np.zeros(self.num_items, bool)
        self.known_items[user_features.indices] = True  # user-feature columns that get trained
        self.model = LightFM(no_components=self.no_components, loss=self.loss, learning_rate=self.learning_rate,
                             item_alpha=self.item_alpha, user_alpha=self.user_alpha,
                             max_sampled=self.max_sampled, random_state=np.random.RandomState(self.seed))
        start = time.perf_counter()
        self.model.fit(interactions, user_features=user_features, item_features=train_item_features,
                       epochs=self.epochs, num_threads=self.num_threads)
        self.fit_seconds = time.perf_counter() - start
        # Feature columns no training row has (e.g. title tokens only cold items carry) keep their
        # random initial embedding and zero bias: drop them from the scoring rows, renormalised.
        trained = np.zeros(self.item_features.shape[1], bool)
        trained[train_item_features.indices] = True
        self.scoring_item_features = _keep_columns(self.item_features, trained)
        self._item_bias, self._item_repr = self.model.get_item_representations(self.scoring_item_features)
        return self

    def user_features(self, history) -> sp.csr_matrix:
        """The user-feature rows `score_catalog` uses for ``history`` (int [B, L], 0 = padding)."""
        return history_feature_matrix(np.asarray(history), self.num_items, known=self.known_items,
                                      max_length=self.max_length)

    def score_numpy(self, history) -> np.ndarray:
        """float32 [B, num_items] scores of histories (int [B, L], 0 = padding)."""
        if self.model is None:
            raise RuntimeError("fit the ranker first")
        history = np.asarray(history)
        if history.ndim != 2:
            raise ValueError(f"history must be [B, L], got shape {history.shape}")
        user_bias, user_repr = self.model.get_user_representations(self.user_features(history))
        scores = user_repr @ self._item_repr.T
        scores += self._item_bias[None, :]
        scores += user_bias[:, None]
        return scores.astype(np.float32, copy=False)

    def score_catalog(self, history):
        """Scores for `evaluate_ranking`: numpy when called eagerly, a tensor inside a graph."""
        import tensorflow as tf

        if tf.executing_eagerly() or not isinstance(history, tf.Tensor):
            return self.score_numpy(np.asarray(history))
        scores = tf.numpy_function(self.score_numpy, [history], tf.float32, stateful=False)
        scores.set_shape([history.shape[0], self.num_items])
        return scores

    def predict_pairs(self, history, items) -> np.ndarray:
        """LightFM's own ``predict`` for (history b, items[b]) pairs: the reference `score_numpy`
        must match."""
        history = np.asarray(history)
        users = np.arange(len(history), dtype=np.int32)
        return self.model.predict(users, np.asarray(items, np.int32), item_features=self.scoring_item_features,
                                  user_features=self.user_features(history), num_threads=1)


def _warm_mask(num_items, warm_items) -> np.ndarray:
    warm = np.zeros(num_items, bool)
    if warm_items is None:
        warm[NUM_RESERVED:] = True
        return warm
    warm_items = np.asarray(warm_items)
    if warm_items.dtype == bool:
        if warm_items.shape != (num_items,):
            raise ValueError(f"warm_items mask has shape {warm_items.shape}, expected ({num_items},)")
        warm[:] = warm_items
    else:
        if warm_items.size and (warm_items.min() < 0 or warm_items.max() >= num_items):
            raise ValueError(f"warm item index outside [0, {num_items})")
        warm[warm_items.astype(np.int64)] = True
    warm[:NUM_RESERVED] = False
    return warm


def _keep_columns(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """``m`` with the columns outside the boolean mask ``keep`` zeroed, rows renormalised to sum 1."""
    m = m.tocoo()
    ok = keep[m.col]
    return _binary_normalised(m.row[ok], m.col[ok], m.shape)


def _binary_normalised(rows, cols, shape) -> sp.csr_matrix:
    """CSR with 1 at each distinct (row, col), each non-empty row scaled to sum 1."""
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.data[:] = 1.0
    counts = np.diff(m.indptr)
    m.data /= np.repeat(np.maximum(counts, 1), counts).astype(np.float32)
    return m


# --- command line -------------------------------------------------------------------------------

def _feature_tables(features) -> list:
    names = ("categories", "title_tokens", "kg_entities")
    return [getattr(features, n) for n in names if getattr(features, n, None) is not None]


def main(argv=None):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from common import machine, peak_rss_mb, write_json  # noqa: E402
    import tfmarl  # noqa: F401  (tf_keras before TensorFlow loads)
    from tfmarl.data import build_item_features, build_sequences, generate_synthetic, leave_one_out
    from tfmarl.data.cold_start import cold_item_split
    from tfmarl.evaluation import evaluate_ranking
    from tfmarl.evaluation.cold_start import evaluate_cold_items

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a MovieLens directory")
    source.add_argument("--synthetic", action="store_true", help="generate_synthetic(1000 users, 500 items)")
    parser.add_argument("--no-identity", action="store_true", help="item features only, no item id columns")
    parser.add_argument("--cold", type=float, default=0.0, help="also run a cold_item_split of this fraction")
    parser.add_argument("--negatives", choices=("seen", "all"), default="seen",
                        help="LightFM negatives from the training items only, or from every item row")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)

    if args.data:
        from tfmarl.data import load_movielens

        interactions = load_movielens(args.data)
    else:
        interactions = generate_synthetic(n_users=1000, n_items=500, seed=args.seed)
    sequences, vocab = build_sequences(interactions)
    tables = _feature_tables(build_item_features(interactions, vocab, text_vocabulary_size=1000))
    identity = not args.no_identity
    hp = dict(no_components=args.dim, epochs=args.epochs, seed=args.seed, max_length=args.max_length,
              negatives=args.negatives)
    results = []

    split = leave_one_out(sequences)
    features = item_feature_matrix(vocab.size, np.unique(split.train.items), tables, identity=identity)
    ranker = LightFMRanker(vocab.size, features, **hp).fit(list(split.train.rows()))
    m = evaluate_ranking(ranker, split.test, ks=(10,), num_items=vocab.size)
    results.append({"dataset": interactions.name, "protocol": "leave-one-out", "identity": identity,
                    "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"], "test_users": m["users"],
                    "fit_seconds": ranker.fit_seconds, "eval_seconds": m["seconds"]})
    print(f"leave-one-out: ndcg@10={m['ndcg@10']:.4f} hr@10={m['hr@10']:.4f} "
          f"fit={ranker.fit_seconds:.1f}s", file=sys.stderr)
    if args.cold > 0:
        cold = cold_item_split(sequences, args.cold, seed=args.seed)
        features = item_feature_matrix(vocab.size, np.unique(cold.train.items), tables, identity=identity)
        ranker = LightFMRanker(vocab.size, features, **hp).fit(list(cold.train.rows()))
        c = evaluate_cold_items(ranker, cold, ks=(10,), num_items=vocab.size)
        w = evaluate_ranking(ranker, cold.warm_test, ks=(10,), num_items=vocab.size)
        results.append({"dataset": interactions.name, "protocol": f"cold items ({args.cold:g}, random)",
                        "identity": identity, "cold_items": c["cold_items"],
                        "all_catalog_ndcg@10": c["all_catalog"]["ndcg@10"], "all_catalog_hr@10": c["all_catalog"]["hr@10"],
                        "cold_only_ndcg@10": c["cold_only"]["ndcg@10"], "cold_only_hr@10": c["cold_only"]["hr@10"],
                        "warm_test_ndcg@10": w["ndcg@10"], "test_users": c["all_catalog"]["users"],
                        "fit_seconds": ranker.fit_seconds})
        print(f"cold items: all-catalog ndcg@10={c['all_catalog']['ndcg@10']:.4f} "
              f"cold-only ndcg@10={c['cold_only']['ndcg@10']:.4f} warm ndcg@10={w['ndcg@10']:.4f}",
              file=sys.stderr)
    if args.out:
        write_json(args.out, {"benchmark": "lightfm_peer", "machine": machine(), "hyperparameters": hp,
                              "results": results, "peak_rss_mb": peak_rss_mb()})
    return results


if __name__ == "__main__":
    main()
