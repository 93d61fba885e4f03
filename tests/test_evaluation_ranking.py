"""Full-catalog ranking metrics against a direct reference implementation."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.data import EvalSet
from tfmarl.evaluation import evaluate_ranking
from tfmarl.evaluation.ranking import ndcg_single


class FixedScores:
    """A 'model' whose scores for user row r are a fixed table row (history picks the row)."""

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.num_items = table.shape[1]
        self.max_length = 8  # longer than any history here: the first item picks the row

    def score_catalog(self, history):
        return tf.gather(self.table, history[:, 0] - 2)  # first history item encodes the user


def reference(table, histories, targets, k):
    out = {"hr": [], "ndcg": [], "mrr": [], "recall": []}
    for row, hist, tgt in zip(table, histories, targets):
        scores = row.astype(np.float64).copy()
        scores[[0, 1] + list(hist)] = -np.inf
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        hits = [i in tgt for i in order]
        dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(len(tgt), k)))
        out["hr"].append(float(any(hits)))
        out["recall"].append(sum(hits) / len(tgt))
        out["ndcg"].append(dcg / idcg)
        out["mrr"].append(1 / (hits.index(True) + 1) if any(hits) else 0.0)
    return {f"{m}@{k}": float(np.mean(v)) for m, v in out.items()}


@pytest.mark.parametrize("k", [1, 5, 10])
def test_metrics_match_reference(k):
    rng = np.random.default_rng(3)
    users, items = 40, 45  # user u has history[0] = u + 2, which picks score row u
    table = rng.integers(0, 6, size=(users, items)).astype(np.float32)  # many ties
    histories = [[2 + u % (items - 2)] + list(rng.choice(np.arange(2, items), rng.integers(0, 5), replace=False))
                 for u in range(users)]
    histories = [list(dict.fromkeys(h)) for h in histories]
    targets = [[t for t in rng.choice(np.arange(2, items), 3, replace=False) if t not in h][:rng.integers(1, 3)] or
               [next(i for i in range(2, items) if i not in h)] for h in histories]
    model = FixedScores(table)
    got = evaluate_ranking(model, EvalSet.from_lists(range(users), histories, targets), ks=(k,), batch_size=7)
    want = reference(table, histories, targets, k)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert got["users"] == users


def test_known_ranks_and_coverage():
    # Two users, 6 items (2..5 real). Scores favour item 5, then 4, 3, 2.
    table = np.tile(np.array([0, 0, 1, 2, 3, 4], np.float32), (2, 1))
    es = EvalSet.from_lists(["a", "b"], [[2], [3, 5]], [[4], [2]])
    m = evaluate_ranking(FixedScores(table), es, ks=(1, 2))
    # user a: history {2}; ranking 5, 4, 3 -> target 4 at rank 1 (0-based)
    # user b: history {3, 5}... row index from first history item 3 -> row 1; ranking 4, 2 -> target at rank 1
    assert m["hr@1"] == 0.0 and m["hr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(ndcg_single(1, 2))
    assert m["mrr@2"] == pytest.approx(0.5)
    assert m["coverage@1"] == pytest.approx(2 / 4)  # items 5 (a) and 4 (b)


def test_rejects_empty_and_bad_cutoffs():
    model = FixedScores(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="empty"):
        evaluate_ranking(model, EvalSet.from_lists([], [], []))
    with pytest.raises(ValueError, match="cut-offs"):
        evaluate_ranking(model, EvalSet.from_lists(["a"], [[2]], [[3]]), ks=(0,))
