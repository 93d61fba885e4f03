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

import tensorflow as tf

import tfmarl
from tfmarl.agents.system import mask_excluded
from tfmarl.data.vocab import NUM_RESERVED, OOV_INDEX, PAD_INDEX, Vocabulary

SIGNATURE_KEY = "serving_default"
METADATA_FILE = "tfmarl.json"


def history_indices(table, history):
    """String ids [B, M] -> int indices [B, M] ("" -> 0, unknown -> OOV)."""
    indices = table.lookup(history)
    return tf.where(tf.equal(history, ""), tf.constant(PAD_INDEX, indices.dtype), indices)


def last_known(indices, max_length: int):
    """Keeps each row's known items (index >= 2) in order, then its last ``max_length``, right-padded."""
    known = tf.ragged.boolean_mask(indices, indices >= NUM_RESERVED)
    return known[:, -max_length:].to_tensor(default_value=PAD_INDEX)


def lookup_table(vocabulary: Vocabulary) -> tf.lookup.StaticHashTable:
    keys = tf.constant(vocabulary.tokens, tf.string)
    values = tf.range(NUM_RESERVED, vocabulary.size, dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=OOV_INDEX)


class RecommenderServing(tf.Module):
    """`serving_default` for a model with ``score_catalog(history [B, L] int) -> [B, N]``.

    Holds the model's variables (not the Keras object, whose own traces would bloat the export).
    """

    def __init__(self, model, vocabulary: Vocabulary, k: int, max_length: int):
        super().__init__(name="tfmarl_recommender")
        if vocabulary.size != model.num_items:
            raise ValueError(f"vocabulary has {vocabulary.size} indices, model {model.num_items}")
        self._score = model.score_catalog
        self.model_variables = list(model.variables)
        self.table = lookup_table(vocabulary)
        self.item_strings = tf.constant(["", "[OOV]"] + vocabulary.tokens, tf.string)
        self.k = min(int(k), vocabulary.size)
        self.max_length = int(max_length)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history")])
    def serve(self, history):
        indices = history_indices(self.table, history)
        scores = self._score(last_known(indices, self.max_length), training=False)
        top = tf.math.top_k(mask_excluded(scores, indices), k=self.k)
        return {"item_ids": tf.gather(self.item_strings, top.indices), "scores": top.values}


def export_recommender(model, export_dir, item_vocabulary: Vocabulary | None = None, *, k: int | None = None,
                       metadata: dict | None = None) -> pathlib.Path:
    """Exports ``model`` as version ``<n+1>`` under ``export_dir``; returns that version's path.

    The SavedModel is written to a hidden temporary directory beside the versions and renamed into
    place, so a crash never leaves a partial version for TF Serving to load.

    Args:
      model: a `SequentialRecommender` (or any model with ``score_catalog``, ``num_items`` and
        ``max_length``).
      export_dir: the model base path, e.g. "savedmodels/movies".
      item_vocabulary: defaults to ``model.item_vocabulary``.
      k: slate size (default: the system agent's k, else 10).
      metadata: extra JSON-serialisable facts stored in ``assets.extra/tfmarl.json``.
    """
    vocabulary = item_vocabulary or getattr(model, "item_vocabulary", None)
    if vocabulary is None:
        raise ValueError("the model has no item_vocabulary: pass item_vocabulary= to export string ids")
    k = k or getattr(getattr(model, "system_agent", None), "k", 10)
    module = RecommenderServing(model, vocabulary, k, model.max_length)
    info = {"tfmarl_version": tfmarl.__version__, "k": module.k, "max_length": module.max_length,
            "num_items": int(model.num_items), "signature": SIGNATURE_KEY, "created": time.time(),
            **(metadata or {})}
    return write_version(export_dir, lambda path: _save(module, path, info))


def _save(module, path: pathlib.Path, info: dict) -> None:
    tf.saved_model.save(module, str(path), signatures={SIGNATURE_KEY: module.serve})
    extra = path / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / METADATA_FILE).write_text(json.dumps(info, indent=2))


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
