"""Loader for interaction logs in any CSV/TSV or Parquet file, with an optional item table."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from tfmarl.data import validation as v
from tfmarl.data.interactions import Interactions


def load_interactions(
    path,
    *,
    user: str,
    item: str,
    timestamp: str,
    rating: str | None = None,
    event: str | None = None,
    items=None,
    item_id: str = "item_id",
    item_title: str | None = None,
    item_text: str | None = None,
    item_categories: str | None = None,
    categories_sep: str = "|",
    sep: str | None = None,
    timestamp_format: str | None = None,
    on_duplicates: str = "warn",
    encoding: str = "utf-8",
) -> Interactions:
    """Loads an interaction log, and optionally an item table, from CSV/TSV or Parquet files.

    The format follows the file name: ``.parquet``/``.pq`` (or a directory) is Parquet, anything
    else delimited text with a header line, separated by ``sep`` or else by ',' for ``.csv``, tab
    for ``.tsv``/``.tab``, or what the first lines suggest (``.gz``/``.bz2``/``.xz`` are looked
    through). ``user``, ``item``, ``timestamp``, ``rating`` and ``event`` name the log's columns.

    Ids are read as strings exactly as written ("007" stays "007"). Timestamps may be integer
    seconds since the epoch (floats only if whole), datetimes, or date strings: ISO 8601, or
    ``timestamp_format`` (strftime codes); dates without a UTC offset are taken as UTC, and
    fractions of a second are dropped. They become int64 seconds. Ratings become float64.

    ``items`` is an item table file (CSV/TSV/Parquet) with the id in column ``item_id`` and,
    optionally, ``item_title``, ``item_text`` and ``item_categories`` (a string of names joined
    by ``categories_sep``, or in Parquet a list). Without ``item_text`` the text is the title.

    Rows repeating an earlier row's (user, item, timestamp): ``on_duplicates='warn'`` keeps them
    and warns (DataWarning), 'drop' keeps only the first and warns, 'error' raises DataError. The
    count is ``metadata["duplicates"]``.

    Raises FileNotFoundError for a missing file; DataError naming the file, line (1-based,
    counting the header) or column for malformed data; ValueError for an unknown ``on_duplicates``.
    """
    v.check_on_duplicates(on_duplicates)
    path = pathlib.Path(path)
    columns = [c for c in (user, item, timestamp, rating, event) if c is not None]
    frame, locator = v.read_table(path, columns, sep=sep, encoding=encoding)
    log = pd.DataFrame({
        "user_id": v.string_ids(frame[user], locator, user, "user id"),
        "item_id": v.string_ids(frame[item], locator, item, "item id"),
        "timestamp": v.timestamps(frame[timestamp], locator, timestamp, fmt=timestamp_format),
    })
    if rating is not None:
        log["rating"] = v.ratings(frame[rating], locator, rating)
    if event is not None:
        log["event"] = _strings(frame[event])
    log, duplicates = v.apply_duplicate_policy(log, locator, on_duplicates)
    item_table = None
    if items is not None:
        item_table = load_item_table(items, item_id=item_id, title=item_title, text=item_text,
                                     categories=item_categories, categories_sep=categories_sep, encoding=encoding)
    metadata = {"path": str(path), "duplicates": duplicates,
                "columns": {"user_id": user, "item_id": item, "timestamp": timestamp, "rating": rating,
                            "event": event}}
    if items is not None:
        metadata["items_path"] = str(items)
    return Interactions(log=log, items=item_table, name=_stem(path), metadata=metadata)


def load_item_table(path, *, item_id: str = "item_id", title: str | None = None, text: str | None = None,
                    categories: str | None = None, categories_sep: str = "|", sep: str | None = None,
                    encoding: str = "utf-8") -> pd.DataFrame:
    """Reads an item table file into the form `Interactions.items` takes (see `load_interactions`)."""
    wanted = [c for c in (item_id, title, text, categories) if c is not None]
    frame, locator = v.read_table(path, wanted, sep=sep, encoding=encoding)
    ids = v.string_ids(frame[item_id], locator, item_id, "item id")
    repeated = ids.duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise locator.error(row, f"item id {ids.iloc[row]!r} appears twice in the item table", item_id)
    titles = _strings(frame[title]) if title is not None else pd.Series([""] * len(frame), dtype=str)
    texts = _strings(frame[text]) if text is not None else titles
    if categories is not None:
        cats = [_category_tuple(value, categories_sep) for value in frame[categories].to_numpy(dtype=object)]
    else:
        cats = [()] * len(frame)
    return pd.DataFrame(
        {"title": titles.to_numpy(dtype=object), "categories": pd.Series(cats, dtype=object).to_numpy(),
         "text": texts.to_numpy(dtype=object)},
        index=pd.Index(ids, name="item_id"),
    )


def _strings(values: pd.Series) -> pd.Series:
    """A text column with missing cells as ""."""
    return values.astype(object).where(values.notna(), "").astype(str).reset_index(drop=True)


def _category_tuple(value, sep: str) -> tuple[str, ...]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    parts = value.split(sep) if isinstance(value, str) else [str(p) for p in value]
    return tuple(p.strip() for p in parts if p.strip())


def _stem(path: pathlib.Path) -> str:
    """'events' for events.csv, events.csv.gz or events.parquet."""
    if path.suffix.lower() in (".gz", ".bz2", ".xz"):
        path = path.with_suffix("")
    return path.stem or path.name
