"""Candidate-restricted ranking, the cold-item report and the history-length report."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.data import EvalSet, Sequences
from tfmarl.data.cold_start import cold_item_split
from tfmarl.evaluation import evaluate_by_history_length, evaluate_cold_items, evaluate_ranking
from tfmarl.evaluation import ranking as ranking_module


class SameScores:
    """Scores every user the same: item i gets ``scores[i]``."""

    def __init__(self, scores):
        self.scores = tf.constant(scores, tf.float32)
        self.num_items = len(scores)
        self.max_length = 8

    def score_catalog(self, history):
        return tf.tile(self.scores[None, :], [tf.shape(history)[0], 1])


class RowScores:
    """User row r's scores are ``table[r]``; the first history item (r + 2) picks the row."""

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.num_items = table.shape[1]
        self.max_length = 8

    def score_catalog(self, history):
        return tf.gather(self.table, history[:, 0] - 2)


def reference(table, histories, targets, k, candidates):
    allowed = np.zeros(table.shape[1], bool)
    allowed[candidates] = True
    out = {"hr": [], "ndcg": [], "mrr": [], "recall": []}
    shown = set()
    for row, hist, tgt in zip(table, histories, targets):
        tgt = [t for t in tgt if allowed[t]]
        if not tgt:
            continue
        ranked = [i for i in sorted(range(len(row)), key=lambda i: (-row[i], i)) if allowed[i] and i not in hist]
        order = ranked[:k]
        shown.update(order)
        hits = [i in tgt for i in order]
        dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(len(tgt), k, len(candidates))))
        out["hr"].append(float(any(hits)))
        out["recall"].append(sum(hits) / len(tgt))
        out["ndcg"].append(dcg / idcg)
        out["mrr"].append(1 / (hits.index(True) + 1) if any(hits) else 0.0)
    got = {f"{m}@{k}": float(np.mean(v)) for m, v in out.items()}
    got["users"] = len(out["hr"])
    got[f"coverage@{k}"] = len(shown & set(candidates)) / len(candidates)
    return got


# 10 indices, items 2..9; item i scores i, so the ranking is 9, 8, ..., 2 minus the history.
SCORES = np.arange(10, dtype=np.float32)


def test_candidates_exact_values():
    model = SameScores(SCORES)
    es = EvalSet.from_lists(["a", "b"], [[9], [8, 5]], [[3], [4, 2]])
    full = evaluate_ranking(model, es, ks=(1, 3, 10))
    # a: 8 7 6 5 4 [3] 2 -> rank 5; b: 9 7 6 [4] 3 [2] -> ranks 3 and 5: no hit in the top 3.
    assert full["hr@3"] == 0.0 and full["hr@10"] == 1.0
    assert full["mrr@10"] == pytest.approx((1 / 6 + 1 / 4) / 2)
    assert full["coverage@1"] == pytest.approx(2 / 8)  # item 9 for b, 8 for a
    cold = evaluate_ranking(model, es, ks=(1, 3, 10), candidates=np.array([4, 2, 3]))
    # Only 4, 3, 2 are ranked: a -> 4 [3] 2 (rank 1); b -> [4] 3 [2] (ranks 0 and 2).
    assert cold["users"] == 2
    assert cold["hr@1"] == pytest.approx(0.5) and cold["hr@3"] == 1.0
    assert cold["recall@1"] == pytest.approx(0.25)
    assert cold["mrr@3"] == pytest.approx((0.5 + 1.0) / 2)
    ndcg_a = 1 / math.log2(3)
    ndcg_b = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert cold["ndcg@3"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    # The list is only 3 long: @10 equals @3.
    for m in ("hr", "ndcg", "mrr", "recall"):
        assert cold[f"{m}@10"] == pytest.approx(cold[f"{m}@3"])
    # Coverage is over the candidates: @1 recommends only item 4.
    assert cold["coverage@1"] == pytest.approx(1 / 3) and cold["coverage@3"] == 1.0


def test_candidates_drop_warm_items_and_non_candidate_targets():
    # Item 9 (warm) is ranked first; a target on it is a hit on the full catalog only.
    model = SameScores(SCORES)
    es = EvalSet.from_lists(["warm", "cold"], [[2], [5]], [[9], [3]])
    full = evaluate_ranking(model, es, ks=(1,))
    assert full["users"] == 2 and full["hr@1"] == 0.5
    cold = evaluate_ranking(model, es, ks=(1,), candidates=[3, 4])
    assert cold["users"] == 1  # the warm target is not a candidate: that user is not evaluated
    assert cold["hr@1"] == 0.0  # 4 outranks 3 among the candidates
    assert evaluate_ranking(model, es, ks=(1,), candidates=[3])["hr@1"] == 1.0
    with pytest.raises(ValueError, match="no user with a target"):
        evaluate_ranking(model, es, ks=(1,), candidates=[6, 7])


def test_candidates_shorter_than_list_after_history():
    # Candidates 3 and 4; the history holds 4, so one real item is left to rank.
    model = SameScores(SCORES)
    es = EvalSet.from_lists(["a"], [[4]], [[3]])
    m = evaluate_ranking(model, es, ks=(1, 2), candidates=[3, 4])
    assert m["hr@1"] == 1.0 and m["ndcg@2"] == 1.0
    assert m["coverage@2"] == pytest.approx(0.5)  # 3 only: fillers are not candidates


@pytest.mark.parametrize("k", [1, 4, 20])
def test_candidates_match_reference(k):
    rng = np.random.default_rng(7)
    users, items = 30, 40  # user u has history[0] = u + 2, which picks score row u
    table = rng.integers(0, 5, size=(users, items)).astype(np.float32)  # many ties
    histories = [list(dict.fromkeys([2 + u % (items - 2)] + rng.choice(np.arange(2, items), 3).tolist()))
                 for u in range(users)]
    targets = [[t for t in rng.choice(np.arange(2, items), 4, replace=False).tolist() if t not in h][:3]
               for h in histories]
    candidates = np.sort(rng.choice(np.arange(2, items), 9, replace=False))
    got = evaluate_ranking(RowScores(table), EvalSet.from_lists(range(users), histories, targets), ks=(k,),
                           batch_size=7, candidates=candidates)
    want = reference(table, histories, targets, k, candidates.tolist())
    assert want["users"] < users  # some users have no candidate target
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_ranker_cache_with_and_without_candidates():
    model = SameScores(SCORES)
    es = EvalSet.from_lists(["a"], [[9]], [[3]])
    plain = evaluate_ranking(model, es, ks=(3,))
    first = evaluate_ranking(model, es, ks=(3,), candidates=[2, 3, 4])
    second = evaluate_ranking(model, es, ks=(3,), candidates=[3, 5, 6])
    assert first["mrr@3"] == pytest.approx(0.5)  # 4 [3] 2
    assert second["mrr@3"] == pytest.approx(1 / 3)  # 6 5 [3]: a new candidate set, not a stale mask
    again = evaluate_ranking(model, es, ks=(3,))
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in plain.items() if k != "seconds"}
    cache = ranking_module._RANKERS[model]
    assert set(cache) == {("score_catalog", 3, False), ("score_catalog", 3, True)}
    # One trace serves both candidate sets.
    assert cache[("score_catalog", 3, True)].experimental_get_tracing_count() == 1


def test_candidates_validation():
    model = SameScores(SCORES)
    es = EvalSet.from_lists(["a"], [[9]], [[3]])
    with pytest.raises(ValueError, match="empty"):
        evaluate_ranking(model, es, candidates=[])
    with pytest.raises(ValueError, match="outside the real items"):
        evaluate_ranking(model, es, candidates=[1, 3])
    with pytest.raises(ValueError, match="outside the real items"):
        evaluate_ranking(model, es, candidates=[3, 10])
    with pytest.raises(ValueError, match="1-D array"):
        evaluate_ranking(model, es, candidates=[[3]])


def test_evaluate_cold_items_report():
    rng = np.random.default_rng(1)
    seqs = Sequences.from_lists([f"u{i}" for i in range(40)], [rng.integers(2, 30, 12).tolist() for _ in range(40)])
    split = cold_item_split(seqs, 0.2, seed=0)
    scores = np.zeros(30, np.float32)
    scores[2:] = np.linspace(1, 2, 28)  # warm and cold interleaved, higher index first
    model = SameScores(scores)
    report = evaluate_cold_items(model, split, ks=(5, 10), batch_size=16)
    assert set(report) == {"all_catalog", "cold_only", "cold_items"}
    assert report["cold_items"] == len(split.cold_items) == round(0.2 * 28)
    assert report["all_catalog"]["users"] == report["cold_only"]["users"] == len(split.test)
    want = evaluate_ranking(model, split.test, ks=(5, 10), candidates=split.cold_items)
    for name in ("hr@5", "ndcg@10", "coverage@5"):
        assert report["cold_only"][name] == pytest.approx(want[name])
        assert report["all_catalog"][name] == pytest.approx(evaluate_ranking(model, split.test, ks=(5, 10))[name])
    # Ranking only the cold items can only move cold targets up.
    assert report["cold_only"]["hr@10"] >= report["all_catalog"]["hr@10"]
    assert report["cold_only"]["hr@10"] == 1.0  # 6 cold items: the top 10 holds them all


def test_evaluate_by_history_length():
    model = SameScores(SCORES)
    # History lengths 1, 3, 3, 7; targets: 9 (rank 0), 8 (rank 0 after 9 is in history), 2, 3.
    es = EvalSet.from_lists(["a", "b", "c", "d"], [[5], [9, 2, 3], [9, 8, 7], [9, 8, 7, 6, 5, 4, 2]],
                            [[9], [8], [2], [3]])
    report = evaluate_by_history_length(model, es, ks=(1,))
    assert list(report) == ["1", "2-5", "6-20", ">20"]
    assert report["1"]["users"] == 1 and report["1"]["hr@1"] == 1.0
    assert report["2-5"]["users"] == 2 and report["2-5"]["hr@1"] == 0.5  # b hits; c's 2 ranks after 6 5 4 3
    assert report["6-20"]["users"] == 1 and report["6-20"]["hr@1"] == 1.0  # only 3 is left
    assert report[">20"] == {"users": 0}
    # Explicit lengths and buckets.
    custom = evaluate_by_history_length(model, es, ks=(1,), buckets=((1, 2), (3, None)), history_lengths=[2, 2, 5, 5])
    assert list(custom) == ["1-2", ">2"]
    assert custom["1-2"]["users"] == 2 and custom["1-2"]["hr@1"] == 1.0
    assert custom[">2"]["users"] == 2 and custom[">2"]["hr@1"] == 0.5
    # Keyword arguments pass through to evaluate_ranking: among 2 and 3, c's 2 ranks second.
    restricted = evaluate_by_history_length(model, es, ks=(1,), buckets=((3, None),), candidates=[2, 3])
    assert restricted[">2"]["users"] == 2 and restricted[">2"]["hr@1"] == 0.5
    assert restricted[">2"]["coverage@1"] == 0.5  # both get 3 first (d has 2 in its history)
    with pytest.raises(ValueError, match="history_lengths"):
        evaluate_by_history_length(model, es, history_lengths=[1, 2])
    with pytest.raises(ValueError, match="low must be"):
        evaluate_by_history_length(model, es, buckets=((0, 1),))
