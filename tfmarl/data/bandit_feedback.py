"""Loader for logged impressions (bandit feedback) in CSV/TSV or Parquet files, for off-policy evaluation.

One row per shown item: the impression (round) id, the item's position in the slate, the item
id, the reward observed there, and the logging policy's probabilities. Rows of one round form
one slate; single-action logs are slates of one. The result is a `tfmarl.evaluation.SlateLog`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from tfmarl.data import validation as v
from tfmarl.data.errors import DataError
from tfmarl.data.vocab import Vocabulary

_PROPENSITY_ATOL = 1e-6


def load_bandit_feedback(path, *, round: str = "round_id", position: str = "position", item: str = "item_id",
                         reward: str = "reward", propensity: str | None = None,
                         conditional_propensity: str | None = None, behaviour_probs: str | None = None,
                         behaviour_file=None, history: str | None = None, candidates: str | None = None,
                         user: str | None = None, session: str | None = None, timestamp: str | None = None,
                         context: Sequence[str] = (), items=None, list_sep: str = " ", sep: str | None = None,
                         encoding: str = "utf-8"):
    """Reads an impression log into a `SlateLog` (item ids become vocabulary indices).

    Args:
      path: CSV/TSV/Parquet file, one row per (round, position).
      round, position, item, reward: column names. Positions are integers; each round's must be
        consecutive from the file's lowest position (0- or 1-based), and every round the same size.
      propensity: column of μ_k(item | x), the logging policy's marginal probability of showing
        this item at this position, in (0, 1].
      conditional_propensity: column of μ(item | x, items above it), the probability a sequential
        sampler gave this item at this position given the slate so far, in (0, 1]; their running
        product is the probability of each top k (what sips, rips and cascade_dr need). For
        slates of one it is also the marginal.
      behaviour_probs: column holding the logging policy's whole per-position distribution as a
        JSON object {item id: probability} (summing to 1), or ``behaviour_file``: a table with
        columns ``round``, ``position``, ``item`` and ``probability`` giving it. Either provides
        ``propensity`` (the shown item's probability) when that column is absent.
      history: column of the user's item ids before the impression, joined by ``list_sep``
        (oldest first; read from the round's first row). candidates: likewise, the items the
        logging policy chose from.
      user, session, timestamp: optional columns (the timestamp as for `load_interactions`).
      context: numeric context columns (read from each round's first row).
      items: a `Vocabulary` (or list of ids) the item ids must belong to, e.g. the model's; by
        default the ids found in the file, in order of first appearance.

    Raises FileNotFoundError for a missing file, and DataError naming the file, line and column
    for: missing columns, propensities outside (0, 1], missing positions, duplicate (round,
    position) rows, rounds of different sizes, unknown items, repeated items in a slate, bad
    rewards, distributions that do not sum to 1 or omit the shown item.
    """
    from tfmarl.evaluation.ope.slate_log import SlateLog

    if propensity is None and conditional_propensity is None and behaviour_probs is None and behaviour_file is None:
        raise ValueError("give the logging probabilities: propensity=, conditional_propensity=, behaviour_probs= "
                         "or behaviour_file=")
    path = pathlib.Path(path)
    optional = [propensity, conditional_propensity, behaviour_probs, history, candidates, user, session, timestamp,
                *context]
    columns = [round, position, item, reward] + [c for c in optional if c is not None]
    frame, locator = v.read_table(path, columns, sep=sep, encoding=encoding)
    rounds = v.string_ids(frame[round], locator, round, "round id")
    items_col = v.string_ids(frame[item], locator, item, "item id")
    positions = _numbers(frame[position], locator, position, "position", integral=True)
    rewards = _numbers(frame[reward], locator, reward, "reward")

    # Group rows into rounds, in order of first appearance, and check the slate layout.
    codes, round_names = pd.factorize(rounds)
    base = int(positions.min())
    slot = (positions - base).astype(np.int64)
    key = codes.astype(np.int64) * (int(slot.max()) + 1) + slot
    repeated = pd.Series(key).duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        raise locator.error(row, f"duplicate (round, position): round {rounds.iloc[row]!r} has position "
                                 f"{int(positions[row])} twice", position)
    sizes = np.bincount(codes)
    k = int(sizes[0])
    for r in np.flatnonzero(sizes != k)[:1]:
        row = int(np.argmax(codes == r))
        raise locator.error(row, f"round {round_names[r]!r} has {sizes[r]} positions but round "
                                 f"{round_names[0]!r} has {k}: every slate must have the same size", round)
    beyond = slot >= k
    if beyond.any():
        row = int(np.argmax(beyond))
        raise locator.error(row, f"missing positions: round {rounds.iloc[row]!r} has position {int(positions[row])} "
                                 f"but its {k} positions should be {base}..{base + k - 1}", position)
    n = len(round_names)
    first_row = np.full(n, -1)
    first_row[codes[::-1]] = np.arange(len(codes))[::-1]
    where = np.empty((n, k), np.int64)
    where[codes, slot] = np.arange(len(codes))  # row of (round, position)

    vocabulary, index = _vocabulary(items, items_col, frame, (history, candidates), list_sep)
    item_index = index(items_col.to_numpy(), locator, item, np.arange(len(items_col)))
    slates = item_index[where]
    ordered = np.sort(slates, axis=1)
    repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if repeats.any():
        r = int(np.argmax(repeats))
        raise locator.error(int(first_row[r]), f"round {round_names[r]!r} shows the same item twice", item)

    probs = {}
    for name, column in (("marginal", propensity), ("conditional", conditional_propensity)):
        if column is not None:
            values = _numbers(frame[column], locator, column, "propensity")
            bad = ~((values > 0) & (values <= 1))
            if bad.any():
                row = int(np.argmax(bad))
                raise locator.error(row, f"propensity {float(values[row])} outside (0, 1]", column)
            probs[name] = values
    if behaviour_probs is not None or behaviour_file is not None:
        shown = _distribution_propensities(frame, locator, behaviour_probs, behaviour_file, rounds, positions,
                                           items_col, base, (round, position, item))
        if "marginal" in probs:
            off = np.abs(shown - probs["marginal"]) > _PROPENSITY_ATOL
            if off.any():
                row = int(np.argmax(off))
                raise locator.error(row, f"propensity {probs['marginal'][row]!r} disagrees with the behaviour "
                                         f"distribution's {shown[row]!r} for the shown item", propensity)
        probs["marginal"] = shown
    if "marginal" not in probs:
        if k > 1:
            raise ValueError("slates of more than one item need the marginal propensity (propensity=, behaviour_probs= "
                             "or behaviour_file=) besides conditional_propensity=")
        probs["marginal"] = probs["conditional"]
    cascade = np.cumprod(probs["conditional"][where], axis=1) if "conditional" in probs else None

    def per_round(column):
        return None if column is None else frame[column].iloc[first_row].reset_index(drop=True)

    def id_lists(column):
        if column is None:
            return None
        cells = per_round(column).astype(object).where(per_round(column).notna(), "").astype(str)
        lists = [cell.split(list_sep) if cell.strip() else [] for cell in cells]
        width = max((len(x) for x in lists), default=0) or 1
        out = np.zeros((n, width), np.int64)
        for r, ids in enumerate(lists):
            ids = [t.strip() for t in ids if t.strip()]
            out[r, :len(ids)] = index(np.asarray(ids, dtype=object), locator, column, np.full(len(ids), first_row[r]))
        return out

    context_values = None
    if context:
        context_values = np.stack([_numbers(per_round(c), _RoundLocator(locator, first_row), c, "context value")
                                   for c in context], axis=1)
    stamps = None
    if timestamp is not None:
        stamps = v.timestamps(frame[timestamp], locator, timestamp)[first_row]
    text = lambda column: None if column is None else per_round(column).astype(str).tolist()  # noqa: E731
    return SlateLog(slates=slates, rewards=rewards[where], position_propensities=probs["marginal"][where],
                    cascade_propensities=cascade, history=id_lists(history), candidates=id_lists(candidates),
                    context=context_values, timestamps=stamps, round_ids=[str(r) for r in round_names],
                    users=text(user), sessions=text(session), item_vocab=vocabulary.tokens,
                    metadata={"path": str(path), "first_position": base})


class _RoundLocator(v.Locator):
    """Locates per-round values (taken from each round's first row) in the file."""

    def __init__(self, locator, first_row):
        self.path, self._locator, self._first = locator.path, locator, first_row

    def error(self, row, problem, column=None):
        return self._locator.error(int(self._first[row]), problem, column)

    def describe(self, rows):
        return self._locator.describe([int(self._first[r]) for r in rows])


def _numbers(values: pd.Series, locator, column: str, what: str, integral: bool = False) -> np.ndarray:
    numbers = v._numbers(values.reset_index(drop=True))
    bad = ~np.isfinite(numbers)
    if bad.any():
        row = int(np.argmax(bad))
        raise locator.error(row, f"{what} {values.iloc[row]!r} is not a finite number", column)
    if integral:
        bad = numbers != np.round(numbers)
        if bad.any():
            row = int(np.argmax(bad))
            raise locator.error(row, f"{what} {values.iloc[row]!r} is not an integer", column)
    return numbers


def _vocabulary(items, item_ids: pd.Series, frame, list_columns, list_sep):
    if items is None:
        seen = dict.fromkeys(item_ids.tolist())
        for column in list_columns:
            if column is not None:
                for cell in frame[column].dropna().astype(str):
                    seen.update(dict.fromkeys(t.strip() for t in cell.split(list_sep) if t.strip()))
        vocabulary = Vocabulary(seen)
    else:
        vocabulary = items if isinstance(items, Vocabulary) else Vocabulary(items)

    def index(ids: np.ndarray, locator, column: str, rows: np.ndarray) -> np.ndarray:
        indices = vocabulary.lookup(ids).astype(np.int64)
        unknown = indices < 2
        if unknown.any():
            j = int(np.argmax(unknown))
            raise locator.error(int(rows[j]), f"unknown item {ids[j]!r}: not in the item vocabulary "
                                              f"({vocabulary.size - 2} items)", column)
        return indices

    return vocabulary, index


def _distribution_propensities(frame, locator, column, companion, rounds, positions, items, base, keys):
    """μ_k(shown item) from a per-row JSON distribution column or a companion table, validated."""
    n = len(frame)
    shown = np.empty(n)
    if column is not None:
        for row, cell in enumerate(frame[column].astype(str)):
            try:
                dist = {str(key): float(p) for key, p in json.loads(cell).items()}
            except (ValueError, AttributeError, TypeError):
                raise locator.error(row, "behaviour distribution is not a JSON object {item id: probability}",
                                    column) from None
            shown[row] = _check_distribution(dist, items.iloc[row], lambda p: locator.error(row, p, column))
        return shown
    table, table_locator = v.read_table(companion, list(keys[:3]) + ["probability"])
    key_rows = {}
    t_rounds = v.string_ids(table[keys[0]], table_locator, keys[0], "round id").tolist()
    t_pos = _numbers(table[keys[1]], table_locator, keys[1], "position", integral=True)
    t_items = v.string_ids(table[keys[2]], table_locator, keys[2], "item id").tolist()
    t_probs = _numbers(table["probability"], table_locator, "probability", "probability")
    for row, (r, p, i, q) in enumerate(zip(t_rounds, t_pos, t_items, t_probs)):
        dist, _ = key_rows.setdefault((r, int(p)), ({}, row))
        if i in dist:
            raise table_locator.error(row, f"item {i!r} appears twice in the distribution of round {r!r}, "
                                           f"position {int(p)}", keys[2])
        dist[i] = q
    for row in range(n):
        found = key_rows.get((rounds.iloc[row], int(positions[row])))
        if found is None:
            raise locator.error(row, f"{companion}: no behaviour distribution for round {rounds.iloc[row]!r}, "
                                     f"position {int(positions[row])}", keys[1])
        dist, first = found
        shown[row] = _check_distribution(dist, items.iloc[row],
                                         lambda p: table_locator.error(first, p, "probability"))
    return shown


def _check_distribution(dist: dict, shown: str, error) -> float:
    values = np.array(list(dist.values()), np.float64)
    if not np.all((values >= 0) & (values <= 1)):
        raise error("behaviour probabilities must lie in [0, 1]")
    if abs(values.sum() - 1) > 1e-4:
        raise error(f"behaviour distribution sums to {values.sum():.6g}, not 1")
    p = dist.get(shown, 0.0)
    if not p > 0:
        raise error(f"behaviour distribution gives the shown item {shown!r} probability 0 (propensities must lie "
                    "in (0, 1])")
    return p
