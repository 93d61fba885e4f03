"""Catalog updates without retraining: new items' vectors from their features, in a new version.

An export made with ``export_recommender(..., item_features=features)`` carries its item encoder
beside the SavedModel, in ``assets.extra/item_encoder/`` (TF Serving ignores it): the agents'
config and weights, the item vocabulary and the feature tables with their vocabularies
(categories, title tokens, numeric statistics, knowledge-graph relations and entities). `add_items`
reads them back in any process, encodes new items from their features with the trained
`ContentAgent` (no id embedding: they have never been trained on), and writes the grown catalog
as the next version, atomically, with the same slate size, retrieval and index knobs.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf

from tfmarl.agents.content import FEATURE_TABLE_WEIGHTS
from tfmarl.contract import EXTRA_DIR
from tfmarl.data.item_features import ItemFeatures
from tfmarl.data.vocab import Vocabulary

ENCODER_DIR = "item_encoder"
_MODEL_FILE = "model.json"
_WEIGHTS_PREFIX = "agents"


def save_item_encoder(model, item_features: ItemFeatures, version_dir) -> None:
    """Writes ``model``'s agents (config and weights) and ``item_features`` into
    ``<version_dir>/assets.extra/item_encoder/`` (called by `export_recommender`)."""
    if item_features.num_items not in (None, model.num_items):
        raise ValueError(f"item_features describe {item_features.num_items} indices, the model {model.num_items}")
    directory = pathlib.Path(version_dir) / EXTRA_DIR / ENCODER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    config = tf.keras.layers.serialize(model)
    (directory / _MODEL_FILE).write_text(json.dumps(config))
    _agents_checkpoint(model).write(str(directory / _WEIGHTS_PREFIX))
    item_features.save(directory)


def load_item_encoder(version_dir):
    """(model, item features) saved by `save_item_encoder` in ``version_dir``."""
    directory = pathlib.Path(version_dir) / EXTRA_DIR / ENCODER_DIR
    if not (directory / _MODEL_FILE).is_file():
        raise FileNotFoundError(f"{version_dir} has no item encoder ({EXTRA_DIR}/{ENCODER_DIR}): export it with "
                                "export_recommender(..., item_features=...) to add items later")
    import tfmarl.training  # noqa: F401  (registers SequentialRecommender for deserialisation)

    model = tf.keras.layers.deserialize(json.loads((directory / _MODEL_FILE).read_text()))
    model.build_all()
    _agents_checkpoint(model).read(str(directory / _WEIGHTS_PREFIX)).assert_existing_objects_matched()
    return model, ItemFeatures.load(directory)


def add_items(export_dir, items=None, *, ids=None, knowledge=None, numeric=None, tokenizer=None,
              text_embeddings=None, version: int | None = None) -> pathlib.Path:
    """Adds new items to the catalog of the latest (or ``version``) export under ``export_dir``
    and writes the result as the next version; returns its path.

    The new items' vectors come from their features alone (see `ItemFeatures.new_item_rows` for
    ``items``, ``ids``, ``knowledge``, ``numeric``, ``tokenizer`` and ``text_embeddings``); every other item, the User
    and System agents and the export settings (k, retrieval, index knobs, metadata) are kept.
    The new version carries the grown item encoder, so updates chain.

    Raises FileNotFoundError when there is no version or it has no item encoder, and
    ValueError for ids already in the catalog.
    """
    from tfmarl.export.savedmodel import METADATA_FILE, existing_versions, export_recommender

    base = pathlib.Path(export_dir)
    versions = existing_versions(base)
    if not versions:
        raise FileNotFoundError(f"{base}: no exported version to add items to")
    version = versions[-1] if version is None else int(version)
    if version not in versions:
        raise FileNotFoundError(f"{base}: no version {version} (versions: {versions})")
    path = base / str(version)
    info = json.loads((path / EXTRA_DIR / METADATA_FILE).read_text())
    model, features = load_item_encoder(path)
    if ids is None and items is not None:
        ids = list(items.index)
    ids = [str(i) for i in (ids if ids is not None else [])]
    clash = [i for i in ids if i in model.item_vocabulary]
    if clash:
        raise ValueError(f"item id {clash[0]!r} is already in the catalog of {path}")
    rows = features.new_item_rows(items, ids=ids, knowledge=knowledge, numeric=numeric, tokenizer=tokenizer,
                                  text_embeddings=text_embeddings)
    content = model.content_agent.with_new_items(rows, count=len(ids))
    grown = type(model)(item_vocabulary=Vocabulary(model.item_vocabulary.tokens + ids), content_agent=content,
                        user_agent=model.user_agent, system_agent=model.system_agent,
                        max_length=model.max_length, loss=model.loss_type, num_negatives=model.num_negatives,
                        name=model.name)
    grown.build_all()
    generated = {"tfmarl_version", "k", "max_length", "retrieval", "index", "num_items", "signature", "created",
                 "item_encoder", "index_options"}
    metadata = {key: value for key, value in info.items() if key not in generated}
    metadata.update(base_version=version, added_items=int(metadata.get("added_items", 0)) + len(ids))
    return export_recommender(grown, base, k=info["k"], retrieval=info["retrieval"],
                              index_options=info.get("index_options"), metadata=metadata,
                              item_features=_grown_features(features, content, len(ids)))


def _agents_checkpoint(model) -> tf.train.Checkpoint:
    # The agents only: no optimizer slots, no training-only state.
    return tf.train.Checkpoint(user_agent=model.user_agent, content_agent=model.content_agent,
                               system_agent=model.system_agent)


def _grown_features(features: ItemFeatures, content, count: int) -> ItemFeatures:
    """``features`` with the new items' rows, read back from the grown agent's tables."""
    import dataclasses

    grown = {key: np.asarray(getattr(content, weight).numpy()) for key, weight in FEATURE_TABLE_WEIGHTS.items()
             if getattr(features, key) is not None}
    return dataclasses.replace(features, **grown)
