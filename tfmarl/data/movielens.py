"""Loader for the GroupLens MovieLens data sets in their original layouts.

Recognised layouts (by the files in the directory; `MOVIELENS_LAYOUTS`):
  ml-100k:            ``u.data`` (tab-separated), ``u.item`` (``|``-separated, latin-1), ``u.genre``
  ml-1m, ml-10m:      ``ratings.dat``, ``movies.dat`` (``::``-separated, latin-1)
  ml-latest(-small),
  ml-20m, ml-25m, ...: ``ratings.csv``, ``movies.csv`` (with headers, UTF-8), and ``tags.csv``
                      (optional; user tags for the knowledge graph)

The data sets are not shipped: download a zip from the GroupLens page (`MOVIELENS_URL`), unzip it
and pass the directory. `describe_movielens_layouts` says which files and archives, for messages.
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
from tfmarl.data.knowledge import movielens_knowledge_graph

# The genres of ML-100k's u.item flag columns, in order, for when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
NO_GENRES = "(no genres listed)"


MOVIELENS_URL = "https://grouplens.org/datasets/movielens/"
MOVIELENS_DOWNLOADS = "https://files.grouplens.org/datasets/movielens/"  # + an archive name


@dataclasses.dataclass(frozen=True)
class MovieLensLayout:
    """One on-disk layout of the MovieLens files.

    Attributes:
      kind: "100k", "dat" or "csv".
      datasets: the data sets published in this layout.
      ratings: the file that must be there.
      movies: the item table (titles, genres); without it the data loads with no item table.
      optional: other files read when present.
      archives: the zip names under `MOVIELENS_DOWNLOADS`, one per data set, and what each unzips
        to when that is not its data set's name.
    """

    kind: str
    datasets: tuple[str, ...]
    ratings: str
    movies: str
    optional: tuple[str, ...]
    archives: tuple[tuple[str, str], ...]

    def files(self) -> str:
        extra = f" ({', '.join(self.optional)} optional)" if self.optional else ""
        return f"{self.ratings} and {self.movies}{extra}"

    def describe(self) -> str:
        archives = ", ".join(name + (f" (unzips to {directory}/)" if directory else "")
                             for name, directory in self.archives)
        return f"{', '.join(self.datasets)}: {self.files()}; download {archives} from {MOVIELENS_DOWNLOADS}"


MOVIELENS_LAYOUTS = (
    MovieLensLayout("100k", ("ml-100k",), "u.data", "u.item", ("u.genre",), (("ml-100k.zip", ""),)),
    MovieLensLayout("dat", ("ml-1m", "ml-10m"), "ratings.dat", "movies.dat", (),
                    (("ml-1m.zip", ""), ("ml-10m.zip", "ml-10M100K"))),
    MovieLensLayout("csv", ("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m"), "ratings.csv",
                    "movies.csv", ("tags.csv",),
                    (("ml-latest-small.zip", ""), ("ml-latest.zip", ""), ("ml-20m.zip", ""), ("ml-25m.zip", ""),
                     ("ml-32m.zip", ""))),
)


def describe_movielens_layouts() -> str:
    """Where to get each MovieLens layout `load_movielens` reads and which files it needs, one
    line per layout, as printed in its errors (and by the CLI)."""
    lines = [f"MovieLens data sets (from {MOVIELENS_URL}), one layout per line:"]
    lines += [f"  {layout.describe()}" for layout in MOVIELENS_LAYOUTS]
    lines.append("Unzip one and pass its directory: load_movielens('/path/to/ml-100k'), "
                 "or in a tfmarl config: data: {source: movielens, path: /path/to/ml-100k}")
    return "\n".join(lines)


class MovieLensNotFoundError(DataError, FileNotFoundError):
    """No MovieLens data at the path: it does not exist, or holds no layout's ratings file. The
    message says which files each layout needs and where to download them. Both a `DataError`
    and a `FileNotFoundError`, so either ``except`` catches it."""


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

    With an item table, ``knowledge`` is an item knowledge graph (`movielens_knowledge_graph`):
    (item, "genre", <genre>) per genre, (item, "decade", "1990s") from the year ending the title,
    and, in the csv layout when the directory holds ``tags.csv`` (userId,movieId,tag,timestamp),
    (item, "tag", <tag lowercased and stripped>) for tags at least 2 distinct users applied to
    the item. Without an item table ``knowledge`` is None.

    Raises `MovieLensNotFoundError` (a DataError and a FileNotFoundError) if ``path`` does not
    exist or holds no layout's ratings file, naming the files each layout needs and where to
    download them (`describe_movielens_layouts`); DataError if a file is malformed (naming file,
    line and problem; tags.csv included); ValueError for an unknown ``on_duplicates``.
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
    data = Interactions(log=log, items=items, name=name, metadata=metadata)
    if items is not None:
        tags = directory / "tags.csv"
        tags = tags if layout.kind == "csv" and tags.is_file() else None
        data.knowledge = movielens_knowledge_graph(data, tags=tags)
    return data


def _directory(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise MovieLensNotFoundError(f"no such directory\n{describe_movielens_layouts()}", path=path)
    if path.is_file() and path.suffix == ".zip":
        raise MovieLensNotFoundError(f"a zip archive is not read: unzip {path.name} and pass the directory it "
                                     f"holds\n{describe_movielens_layouts()}", path=path)
    return path.parent if path.is_file() else path


def _find_layout(directory: pathlib.Path) -> MovieLensLayout:
    for layout in MOVIELENS_LAYOUTS:
        if (directory / layout.ratings).is_file():
            return layout
    found = sorted(p.name for p in directory.iterdir())
    listing = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") if found else "nothing"
    hints = []
    for layout in MOVIELENS_LAYOUTS:  # a partial download or extraction: name what is missing
        present = [name for name in (layout.movies, *layout.optional) if name in found]
        if present:
            sets = layout.datasets[0] + (", ..." if len(layout.datasets) > 1 else "")
            hints.append(f"{' and '.join(present)} but no {layout.ratings} (the ratings of {sets})")
    nested = sorted(p.name for p in directory.iterdir() if p.is_dir()
                    and any((p / layout.ratings).is_file() for layout in MOVIELENS_LAYOUTS))
    if nested:  # e.g. the folder the archive was unzipped into
        hints.append(f"MovieLens data is one level down: pass {directory / nested[0]}")
    hint = "".join(f"; {h}" for h in hints)
    raise MovieLensNotFoundError(f"not a MovieLens directory: found {listing}{hint}\n{describe_movielens_layouts()}",
                                 path=directory)


def _dataset_name(layout: MovieLensLayout, directory: pathlib.Path) -> str:
    dirname = directory.resolve().name.lower()
    if layout.kind == "100k":
        return "ml-100k"
    if layout.kind == "dat":
        # ml-10m (directory ml-10M100K) shares ml-1m's layout but rates in half stars.
        return "ml-10m" if "10m" in dirname else "ml-1m"
    return dirname if dirname.startswith("ml-") else "ml-latest"


# --- ratings -------------------------------------------------------------------------------


def _read_ratings(layout: MovieLensLayout, path: pathlib.Path, scale: _Scale, name: str):
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


def _read_movies(layout: MovieLensLayout, directory: pathlib.Path) -> pd.DataFrame | None:
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
