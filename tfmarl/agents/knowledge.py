"""`KnowledgeGraphEncoder`: relation-aware attention over an item's knowledge-graph neighbours."""

from __future__ import annotations

import tensorflow as tf

from tfmarl.agents.blocks import NEG_INF, embedding_initializer as _init, serializable


@serializable
class KnowledgeGraphEncoder(tf.keras.layers.Layer):
    """Encodes items from their (relation, entity) neighbours in an item knowledge graph.

    Each neighbour j of an item carries a message ``m_j = e_j + r_j`` (entity and relation
    embeddings: the relation translates the entity, as in TransE, so "directed by X" and
    "produced by X" differ). The item attends over its messages with a query built from what
    else is known about it (``query``: its id, category and text vectors), and with a learnt
    per-relation bias, so that informative relations win over noisy ones:

        a_j = softmax_j(<W_q query, m_j> / sqrt(dim) + b_{r_j})     (over present neighbours)
        out = W_o sum_j a_j m_j                                      (zero for items without neighbours)

    With ``hops=2`` an entity's embedding is first enriched with the mean ``query`` vector of the
    items linked to it (item -> entity -> item), which lets the collaborative signal of known
    items reach a new item through the entities they share. That needs every item's query: pass
    ``entity_vectors=layer.entity_vectors(catalog_query, catalog_entities)`` (all items' query
    vectors [num_items, dim] and their entity table); without it the layer uses one hop.

    Call: ``query`` float [..., dim], ``relations`` / ``entities`` int [..., M] (0 = no
    neighbour) -> float [..., dim].

    Args:
      num_entities: entity vocabulary size (index 0 = none).
      num_relations: relation vocabulary size (index 0 = none).
      dim: vector size (that of ``query`` and of the output).
      hops: 1 (neighbours only) or 2 (entities also carry their other items' vectors).
    """

    def __init__(self, num_entities: int, num_relations: int, dim: int, hops: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_entities < 2 or num_relations < 2:
            raise ValueError(f"num_entities and num_relations must be >= 2 (index 0 = none), got "
                             f"{num_entities}, {num_relations}")
        if hops not in (1, 2):
            raise ValueError(f"hops must be 1 or 2, got {hops}")
        self.num_entities = int(num_entities)
        self.num_relations = int(num_relations)
        self.dim = int(dim)
        self.hops = int(hops)

    def build(self, input_shape=None):
        self.entity_embeddings = self.add_weight(
            "entity_embeddings", shape=[self.num_entities, self.dim], initializer=_init())
        self.relation_embeddings = self.add_weight(
            "relation_embeddings", shape=[self.num_relations, self.dim], initializer=_init())
        self.relation_bias = self.add_weight("relation_bias", shape=[self.num_relations], initializer="zeros")
        self.query_projection = tf.keras.layers.Dense(self.dim, use_bias=False, name="query_projection")
        self.output_projection = tf.keras.layers.Dense(self.dim, use_bias=False, name="output_projection")
        self.query_projection.build([None, self.dim])
        self.output_projection.build([None, self.dim])
        super().build(input_shape)

    def entity_vectors(self, catalog_query=None, catalog_entities=None):
        """Entity vectors [num_entities, dim] for the second hop: the embeddings plus the mean
        query vector of the items linked to each entity. None with ``hops=1`` or no catalog
        (the layer then uses the embeddings alone)."""
        if self.hops == 1 or catalog_query is None:
            return None  # call() then looks the embeddings up directly
        entities = tf.convert_to_tensor(self.entity_embeddings)
        catalog_entities = tf.cast(catalog_entities, tf.int32)
        num_neighbours = tf.shape(catalog_entities)[1]
        edge_entities = tf.reshape(catalog_entities, [-1])
        edge_items = tf.repeat(tf.range(tf.shape(catalog_entities)[0]), num_neighbours)
        present = edge_entities > 0
        edge_entities = tf.boolean_mask(edge_entities, present)
        edge_items = tf.boolean_mask(edge_items, present)
        context = tf.math.unsorted_segment_mean(tf.gather(catalog_query, edge_items), edge_entities,
                                                self.num_entities)
        return entities + context

    def call(self, query, relations, entities, entity_vectors=None):
        relations = tf.cast(relations, tf.int32)
        entities = tf.cast(entities, tf.int32)
        if entity_vectors is None:
            # embedding_lookup, not gather: correct on ShardedVariables (see ContentAgent.call).
            entity_part = tf.nn.embedding_lookup(self.entity_embeddings, entities)
        else:
            entity_part = tf.gather(entity_vectors, entities)
        messages = entity_part + tf.nn.embedding_lookup(self.relation_embeddings, relations)  # [..., M, D]
        present = entities > 0
        q = self.query_projection(query)
        logits = tf.einsum("...d,...md->...m", q, messages) * (self.dim ** -0.5)
        logits += tf.nn.embedding_lookup(self.relation_bias, relations)
        logits = tf.where(present, logits, NEG_INF)
        weights = tf.nn.softmax(logits, axis=-1) * tf.cast(present, logits.dtype)  # all-absent rows -> 0
        return self.output_projection(tf.einsum("...m,...md->...d", weights, messages))

    def get_config(self):
        return {**super().get_config(), "num_entities": self.num_entities, "num_relations": self.num_relations,
                "dim": self.dim, "hops": self.hops}
