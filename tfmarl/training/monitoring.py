"""TensorBoard extras: the embedding projector for item embeddings, labelled with their titles."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import tensorflow as tf

TENSOR_NAME = "item_embeddings/.ATTRIBUTES/VARIABLE_VALUE"


def write_embedding_projector(log_dir, vectors, titles, *, ids=None) -> pathlib.Path:
    """Writes ``vectors`` [n, d] and their metadata (``titles``, optional ``ids``) so that
    `tensorboard --logdir <log_dir>` shows them in the Projector tab.

    Files: a checkpoint holding the embeddings, ``metadata.tsv`` (a header row, then one row per
    vector) and ``projector_config.pbtxt``. Returns ``log_dir``.
    """
    from tensorboard.plugins import projector

    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(titles) != len(vectors) or (ids is not None and len(ids) != len(vectors)):
        raise ValueError("vectors must be [n, d] with one title (and id) per row")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings hold NaN or inf")
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "metadata.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["title", "id"] if ids is not None else ["title"])
        for i, title in enumerate(titles):
            clean = " ".join(str(title).split()) or "(untitled)"  # tabs/newlines would break the TSV
            writer.writerow([clean, ids[i]] if ids is not None else [clean])
    checkpoint = tf.train.Checkpoint(item_embeddings=tf.Variable(vectors))
    checkpoint.save(str(log_dir / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(str(log_dir), config)
    # TensorBoard's projector only looks in runs (folders holding event files) and the logdir
    # root: an event file makes this folder a run wherever it sits under --logdir.
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        tf.summary.text("projector", f"{len(vectors)} item embeddings of dimension {vectors.shape[1]}; "
                        "labels in metadata.tsv", step=0)
    writer.close()
    return log_dir
