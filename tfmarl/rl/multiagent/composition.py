"""The System agent's slate composition from the User agent's allocation and the Content agents'
proposals."""

from __future__ import annotations

import tensorflow as tf

# Added to the ranking key of the proposed (allocated) candidates: above any fill-in, whose key is
# tanh(value / 100) in (-1, 1). Small, so float32 keeps the value order among the proposed.
SELECTED = 2.0


def allocate_slots(facet_probs, k: int, sample: bool, seed=None, totals=None):
    """Slots per facet, [B, F] ints summing to k (to ``totals`` int [B] <= k, per row, when
    given): sampled from the facet policy while training, largest-remainder rounding of
    k * probs when acting greedily."""
    f = tf.shape(facet_probs)[1]
    if sample:
        draws = tf.random.categorical(tf.math.log(facet_probs + 1e-12), k, dtype=tf.int32, seed=seed)
        counted = tf.one_hot(draws, f, dtype=tf.int32)
        if totals is not None:  # each row keeps its first totals[b] draws
            counted *= tf.cast(tf.range(k)[None, :] < totals[:, None], tf.int32)[..., None]
        return tf.reduce_sum(counted, axis=1)
    limit = k if totals is None else totals[:, None]
    share = facet_probs * tf.cast(limit, facet_probs.dtype)
    base = tf.cast(tf.floor(share), tf.int32)
    extra = limit - tf.reduce_sum(base, axis=1, keepdims=True)
    order = tf.argsort(tf.argsort(-(share - tf.floor(share)), axis=1, stable=True), axis=1, stable=True)
    return base + tf.cast(order < extra, tf.int32)


def compose_slate(facet_probs, content_q, critic_q, candidate_facets, k: int, *, sample: bool = False, seed=None,
                  new_candidates=None, new_item_slots: int = 0):
    """The System agent's composition.

    Each facet gets its allocated number of slots; inside a facet the owning Content agent's
    best candidates (by Q_C) fill them; slots a facet cannot fill go to the best remaining
    candidates by the critic (by Q_C without a critic). The slate is ordered by the critic.
    With ``new_item_slots`` (and ``new_candidates``), up to that many slots go first to the
    best new candidates by the critic (items nobody has interacted with, whose value only
    showing them can tell), and the facets share the rest.

    Args: facet_probs [B, F]; content_q [B, N] (each candidate scored by its owner);
      critic_q [B, N] or None; candidate_facets int [B, N]; new_candidates bool [B, N].
    Returns ``(positions int32 [B, k], key [B, N])`` where ``key`` ranks the candidates (its top k
    are the slate).
    """
    facets = tf.cast(candidate_facets, tf.int32)
    n = tf.shape(content_q)[1]
    index = tf.range(n)
    order_value = critic_q if critic_q is not None else content_q
    fresh = tf.zeros_like(content_q, tf.bool)
    totals = None
    if new_item_slots and new_candidates is not None:
        new = tf.cast(new_candidates, tf.bool)
        value = tf.where(new, order_value, float("-inf"))
        new_rank = tf.argsort(tf.argsort(-value, axis=1, stable=True), axis=1, stable=True)
        fresh = new & (new_rank < min(int(new_item_slots), k))
        totals = k - tf.reduce_sum(tf.cast(fresh, tf.int32), axis=1)
    quota = allocate_slots(facet_probs, k, sample, seed, totals)  # [B, F]
    same = tf.equal(facets[:, :, None], facets[:, None, :]) & ~fresh[:, None, :]  # ranked among the rest
    better = (content_q[:, None, :] > content_q[:, :, None]) | (
        tf.equal(content_q[:, None, :], content_q[:, :, None]) & (index[None, None, :] < index[None, :, None]))
    rank = tf.reduce_sum(tf.cast(same & better, tf.int32), axis=-1)  # rank within own facet
    selected = fresh | (rank < tf.gather(quota, facets, batch_dims=1))  # ranks exclude the fresh ones
    key = tf.where(selected, SELECTED, 0.0) + tf.tanh(order_value / 100.0)  # tanh < 1: selection dominates
    return tf.math.top_k(key, k=k).indices, key
