"""Loader for the GroupLens MovieLens data sets in their original layouts.

Recognised layouts (by the files in the directory):
  ml-100k:            ``u.data`` (tab-separated), ``u.item`` (``|``-separated, latin-1), ``u.genre``
  ml-1m, ml-10m:      ``ratings.dat``, ``movies.dat`` (``::``-separated, latin-1)
  ml-latest(-small),
  ml-20m, ml-25m, ...: ``ratings.csv``, ``movies.csv`` (with headers, UTF-8)
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings

import numpy as np
import pandas as pd

from tfmarl.data import validation as v
from tfmarl.data.errors import DataError, DataWarning
from tfmarl.data.interactions import Interactions

# The genres of ML-100k's u.item flag columns, in order, for when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
NO_GENRES = "(no genres listed)"


@dataclasses.dataclass(frozen=True)
class _Layout:
    kind: str  # "100k", "dat" or "csv"
    ratings: str
    movies: str
    description: str


_LAYOUTS = (
    _Layout("100k", "u.data", "u.item", "ml-100k: u.data and u.item"),
    _Layout("dat", "ratings.dat", "movies.dat", "ml-1m / ml-10m: ratings.dat and movies.dat"),
    _Layout("csv", "ratings.csv", "movies.csv", "ml-latest, ml-latest-small, ml-20m, ...: ratings.csv and movies.csv"),
)


@dataclasses.dataclass(frozen=True)
class _Scale:
    low: float
    high: float
    step: float


_WHOLE_STARS = _Scale(1.0, 5.0, 1.0)
_HALF_STARS = _Scale(0.5, 5.0, 0.5)


def load_movielens(path, *, on_duplicates: str = "warn") -> Interactions:
    """Loads a MovieLens directory (ml-100k, ml-1m, ml-10m, ml-latest, ml-latest-small, ml-20m, ...).

    ``path`` is the directory (or a file in it). Returns `Interactions` named after the data set
    (e.g. "ml-100k") whose log has user_id, item_id, timestamp and rating, in file order, and whose
    item table has title, categories (the genres) and text (the title). Ids are the decimal
    numbers of the files. Duplicate (user, item, timestamp) rows are handled per ``on_duplicates``
    ('warn', 'drop' or 'error'; see `load_interactions`); their count is
    ``metadata["duplicates"]``. Without the movies file, items is None (with a DataWarning).

    Raises FileNotFoundError if ``path`` does not exist, DataError if the directory is not a
    MovieLens layout or a file is malformed (naming file, line and problem), ValueError for an
    unknown ``on_duplicates``.
    """
    v.check_on_duplicates(on_duplicates)
    directory = _directory(path)
    layout = _find_layout(directory)
    name = _dataset_name(layout, directory)
    scale = _HALF_STARS if name == "ml-10m" or layout.kind == "csv" else _WHOLE_STARS
    log, locator = _read_ratings(layout, directory / layout.ratings, scale, name)
    log, duplicates = v.apply_duplicate_policy(log, locator, on_duplicates)
    log["user_id"] = v.id_strings(log["user_id"].to_numpy())
    log["item_id"] = v.id_strings(log["item_id"].to_numpy())
    items = _read_movies(layout, directory)
    metadata = {
        "path": str(directory),
        "layout": layout.kind,
        "rating_scale": (scale.low, scale.high, scale.step),
        "duplicates": duplicates,
    }
    return Interactions(log=log, items=items, name=name, metadata=metadata)


def _directory(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such directory: {path}")
    return path.parent if path.is_file() else path


def _find_layout(directory: pathlib.Path) -> _Layout:
    for layout in _LAYOUTS:
        if (directory / layout.ratings).is_file():
            return layout
    found = sorted(p.name for p in directory.iterdir())
    listing = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") if found else "nothing"
    expected = "; ".join(layout.description for layout in _LAYOUTS)
    raise DataError(f"not a MovieLens directory: expected one of ({expected}); found: {listing}", path=directory)


def _dataset_name(layout: _Layout, directory: pathlib.Path) -> str:
    dirname = directory.resolve().name.lower()
    if layout.kind == "100k":
        return "ml-100k"
    if layout.kind == "dat":
        # ml-10m (directory ml-10M100K) shares ml-1m's layout but rates in half stars.
        return "ml-10m" if "10m" in dirname else "ml-1m"
    return dirname if dirname.startswith("ml-") else "ml-latest"


# --- ratings -------------------------------------------------------------------------------


def _read_ratings(layout: _Layout, path: pathlib.Path, scale: _Scale, name: str):
    """The log, with ids still integers (cheaper to check for duplicates), and its locator."""
    if layout.kind == "100k":
        columns = ("user id", "item id", "rating", "timestamp")
        frame, locator = v.read_delimited(path, sep="\t", header=False, encoding="latin-1",
                                          quoted=False, names=columns)
    elif layout.kind == "dat":
        columns = ("UserID", "MovieID", "Rating", "Timestamp")
        frame, locator = v.read_delimited(path, sep="::", header=False, encoding="latin-1",
                                          quoted=False, names=columns)
    else:
        columns = ("userId", "movieId", "rating", "timestamp")
        frame, locator = v.read_delimited(path, sep=",", encoding="utf-8")
        v.require_columns(frame.columns, columns, path)
    user, item, rating, timestamp = columns
    values = v.ratings(frame[rating], locator, rating)
    v.check_rating_scale(values, locator, rating, low=scale.low, high=scale.high, step=scale.step, dataset=name)
    log = pd.DataFrame({
        "user_id": v.integer_ids(frame[user], locator, user, "user id"),
        "item_id": v.integer_ids(frame[item], locator, item, "movie id"),
        "timestamp": _unix_seconds(frame[timestamp], locator, timestamp),
        "rating": values,
    })
    return log, locator


def _unix_seconds(values: pd.Series, locator, column: str) -> np.ndarray:
    seconds = v.timestamps(values, locator, column, allow_dates=False)
    negative = seconds < 0
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        raise locator.error(row, f"negative timestamp {values.iloc[row]!r}", column)
    return seconds


# --- movies --------------------------------------------------------------------------------


def _read_movies(layout: _Layout, directory: pathlib.Path) -> pd.DataFrame | None:
    path = directory / layout.movies
    if not path.is_file():
        warnings.warn(DataWarning(f"{directory}: no {layout.movies}, so no item table (titles, genres)"),
                      stacklevel=3)
        return None
    if layout.kind == "100k":
        return _read_100k_items(path, _read_100k_genres(directory / "u.genre"))
    if layout.kind == "dat":
        columns = ("MovieID", "Title", "Genres")
        frame, locator = v.read_delimited(path, sep="::", header=False, encoding="latin-1",
                                          quoted=False, names=columns)
    else:
        columns = ("movieId", "title", "genres")
        frame, locator = v.read_delimited(path, sep=",", encoding="utf-8")
        v.require_columns(frame.columns, columns, path)
    movie_id, title, genres = columns
    categories = [tuple(g for g in names if g and g != NO_GENRES) for names in frame[genres].str.split("|")]
    return _item_table(frame[movie_id], frame[title], categories, locator, movie_id)


def _read_100k_genres(path: pathlib.Path) -> tuple[str, ...]:
    """Genre names in the order of u.item's flag columns, from u.genre ("name|index")."""
    if not path.is_file():
        return ML100K_GENRES
    frame, locator = v.read_delimited(path, sep="|", header=False, encoding="latin-1",
                                      quoted=False, names=("genre", "index"))
    index = v.integer_ids(frame["index"], locator, "index", "genre index")
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(len(index))):
        repeated = pd.Series(index).duplicated().to_numpy()
        row = int(np.flatnonzero(repeated)[0]) if repeated.any() else int(order[-1])
        raise locator.error(row, f"genre indices must be 0 to {len(index) - 1}, each once", "index")
    return tuple(frame["genre"].str.strip().to_numpy()[order])


def _read_100k_items(path: pathlib.Path, genres: tuple[str, ...]) -> pd.DataFrame:
    columns = ("movie id", "movie title", "release date", "video release date", "IMDb URL") + genres
    frame, locator = v.read_delimited(path, sep="|", header=False, encoding="latin-1",
                                      quoted=False, names=columns)
    flags = frame[list(genres)].to_numpy(dtype=object)
    valid = (flags == "0") | (flags == "1")
    if not valid.all():
        row, col = (int(i[0]) for i in np.nonzero(~valid))
        raise locator.error(row, f"genre flag must be 0 or 1, got {flags[row, col]!r}", genres[col])
    names = np.array(genres, dtype=object)
    categories = [tuple(names[row]) for row in flags == "1"]
    return _item_table(frame["movie id"], frame["movie title"], categories, locator, "movie id")


def _item_table(ids: pd.Series, titles: pd.Series, categories: list, locator, id_column: str) -> pd.DataFrame:
    item_ids = v.id_strings(v.integer_ids(ids, locator, id_column, "movie id"))
    repeated = item_ids.duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise locator.error(row, f"movie id {ids.iloc[row]!r} appears twice", id_column)
    titles = titles.str.strip().to_numpy(dtype=object)
    return pd.DataFrame(
        {"title": titles, "categories": pd.Series(categories, dtype=object).to_numpy(), "text": titles},
        index=pd.Index(item_ids, name="item_id"),
    )
