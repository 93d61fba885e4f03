"""The Content agent: encodes items from their id, categories, text, numeric attributes and knowledge graph."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.agents.blocks import embedding_initializer as _init, serializable
from tfmarl.agents.knowledge import ENTITY_ENCODINGS, KnowledgeGraphEncoder

# Up to this catalog size, consumers that need many items' vectors (the RL networks) encode the
# whole catalog once per call and gather, rather than encoding every id one by one.
CATALOG_PASS_MAX_ITEMS = 50_000


@serializable
class ContentAgent(tf.keras.layers.Layer):
    """Item encoder: id embedding + mean category embedding + mean title-token embedding
    + projected precomputed text embedding + projected numeric attributes + knowledge-graph
    attention (`KnowledgeGraphEncoder`), summed into one ``dim`` vector per item.

    Only the id embedding is always present; each other part exists when its size argument is
    non-zero. The per-item feature tables (category ids, title token ids, text embeddings,
    numeric attributes, knowledge-graph neighbours) are non-trainable weights, so they are saved
    with the model's weights and travel into exported SavedModels; fill them with
    `set_item_features` (see `tfmarl.data.build_item_features`).

    New items: an item whose id was never trained has no useful id embedding. `set_known_items`
    marks which items have one; the others are encoded from their features alone. ``id_dropout``
    replaces the id part of a trained item's vector with that probability at each training step
    (no rescaling) by what its features predict of it: a learnt ``unknown_id`` vector plus a
    two-layer map of the feature vector (content -> collaborative space, as in DropoutNet), which
    new items get too. So the features learn to carry an item's signal on their own, which is
    what a new item has, and new items' vectors land on the trained ones' scale (on ML-100k the
    share of cold targets ranked in the whole catalog's top 10 went from 0.6% with the shared
    vector alone to 2.3%). Without id dropout new items' id part is 0. `SequentialRecommender`
    drops ids only in the catalog it scores, and reads histories with ``drop_ids=False``: the User
    agent then trains on the inputs it gets at inference, which lets the rate go high (0.8) without
    costing the warm ranking much.

    Call with item indices of any shape -> vectors of shape ``ids.shape + [dim]``. `catalog()`
    encodes every index 0..num_items-1 (0 = padding and 1 = OOV included: rankings mask them).

    Args:
      num_items: item vocabulary size (reserved indices included).
      dim: output size.
      num_categories: category vocabulary size (index 0 = none); 0 disables categories.
      max_categories: category slots per item.
      text_vocabulary_size: title tokenizer vocabulary size (index 0 = padding); 0 disables.
      title_length: token slots per title.
      text_embedding_dim: size of precomputed text embeddings (e.g. from a keras-hub backbone);
        0 disables.
      numeric_dim: number of numeric attributes per item (standardised floats); 0 disables.
      num_entities, num_relations: knowledge-graph vocabulary sizes (index 0 = none); 0 disables.
      max_neighbours: knowledge-graph neighbour slots per item.
      knowledge_hops: 1 or 2 (see `KnowledgeGraphEncoder`; 2 encodes the whole catalog per call).
      knowledge_entities: "embedding" (a learnt vector per entity) or "item_mean" (an entity is
        the mean id vector of its other trained items; sums over the whole entity table per call):
        see `KnowledgeGraphEncoder`'s ``entity_encoding``.
      id_dropout: probability of dropping a trained item's id part while training.
      dropout: dropout on the output vectors while training.
    """

    def __init__(self, num_items: int, dim: int = 64, num_categories: int = 0, max_categories: int = 4,
                 text_vocabulary_size: int = 0, title_length: int = 16, text_embedding_dim: int = 0,
                 numeric_dim: int = 0, num_entities: int = 0, num_relations: int = 0, max_neighbours: int = 16,
                 knowledge_hops: int = 1, knowledge_entities: str = "embedding", id_dropout: float = 0.0,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_items < 3:
            raise ValueError(f"num_items must cover padding, OOV and at least one item, got {num_items}")
        self.num_items = int(num_items)
        self.dim = int(dim)
        self.num_categories = int(num_categories)
        self.max_categories = int(max_categories)
        self.text_vocabulary_size = int(text_vocabulary_size)
        self.title_length = int(title_length)
        self.text_embedding_dim = int(text_embedding_dim)
        self.numeric_dim = int(numeric_dim)
        if bool(num_entities) != bool(num_relations):
            raise ValueError(f"num_entities and num_relations must both be set (or both 0), got "
                             f"{num_entities}, {num_relations}")
        self.num_entities = int(num_entities)
        self.num_relations = int(num_relations)
        self.max_neighbours = int(max_neighbours)
        self.knowledge_hops = int(knowledge_hops)
        if knowledge_entities not in ENTITY_ENCODINGS:
            raise ValueError(f"knowledge_entities must be one of {ENTITY_ENCODINGS}, got {knowledge_entities!r}")
        if knowledge_entities == "item_mean" and self.knowledge_hops != 1:
            raise ValueError("knowledge_entities='item_mean' already carries the linked items' vectors: "
                             "use knowledge_hops=1")
        self.knowledge_entities = knowledge_entities
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.id_dropout = float(id_dropout)
        self.dropout = float(dropout)

    def build(self, input_shape=None):
        self.id_embeddings = self.add_weight("id_embeddings", shape=[self.num_items, self.dim], initializer=_init())
        self.known_items = self.add_weight("known_items", shape=[self.num_items], initializer="ones",
                                           trainable=False)
        if self.id_dropout:
            # What an item without an id part gets instead: learnt on the dropped ids, so a new
            # item's vector is not biased low against the trained ones.
            self.unknown_id = self.add_weight("unknown_id", shape=[self.dim], initializer="zeros")
            # ... plus what the item's features predict of its id part (content -> collaborative
            # space, as in DropoutNet / CB2CF): it puts new items' vectors on the trained ones' scale.
            self.id_hidden = tf.keras.layers.Dense(self.dim, activation="gelu", name="id_hidden")
            self.id_output = tf.keras.layers.Dense(self.dim, name="id_output")
            self.id_hidden.build([None, self.dim])
            self.id_output.build([None, self.dim])
        if self.num_categories:
            self.category_embeddings = self.add_weight(
                "category_embeddings", shape=[self.num_categories, self.dim], initializer=_init())
            self.item_categories = self.add_weight(
                "item_categories", shape=[self.num_items, self.max_categories], dtype=tf.int32,
                initializer="zeros", trainable=False)
        if self.text_vocabulary_size:
            self.token_embeddings = self.add_weight(
                "token_embeddings", shape=[self.text_vocabulary_size, self.dim], initializer=_init())
            self.title_tokens = self.add_weight(
                "title_tokens", shape=[self.num_items, self.title_length], dtype=tf.int32,
                initializer="zeros", trainable=False)
        if self.text_embedding_dim:
            self.text_embeddings = self.add_weight(
                "text_embeddings", shape=[self.num_items, self.text_embedding_dim], initializer="zeros",
                trainable=False)
            self.text_projection = tf.keras.layers.Dense(self.dim, use_bias=False, name="text_projection")
            self.text_projection.build([None, self.text_embedding_dim])
        if self.numeric_dim:
            self.numeric_attributes = self.add_weight(
                "numeric_attributes", shape=[self.num_items, self.numeric_dim], initializer="zeros", trainable=False)
            self.numeric_projection = tf.keras.layers.Dense(self.dim, use_bias=False, name="numeric_projection")
            self.numeric_projection.build([None, self.numeric_dim])
        if self.num_entities:
            for name in ("item_relations", "item_entities"):
                setattr(self, name, self.add_weight(name, shape=[self.num_items, self.max_neighbours],
                                                    dtype=tf.int32, initializer="zeros", trainable=False))
            self.knowledge = KnowledgeGraphEncoder(self.num_entities, self.num_relations, self.dim,
                                                   hops=self.knowledge_hops, entity_encoding=self.knowledge_entities,
                                                   name="knowledge")
            self.knowledge.build()
        self.output_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def set_item_features(self, features) -> None:
        """Copies per-item feature tables in (an `ItemFeatures` or a dict with the same keys)."""
        if not self.built:
            self.build()
        get = features.get if isinstance(features, dict) else lambda k: getattr(features, k, None)
        tables = (("categories", "num_categories", "item_categories", self.max_categories),
                  ("title_tokens", "text_vocabulary_size", "title_tokens", self.title_length),
                  ("kg_relations", "num_relations", "item_relations", self.max_neighbours),
                  ("kg_entities", "num_entities", "item_entities", self.max_neighbours))
        for key, size_attr, weight, width in tables:
            value = get(key)
            if value is None:
                continue
            if not getattr(self, size_attr):
                raise ValueError(f"features carry {key!r} but this ContentAgent has {size_attr}=0")
            value = np.asarray(value, np.int32)
            if value.shape != (self.num_items, width):
                raise ValueError(f"{key} must have shape ({self.num_items}, {width}), got {value.shape}")
            limit = getattr(self, size_attr)
            if value.min() < 0 or value.max() >= limit:
                raise ValueError(f"{key} holds indices outside [0, {limit})")
            getattr(self, weight).assign(value)
        floats = (("text_embeddings", "text_embedding_dim", "text_embeddings"),
                  ("numeric", "numeric_dim", "numeric_attributes"))
        for key, size_attr, weight in floats:
            value = get(key)
            if value is None:
                continue
            value = np.asarray(value, np.float32)
            width = getattr(self, size_attr)
            if not width:
                raise ValueError(f"features carry {key!r} but this ContentAgent has {size_attr}=0")
            if value.shape != (self.num_items, width):
                raise ValueError(f"{key} must have shape ({self.num_items}, {width}), got {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"{key} hold NaN or inf")
            getattr(self, weight).assign(value)

    def set_known_items(self, known) -> None:
        """Marks the items whose id embedding was trained: a bool mask [num_items] or an array of
        item indices. The others (new items) are encoded from their features alone."""
        if not self.built:
            self.build()
        known = np.asarray(known)
        if known.dtype == bool:
            if known.shape != (self.num_items,):
                raise ValueError(f"a known-items mask must have shape ({self.num_items},), got {known.shape}")
            mask = known
        else:
            known = known.astype(np.int64).ravel()
            if known.size and (known.min() < 0 or known.max() >= self.num_items):
                raise ValueError(f"known item indices must be in [0, {self.num_items})")
            mask = np.zeros(self.num_items, bool)
            mask[known] = True
        self.known_items.assign(mask.astype(np.float32))

    def with_new_items(self, rows: dict | None = None, count: int | None = None) -> "ContentAgent":
        """A copy of this agent (same config and weights) that also covers ``count`` new items,
        appended at indices ``num_items .. num_items + count - 1``: new items are not known (no
        id embedding), and their feature rows come from ``rows`` (arrays with ``count`` rows keyed
        as `set_item_features` takes them, e.g. from `tfmarl.data.ItemFeatures.new_item_rows`;
        missing tables give no feature). Their vectors then follow from the trained feature
        embeddings, without retraining."""
        if not self.built:
            self.build()
        rows = dict(rows or {})
        sizes = {len(np.asarray(v)) for v in rows.values()}
        if count is None:
            if len(sizes) != 1:
                raise ValueError("pass count= or feature rows that agree on the number of new items")
            count = sizes.pop()
        elif sizes - {count}:
            raise ValueError(f"feature rows have {sorted(sizes)} rows, count={count}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        agent = type(self).from_config({**self.get_config(), "num_items": self.num_items + count})
        agent.build()
        values = []
        for old, new in zip(self.weights, agent.weights):
            value = old.numpy()
            if _weight_name(old) in _PER_ITEM_WEIGHTS:
                value = np.concatenate([value, np.zeros((count,) + value.shape[1:], value.dtype)])
            values.append(value)
        agent.set_weights(values)
        tables = {key: np.concatenate([getattr(self, weight).numpy(), np.asarray(rows[key])])
                  for key, weight in FEATURE_TABLE_WEIGHTS.items() if key in rows}
        agent.set_item_features(tables)
        return agent

    def call(self, item_ids, training=None, drop_ids=None):
        """``drop_ids``: apply ``id_dropout`` (default: while training). The recommender reads
        histories with ``drop_ids=False`` and drops ids only in the catalog it scores."""
        drop_ids = bool(training) and (drop_ids is None or bool(drop_ids))
        item_ids = tf.convert_to_tensor(item_ids)
        if item_ids.dtype != tf.int32:
            item_ids = tf.cast(item_ids, tf.int32)
        entity_vectors = None
        if self.num_entities and self.knowledge_hops == 2:
            # Every item's features feed the entities it links to: encode the catalog once.
            catalog = self._features(tf.range(self.num_items), drop_ids)
            entity_vectors = self.knowledge.entity_vectors(catalog, self.item_entities)
            vectors = tf.gather(catalog, item_ids)
        else:
            vectors = self._features(item_ids, drop_ids)
        if self.num_entities:
            neighbours = None
            if self.knowledge_entities == "item_mean":
                neighbours = self.knowledge.neighbour_item_means(self.id_embeddings, self.known_items,
                                                                 self.item_entities, item_ids)
            vectors += self.knowledge(vectors, tf.nn.embedding_lookup(self.item_relations, item_ids),
                                      tf.nn.embedding_lookup(self.item_entities, item_ids),
                                      entity_vectors=entity_vectors, neighbour_vectors=neighbours)
        return self.output_dropout(vectors, training=training)

    def _features(self, item_ids, drop_ids):
        """Category + title + text + numeric parts, plus the id part (where known and not
        dropped; else what those parts predict of it, with id dropout)."""
        # embedding_lookup, not tf.gather: on a ShardedVariable (ParameterServerStrategy) tf.gather
        # returns the rows grouped by shard, out of the ids' order, and rejects ids of rank > 1.
        keep = tf.nn.embedding_lookup(self.known_items, item_ids)
        if self.id_dropout and drop_ids:
            keep *= tf.cast(tf.random.uniform(tf.shape(item_ids)) >= self.id_dropout, keep.dtype)
        parts = []
        if self.num_categories:
            parts.append(_mean_embedding(self.category_embeddings,
                                         tf.nn.embedding_lookup(self.item_categories, item_ids)))
        if self.text_vocabulary_size:
            parts.append(_mean_embedding(self.token_embeddings, tf.nn.embedding_lookup(self.title_tokens, item_ids)))
        if self.text_embedding_dim:
            parts.append(self.text_projection(tf.nn.embedding_lookup(self.text_embeddings, item_ids)))
        if self.numeric_dim:
            parts.append(self.numeric_projection(tf.nn.embedding_lookup(self.numeric_attributes, item_ids)))
        vectors = tf.nn.embedding_lookup(self.id_embeddings, item_ids) * keep[..., None]
        if self.id_dropout:
            features = tf.add_n(parts) if parts else tf.zeros_like(vectors)
            vectors += (1.0 - keep)[..., None] * (self.unknown_id + self.id_output(self.id_hidden(features)))
        return tf.add_n([vectors, *parts])

    def catalog(self, training=None, drop_ids=None):
        """Vectors of every item index, [num_items, dim]."""
        return self(tf.range(self.num_items), training=training, drop_ids=drop_ids)

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim,
                "num_categories": self.num_categories, "max_categories": self.max_categories,
                "text_vocabulary_size": self.text_vocabulary_size, "title_length": self.title_length,
                "text_embedding_dim": self.text_embedding_dim, "numeric_dim": self.numeric_dim,
                "num_entities": self.num_entities, "num_relations": self.num_relations,
                "max_neighbours": self.max_neighbours, "knowledge_hops": self.knowledge_hops,
                "knowledge_entities": self.knowledge_entities,
                "id_dropout": self.id_dropout, "dropout": self.dropout}


# Weights with one row per item, and the `set_item_features` key of each feature table among them.
FEATURE_TABLE_WEIGHTS = {"categories": "item_categories", "title_tokens": "title_tokens",
                    "text_embeddings": "text_embeddings", "numeric": "numeric_attributes",
                    "kg_relations": "item_relations", "kg_entities": "item_entities"}
_PER_ITEM_WEIGHTS = frozenset({"id_embeddings", "known_items", *FEATURE_TABLE_WEIGHTS.values()})


def _weight_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _mean_embedding(table, ids):
    """Mean of table rows over the last axis of ``ids``, ignoring index 0 (padding)."""
    present = tf.cast(ids > 0, table.dtype)[..., None]
    total = tf.reduce_sum(tf.nn.embedding_lookup(table, ids) * present, axis=-2)
    return total / tf.maximum(tf.reduce_sum(present, axis=-2), 1.0)
