"""Train / validation / test splits of per-user sequences."""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmarl.data.sequences import Sequences


@dataclasses.dataclass
class EvalSet:
    """Users to evaluate: each has an input history (oldest first) and one or more target items.

    ``history[history_offsets[u]:history_offsets[u+1]]`` is user ``u``'s history; the same layout
    holds for ``targets``. Rankings exclude every history item, so targets never repeat a history
    item.
    """

    user_ids: np.ndarray
    history_offsets: np.ndarray
    history: np.ndarray
    target_offsets: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def user_history(self, u: int) -> np.ndarray:
        return self.history[self.history_offsets[u]:self.history_offsets[u + 1]]

    def user_targets(self, u: int) -> np.ndarray:
        return self.targets[self.target_offsets[u]:self.target_offsets[u + 1]]

    @classmethod
    def from_lists(cls, user_ids, histories, targets) -> "EvalSet":
        h_off = np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int64)
        t_off = np.concatenate([[0], np.cumsum([len(t) for t in targets])]).astype(np.int64)
        cat = lambda xs: np.concatenate([np.asarray(x, np.int32) for x in xs]) if len(xs) else np.zeros(0, np.int32)
        return cls(np.asarray(user_ids, dtype=object), h_off, cat(histories), t_off, cat(targets))


@dataclasses.dataclass
class Split:
    train: Sequences
    valid: EvalSet
    test: EvalSet


def leave_one_out(sequences: Sequences, min_length: int = 3) -> Split:
    """The standard sequential protocol (RecBole's for sequential models).

    For each user with at least ``min_length`` interactions: the last item is the test target, the
    second to last the validation target, the rest train. The validation input is the train items;
    the test input is every earlier item (train + validation). Users with fewer interactions keep
    all of them in train and are not evaluated.
    """
    if min_length < 3:
        raise ValueError(f"min_length must be at least 3 (train, validation, test), got {min_length}")
    lengths = sequences.lengths
    evaluated = lengths >= min_length
    last = sequences.offsets[1:] - 1
    is_test = np.zeros(len(sequences.items), bool)
    is_valid = np.zeros(len(sequences.items), bool)
    is_test[last[evaluated]] = True
    is_valid[last[evaluated] - 1] = True
    train = sequences.select(~(is_test | is_valid))

    users = np.flatnonzero(evaluated)
    valid = _eval_set(sequences, users, history_end_offset=2)
    test = _eval_set(sequences, users, history_end_offset=1)
    return Split(train, valid, test)


def _eval_set(sequences: Sequences, users: np.ndarray, history_end_offset: int) -> EvalSet:
    starts = sequences.offsets[users]
    target_pos = sequences.offsets[users + 1] - history_end_offset
    histories = [sequences.items[s:t] for s, t in zip(starts, target_pos)]
    targets = [sequences.items[t:t + 1] for t in target_pos]
    return EvalSet.from_lists(sequences.user_ids[users], histories, targets)


def temporal_split(sequences: Sequences, valid_fraction: float = 0.1, test_fraction: float = 0.1,
                   *, valid_time: int | None = None, test_time: int | None = None) -> Split:
    """Global temporal split: one cut in time for validation, a later one for test.

    By default the cuts sit at the timestamp quantiles that leave ``valid_fraction`` and
    ``test_fraction`` of all interactions after them; ``valid_time``/``test_time`` set them
    directly. Train = interactions before the validation cut. Validation input = train items,
    targets = the user's items in [valid_time, test_time). Test input = every item before
    test_time, targets = items from test_time on. Only users with a non-empty input history and at
    least one new target are evaluated; targets already in the history (repeats) are dropped
    because rankings exclude history items.
    """
    for name, frac in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError("valid_fraction + test_fraction must be below 1")
    ts = sequences.timestamps
    if test_time is None:
        test_time = int(np.quantile(ts, 1.0 - test_fraction, method="higher")) if test_fraction else int(ts.max()) + 1
    if valid_time is None:
        valid_time = (int(np.quantile(ts, 1.0 - test_fraction - valid_fraction, method="higher"))
                      if valid_fraction else test_time)
    if valid_time > test_time:
        raise ValueError(f"valid_time {valid_time} is after test_time {test_time}")
    train = sequences.select(ts < valid_time)
    valid = _temporal_eval_set(sequences, ts < valid_time, (ts >= valid_time) & (ts < test_time))
    test = _temporal_eval_set(sequences, ts < test_time, ts >= test_time)
    return Split(train, valid, test)


def _temporal_eval_set(sequences: Sequences, in_history: np.ndarray, in_target: np.ndarray) -> EvalSet:
    user_ids, histories, targets = [], [], []
    for u in range(len(sequences)):
        s, e = sequences.offsets[u], sequences.offsets[u + 1]
        items = sequences.items[s:e]
        history = items[in_history[s:e]]
        if len(history) == 0:
            continue
        seen = set(history.tolist())
        new = []
        for item in items[in_target[s:e]].tolist():
            if item not in seen:
                seen.add(item)
                new.append(item)
        if new:
            user_ids.append(sequences.user_ids[u])
            histories.append(history)
            targets.append(new)
    return EvalSet.from_lists(user_ids, histories, targets)
