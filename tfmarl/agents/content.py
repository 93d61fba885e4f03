"""The Content agent: encodes items from their id, categories and text."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.agents.blocks import embedding_initializer as _init, serializable

# Up to this catalog size, consumers that need many items' vectors (the RL networks) encode the
# whole catalog once per call and gather, rather than encoding every id one by one.
CATALOG_PASS_MAX_ITEMS = 50_000


@serializable
class ContentAgent(tf.keras.layers.Layer):
    """Item encoder: id embedding + mean category embedding + mean title-token embedding
    + projected precomputed text embedding, summed into one ``dim`` vector per item.

    Only the id embedding is always present; each other part exists when its size argument is
    non-zero. The per-item feature tables (category ids, title token ids, text embeddings) are
    non-trainable weights, so they are saved with the model's weights and travel into exported
    SavedModels; fill them with `set_item_features` (see `tfmarl.data.build_item_features`).

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
      dropout: dropout on the output vectors while training.
    """

    def __init__(self, num_items: int, dim: int = 64, num_categories: int = 0, max_categories: int = 4,
                 text_vocabulary_size: int = 0, title_length: int = 16, text_embedding_dim: int = 0,
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
        self.dropout = float(dropout)

    def build(self, input_shape=None):
        self.id_embeddings = self.add_weight("id_embeddings", shape=[self.num_items, self.dim], initializer=_init())
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
        self.output_dropout = tf.keras.layers.Dropout(self.dropout)
        super().build(input_shape)

    def set_item_features(self, features) -> None:
        """Copies per-item feature tables in (an `ItemFeatures` or a dict with the same keys)."""
        if not self.built:
            self.build()
        get = features.get if isinstance(features, dict) else lambda k: getattr(features, k, None)
        tables = (("categories", "num_categories", "item_categories", self.max_categories),
                  ("title_tokens", "text_vocabulary_size", "title_tokens", self.title_length))
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
        text = get("text_embeddings")
        if text is not None:
            text = np.asarray(text, np.float32)
            if not self.text_embedding_dim or text.shape != (self.num_items, self.text_embedding_dim):
                raise ValueError(f"text_embeddings must have shape ({self.num_items}, {self.text_embedding_dim}), "
                                 f"got {text.shape}")
            if not np.isfinite(text).all():
                raise ValueError("text_embeddings hold NaN or inf")
            self.text_embeddings.assign(text)

    def call(self, item_ids, training=None):
        item_ids = tf.convert_to_tensor(item_ids)
        if item_ids.dtype != tf.int32:
            item_ids = tf.cast(item_ids, tf.int32)
        # embedding_lookup, not tf.gather: on a ShardedVariable (ParameterServerStrategy) tf.gather
        # returns the rows grouped by shard, out of the ids' order, and rejects ids of rank > 1.
        vectors = tf.nn.embedding_lookup(self.id_embeddings, item_ids)
        if self.num_categories:
            vectors += _mean_embedding(self.category_embeddings, tf.nn.embedding_lookup(self.item_categories, item_ids))
        if self.text_vocabulary_size:
            vectors += _mean_embedding(self.token_embeddings, tf.nn.embedding_lookup(self.title_tokens, item_ids))
        if self.text_embedding_dim:
            vectors += self.text_projection(tf.nn.embedding_lookup(self.text_embeddings, item_ids))
        return self.output_dropout(vectors, training=training)

    def catalog(self, training=None):
        """Vectors of every item index, [num_items, dim]."""
        return self(tf.range(self.num_items), training=training)

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim,
                "num_categories": self.num_categories, "max_categories": self.max_categories,
                "text_vocabulary_size": self.text_vocabulary_size, "title_length": self.title_length,
                "text_embedding_dim": self.text_embedding_dim, "dropout": self.dropout}


def _mean_embedding(table, ids):
    """Mean of table rows over the last axis of ``ids``, ignoring index 0 (padding)."""
    present = tf.cast(ids > 0, table.dtype)[..., None]
    total = tf.reduce_sum(tf.nn.embedding_lookup(table, ids) * present, axis=-2)
    return total / tf.maximum(tf.reduce_sum(present, axis=-2), 1.0)
