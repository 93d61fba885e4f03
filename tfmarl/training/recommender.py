"""`SequentialRecommender`: User + Content + System agents trained for next-item prediction."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmarl.agents import ContentAgent, SystemAgent, UserAgent
from tfmarl.agents.blocks import NEG_INF, serializable
from tfmarl.agents.system import mask_excluded
from tfmarl.data.vocab import NUM_RESERVED, Vocabulary

LOSSES = ("auto", "full", "in_batch", "sampled")
# "auto" picks the exact full softmax up to this many items: its logits are [targets in a batch,
# catalog] (about 6,400 x 20,000 floats, 0.5 GB, at batch 128 x 50 positions), "sampled" beyond.
FULL_SOFTMAX_MAX_ITEMS = 20_000


@serializable
class SequentialRecommender(tfrs.models.Model):
    """Next-item recommender made of the three agents.

    The `ContentAgent` encodes items (for both the history and the candidates, so their vectors are
    shared), the `UserAgent` turns a history into a state after every position, and the
    `SystemAgent` scores states against items and composes the top-K slate.

    Contract (a TFRS `Model`): ``compute_loss(inputs, training)`` returns the loss for a batch of
    ``inputs`` = dict(``history`` int [B, L], ``targets`` int [B, L], ``target_weights``
    float [B, L], ``first_item`` int [B]) as made by `tfmarl.data.training_dataset`: the state after
    position j is trained to predict ``targets[:, j]`` where its weight is non-zero, and the
    user agent's cold-start state to predict ``first_item`` where it is non-zero. Override it to
    train on something else.

    Losses:
      "auto" (default): "full" up to `FULL_SOFTMAX_MAX_ITEMS` items, else "sampled".
      "full": softmax over the whole catalog (exact; use when [targets, catalog] logits fit).
      "in_batch": `tfrs.tasks.Retrieval` over the batch's positives, log-Q corrected by
        ``item_frequencies`` and with accidental hits removed.
      "sampled": as "in_batch" plus ``num_negatives`` negatives drawn from ``item_frequencies``.

    Calling the model with ``history`` int [B, L] (or a dict holding it) returns
    ``{"scores": [B, k], "items": [B, k]}``, the history's items excluded.

    Args:
      num_items: item vocabulary size (reserved indices 0 = padding, 1 = OOV included).
      dim, encoder, max_length, num_layers, num_heads, dropout: defaults for the agents built
        here when they are not passed in.
      k: slate size.
      loss: "auto", "full", "in_batch" or "sampled".
      num_negatives: negatives per batch for "sampled".
      item_frequencies: [num_items] interaction counts (for log-Q correction and sampling).
      user_agent, content_agent, system_agent: agents to use instead of the defaults.
      item_vocabulary: the `Vocabulary` (or list of string ids) behind the indices; exports use it
        to answer with string ids. ``num_items`` defaults to its size.
    """

    def __init__(self, num_items: int | None = None, dim: int = 64, encoder: str = "transformer", max_length: int = 50,
                 num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2, k: int = 10,
                 loss: str = "auto", num_negatives: int = 1024, item_frequencies=None,
                 user_agent: UserAgent | None = None, content_agent: ContentAgent | None = None,
                 system_agent: SystemAgent | None = None, item_vocabulary=None, **kwargs):
        super().__init__(**kwargs)
        if item_vocabulary is not None and not isinstance(item_vocabulary, Vocabulary):
            item_vocabulary = Vocabulary(item_vocabulary)
        self.item_vocabulary = item_vocabulary
        if num_items is None:
            if item_vocabulary is None:
                raise ValueError("pass num_items or item_vocabulary")
            num_items = item_vocabulary.size
        elif item_vocabulary is not None and item_vocabulary.size != num_items:
            raise ValueError(f"num_items={num_items} but the item vocabulary has {item_vocabulary.size} indices")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.num_items = int(num_items)
        self.max_length = int(max_length)
        if loss == "auto":
            loss = "full" if num_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"
        self.loss_type = loss
        self.num_negatives = int(num_negatives)
        self._defaults = dict(dim=dim, encoder=encoder, max_length=max_length, num_layers=num_layers,
                              num_heads=num_heads, dropout=dropout, k=k)
        self.content_agent = content_agent or ContentAgent(num_items, dim=dim, name="content_agent")
        self.user_agent = user_agent or UserAgent(encoder, dim=dim, max_length=max_length, num_layers=num_layers,
                                                  num_heads=num_heads, dropout=dropout, name="user_agent")
        self.system_agent = system_agent or SystemAgent(k=k, name="system_agent")
        if self.content_agent.num_items != self.num_items:
            raise ValueError(f"content_agent covers {self.content_agent.num_items} items, model {self.num_items}")
        if self.user_agent.max_length < self.max_length and self.user_agent.encoder == "transformer":
            raise ValueError("user_agent.max_length is shorter than the model's max_length")
        if item_frequencies is None:
            counts = np.ones(self.num_items, np.float64)
        else:
            counts = np.asarray(item_frequencies, np.float64)
            if counts.shape != (self.num_items,) or (counts < 0).any() or not np.isfinite(counts).all():
                raise ValueError(f"item_frequencies must be {self.num_items} finite non-negative counts")
        counts = counts.copy()
        counts[:NUM_RESERVED] = 0.0
        probs = (counts + 1e-3 * (counts.sum() > 0)) / max(counts.sum(), 1.0)  # smoothed: never log(0)
        probs[:NUM_RESERVED] = 0.0
        self.item_log_probs = tf.Variable(
            np.log(np.maximum(probs / probs.sum(), 1e-30)).astype(np.float32), trainable=False,
            name="item_log_probs")
        self.retrieval = tfrs.tasks.Retrieval(remove_accidental_hits=True, name="retrieval")

    def set_known_items(self, known) -> None:
        """Marks which items exist while training (a bool mask [num_items] or item indices, e.g.
        those of the training sequences); the others are new items: left out of the training
        softmax ("full" loss) and encoded from their features alone (`ContentAgent.set_known_items`).
        Without a call every item is known."""
        self.content_agent.set_known_items(known)

    # --- inference -------------------------------------------------------------------------
    def item_vectors(self, training=None, drop_ids=None):
        """Vectors of the whole catalog, [num_items, dim] (``drop_ids``: see `ContentAgent.call`)."""
        return self.content_agent.catalog(training=training, drop_ids=drop_ids)

    def history_states(self, history, items=None, training=None):
        """States after every position of ``history`` [B, L] -> [B, L, dim]."""
        items = self.item_vectors(training) if items is None else items
        return self.user_agent(tf.gather(items, history), mask=history > 0, training=training,
                               return_sequences=True)

    def user_state(self, history, items=None, training=None):
        """State after the last real item of ``history`` [B, L] -> [B, dim]."""
        items = self.item_vectors(training) if items is None else items
        return self.user_agent(tf.gather(items, history), mask=history > 0, training=training)

    def score_catalog(self, history, training=None):
        """Scores of every catalog index for each history, [B, num_items] (nothing masked)."""
        items = self.item_vectors(training)
        return self.system_agent.score(self.user_state(history, items, training), items)

    def call(self, inputs, training=None):
        history = inputs["history"] if isinstance(inputs, dict) else inputs
        history = tf.cast(history, tf.int32)
        items = self.item_vectors(training)
        scores = self.system_agent.score(self.user_state(history, items, training), items)
        top = tf.math.top_k(mask_excluded(scores, history), k=min(self.system_agent.k, self.num_items))
        return {"scores": top.values, "items": top.indices}

    # --- training ----------------------------------------------------------------------------
    def compute_loss(self, inputs, training=False):
        history = tf.cast(inputs["history"], tf.int32)
        items = self.item_vectors(training)
        # Id dropout acts on the scored catalog only (the item side, as in DropoutNet): the
        # history is read with every trained id, as at inference, so the User agent is not
        # trained on inputs it never sees later (ML-100k newest-item split, id_dropout 0.8, one
        # seed: cold items' all-catalog NDCG@10 0.018 -> 0.031, warm NDCG@10 0.050 -> 0.072).
        history_items = self.item_vectors(training, drop_ids=False) if training and self.content_agent.id_dropout \
            else items
        states = self.history_states(history, history_items, training)
        selected = inputs["target_weights"] > 0
        queries = tf.boolean_mask(states, selected)
        positives = tf.boolean_mask(tf.cast(inputs["targets"], tf.int32), selected)
        first = tf.cast(inputs["first_item"], tf.int32)
        has_first = first > 0
        num_first = tf.reduce_sum(tf.cast(has_first, tf.int32))
        queries = tf.concat([queries, tf.tile(self.user_agent.cold_start[None, :], [num_first, 1])], 0)
        positives = tf.concat([positives, tf.boolean_mask(first, has_first)], 0)
        summed = self._summed_loss(queries, positives, items)
        # Sum over this replica / count over all replicas: the replicas' gradients, summed by the
        # optimizer, are then those of the global mean.
        count = tf.cast(tf.size(positives), tf.float32)
        context = tf.distribute.get_replica_context()
        if context is not None:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        return summed / tf.maximum(count, 1.0)

    def _summed_loss(self, queries, positives, items):
        if self.loss_type == "full":
            # New items (see `set_known_items`) do not exist yet at training time: no probability.
            unknown = (self.content_agent.known_items - 1.0) * -NEG_INF
            if self.system_agent.is_factorized:  # the [targets, catalog] softmax dominates a step: fused
                return full_softmax_loss(queries, positives, items, unknown[NUM_RESERVED:])
            logits = mask_excluded(self.system_agent.score(queries, items)) + unknown
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(positives, logits))
        candidates = positives
        if self.loss_type == "sampled":
            negatives = tf.random.categorical(self.item_log_probs[None, :], self.num_negatives, dtype=tf.int32)[0]
            candidates = tf.concat([positives, negatives], 0)
        log_q = tf.nn.embedding_lookup(self.item_log_probs, candidates)
        if self.system_agent.is_factorized:
            return self.retrieval(queries, tf.gather(items, candidates),
                                  candidate_sampling_probability=tf.exp(log_q), candidate_ids=candidates,
                                  compute_metrics=False, compute_batch_metrics=False)
        # A pairwise scorer cannot use the factorized [queries x candidates] product: score each
        # query against its own positive plus the shared negatives.
        negatives = candidates[tf.size(positives):] if self.loss_type == "sampled" else positives
        per_row = tf.concat([positives[:, None], tf.tile(negatives[None, :], [tf.size(positives), 1])], 1)
        logits = self.system_agent.score(queries, tf.gather(items, per_row)) - tf.nn.embedding_lookup(self.item_log_probs, per_row)
        accidental = tf.equal(per_row[:, 1:], positives[:, None])
        logits = tf.concat([logits[:, :1], tf.where(accidental, NEG_INF, logits[:, 1:])], 1)
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.zeros_like(positives), logits))

    def get_config(self):
        return {"num_items": self.num_items, "loss": self.loss_type, "num_negatives": self.num_negatives,
                **self._defaults, "max_length": self.max_length,
                "user_agent": tf.keras.layers.serialize(self.user_agent),
                "content_agent": tf.keras.layers.serialize(self.content_agent),
                "system_agent": tf.keras.layers.serialize(self.system_agent),
                "item_vocabulary": None if self.item_vocabulary is None else self.item_vocabulary.tokens,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("user_agent", "content_agent", "system_agent"):
            if isinstance(config.get(key), dict):
                config[key] = tf.keras.layers.deserialize(config[key])
        return cls(**config)

    def build_all(self):
        """Creates every variable by running one tiny batch (weights can then be loaded/saved)."""
        history = tf.constant([[NUM_RESERVED]], tf.int32)
        self({"history": history})
        return self


def full_softmax_loss(queries, positives, items, bias=None):
    """Summed cross-entropy of inner-product scores over the whole catalog, reserved indices
    (padding, OOV) masked: ``sum_i -log softmax(queries[i] @ items.T + bias)[positives[i]]``.
    ``bias`` (float [num_items - NUM_RESERVED], constant: no gradient) is added to the logits of
    the non-reserved items; ``NEG_INF`` there removes an item from the softmax.

    The value and gradients equal those of ``mask_excluded`` logits fed to
    ``tf.nn.sparse_softmax_cross_entropy_with_logits`` (a positive at a reserved index costs
    about ``-NEG_INF`` and, as there, sends no gradient to that index's vector), at about half
    the cost on CPU: the reserved columns are left out instead of masked (no select over the
    [T, num_items] logits, nor its gradient), the logits are normalised by one softmax kernel,
    and the gradient is formed from the kept probabilities by two matmuls, the one-hot part
    and the scalar scale applied to their [T, dim] / [num_items, dim] results instead of to
    [T, num_items] tensors.

    queries: float [T, D]; positives: int [T]; items: float [num_items, D] -> scalar.
    """
    if bias is not None:
        bias = tf.stop_gradient(tf.cast(bias, items.dtype))

    @tf.custom_gradient
    def loss(queries, items):
        candidates = items[NUM_RESERVED:]  # the masked columns never get probability: leave them out
        labels = positives - NUM_RESERVED
        real = labels >= 0
        labels = tf.maximum(labels, 0)
        logits = tf.matmul(queries, candidates, transpose_b=True)  # [T, C]
        if bias is not None:
            logits += bias[None, :]
        probs = tf.nn.softmax(logits)
        p = tf.gather(probs, labels[:, None], batch_dims=1)[:, 0]
        # -log p is exact while p is a normal float; rows whose positive is reserved or so unlikely
        # that p underflows (rare) take the exact logsumexp - logit from their logits.
        exact = tf.logical_and(real, p >= _SMALLEST_NORMAL)
        total = tf.reduce_sum(tf.where(exact, -tf.math.log(tf.where(exact, p, 1.0)), 0.0))
        rows = tf.where(tf.logical_not(exact))[:, 0]
        row_logits = tf.gather(logits, rows)
        label_logits = tf.where(tf.gather(real, rows),
                                tf.gather(row_logits, tf.gather(labels, rows)[:, None], batch_dims=1)[:, 0],
                                tf.cast(NEG_INF, logits.dtype))
        total += tf.reduce_sum(tf.reduce_logsumexp(row_logits, axis=1) - label_logits)

        def grad(upstream):
            # d/dlogits = upstream * (probs - onehot(positives)); onehot only at real positives.
            one_hot_rows = tf.where(real[:, None], tf.gather(candidates, labels), 0.0)
            d_queries = upstream * (tf.matmul(probs, candidates) - one_hot_rows)
            kept = tf.where(real[:, None], queries, 0.0)
            d_candidates = upstream * (tf.matmul(probs, queries, transpose_a=True)
                                       - tf.math.unsorted_segment_sum(kept, labels, tf.shape(candidates)[0]))
            d_items = tf.pad(d_candidates, [[NUM_RESERVED, 0], [0, 0]])
            return d_queries, d_items

        return total, grad

    return loss(queries, items)


_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)
