"""Vocabularies, per-user sequences and splits."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tfmarl.data import (DataError, EvalSet, Interactions, Sequences, Vocabulary, build_sequences,
                         leave_one_out, temporal_split)


def make_log(rows, **extra):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df["timestamp"] = df["timestamp"].astype("int64")
    for k, v in extra.items():
        df[k] = v
    return df


def test_vocabulary_reserves_padding_and_oov(tmp_path):
    vocab = Vocabulary(["a", "b", "c"])
    assert vocab.size == 5
    assert vocab.lookup(["a", "c", "", "zzz"]).tolist() == [2, 4, 0, 1]
    assert vocab.decode([[2, 0], [1, 3]]).tolist() == [["a", ""], ["[OOV]", "b"]]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab
    with pytest.raises(IndexError):
        vocab.decode([5])
    with pytest.raises(ValueError, match="more than once"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="reserved for padding"):
        Vocabulary(["a", ""])


def test_vocabulary_matches_string_lookup_in_graph():
    vocab = Vocabulary(["x", "y"])
    layer = vocab.lookup_layer()
    ids = [["y", "", "nope"], ["x", "x", ""]]
    assert layer(ids).numpy().tolist() == vocab.lookup(ids).tolist()


def test_sequences_are_time_ordered_with_ties_in_source_order():
    log = make_log([("10", "b", 5), ("2", "a", 3), ("10", "a", 5), ("10", "c", 1), ("2", "b", 1)])
    seqs, vocab = build_sequences(Interactions(log))
    assert list(seqs.user_ids) == ["2", "10"]  # natural order of ids
    assert vocab.decode(seqs[0]).tolist() == ["b", "a"]
    assert vocab.decode(seqs[1]).tolist() == ["c", "b", "a"]  # b and a tie at t=5: file order
    assert seqs.lengths.tolist() == [2, 3]


def test_sequences_include_catalog_items_missing_from_log():
    log = make_log([("1", "a", 1)])
    items = pd.DataFrame({"title": ["A", "Z"], "categories": [(), ()], "text": ["", ""]},
                         index=pd.Index(["a", "z"], name="item_id"))
    _, vocab = build_sequences(Interactions(log, items))
    assert "z" in vocab and vocab.size == 4


def test_interactions_validate_log():
    with pytest.raises(DataError, match="'timestamp'.*missing column"):
        Interactions(pd.DataFrame({"user_id": ["1"], "item_id": ["2"]}))
    with pytest.raises(DataError, match="no interactions"):
        Interactions(make_log([]))
    with pytest.raises(DataError, match="empty id"):
        Interactions(make_log([("1", "", 3)]))
    with pytest.raises(DataError, match="non-finite rating"):
        Interactions(make_log([("1", "2", 3)], rating=[np.nan]))


def test_select_drops_emptied_users():
    seqs = Sequences.from_lists(["a", "b"], [[2, 3, 4], [5]])
    kept = seqs.select(np.array([True, False, True, False]))
    assert list(kept.user_ids) == ["a"] and kept[0].tolist() == [2, 4]


def test_leave_one_out_protocol():
    seqs = Sequences.from_lists(["a", "b"], [[2, 3, 4, 5, 6], [7, 8]])
    split = leave_one_out(seqs)
    assert split.train[0].tolist() == [2, 3, 4] and split.train[1].tolist() == [7, 8]
    assert list(split.valid.user_ids) == ["a"] and list(split.test.user_ids) == ["a"]
    assert split.valid.user_history(0).tolist() == [2, 3, 4] and split.valid.user_targets(0).tolist() == [5]
    assert split.test.user_history(0).tolist() == [2, 3, 4, 5] and split.test.user_targets(0).tolist() == [6]
    with pytest.raises(ValueError):
        leave_one_out(seqs, min_length=2)


def test_temporal_split_uses_global_cut_times_and_drops_repeats():
    seqs = Sequences.from_lists(
        ["a", "b", "c"], [[2, 3, 4, 2], [5, 6], [7]], [[1, 2, 8, 9], [3, 7], [9]])
    split = temporal_split(seqs, valid_time=5, test_time=8)
    assert split.train[0].tolist() == [2, 3] and split.train[1].tolist() == [5]
    assert list(split.valid.user_ids) == ["b"] and split.valid.user_targets(0).tolist() == [6]
    # a's test targets: 4 (new) and 2 (a repeat of history: dropped); c has no history: not evaluated.
    assert list(split.test.user_ids) == ["a"] and split.test.user_targets(0).tolist() == [4]
    assert split.test.user_history(0).tolist() == [2, 3]
    by_fraction = temporal_split(seqs, valid_fraction=0.25, test_fraction=0.25)
    assert by_fraction.train.num_interactions >= 3
    with pytest.raises(ValueError):
        temporal_split(seqs, valid_fraction=0.6, test_fraction=0.5)


def test_eval_set_from_lists():
    es = EvalSet.from_lists(["u"], [[2, 3]], [[4, 5]])
    assert len(es) == 1 and es.user_targets(0).tolist() == [4, 5]


def test_importing_tfmarl_data_does_not_import_tensorflow():
    code = "import sys, tfmarl.data; tfmarl.data.Vocabulary(['a']); print(json.dumps('tensorflow' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
