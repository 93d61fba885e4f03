"""Versioned, atomic SavedModel export with the tfmarl serving contract.

Contract of signature ``serving_default`` (every tfmarl export answers it):
  input  ``history``: tf.string [batch, length], item ids oldest first, right-padded with "".
  output ``item_ids``: tf.string [batch, K], best first; ``scores``: tf.float32 [batch, K].
Items of the history are never recommended. Unknown ids are ignored; a history with no known id
gets the cold-start recommendations. Histories longer than the model's window use their last
items (the whole history is still excluded).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import time
import types

import tensorflow as tf
import tensorflow_recommenders as tfrs

import tfmarl
from tfmarl.agents.blocks import NEG_INF, history_window
from tfmarl.agents.system import mask_excluded
from tfmarl.contract import EXTRA_DIR, INPUT_NAME, OUTPUT_ITEM_IDS, OUTPUT_SCORES, PAD_ID, SIGNATURE_KEY
from tfmarl.data.vocab import NUM_RESERVED, OOV_INDEX, PAD_INDEX, Vocabulary
from tfmarl.export.partitioned import PartitionedIndex, check_index_options

METADATA_FILE = "tfmarl.json"


def history_indices(table, history):
    """String ids [B, M] -> int indices [B, M] ("" -> 0, unknown -> OOV)."""
    indices = table.lookup(history)
    return tf.where(tf.equal(history, PAD_ID), tf.constant(PAD_INDEX, indices.dtype), indices)


def lookup_table(vocabulary: Vocabulary) -> tf.lookup.StaticHashTable:
    keys = tf.constant(vocabulary.tokens, tf.string)
    values = tf.range(NUM_RESERVED, vocabulary.size, dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=OOV_INDEX)


RETRIEVALS = ("brute_force", "scann", "exact", "partitioned")


class ItemIndex(tfrs.layers.factorized_top_k.BruteForce):
    """TFRS brute-force top-K index over the whole catalog whose vectors also serve as the item
    table for encoding histories (one copy of the catalog in the export)."""

    @property
    def vectors(self):
        return self._candidates


class RecommenderServing(tf.Module):
    """`serving_default` for a `SequentialRecommender`.

    The catalog's item vectors are computed once at export time and frozen into the SavedModel
    (a request then costs one history encoding plus one retrieval, whatever the catalog size).
    Retrieval: ``"brute_force"`` (TFRS `BruteForce` index: top ``K + excluded`` candidates, then
    the history and reserved indices are removed), ``"partitioned"`` (a `PartitionedIndex`:
    approximate, stock TensorFlow ops only, the same ``K + excluded`` then removal; its knobs in
    ``index_options``), ``"scann"`` (TFRS `ScaNN`, approximate; needs the `scann` package and its
    custom ops to load), or ``"exact"`` (masked scores over the whole catalog). Pairwise (MLP/DCN)
    system agents always use ``"exact"``. Holds variables only, not the Keras objects.
    """

    def __init__(self, model, vocabulary: Vocabulary, k: int, max_length: int, retrieval: str = "brute_force",
                 name: str = "tfmarl_recommender", index_options: dict | None = None):
        super().__init__(name=name)
        if vocabulary.size != model.num_items:
            raise ValueError(f"vocabulary has {vocabulary.size} indices, model {model.num_items}")
        if retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")
        index_options = check_index_options(index_options)
        if index_options and retrieval != "partitioned":
            raise ValueError(f"index_options apply to retrieval='partitioned' only, got retrieval={retrieval!r}")
        factorized = model.system_agent.is_factorized
        self.retrieval = retrieval if factorized else "exact"
        self.index_description = None  # the fitted PartitionedIndex's knobs and layout (export metadata)
        vectors = model.item_vectors(training=False)
        self.k = min(int(k), vocabulary.size - NUM_RESERVED)
        self.max_length = int(max_length)
        identifiers = tf.range(vocabulary.size, dtype=tf.int32)
        if self.retrieval == "scann":
            try:
                import scann  # noqa: F401
            except ImportError as e:
                raise ImportError("retrieval='scann' needs the scann package (pip install scann)") from e
            self.index = tfrs.layers.factorized_top_k.ScaNN(k=self.k, num_reordering_candidates=max(100, 4 * self.k))
            self.item_vectors = tf.Variable(vectors, trainable=False, name="item_vectors")
            self.index.index(vectors, identifiers)
        elif self.retrieval == "partitioned":
            self.index = PartitionedIndex(vectors, reserved=NUM_RESERVED, **index_options)
            self.item_vectors = self.index.vectors  # rows = indices: also the item table
            self.index_description = self.index.description
        else:
            self.index = ItemIndex(k=self.k)
            self.index.index(vectors, identifiers)
            self.item_vectors = self.index.vectors
        # Plain namespace: not tracked, so only variables (not the Keras objects) are exported.
        self._fn = types.SimpleNamespace(user_agent=model.user_agent, system_agent=model.system_agent)
        self.model_variables = list(model.user_agent.variables) + list(model.system_agent.variables)
        self.table = lookup_table(vocabulary)
        self.item_strings = tf.constant(["", "[OOV]"] + vocabulary.tokens, tf.string)

    def retrieve(self, indices, k):
        """The top ``k`` items for histories ``indices`` int32 [B, L] (history and reserved indices
        excluded; when fewer than ``k`` remain the rest score `NEG_INF`): (window [B, <=max_length],
        items int32 [B, k], scores [B, k], the catalog's vectors it read). Call inside the serving
        graph."""
        window = history_window(indices, self.max_length)
        # One dense read of the catalog: a sparse gather straight from the variable would switch it
        # to a mode where every later read copies the whole table.
        vectors = tf.convert_to_tensor(self.item_vectors)
        state = self._fn.user_agent(tf.gather(vectors, window), mask=window > 0, training=False)
        if self.retrieval == "exact":
            top = tf.math.top_k(mask_excluded(self._fn.system_agent.score(state, vectors), indices), k=k)
            return window, top.indices, top.values, vectors
        # Enough neighbours that k remain after dropping the history and reserved indices.
        extra = tf.shape(indices)[1] + NUM_RESERVED
        if self.retrieval == "partitioned":
            values, items = self.index(state, tf.minimum(k + extra, tf.shape(vectors)[0]), vectors=vectors)
        else:
            values, items = self.index(state, k=tf.minimum(k + extra, tf.shape(vectors)[0]))
        excluded = (items < NUM_RESERVED) | tf.reduce_any(items[:, :, None] == indices[:, None, :], axis=-1)
        top = tf.math.top_k(tf.where(excluded, NEG_INF, values), k=k)
        return window, tf.gather(items, top.indices, batch_dims=1), top.values, vectors

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name=INPUT_NAME)])
    def serve(self, history):
        _, items, values, _ = self.retrieve(history_indices(self.table, history), self.k)
        return {OUTPUT_ITEM_IDS: tf.gather(self.item_strings, items), OUTPUT_SCORES: values}


def export_recommender(model, export_dir, item_vocabulary: Vocabulary | None = None, *, k: int | None = None,
                       retrieval: str = "brute_force", index_options: dict | None = None,
                       metadata: dict | None = None, warmup: bool = True,
                       item_features=None) -> pathlib.Path:
    """Exports ``model`` as version ``<n+1>`` under ``export_dir``; returns that version's path.

    The SavedModel is written to a hidden temporary directory beside the versions and renamed into
    place, so a crash never leaves a partial version for TF Serving to load.

    Args:
      model: a `SequentialRecommender` (or any model with ``score_catalog``, ``num_items`` and
        ``max_length``).
      export_dir: the model base path, e.g. "savedmodels/movies".
      item_vocabulary: defaults to ``model.item_vocabulary``.
      k: slate size (default: the system agent's k, else 10).
      retrieval: "brute_force" (TFRS index), "partitioned" (`tfmarl.export.partitioned.PartitionedIndex`:
        approximate, stock TensorFlow ops, so TF Serving loads it), "scann" (approximate, needs
        scann) or "exact".
      index_options: the partitioned index's knobs, e.g. ``{"partitions": 1000, "probes": 16,
        "quantization": "int8", "rerank": 100}`` (any subset; see `PartitionedIndex`; defaults:
        about 2 sqrt(num_items) partitions, 24 of them probed, float32). Only with
        ``retrieval="partitioned"``; the fitted values go into the metadata under ``"index"``.
      metadata: extra JSON-serialisable facts stored in ``assets.extra/tfmarl.json``.
      warmup: also write TF Serving warm-up requests (``assets.extra/tf_serving_warmup_requests``).
      item_features: the `tfmarl.data.ItemFeatures` the model's Content agent was filled with:
        the export then carries its item encoder (``assets.extra/item_encoder/``), so that
        `tfmarl.export.add_items` can add new items from their features later, without retraining.
    """
    vocabulary = item_vocabulary or getattr(model, "item_vocabulary", None)
    if vocabulary is None:
        raise ValueError("the model has no item_vocabulary: pass item_vocabulary= to export string ids")
    k = k or getattr(getattr(model, "system_agent", None), "k", 10)
    module = RecommenderServing(model, vocabulary, k, model.max_length, retrieval, index_options=index_options)
    info = {"tfmarl_version": tfmarl.__version__, "k": module.k, "max_length": module.max_length,
            "retrieval": module.retrieval, **index_metadata(module),
            "num_items": int(model.num_items), "signature": SIGNATURE_KEY, "created": time.time(),
            **(metadata or {})}
    if item_features is not None:
        info.update(item_encoder=True, index_options=check_index_options(index_options) or None)
    warm = (vocabulary, pathlib.Path(export_dir).name, module.max_length) if warmup else None

    def write(path):
        save_servable(module, path, info, warm)
        if item_features is not None:
            from tfmarl.export.catalog import save_item_encoder

            save_item_encoder(model, item_features, path)

    return write_version(export_dir, write)


def index_metadata(module) -> dict:
    """``{"index": knobs and layout}`` for a partitioned export, else ``{}``."""
    return {"index": module.index_description} if module.index_description else {}


def save_servable(module, path: pathlib.Path, info: dict, warmup=None) -> None:
    """Saves ``module`` (its ``serve`` as `serving_default`), the metadata file and, with
    ``warmup=(vocabulary, model_name, max_length)``, TF Serving warm-up requests built from the
    vocabulary."""
    tf.saved_model.save(module, str(path), signatures={SIGNATURE_KEY: module.serve})
    extra = path / EXTRA_DIR
    extra.mkdir(exist_ok=True)
    (extra / METADATA_FILE).write_text(json.dumps(info, indent=2))
    if warmup is not None:
        from tfmarl.export.warmup import default_warmup_histories, write_warmup_requests

        vocabulary, model_name, max_length = warmup
        write_warmup_requests(path, default_warmup_histories(vocabulary, max_length=max_length),
                              model_name=model_name)


def existing_versions(export_dir) -> list[int]:
    """Version numbers present under ``export_dir`` (numeric directory names), ascending."""
    base = pathlib.Path(export_dir)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def write_version(export_dir, write) -> pathlib.Path:
    """Calls ``write(tmp_path)`` then renames ``tmp_path`` to the next free version number."""
    base = pathlib.Path(export_dir)
    base.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=base))
    try:
        write(tmp)
        while True:
            target = base / str((existing_versions(base) or [0])[-1] + 1)
            try:
                os.rename(tmp, target)  # atomic; fails if another writer took this number
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
