"""Per-item feature tables for the Content agent: categories, title tokens, text embeddings,
numeric attributes and knowledge-graph neighbours.

Every table has one row per item-vocabulary index (`tfmarl.data.Vocabulary`): row 0 is padding,
row 1 the OOV bucket, rows 2.. the known items. Reserved rows, and items the item table does not
describe, are all zeros, which every consumer reads as "no feature".

Importing this module does not import TensorFlow or keras-hub: title tokens come from
`tfmarl.data.tokenize`, which imports them when it tokenizes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from tfmarl.atomic import atomic_savez, atomic_write_text
from tfmarl.data.tokenize import (PAD_TOKEN, UNK_TOKEN, learn_word_piece_tokenizer, learn_word_tokenizer,
                                  tokenize_texts, tokenizer_vocabulary)


_ARRAYS_FILE = "item_features.npz"
_META_FILE = "item_features.json"
_FORMAT_VERSION = 1
_NAME_LISTS = ("category_names", "text_vocabulary", "numeric_names", "numeric_mean", "numeric_std",
               "relation_names", "entity_names")


@dataclasses.dataclass(eq=False)
class ItemFeatures:
    """Feature tables aligned with an item vocabulary (row i describes item index i).

    Attributes:
      categories: int32 [N, max_categories] or None. 0 = no category; index i+1 is
        ``category_names[i]``.
      category_names: the category vocabulary (without the "none" index 0).
      title_tokens: int32 [N, title_length] or None. 0 = padding; other ids index
        ``text_vocabulary``.
      text_vocabulary: list of tokens or None (present exactly when ``title_tokens`` is); token
        id = position, and position 0 is always ``"[PAD]"``.
      text_embeddings: float32 [N, E] or None, e.g. from `tfmarl.data.text.embed_item_texts`.
      numeric: float32 [N, F] or None: standardised numeric attributes (0 = the mean, and the
        value of items the attribute table does not describe), named by ``numeric_names``;
        ``numeric_mean`` / ``numeric_std`` hold the raw values' statistics (to encode new items).
      kg_relations, kg_entities: int32 [N, M] or None (given together): an item's knowledge-graph
        neighbours (`tfmarl.data.KnowledgeGraph.item_neighbours`); 0 = none, index i+1 is
        ``relation_names[i]`` / ``entity_names[i]``.

    Arrays are coerced to those dtypes and checked (same N, ids in range) on construction.
    """

    categories: np.ndarray | None = None
    category_names: list[str] = dataclasses.field(default_factory=list)
    title_tokens: np.ndarray | None = None
    text_vocabulary: list[str] | None = None
    text_embeddings: np.ndarray | None = None
    numeric: np.ndarray | None = None
    numeric_names: list[str] = dataclasses.field(default_factory=list)
    numeric_mean: list[float] = dataclasses.field(default_factory=list)
    numeric_std: list[float] = dataclasses.field(default_factory=list)
    kg_relations: np.ndarray | None = None
    kg_entities: np.ndarray | None = None
    relation_names: list[str] = dataclasses.field(default_factory=list)
    entity_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.category_names = [str(c) for c in self.category_names]
        if self.categories is not None:
            self.categories = _as_table(self.categories, np.int32, "categories")
            _check_ids(self.categories, len(self.category_names) + 1, "categories")
        if (self.title_tokens is None) != (self.text_vocabulary is None):
            raise ValueError("title_tokens and text_vocabulary must be given together")
        if self.title_tokens is not None:
            self.text_vocabulary = [str(t) for t in self.text_vocabulary]
            if not self.text_vocabulary or self.text_vocabulary[0] != PAD_TOKEN:
                raise ValueError(f"text_vocabulary[0] must be the padding token {PAD_TOKEN!r}")
            self.title_tokens = _as_table(self.title_tokens, np.int32, "title_tokens")
            _check_ids(self.title_tokens, len(self.text_vocabulary), "title_tokens")
        if self.text_embeddings is not None:
            self.text_embeddings = _as_table(self.text_embeddings, np.float32, "text_embeddings")
            if not np.isfinite(self.text_embeddings).all():
                raise ValueError("text_embeddings hold NaN or inf")
        self.numeric_names = [str(n) for n in self.numeric_names]
        if self.numeric is not None:
            self.numeric = _as_table(self.numeric, np.float32, "numeric")
            if not np.isfinite(self.numeric).all():
                raise ValueError("numeric holds NaN or inf")
            if len(self.numeric_names) != self.numeric.shape[1]:
                raise ValueError(f"numeric has {self.numeric.shape[1]} columns but {len(self.numeric_names)} "
                                 "numeric_names")
        if (self.kg_relations is None) != (self.kg_entities is None):
            raise ValueError("kg_relations and kg_entities must be given together")
        self.relation_names = [str(n) for n in self.relation_names]
        self.entity_names = [str(n) for n in self.entity_names]
        if self.kg_relations is not None:
            self.kg_relations = _as_table(self.kg_relations, np.int32, "kg_relations")
            self.kg_entities = _as_table(self.kg_entities, np.int32, "kg_entities")
            if self.kg_relations.shape != self.kg_entities.shape:
                raise ValueError(f"kg_relations {self.kg_relations.shape} and kg_entities "
                                 f"{self.kg_entities.shape} differ in shape")
            _check_ids(self.kg_relations, len(self.relation_names) + 1, "kg_relations")
            _check_ids(self.kg_entities, len(self.entity_names) + 1, "kg_entities")
            if ((self.kg_relations > 0) != (self.kg_entities > 0)).any():
                raise ValueError("kg_relations and kg_entities disagree on which neighbour slots are empty")
        rows = {name: len(a) for name, a in self._arrays().items()}
        if len(set(rows.values())) > 1:
            raise ValueError(f"feature tables disagree on the number of items: {rows}")

    @property
    def num_items(self) -> int | None:
        """Rows of the tables (the item vocabulary size), or None when there are no tables."""
        arrays = self._arrays()
        return len(next(iter(arrays.values()))) if arrays else None

    def content_agent_kwargs(self) -> dict:
        """`tfmarl.agents.ContentAgent` constructor arguments matching these tables.

        Always has ``num_categories``, ``text_vocabulary_size`` and ``text_embedding_dim`` (0 when
        the feature is absent, which disables that part of the agent); ``max_categories`` and
        ``title_length`` are included when the matching table is present.
        """
        kwargs = {"num_categories": 0, "text_vocabulary_size": 0, "text_embedding_dim": 0}
        if self.categories is not None:
            kwargs["num_categories"] = len(self.category_names) + 1
            kwargs["max_categories"] = int(self.categories.shape[1])
        if self.title_tokens is not None:
            kwargs["text_vocabulary_size"] = len(self.text_vocabulary)
            kwargs["title_length"] = int(self.title_tokens.shape[1])
        if self.text_embeddings is not None:
            kwargs["text_embedding_dim"] = int(self.text_embeddings.shape[1])
        if self.numeric is not None:
            kwargs["numeric_dim"] = int(self.numeric.shape[1])
        if self.kg_entities is not None:
            kwargs["num_entities"] = len(self.entity_names) + 1
            kwargs["num_relations"] = len(self.relation_names) + 1
            kwargs["max_neighbours"] = int(self.kg_entities.shape[1])
        return kwargs

    def with_text_embeddings(self, embeddings) -> "ItemFeatures":
        """A copy with ``text_embeddings`` replaced (float32 [N, E], or None to drop them)."""
        return dataclasses.replace(self, text_embeddings=embeddings)

    def new_item_rows(self, items=None, *, ids=None, knowledge=None, numeric=None, tokenizer=None,
                      text_embeddings=None) -> dict:
        """Feature rows for new items (not in the vocabulary these tables describe), encoded with
        these tables' vocabularies, as `tfmarl.agents.ContentAgent.with_new_items` takes them.

        Args:
          items: an item table like `Interactions.items` (index item_id; title, categories,
            text) describing the new items, or None. Categories never seen before get no slot.
          ids: the new items' ids, in row order (default: ``items``' index).
          knowledge: a `tfmarl.data.KnowledgeGraph` holding their triples; relations and
            entities never seen before are left out (they have no embedding).
          numeric: a DataFrame of their numeric attributes (the columns of ``numeric_names``),
            standardised with the stored means and deviations; missing values give 0.
          tokenizer: the keras-hub tokenizer the titles were tokenized with; by default a
            lowercasing WordPiece tokenizer over ``text_vocabulary`` (what `build_item_features`
            learns).
          text_embeddings: float [number of new items, E], their text embeddings from the same
            backbone (`tfmarl.data.embed_texts`); without them, zeros.
        Returns a dict of arrays with one row per new item, keyed as `ContentAgent.set_item_features`.
        """
        import pandas as pd

        from tfmarl.data.vocab import NUM_RESERVED, Vocabulary

        if ids is None:
            if items is None:
                raise ValueError("pass the new items' table (items=) or their ids (ids=)")
            ids = list(items.index)
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("new item ids repeat")
        if not ids:
            raise ValueError("no new items")
        vocab = Vocabulary(ids)
        rows = {}
        if self.categories is not None:
            width = self.categories.shape[1]
            rows["categories"] = (np.zeros((vocab.size, width), np.int32) if items is None else _category_table(
                items, vocab.lookup(list(items.index.astype(str))), self.category_names, vocab.size, width))
        if self.title_tokens is not None:
            table = np.zeros((vocab.size, self.title_tokens.shape[1]), np.int32)
            if items is not None:
                if tokenizer is None:
                    import keras_hub

                    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
                        vocabulary=self.text_vocabulary, sequence_length=table.shape[1], lowercase=True,
                        oov_token=UNK_TOKEN)
                texts = [_item_text(t, x) for t, x in zip(items["title"], items["text"])]
                table[vocab.lookup(list(items.index.astype(str)))] = tokenize_texts(texts, tokenizer, table.shape[1])
            rows["title_tokens"] = table
        if self.text_embeddings is not None:
            table = np.zeros((vocab.size, self.text_embeddings.shape[1]), np.float32)
            if text_embeddings is not None:
                text_embeddings = np.asarray(text_embeddings, np.float32)
                if text_embeddings.shape != (len(ids), table.shape[1]) or not np.isfinite(text_embeddings).all():
                    raise ValueError(f"text_embeddings of the new items must be finite, shape "
                                     f"({len(ids)}, {table.shape[1]}), got {text_embeddings.shape}")
                table[NUM_RESERVED:] = text_embeddings
            rows["text_embeddings"] = table
        if self.numeric is not None:
            table = np.zeros((vocab.size, self.numeric.shape[1]), np.float32)
            if numeric is not None:
                missing = [n for n in self.numeric_names if n not in numeric.columns]
                if missing:
                    raise ValueError(f"numeric attributes of the new items lack column {missing[0]!r}")
                frame = numeric[numeric.index.astype(str).isin(ids)]
                at = vocab.lookup(list(frame.index.astype(str)))
                for j, name in enumerate(self.numeric_names):
                    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
                    table[at, j] = np.where(np.isfinite(values), (values - self.numeric_mean[j]) / self.numeric_std[j], 0)
            rows["numeric"] = table
        if self.kg_entities is not None:
            width = self.kg_entities.shape[1]
            relations = np.zeros((vocab.size, width), np.int32)
            entities = np.zeros((vocab.size, width), np.int32)
            if knowledge is not None:
                # The triples whose relation and entity have embeddings, laid out as training's
                # tables are (`KnowledgeGraph.item_neighbours`), then renumbered to these names.
                triples = knowledge.restricted_to(ids).triples
                triples = triples[triples["relation"].isin(self.relation_names)
                                  & triples["entity"].isin(self.entity_names)]
                graph = type(knowledge).from_triples(triples)
                got_relations, got_entities = graph.item_neighbours(vocab, max_neighbours=width)
                renumber = lambda own, names: np.concatenate(  # noqa: E731
                    [[0], pd.Index(names).get_indexer(own) + 1]).astype(np.int32)
                columns = got_relations.shape[1]
                relations[:, :columns] = renumber(graph.relation_names(), self.relation_names)[got_relations]
                entities[:, :columns] = renumber(graph.entity_names(), self.entity_names)[got_entities]
            rows["kg_relations"], rows["kg_entities"] = relations, entities
        return {name: table[NUM_RESERVED:] for name, table in rows.items()}

    # --- persistence -----------------------------------------------------------------------
    def save(self, directory) -> None:
        """Writes ``item_features.npz`` (the arrays) and ``item_features.json`` (names,
        vocabulary) into ``directory``, each atomically. The JSON is written last."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        atomic_savez(directory / _ARRAYS_FILE, arrays)
        meta = {"format_version": _FORMAT_VERSION, "arrays": sorted(arrays),
                **{name: getattr(self, name) for name in _NAME_LISTS}}
        atomic_write_text(directory / _META_FILE, json.dumps(meta))

    @classmethod
    def load(cls, directory) -> "ItemFeatures":
        """Reads what `save` wrote."""
        directory = pathlib.Path(directory)
        with open(directory / _META_FILE, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{directory / _META_FILE}: unsupported format_version "
                             f"{meta.get('format_version')!r}")
        with np.load(directory / _ARRAYS_FILE, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in meta["arrays"]}
        # Files written before numeric attributes and knowledge graphs lack their name lists.
        names = {name: meta.get(name, None if name == "text_vocabulary" else []) for name in _NAME_LISTS}
        return cls(**names, **arrays)

    def _arrays(self) -> dict[str, np.ndarray]:
        names = ("categories", "title_tokens", "text_embeddings", "numeric", "kg_relations", "kg_entities")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def __repr__(self):
        shapes = ", ".join(f"{n}={a.shape}" for n, a in self._arrays().items())
        return f"ItemFeatures({shapes or 'empty'})"


def build_item_features(interactions, item_vocab, *, categories: bool = True, titles: bool = True,
                        title_length: int = 16, max_categories: int = 4,
                        text_vocabulary_size: int = 2000, title_vocabulary: str = "word_piece",
                        min_word_count: int = 2, tokenizer=None, knowledge=True,
                        max_neighbours: int = 16, numeric=None, seed: int = 0) -> ItemFeatures:
    """Builds category and title-token tables aligned with ``item_vocab`` indices.

    Args:
      interactions: a `tfmarl.data.Interactions`. Without an item table (``items is None``)
        there is nothing to describe items with: the result has no tables at all
        (``categories`` and ``title_tokens`` None), so a ContentAgent built from it uses ids only.
      item_vocab: the `tfmarl.data.Vocabulary` of item ids; row i of every table is index i.
      categories: build the category table. The category vocabulary is every category in the
        item table, sorted (``interactions.categories()``); each item keeps its first
        ``max_categories`` distinct categories in the order the table lists them.
      titles: build the title-token table. An item's text is its title, or its ``text`` column
        when the title is empty.
      title_length: token slots per title (longer titles are truncated, shorter ones padded).
      max_categories: category slots per item.
      text_vocabulary_size: upper bound on the WordPiece vocabulary learnt from the texts of the
        vocabulary's items ("[PAD]" and "[UNK]" included); ignored when ``tokenizer`` is given.
        The learner (keras-hub's ``compute_word_piece_vocabulary``) keeps only pieces seen about
        10 times or more, so a small catalog gets mostly single-character pieces and titles are
        cut at ``title_length`` characters, roughly.
      title_vocabulary: the vocabulary learnt when no ``tokenizer`` is given: ``"word_piece"``
        (sub-word pieces, `learn_word_piece_tokenizer`) or ``"words"``: whole words found in at
        least ``min_word_count`` texts, other words left out (`learn_word_tokenizer`). On
        ML-100k's titles words are the better features for new items (benchmarks/cold_start.py).
      tokenizer: optional keras-hub tokenizer to use instead of learning one (e.g.
        ``keras_hub.tokenizers.Tokenizer.from_preset(dir)``); see `tokenize_texts` for how its
        ids and padding are mapped.
      knowledge: True: the knowledge-graph tables from ``interactions.knowledge`` (when it has
        one); a `tfmarl.data.KnowledgeGraph` to use instead (e.g. a shuffled one for an
        ablation); False: none.
      max_neighbours: knowledge-graph neighbour slots per item (a seeded sample of an item's
        triples when it has more; ``seed``).
      numeric: optional pandas DataFrame of numeric attributes indexed by item id (one column
        each). Each column is standardised over the vocabulary's items it describes; missing
        values and undescribed items get 0 (the mean). A non-numeric column or one that is
        constant raises ValueError naming it.

    A table is None when its feature is switched off or nothing in the item table carries it
    (no item has a category / no item in the vocabulary has a non-empty title or text).
    """
    if title_length < 1 or max_categories < 1:
        raise ValueError(f"title_length and max_categories must be >= 1, got {title_length}, "
                         f"{max_categories}")
    if title_vocabulary not in ("word_piece", "words"):
        raise ValueError(f"title_vocabulary must be 'word_piece' or 'words', got {title_vocabulary!r}")
    features = {}
    graph = interactions.knowledge if knowledge is True else (knowledge or None)
    if graph is not None:
        relations, entities = graph.item_neighbours(item_vocab, max_neighbours=max_neighbours, seed=seed)
        if (entities > 0).any():
            features.update(kg_relations=relations, kg_entities=entities, relation_names=graph.relation_names(),
                            entity_names=graph.entity_names())
    if numeric is not None:
        features.update(_numeric_table(numeric, item_vocab))
    items = interactions.items
    if items is None:
        return ItemFeatures(**features)
    rows, present = _rows_in_item_table(items, item_vocab)
    names = interactions.categories() if categories else []
    if names:
        features["categories"] = _category_table(present, rows, names, item_vocab.size, max_categories)
        features["category_names"] = names
    if titles:
        texts = [_item_text(title, text) for title, text in zip(present["title"], present["text"])]
        if any(texts):
            table, vocabulary = _title_table(texts, rows, item_vocab.size, title_length,
                                             text_vocabulary_size, tokenizer, title_vocabulary, min_word_count)
            features["title_tokens"], features["text_vocabulary"] = table, vocabulary
    return ItemFeatures(**features)


# --- helpers ---------------------------------------------------------------------------------
def _rows_in_item_table(items, item_vocab):
    """(vocab rows, item-table rows) of the vocabulary's items that the table describes."""
    ids = item_vocab.tokens
    known = items.index.isin(ids)
    present = items[known]
    rows = item_vocab.lookup(list(present.index))
    return rows, present


def _category_table(present, rows, names, num_items, max_categories) -> np.ndarray:
    """Category ids of ``present``'s items at ``rows``; categories outside ``names`` get no slot."""
    index = {name: i + 1 for i, name in enumerate(names)}
    table = np.zeros((num_items, max_categories), np.int32)
    for row, cats in zip(rows, present["categories"]):
        # dict.fromkeys: distinct, in the order listed (a repeat would double a category's weight).
        ids = [index[c] for c in dict.fromkeys(cats) if c in index][:max_categories]
        table[row, :len(ids)] = ids
    return table


def _numeric_table(frame, item_vocab) -> dict:
    """ItemFeatures' numeric fields (standardised float32 [vocab size, F] table, names, means,
    deviations) from a DataFrame indexed by item id."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or frame.shape[1] == 0:
        raise ValueError("numeric must be a pandas DataFrame indexed by item id with at least one column")
    frame = frame[frame.index.astype(str).isin(item_vocab.tokens)]
    rows = item_vocab.lookup(list(frame.index.astype(str)))
    table = np.zeros((item_vocab.size, frame.shape[1]), np.float32)
    means, stds = [], []
    for j, name in enumerate(frame.columns):
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna() & frame[name].notna()
        if bad.any():
            raise ValueError(f"numeric column {name!r} holds a non-number for item {frame.index[bad.argmax()]!r}")
        values = values.to_numpy(np.float64)
        finite = np.isfinite(values)
        if finite.sum() < 2 or np.nanstd(values[finite]) == 0:
            raise ValueError(f"numeric column {name!r} is constant (or has fewer than 2 values): it carries nothing")
        means.append(float(values[finite].mean()))
        stds.append(float(values[finite].std()))
        table[rows, j] = np.where(finite, (values - means[-1]) / stds[-1], 0.0)
    return {"numeric": table, "numeric_names": [str(c) for c in frame.columns], "numeric_mean": means,
            "numeric_std": stds}


def _item_text(title, text) -> str:
    title = title if isinstance(title, str) else ""
    text = text if isinstance(text, str) else ""
    return title.strip() or text.strip()


def _title_table(texts, rows, num_items, title_length, text_vocabulary_size, tokenizer, title_vocabulary,
                 min_word_count):
    """(int32 [num_items, title_length] table, vocabulary) for the texts of ``rows``."""
    skip = ()
    if tokenizer is None:
        if title_vocabulary == "words":
            tokenizer = learn_word_tokenizer(texts, min_word_count)
            skip = (tokenizer.token_to_id(UNK_TOKEN),)  # a word without an embedding is no feature
        else:
            tokenizer = learn_word_piece_tokenizer(texts, text_vocabulary_size, title_length)
    vocabulary = tokenizer_vocabulary(tokenizer)
    table = np.zeros((num_items, title_length), np.int32)
    table[rows] = tokenize_texts(texts, tokenizer, title_length, skip_ids=skip)
    return table, vocabulary


def _as_table(value, dtype, name) -> np.ndarray:
    value = np.asarray(value, dtype=dtype)
    if value.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {value.shape}")
    return value


def _check_ids(table, limit, name) -> None:
    if table.size and (table.min() < 0 or table.max() >= limit):
        raise ValueError(f"{name} holds ids outside [0, {limit})")
