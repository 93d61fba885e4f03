"""The System agent's slate composition from the User agent's allocation and the Content agents'
proposals."""

from __future__ import annotations

import tensorflow as tf

# Added to the ranking key of the proposed (allocated) candidates: above any fill-in, whose key is
# tanh(value / 100) in (-1, 1). Small, so float32 keeps the value order among the proposed.
SELECTED = 2.0


def allocate_slots(facet_probs, k: int, sample: bool, seed=None):
    """Slots per facet, [B, F] ints summing to k: sampled from the facet policy while training,
    largest-remainder rounding of k * probs when acting greedily."""
    f = tf.shape(facet_probs)[1]
    if sample:
        draws = tf.random.categorical(tf.math.log(facet_probs + 1e-12), k, dtype=tf.int32, seed=seed)
        return tf.reduce_sum(tf.one_hot(draws, f, dtype=tf.int32), axis=1)
    share = facet_probs * float(k)
    base = tf.cast(tf.floor(share), tf.int32)
    extra = k - tf.reduce_sum(base, axis=1, keepdims=True)
    order = tf.argsort(tf.argsort(-(share - tf.floor(share)), axis=1, stable=True), axis=1, stable=True)
    return base + tf.cast(order < extra, tf.int32)


def compose_slate(facet_probs, content_q, critic_q, candidate_facets, k: int, *, sample: bool = False, seed=None):
    """The System agent's composition.

    Each facet gets its allocated number of slots; inside a facet the owning Content agent's
    best candidates (by Q_C) fill them; slots a facet cannot fill go to the best remaining
    candidates by the critic (by Q_C without a critic). The slate is ordered by the critic.

    Args: facet_probs [B, F]; content_q [B, N] (each candidate scored by its owner);
      critic_q [B, N] or None; candidate_facets int [B, N].
    Returns ``(positions int32 [B, k], key [B, N])`` where ``key`` ranks the candidates (its top k
    are the slate).
    """
    quota = allocate_slots(facet_probs, k, sample, seed)  # [B, F]
    facets = tf.cast(candidate_facets, tf.int32)
    n = tf.shape(content_q)[1]
    index = tf.range(n)
    same = tf.equal(facets[:, :, None], facets[:, None, :])
    better = (content_q[:, None, :] > content_q[:, :, None]) | (
        tf.equal(content_q[:, None, :], content_q[:, :, None]) & (index[None, None, :] < index[None, :, None]))
    rank = tf.reduce_sum(tf.cast(same & better, tf.int32), axis=-1)  # rank within own facet
    selected = rank < tf.gather(quota, facets, batch_dims=1)
    order_value = critic_q if critic_q is not None else content_q
    key = tf.where(selected, SELECTED, 0.0) + tf.tanh(order_value / 100.0)  # tanh < 1: selection dominates
    return tf.math.top_k(key, k=k).indices, key
