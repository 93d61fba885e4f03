"""Item knowledge graphs: (item, relation, entity) triples, and the tables models read from them.

A `KnowledgeGraph` holds distinct string triples such as ("1", "genre", "Comedy") or
("1", "decade", "1990s"). `KnowledgeGraph.item_neighbours` turns it into two int32 tables aligned
with an item `Vocabulary` (row = item index; 0 = "no neighbour"), the form an embedding or
attention layer takes. `load_knowledge_graph` reads triples from CSV/TSV/Parquet with the checks
of the other loaders; `movielens_knowledge_graph` derives one from MovieLens genres, release
decades and (ml-latest / ml-20m+ layouts) user tags.

This module imports numpy, pandas and pyarrow only, never TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

import numpy as np
import pandas as pd

from tfmarl.atomic import atomic_path
from tfmarl.data import validation as v
from tfmarl.data.errors import DataError

COLUMNS = ("item_id", "relation", "entity")
RELATION_NONE = 0  # index 0 = "no neighbour" in the indexed tables (relations and entities alike)
ENTITY_NONE = 0
NUM_RESERVED = 2  # reserved rows of an item Vocabulary (padding, OOV); see tfmarl.data.vocab

GENRE, DECADE, TAG = "genre", "decade", "tag"
MIN_TAG_USERS = 2
_YEAR = re.compile(r"\((\d{4})\)\s*$")
_SHUFFLE_TRIES = 64  # random partners tried per duplicate edge before `shuffled` gives up on it


def _natural_key(s: str):
    # Like tfmarl.data.interactions._natural_key: numbers numerically ("2" < "10"), then the rest
    # lexically; ASCII digits only, so that e.g. "²" (isdigit, but not int-able) sorts as text.
    return (0, int(s), "") if s.isascii() and s.isdigit() else (1, 0, s)


@dataclasses.dataclass(eq=False)
class KnowledgeGraph:
    """Item knowledge graph: distinct (item_id, relation, entity) triples, all str.

    ``triples`` has exactly the columns ``item_id``, ``relation``, ``entity`` (object dtype, str
    values), distinct rows in first-seen order, and a RangeIndex. Construction checks the columns
    are there and no value is missing (None/NaN) or empty (blank), raising ValueError naming the
    column and row; non-string values (e.g. integer ids) become strings; extra columns and exact
    duplicate rows are dropped. An empty graph (no triples) is allowed.
    """

    triples: pd.DataFrame
    name: str = "knowledge_graph"

    def __post_init__(self):
        self.triples = _checked_triples(self.triples, self.name)

    @classmethod
    def from_triples(cls, triples, name: str = "knowledge_graph") -> "KnowledgeGraph":
        """From an iterable of (item_id, relation, entity) 3-tuples, or a DataFrame with those columns."""
        if isinstance(triples, pd.DataFrame):
            return cls(triples, name=name)
        if isinstance(triples, (str, bytes)):
            raise ValueError("triples must be an iterable of (item_id, relation, entity) tuples, got a string")
        rows = []
        for i, triple in enumerate(triples):
            if isinstance(triple, (str, bytes)) or not hasattr(triple, "__len__") or len(triple) != 3:
                raise ValueError(f"{name}: triple {i} must be (item_id, relation, entity), got {triple!r}")
            rows.append(tuple(triple))
        return cls(pd.DataFrame(rows, columns=list(COLUMNS), dtype=object), name=name)

    # --- summary ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of triples."""
        return len(self.triples)

    def relation_names(self) -> list[str]:
        """Distinct relations, sorted; relation index i + 1 in `item_neighbours` is the i-th."""
        return sorted(self.triples["relation"].unique())

    def entity_names(self) -> list[str]:
        """Distinct entities, naturally sorted ("2" < "10", numbers before text); entity index
        i + 1 in `item_neighbours` is the i-th. An entity is one node whatever the relation."""
        return sorted(self.triples["entity"].unique(), key=_natural_key)

    def item_ids(self) -> list[str]:
        """Distinct items with at least one triple, naturally sorted."""
        return sorted(self.triples["item_id"].unique(), key=_natural_key)

    def degrees(self) -> pd.Series:
        """Triples per item (int64), indexed by item_id in `item_ids` order."""
        counts = self.triples.groupby("item_id", sort=False).size()
        return counts.reindex(self.item_ids()).astype(np.int64).rename("degree").rename_axis("item_id")

    def __repr__(self):
        return (f"KnowledgeGraph(name={self.name!r}, triples={len(self)}, items={self.triples['item_id'].nunique()}, "
                f"relations={self.triples['relation'].nunique()}, entities={self.triples['entity'].nunique()})")

    # --- tables for models -----------------------------------------------------------------
    def item_neighbours(self, item_vocab, max_neighbours: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(relations int32 [item_vocab.size, M], entities int32 [item_vocab.size, M]) aligned
        with the vocabulary's indices (`tfmarl.data.Vocabulary`: index 0 padding, 1 OOV, 2.. items).

        0 means "no neighbour" in both tables (`RELATION_NONE`); relation index i + 1 is
        ``relation_names()[i]`` and entity index i + 1 is ``entity_names()[i]`` (so an embedding
        table needs ``len(relation_names()) + 1`` and ``len(entity_names()) + 1`` rows). Rows of
        the reserved indices and of vocabulary items without triples are all zeros; triples of
        items not in the vocabulary are ignored. An item's neighbours fill its row from the left,
        ordered by (relation, entity) index, then zeros. An item with more than M triples keeps a
        random sample of M, the same for the same seed and set of triples (whatever their row
        order). M = min(max_neighbours, the largest degree among vocabulary items), at least 1.
        """
        if isinstance(max_neighbours, bool) or not isinstance(max_neighbours, (int, np.integer)) or max_neighbours < 1:
            raise ValueError(f"max_neighbours must be an integer >= 1, got {max_neighbours!r}")
        size = int(item_vocab.size)
        relation_index = pd.Index(self.relation_names())
        entity_index = pd.Index(self.entity_names())
        rows = pd.Index(item_vocab.tokens).get_indexer(self.triples["item_id"].to_numpy(dtype=object))
        known = rows >= 0
        rows = rows[known].astype(np.int64) + NUM_RESERVED
        relations = relation_index.get_indexer(self.triples["relation"].to_numpy(dtype=object)[known]) + 1
        entities = entity_index.get_indexer(self.triples["entity"].to_numpy(dtype=object)[known]) + 1
        # A canonical order first, so the sample depends on the triples, not on their row order.
        order = np.lexsort((entities, relations, rows))
        rows, relations, entities = rows[order], relations[order], entities[order]
        counts = np.bincount(rows, minlength=size)
        width = int(max(1, min(int(max_neighbours), int(counts.max(initial=0)))))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if counts.max(initial=0) > width:
            keys = np.random.default_rng(seed).random(len(rows))
            by_key = np.lexsort((keys, rows))  # within each item, a random order
            rank = np.empty(len(rows), dtype=np.int64)
            rank[by_key] = np.arange(len(rows)) - starts[rows[by_key]]
            keep = np.flatnonzero(rank < width)  # still in canonical order
            rows, relations, entities = rows[keep], relations[keep], entities[keep]
            counts = np.bincount(rows, minlength=size)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        column = np.arange(len(rows)) - starts[rows]
        relation_table = np.zeros((size, width), dtype=np.int32)
        entity_table = np.zeros((size, width), dtype=np.int32)
        relation_table[rows, column] = relations
        entity_table[rows, column] = entities
        return relation_table, entity_table

    # --- derived graphs ----------------------------------------------------------------------
    def shuffled(self, seed: int = 0) -> "KnowledgeGraph":
        """A degree-preserving null graph for ablations (same name, + " (shuffled)").

        Within each relation the entity column is permuted across that relation's edges: every
        item keeps its number of triples per relation and every entity its number of triples per
        relation, while which item links to which entity is random. A permutation can give an
        item the same entity twice under one relation; such duplicates are re-drawn by swapping
        the entity with that of a random other edge of the relation, when the swap creates no new
        duplicate (up to 64 partners tried per duplicate). Only when none is found (a relation so
        dense that almost every pairing exists already) is the duplicate dropped, and only then
        are degrees merely approximately preserved. Deterministic for a seed.
        """
        rng = np.random.default_rng(seed)
        items = self.triples["item_id"].to_numpy(dtype=object)
        relations = self.triples["relation"].to_numpy(dtype=object)
        entities = self.triples["entity"].to_numpy(dtype=object).copy()
        codes, _ = pd.factorize(pd.Series(relations), sort=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for edges in (np.split(order, bounds) if len(order) else []):
            entities[edges] = entities[edges][rng.permutation(len(edges))]
            _redraw_duplicates(rng, items, entities, edges)
        triples = pd.DataFrame({"item_id": items, "relation": relations, "entity": entities})
        return KnowledgeGraph(triples, name=f"{self.name} (shuffled)")

    def restricted_to(self, item_ids) -> "KnowledgeGraph":
        """Only the triples of ``item_ids`` (an iterable of ids, or a Vocabulary's tokens)."""
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        wanted = set(str(i) for i in item_ids)
        keep = self.triples["item_id"].isin(wanted).to_numpy()
        return KnowledgeGraph(self.triples.loc[keep].reset_index(drop=True), name=self.name)

    # --- files -------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the triples as UTF-8 CSV with header ``item_id,relation,entity``, atomically."""
        with atomic_path(path) as tmp:
            self.triples.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")

    @classmethod
    def load(cls, path, name: str | None = None) -> "KnowledgeGraph":
        """Reads a file written by `save` (or any file `load_knowledge_graph` reads with its defaults)."""
        return load_knowledge_graph(path, name=name)


def _checked_triples(triples, where: str) -> pd.DataFrame:
    if not isinstance(triples, pd.DataFrame):
        raise ValueError(f"{where}: triples must be a pandas DataFrame, got {type(triples).__name__}")
    missing = [c for c in COLUMNS if c not in triples.columns]
    if missing:
        raise ValueError(f"{where}: triples lack column {missing[0]!r}; columns found: "
                         f"{', '.join(map(repr, map(str, triples.columns)))}")
    out = {}
    for column in COLUMNS:
        values = triples[column]
        null = values.isna().to_numpy()
        if null.any():
            raise ValueError(f"{where}: missing {column} in row {int(np.flatnonzero(null)[0])} (0-based)")
        if pd.api.types.is_float_dtype(values) and (values == np.round(values)).all():
            values = values.astype(np.int64)  # whole-number ids, not "1.0"
        strings = values.astype(str).astype(object)
        empty = (strings.str.strip() == "").to_numpy()
        if empty.any():
            raise ValueError(f"{where}: empty {column} in row {int(np.flatnonzero(empty)[0])} (0-based)")
        out[column] = strings.to_numpy(dtype=object)
    frame = pd.DataFrame(out)
    return frame.drop_duplicates(ignore_index=True)


def _redraw_duplicates(rng, items: np.ndarray, entities: np.ndarray, edges: np.ndarray) -> None:
    """Swaps entities among ``edges`` (one relation's rows) until no item repeats an entity, where possible."""
    pairs = pd.DataFrame({"i": items[edges], "e": entities[edges]})
    repeated = pairs.duplicated().to_numpy()
    if not repeated.any():
        return
    count = collections.Counter(zip(items[edges].tolist(), entities[edges].tolist()))
    for row in edges[repeated]:
        a, e = items[row], entities[row]
        if count[(a, e)] < 2:
            continue  # fixed by an earlier swap
        for other in edges[rng.integers(len(edges), size=_SHUFFLE_TRIES)]:
            b, f = items[other], entities[other]
            if a == b or e == f or count[(a, f)] or count[(b, e)]:
                continue
            count[(a, e)] -= 1
            count[(b, f)] -= 1
            count[(a, f)] += 1
            count[(b, e)] += 1
            entities[row], entities[other] = f, e
            break
    # What could not be re-drawn is dropped by KnowledgeGraph's duplicate removal.


# --- loading ---------------------------------------------------------------------------------


def load_knowledge_graph(path, *, item: str = "item_id", relation: str = "relation", entity: str = "entity",
                         sep: str | None = None, encoding: str = "utf-8", name: str | None = None) -> KnowledgeGraph:
    """Loads (item, relation, entity) triples from a CSV/TSV or Parquet file.

    The format follows the file name as in `tfmarl.data.load_interactions`: ``.parquet``/``.pq``
    (or a directory of them) is Parquet, anything else delimited text with a header line,
    separated by ``sep`` or else ',' for ``.csv``, tab for ``.tsv``/``.tab``, or what the first
    lines suggest (``.gz``/``.bz2``/``.xz`` are looked through). ``item``, ``relation`` and
    ``entity`` name the columns; other columns are ignored. Values are read as strings exactly as
    written (no stripping). Duplicate triples are dropped silently. ``name`` defaults to the
    file's stem.

    Raises FileNotFoundError for a missing file; DataError naming the file, line (1-based,
    counting the header; a row for Parquet) and column for a missing column, an empty or missing
    item id, relation or entity, a wrong number of fields or bad encoding; and DataError "no
    triples" for a file without data rows (only a header, or empty).
    """
    path = pathlib.Path(path)
    try:
        frame, locator = v.read_table(path, [item, relation, entity], sep=sep, encoding=encoding)
    except DataError as e:
        if e.problem.startswith(("no data rows", "empty file")):
            raise DataError(f"no triples ({e.problem})", path=e.path, line=e.line, column=e.column) from None
        raise
    triples = pd.DataFrame({
        "item_id": v.string_ids(frame[item], locator, item, "item id").to_numpy(dtype=object),
        "relation": _names(frame[relation], locator, relation, "relation").to_numpy(dtype=object),
        "entity": _names(frame[entity], locator, entity, "entity").to_numpy(dtype=object),
    })
    return KnowledgeGraph(triples, name=name if name is not None else _stem(path))


def _names(values: pd.Series, locator, column: str, what: str) -> pd.Series:
    """Free-form names as strings; DataError (with the line) for a missing or blank one.

    Unlike `validation.string_ids`, numbers are not checked to be plausible ids ("-5" is a name).
    """
    if pd.api.types.is_float_dtype(values):
        finite = np.isfinite(values.to_numpy())
        if finite.all() and (values == np.round(values)).all():
            values = values.astype(np.int64)
    missing = values.isna().to_numpy()
    if missing.any():
        raise locator.error(int(np.flatnonzero(missing)[0]), f"missing {what}", column)
    strings = values.astype(str).reset_index(drop=True)
    empty = (strings.str.strip() == "").to_numpy()
    if empty.any():
        raise locator.error(int(np.flatnonzero(empty)[0]), f"empty {what}", column)
    return strings


def _stem(path: pathlib.Path) -> str:
    if path.suffix.lower() in (".gz", ".bz2", ".xz"):
        path = path.with_suffix("")
    return path.stem or path.name


# --- MovieLens -------------------------------------------------------------------------------


def read_movielens_tags(path, *, min_users: int = MIN_TAG_USERS) -> pd.DataFrame:
    """(item_id, tag) pairs of a MovieLens ``tags.csv`` (header userId,movieId,tag,timestamp)
    that at least ``min_users`` distinct users applied to the item, tags lowercased and stripped.

    Blank tags are skipped (they are content, not structure). Raises DataError naming the file
    and line for a malformed file (missing column, wrong number of fields, bad encoding, an
    empty, non-integer or negative user or movie id); FileNotFoundError if missing. A file with
    only its header gives no pairs.
    """
    path = pathlib.Path(path)
    try:
        frame, locator = v.read_delimited(path, sep=",", encoding="utf-8")
    except DataError as e:
        if e.problem.startswith("no data rows"):
            return pd.DataFrame({"item_id": pd.Series([], dtype=object), "tag": pd.Series([], dtype=object)})
        raise
    v.require_columns(frame.columns, ("userId", "movieId", "tag"), path)
    users = v.integer_ids(frame["userId"], locator, "userId", "user id")
    movies = v.integer_ids(frame["movieId"], locator, "movieId", "movie id")
    tags = frame["tag"].astype(str).str.strip().str.lower().to_numpy(dtype=object)
    pairs = pd.DataFrame({"user": users, "movie": movies, "tag": tags})
    pairs = pairs.loc[pairs["tag"] != ""].drop_duplicates()
    counts = pairs.groupby(["movie", "tag"], sort=False).size()
    counts = counts[counts >= min_users].reset_index()
    counts = counts.sort_values(["movie", "tag"], kind="stable")
    return pd.DataFrame({"item_id": v.id_strings(counts["movie"].to_numpy()).to_numpy(dtype=object),
                         "tag": counts["tag"].to_numpy(dtype=object)})


def release_year(title: str) -> int | None:
    """1995 for a title ending in "(1995)" (trailing spaces allowed), else None."""
    match = _YEAR.search(title or "")
    return int(match.group(1)) if match else None


def decade_of(title: str) -> str | None:
    """"1990s" for a title ending in "(1995)" (trailing spaces allowed), else None."""
    year = release_year(title)
    return f"{year // 10 * 10}s" if year is not None else None


def movielens_knowledge_graph(interactions, *, tags="auto", min_tag_users: int = MIN_TAG_USERS) -> KnowledgeGraph:
    """Triples from an `Interactions`' item table (as `load_movielens` returns).

    (item, "genre", <genre>) for each of an item's categories, and (item, "decade", "1990s") from
    the release year in the title's trailing "(1995)" (items without a year get no decade
    triple). ``tags``: "auto" reads ``tags.csv`` when ``interactions.metadata`` says the data came
    in the "csv" layout (ml-latest, ml-20m, ml-25m, ...) from a directory holding one; a path reads
    that file; None adds no tags. Tag triples are (item, "tag", <tag lowercased, stripped>) for
    tags at least ``min_tag_users`` distinct users applied to the item, for items of the item table
    or the log (see `read_movielens_tags`). Without an item table only tags can give triples.
    The graph is named after the interactions. Raises DataError for a malformed tags file.
    """
    parts = []
    items = interactions.items
    if items is not None:
        ids = items.index.to_numpy(dtype=object)
        categories = items["categories"].to_numpy(dtype=object)
        lengths = np.fromiter((len(c) for c in categories), dtype=np.int64, count=len(categories))
        genres = [g for cats in categories for g in cats]
        parts.append(pd.DataFrame({"item_id": np.repeat(ids, lengths), "relation": GENRE,
                                   "entity": np.asarray(genres, dtype=object)}))
        decades = np.asarray([decade_of(str(t)) for t in items["title"].to_numpy(dtype=object)], dtype=object)
        has = np.asarray([d is not None for d in decades], dtype=bool)
        parts.append(pd.DataFrame({"item_id": ids[has], "relation": DECADE, "entity": decades[has]}))
    if isinstance(tags, str) and tags == "auto":
        tags = None
        directory = interactions.metadata.get("path")
        if interactions.metadata.get("layout") == "csv" and directory is not None:
            candidate = pathlib.Path(directory) / "tags.csv"
            tags = candidate if candidate.is_file() else None
    if tags is not None:
        pairs = read_movielens_tags(tags, min_users=min_tag_users)
        known = set(interactions.log["item_id"].unique())
        if items is not None:
            known.update(items.index)
        pairs = pairs.loc[pairs["item_id"].isin(known)]
        parts.append(pd.DataFrame({"item_id": pairs["item_id"].to_numpy(dtype=object), "relation": TAG,
                                   "entity": pairs["tag"].to_numpy(dtype=object)}))
    if parts:
        triples = pd.concat(parts, ignore_index=True)
        # Group each item's triples together, in item-table order, relations as added.
        first = {item: i for i, item in enumerate(dict.fromkeys(triples["item_id"].tolist()))}
        rank = triples["item_id"].map(first).to_numpy()
        triples = triples.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)
    else:
        triples = pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMNS})
    return KnowledgeGraph(triples, name=interactions.name)
