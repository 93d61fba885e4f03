"""`PartitionedIndex`: a partitioned (IVF-style) maximum-inner-product index in stock TensorFlow ops.

Fitting (at export time, in seconds): k-means made for inner products. Every vector x is lifted to
[x, sqrt(M^2 - |x|^2)] (M: the catalog's largest norm), which gives all of them the norm M and turns
"largest inner product" into "nearest" (a query q lifts to [q, 0]); spherical k-means runs there on
a seeded subsample, so large-norm vectors, the ones inner products favour, get partitions of their
own. Then every vector goes to the most similar centroid that still has room (at most `BALANCE` x
the mean partition size). The partitions are stored padded as one dense ``[partitions, size, dim]``
variable, so probing is one gather plus one batched matrix-vector product.

Query: score the partitions' keys (the mean of their members: the partition's mean score), probe
the best ``probes`` of them, score every vector in them exactly (or, with ``quantization``, with
int8 / bfloat16 copies, then re-rank the best ``rerank`` with the float32 vectors), and keep the
top ``k``. More partitions than ``probes`` are probed when those would hold fewer than the
candidates asked for, so padding slots are never returned. ``probes == partitions`` is exact
search.

Everything is ``tf.Variable`` state read by ``tf.gather``/``tf.matmul``/``tf.math.top_k``: a
SavedModel holding the index loads in a process that has only TensorFlow (TF Serving included).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

QUANTIZATIONS = ("int8", "bfloat16")
OPTIONS = ("partitions", "probes", "quantization", "rerank", "seed")
BALANCE = 1.25  # the largest partition holds at most this many times the mean
DEFAULT_PROBES = 24
DEFAULT_RERANK = 100  # float32 re-ranking candidates with quantization (at least the k asked for)
KMEANS_ITERATIONS = 8
SAMPLE_PER_PARTITION = 32  # k-means runs on at most this many vectors per partition
PREFERENCES = 8  # partitions (best first) each vector may be assigned to before the fallback
_CHUNK = 32768  # vectors per matmul while assigning


def default_partitions(count: int) -> int:
    """About 2 sqrt(count) partitions (2,000 of 500 vectors at a million): small padded blocks,
    so a probe reads little; scoring the keys stays cheap (partitions x dim)."""
    return max(1, min(count, int(round(2 * math.sqrt(count)))))


def default_probes(partitions: int) -> int:
    """24 (all partitions when there are fewer). Recall depends on the partitions probed more than
    on their number: on trained item vectors 16 probes found 0.96 of the top 10 at both 100k and 1M
    items, 24 about 0.98 (benchmarks/serving.py)."""
    return min(partitions, DEFAULT_PROBES)


def check_index_options(options: dict | None) -> dict:
    """Validates ``options`` (the `PartitionedIndex` knobs: partitions, probes, quantization,
    rerank, seed) and returns a copy without the None values; ValueError names the bad key."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown index option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "quantization":
            if value not in QUANTIZATIONS:
                raise ValueError(f"quantization must be None or one of {QUANTIZATIONS}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if key == "seed" else 1):
            raise ValueError(f"{key} must be an integer >= {0 if key == 'seed' else 1}, got {value!r}")
        else:
            value = int(value)
        out[key] = value
    if "probes" in out and "partitions" in out and out["probes"] > out["partitions"]:
        raise ValueError(f"probes must be at most partitions={out['partitions']}, got {out['probes']}")
    if "rerank" in out and "quantization" not in out:
        raise ValueError("rerank applies to quantized partitions only: set quantization='int8' or 'bfloat16'")
    return out


class PartitionedIndex(tf.Module):
    """Approximate top-k by inner product over the rows ``reserved..N-1`` of ``vectors``.

    Call ``index(queries [B, D], k)`` (inside or outside a tf.function; ``k`` may be a tensor) ->
    ``(scores float32 [B, k'], rows int32 [B, k'])``, best first, with k' = min(k, N - reserved):
    rows of ``vectors`` (rows below ``reserved``, e.g. padding and OOV, are never indexed) and their
    exact float32 inner products with the queries. ``index.vectors`` is the float32 table (one
    variable: a serving graph can use it as its item table too).

    Args:
      vectors: float32 [N, D], the catalog.
      partitions: number of partitions (default `default_partitions`: about 2 sqrt(N - reserved)).
      probes: partitions scored exactly per query (default `default_probes`); ``partitions`` = exact.
      quantization: None (float32 partitions), "int8" (per-vector symmetric scale) or "bfloat16":
        the probed partitions are scored from that copy, then the best ``rerank`` are re-scored
        with the float32 vectors.
      rerank: re-ranking candidates with quantization (default `DEFAULT_RERANK`; at least k).
      seed: k-means seed (the same vectors and options give the same index).
      reserved: leading rows never indexed.

    ``index.config`` holds these options (with the defaults resolved): ``PartitionedIndex(vectors,
    **index.config)`` rebuilds the same index.
    """

    def __init__(self, vectors, *, partitions: int | None = None, probes: int | None = None,
                 quantization: str | None = None, rerank: int | None = None, seed: int = 0, reserved: int = 0,
                 name: str = "partitioned_index"):
        super().__init__(name=name)
        options = check_index_options(dict(partitions=partitions, probes=probes, quantization=quantization,
                                           rerank=rerank, seed=seed))
        table = np.asarray(vectors.numpy() if hasattr(vectors, "numpy") else vectors, np.float32)
        if table.ndim != 2 or table.shape[1] < 1:
            raise ValueError(f"vectors must be [N, D], got shape {table.shape}")
        if not np.isfinite(table).all():
            raise ValueError("vectors hold NaN or inf")
        reserved = int(reserved)
        count = table.shape[0] - reserved
        if reserved < 0 or count < 1:
            raise ValueError(f"need at least one vector after the reserved={reserved} rows, got {table.shape[0]} rows")
        self.partitions = options.get("partitions", default_partitions(count))
        if self.partitions > count:
            raise ValueError(f"partitions must be at most the {count} indexed vectors, got {self.partitions}")
        self.probes = options.get("probes", default_probes(self.partitions))
        if self.probes > self.partitions:
            raise ValueError(f"probes must be at most partitions={self.partitions}, got {self.probes}")
        self.quantization = options.get("quantization")
        self.rerank = options.get("rerank", DEFAULT_RERANK) if self.quantization else None
        self.seed = options.get("seed", 0)
        self.reserved, self.count, self.dim = reserved, count, table.shape[1]

        assignment = fit_partitions(table[reserved:], self.partitions, seed=self.seed)
        sizes = np.bincount(assignment, minlength=self.partitions)
        self.partition_size = int(sizes.max())
        self.min_partition_size = int(sizes.min())
        order = np.argsort(assignment, kind="stable")
        slot = np.arange(count) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position inside its partition
        rows = np.full([self.partitions, self.partition_size], -1, np.int32)  # -1: padding
        rows[assignment[order], slot] = order + reserved
        padded = np.zeros([self.partitions, self.partition_size, self.dim], np.float32)
        padded[assignment[order], slot] = table[reserved:][order]
        keys = padded.sum(axis=1) / sizes[:, None]  # q . key = the partition's mean score for q

        self.vectors = tf.Variable(table, trainable=False, name="item_vectors")
        self.keys = tf.Variable(keys.astype(np.float32), trainable=False, name="partition_keys")
        self.sizes = tf.Variable(sizes.astype(np.int32), trainable=False, name="partition_sizes")
        self.rows = tf.Variable(rows, trainable=False, name="partition_rows")
        self.scales = None
        if self.quantization == "int8":
            scale = np.abs(padded).max(axis=2) / 127.0
            safe = np.where(scale > 0, scale, 1.0)
            quantized = np.clip(np.rint(padded / safe[:, :, None]), -127, 127).astype(np.int8)
            self.slots = tf.Variable(quantized, trainable=False, name="partition_vectors_int8")
            self.scales = tf.Variable(scale.astype(np.float32), trainable=False, name="partition_scales")
        elif self.quantization == "bfloat16":
            self.slots = tf.Variable(tf.cast(padded, tf.bfloat16), trainable=False, name="partition_vectors_bfloat16")
        else:
            self.slots = tf.Variable(padded, trainable=False, name="partition_vectors")

    @property
    def config(self) -> dict:
        """The knobs, defaults resolved (JSON-serialisable)."""
        return {"partitions": self.partitions, "probes": self.probes, "quantization": self.quantization,
                "rerank": self.rerank, "seed": self.seed, "reserved": self.reserved}

    @property
    def description(self) -> dict:
        """`config` plus the fitted layout, for export metadata."""
        return {**self.config, "partition_size": self.partition_size, "min_partition_size": self.min_partition_size,
                "indexed": self.count}

    def __call__(self, queries, k, vectors=None):
        """Top ``k`` rows for ``queries`` float32 [B, D]: (scores [B, k'], rows int32 [B, k']).
        ``vectors``: the float32 table already read as a tensor (default: read `vectors`)."""
        queries = tf.convert_to_tensor(queries, tf.float32)
        batch = tf.shape(queries)[0]
        k = tf.minimum(tf.cast(k, tf.int32), self.count)
        wanted = tf.maximum(k, tf.minimum(self.rerank, self.count)) if self.quantization else k
        # Partitions in order of their keys' scores; enough of them to hold `wanted` real vectors.
        key_scores = tf.matmul(queries, tf.convert_to_tensor(self.keys), transpose_b=True)
        bound = tf.minimum(self.partitions, tf.maximum(self.probes, -(-wanted // self.min_partition_size)))
        best = tf.math.top_k(key_scores, k=bound).indices  # [B, bound]
        held = tf.cumsum(tf.gather(tf.convert_to_tensor(self.sizes), best), axis=1)
        needed = tf.reduce_max(tf.reduce_sum(tf.cast(held < wanted, tf.int32), axis=1)) + 1
        probe = best[:, :tf.clip_by_value(needed, self.probes, bound)]  # [B, p]
        # Gathers straight from the variables (never read whole: no copy of the partitions).
        rows = tf.reshape(tf.gather(self.rows, probe), [batch, -1])  # [B, p * size]
        candidates = tf.reshape(tf.gather(self.slots, probe), [batch, -1, self.dim])
        if self.quantization:
            candidates = tf.cast(candidates, tf.float32)
        scores = tf.linalg.matvec(candidates, queries)
        if self.scales is not None:
            scores *= tf.reshape(tf.gather(self.scales, probe), [batch, -1])
        scores = tf.where(rows >= 0, scores, -np.inf)
        if self.quantization:
            short = tf.math.top_k(scores, k=wanted)
            rows = tf.gather(rows, short.indices, batch_dims=1)
            vectors = tf.convert_to_tensor(self.vectors) if vectors is None else vectors
            scores = tf.einsum("bd,brd->br", queries, tf.gather(vectors, rows))
        top = tf.math.top_k(scores, k=k)
        return top.values, tf.gather(rows, top.indices, batch_dims=1)


# --- fitting ------------------------------------------------------------------------------------


def _directions(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def lift(x: np.ndarray) -> np.ndarray:
    """[x, sqrt(M^2 - |x|^2)] for each row (M: the largest row norm): the rows all get the norm M,
    and for a query lifted to [q, 0] the nearest rows are those of largest inner product with q."""
    squared = np.einsum("nd,nd->n", x, x)
    return np.concatenate([x, np.sqrt(np.maximum(squared.max() - squared, 0.0))[:, None]], axis=1)


def fit_partitions(vectors: np.ndarray, partitions: int, *, seed: int = 0,
                   iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Partition of each row of ``vectors`` [n, D] (int64 [n]): spherical k-means of the lifted
    rows (`lift`) on a subsample of at most `SAMPLE_PER_PARTITION` x ``partitions`` of them, then a
    balanced assignment of every row (partitions of at most ceil(`BALANCE` x n / partitions) rows,
    the most similar centroid with room first). Deterministic for a given ``seed``."""
    n = len(vectors)
    if not 1 <= partitions <= n:
        raise ValueError(f"partitions must be in [1, {n}], got {partitions}")
    rng = np.random.default_rng(seed)
    units = _directions(lift(np.asarray(vectors, np.float32)))
    sample = units[rng.permutation(n)[:min(n, SAMPLE_PER_PARTITION * partitions)]]
    centroids = sample[:partitions].copy()  # distinct random rows
    data = tf.constant(sample)
    for _ in range(iterations):
        nearest = tf.argmax(tf.matmul(data, centroids, transpose_b=True), axis=1, output_type=tf.int32)
        sums = tf.math.unsorted_segment_sum(data, nearest, partitions).numpy()
        counts = np.bincount(nearest.numpy(), minlength=partitions)
        empty = np.flatnonzero(counts == 0)
        sums[empty] = sample[rng.integers(len(sample), size=len(empty))]  # restart empty ones
        centroids = _directions(sums)
    return balanced_assignment(units, centroids, int(math.ceil(BALANCE * n / partitions)))


def balanced_assignment(units: np.ndarray, centroids: np.ndarray, capacity: int) -> np.ndarray:
    """Assigns each row of ``units`` to a centroid (by inner product), at most ``capacity`` rows per
    centroid: rounds in which every unassigned row proposes to its next-best centroid and each
    centroid accepts its most similar proposers while it has room; rows left after `PREFERENCES`
    rounds take the most similar centroid that still has room."""
    n, partitions = len(units), len(centroids)
    if capacity * partitions < n:
        raise ValueError(f"{partitions} partitions of {capacity} cannot hold {n} vectors")
    depth = min(PREFERENCES, partitions)
    prefs = np.empty([n, depth], np.int32)
    sims = np.empty([n, depth], np.float32)
    keys = tf.constant(centroids, tf.float32)
    for start in range(0, n, _CHUNK):
        top = tf.math.top_k(tf.matmul(units[start:start + _CHUNK], keys, transpose_b=True), k=depth)
        prefs[start:start + _CHUNK], sims[start:start + _CHUNK] = top.indices.numpy(), top.values.numpy()
    assignment = np.full(n, -1, np.int64)
    room = np.full(partitions, capacity, np.int64)
    for r in range(depth):
        todo = np.flatnonzero(assignment < 0)
        if not len(todo):
            break
        _accept(todo, prefs[todo, r], sims[todo, r], assignment, room)
    while (todo := np.flatnonzero(assignment < 0)).size:  # fallback: best centroid with room left
        full = room <= 0
        choice, sim = np.empty(len(todo), np.int64), np.empty(len(todo), np.float32)
        for start in range(0, len(todo), _CHUNK):
            s = (units[todo[start:start + _CHUNK]] @ centroids.T).astype(np.float32)
            s[:, full] = -np.inf
            choice[start:start + _CHUNK] = s.argmax(axis=1)
            sim[start:start + _CHUNK] = s.max(axis=1)
        _accept(todo, choice, sim, assignment, room)
    return assignment


def _accept(rows, choice, sim, assignment, room) -> None:
    """Each centroid takes the most similar of the ``rows`` proposing to it, up to its ``room``."""
    order = np.lexsort((-sim, choice))
    choice = choice[order]
    rank = np.arange(len(choice)) - np.searchsorted(choice, choice, side="left")
    take = rank < room[choice]
    assignment[rows[order[take]]] = choice[take]
    room -= np.bincount(choice[take], minlength=len(room))
