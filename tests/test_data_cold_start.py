"""Cold-item and cold-user splits."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfmarl.data import Sequences
from tfmarl.data.cold_start import (HISTORY_BUCKETS, ColdItemSplit, ColdUserSplit, bucket_name, cold_item_split,
                                    cold_user_split)


def random_sequences(users=60, items=40, seed=0, min_len=3, max_len=30, distinct=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, users)
    if distinct:
        lists = [(rng.permutation(items - 2)[:n] + 2).tolist() for n in lengths]
    else:
        lists = [rng.integers(2, items, n).tolist() for n in lengths]
    return Sequences.from_lists([f"u{i}" for i in range(users)], lists)


def eval_items(es):
    return set(es.history.tolist()) | set(es.targets.tolist())


def test_bucket_names():
    assert [bucket_name(*b) for b in HISTORY_BUCKETS] == ["1", "2-5", "6-20", ">20"]


@pytest.mark.parametrize("how", ["random", "newest"])
def test_cold_items_never_warm(how):
    seqs = random_sequences()
    split = cold_item_split(seqs, 0.2, how=how, seed=1)
    assert isinstance(split, ColdItemSplit)
    cold = set(split.cold_items.tolist())
    n_items = len(np.unique(seqs.items))
    assert len(cold) == round(0.2 * n_items)
    assert split.cold_items.dtype == np.int32 and np.all(np.diff(split.cold_items) > 0)
    assert not cold & set(split.train.items.tolist())
    assert not cold & eval_items(split.valid)
    assert not cold & eval_items(split.warm_test)
    assert len(split.valid) > 0 and len(split.warm_test) > 0

    ids = list(seqs.user_ids)
    for i in range(len(split.test)):
        row = seqs[ids.index(split.test.user_ids[i])]
        first_cold = next(p for p, item in enumerate(row.tolist()) if item in cold)
        assert first_cold > 0
        assert split.test.user_history(i).tolist() == row[:first_cold].tolist()  # all warm, before the first cold
        want = list(dict.fromkeys(x for x in row.tolist() if x in cold))
        assert split.test.user_targets(i).tolist() == want
    # Every user with a warm item before a cold one is in the cold test.
    expected = [u for u, row in zip(ids, seqs.rows())
                if any(x in cold for x in row.tolist()) and row[0] not in cold]
    assert list(split.test.user_ids) == expected


def test_cold_items_train_is_leave_one_out_of_warm():
    # Items 2..11; first seen last: 11 (t=95), then 10 (t=90) -> the 2 cold items of 10.
    seqs = Sequences.from_lists(["a", "b", "c"], [[2, 3, 4, 10, 5, 6], [5, 6, 7, 8, 9, 11, 10], [11, 2, 3, 4]],
                                [[1, 2, 3, 90, 91, 92], [4, 5, 6, 7, 8, 95, 96], [99, 100, 101, 102]])
    split = cold_item_split(seqs, 0.2, how="newest")
    assert split.cold_items.tolist() == [10, 11]
    # Warm: a = 2 3 4 5 6, b = 5 6 7 8 9, c = 2 3 4 -> leave-one-out.
    assert [r.tolist() for r in split.train.rows()] == [[2, 3, 4], [5, 6, 7], [2]]
    assert split.valid.user_targets(0).tolist() == [5] and split.warm_test.user_targets(0).tolist() == [6]
    assert split.warm_test.user_history(1).tolist() == [5, 6, 7, 8]
    # Cold test: a (history 2 3 4, target 10), b (history 5..9, targets 11 then 10); c starts cold.
    assert list(split.test.user_ids) == ["a", "b"]
    assert split.test.user_history(0).tolist() == [2, 3, 4] and split.test.user_targets(0).tolist() == [10]
    assert split.test.user_history(1).tolist() == [5, 6, 7, 8, 9]
    assert split.test.user_targets(1).tolist() == [11, 10]


def test_newest_picks_latest_first_seen_items():
    seqs = random_sequences(seed=4)
    rng = np.random.default_rng(0)
    seqs = Sequences(seqs.user_ids, seqs.offsets, seqs.items, rng.permutation(len(seqs.items)).astype(np.int64))
    split = cold_item_split(seqs, 0.25, how="newest")
    first_seen = {}
    for item, t in zip(seqs.items.tolist(), seqs.timestamps.tolist()):
        first_seen[item] = min(t, first_seen.get(item, t))
    latest = sorted(first_seen, key=lambda i: -first_seen[i])[:len(split.cold_items)]
    assert sorted(latest) == split.cold_items.tolist()
    assert min(first_seen[i] for i in latest) > max(first_seen[i] for i in first_seen if i not in latest)


def test_cold_item_seeds():
    seqs = random_sequences()
    a = cold_item_split(seqs, 0.2, seed=3)
    b = cold_item_split(seqs, 0.2, seed=3)
    c = cold_item_split(seqs, 0.2, seed=4)
    assert a.cold_items.tolist() == b.cold_items.tolist()
    assert a.test.targets.tolist() == b.test.targets.tolist()
    assert a.cold_items.tolist() != c.cold_items.tolist()
    # "newest" ignores the seed.
    assert (cold_item_split(seqs, 0.2, how="newest", seed=1).cold_items.tolist()
            == cold_item_split(seqs, 0.2, how="newest", seed=2).cold_items.tolist())


def test_cold_item_errors():
    seqs = random_sequences(users=5, items=6)
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            cold_item_split(seqs, fraction)
    with pytest.raises(ValueError, match="how must be"):
        cold_item_split(seqs, 0.5, how="oldest")
    with pytest.raises(ValueError, match="no cold item"):
        cold_item_split(seqs, 0.01)  # 4 items
    with pytest.raises(ValueError, match="no warm item"):
        cold_item_split(seqs, 0.99)
    # The only cold candidate (item 3, first seen last) starts every sequence it is in.
    lonely = Sequences.from_lists(["a", "b"], [[3, 2, 4], [2, 4, 5]], [[9, 10, 11], [1, 2, 3]])
    with pytest.raises(ValueError, match="cold test is empty"):
        cold_item_split(lonely, 0.25, how="newest")
    with pytest.raises(ValueError, match="min_length"):
        cold_item_split(seqs, 0.5, min_length=2)


def test_cold_users_held_out_with_bucketed_histories():
    seqs = random_sequences(users=80, min_len=1, max_len=40, seed=2)
    split = cold_user_split(seqs, 0.25, seed=5)
    assert isinstance(split, ColdUserSplit) and split.buckets == HISTORY_BUCKETS
    cold = set(split.test.user_ids.tolist())
    assert len(cold) > 5
    assert not cold & set(split.train.user_ids.tolist())
    assert not cold & set(split.valid.user_ids.tolist())
    assert len(set(split.train.user_ids.tolist())) == 80 - round(0.25 * 80)
    assert split.history_lengths.tolist() == [len(split.test.user_history(i)) for i in range(len(split.test))]

    ids = list(seqs.user_ids)
    per_user = {}
    for i in range(len(split.test)):
        u = split.test.user_ids[i]
        row = seqs[ids.index(u)].tolist()
        h = int(split.history_lengths[i])
        assert split.test.user_history(i).tolist() == row[:h]
        assert split.test.user_targets(i).tolist() == [row[h]]
        assert row[h] not in row[:h]
        per_user.setdefault(u, []).append(h)
    for u, hs in per_user.items():
        n = len(seqs[ids.index(u)])
        # At most one instance per bucket, each inside its bucket and leaving a next item.
        found = [next(b for b, (lo, hi) in enumerate(HISTORY_BUCKETS) if lo <= h <= (hi or np.inf)) for h in hs]
        assert found == sorted(set(found))
        assert all(h <= n - 1 for h in hs)
    # Every bucket is populated for these lengths.
    assert {next(b for b, (lo, hi) in enumerate(HISTORY_BUCKETS) if lo <= h <= (hi or np.inf))
            for h in split.history_lengths.tolist()} == {0, 1, 2, 3}


def test_cold_user_instance_per_bucket_and_repeat_skip():
    # One long user with distinct items gets one instance per bucket; the repeated-item user
    # gets only instances whose target is new.
    long = list(range(2, 32))  # 30 distinct items
    rep = [2, 2, 2, 2, 2, 2, 2]
    seqs = Sequences.from_lists(["long", "rep", "w1", "w2", "w3"], [long, rep, [2, 3, 4], [3, 4, 5], [4, 5, 6]])
    found = None
    for seed in range(50):
        split = cold_user_split(seqs, 0.4, seed=seed)
        if set(split.test.user_ids.tolist()) == {"long"} and len(split.train) == 3:
            found = split
            break
    assert found is not None
    assert found.history_lengths[0] == 1
    assert 2 <= found.history_lengths[1] <= 5 and 6 <= found.history_lengths[2] <= 20
    assert 21 <= found.history_lengths[3] <= 29
    assert len(found.test) == 4
    # rep is cold in some seed but never yields an instance (every target repeats the history).
    for seed in range(50):
        try:
            split = cold_user_split(seqs, 0.4, seed=seed)
        except ValueError as err:
            assert "cold test is empty" in str(err)
            continue
        assert "rep" not in set(split.test.user_ids.tolist())


def test_cold_user_max_instances_and_seeds():
    seqs = random_sequences(users=80, items=60, min_len=25, max_len=40, seed=3, distinct=True)
    full = cold_user_split(seqs, 0.2, seed=1)
    assert len(full.test) == 4 * 16  # every cold user is long enough for every bucket
    capped = cold_user_split(seqs, 0.2, seed=1, max_instances_per_user=2)
    assert len(capped.test) == 2 * 16
    assert list(cold_user_split(seqs, 0.2, seed=1).history_lengths) == list(full.history_lengths)
    other = cold_user_split(seqs, 0.2, seed=2)
    assert (set(other.test.user_ids.tolist()) != set(full.test.user_ids.tolist())
            or list(other.history_lengths) != list(full.history_lengths))
    custom = cold_user_split(seqs, 0.2, seed=1, buckets=((3, 3), (10, None)))
    assert custom.buckets == ((3, 3), (10, None))
    assert all(h == 3 for h in custom.history_lengths[::2]) and all(h >= 10 for h in custom.history_lengths[1::2])


def test_cold_user_errors():
    seqs = random_sequences(users=4)
    with pytest.raises(ValueError, match="fraction must be in"):
        cold_user_split(seqs, 1.0)
    with pytest.raises(ValueError, match="no cold user"):
        cold_user_split(seqs, 0.1)
    with pytest.raises(ValueError, match="no warm user"):
        cold_user_split(seqs, 0.9)
    with pytest.raises(ValueError, match="low must be"):
        cold_user_split(seqs, 0.5, buckets=((0, 2),))
    with pytest.raises(ValueError, match="high must be"):
        cold_user_split(seqs, 0.5, buckets=((3, 2),))
    with pytest.raises(ValueError, match="max_instances_per_user"):
        cold_user_split(seqs, 0.5, max_instances_per_user=0)
    short = Sequences.from_lists(["a", "b"], [[2], [3]])  # no next item to predict for either
    with pytest.raises(ValueError, match="cold test is empty"):
        cold_user_split(short, 0.5)


def test_cold_start_module_does_not_import_tensorflow():
    code = "import sys, json, tfmarl.data.cold_start; print(json.dumps('tensorflow' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
