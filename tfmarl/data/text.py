"""Item-text embeddings from keras-hub text backbones, computed offline into numpy arrays.

keras-hub is Keras 3 while tfmarl's models are legacy Keras 2 (tf_keras), so the backbone never
becomes part of a tfmarl model: it runs here, in batches, and only its pooled outputs (numpy)
travel on, into `ItemFeatures.text_embeddings` and from there into `ContentAgent`.

Presets are local directories written by keras-hub's ``save_to_preset`` (see
`build_tiny_text_preset` for a tiny, offline one). A preset *handle* such as
``"bert_tiny_en_uncased"`` or ``"kaggle://..."``/``"hf://..."`` is passed on to keras-hub,
which downloads it: that needs network access and is never done by tfmarl's tests.

Importing this module imports TensorFlow (tfmarl has already selected tf_keras for tf.keras);
keras-hub is imported on first use.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfmarl.data.item_features import _rows_in_item_table
from tfmarl.data.tokenize import PAD_TOKEN, UNK_TOKEN

POOLINGS = ("mean", "cls")
BERT_RESERVED_TOKENS = [PAD_TOKEN, UNK_TOKEN, "[CLS]", "[SEP]", "[MASK]"]


def embed_texts(texts: Sequence[str], preset, *, sequence_length: int = 32, batch_size: int = 64,
                pooling: str = "mean") -> np.ndarray:
    """Embeds each text with a keras-hub backbone -> float32 [len(texts), hidden_dim].

    Args:
      texts: strings (empty strings are allowed and still get a vector).
      preset: a local keras-hub preset directory (``config.json``, ``tokenizer.json``, weights),
        or a keras-hub preset handle, which keras-hub downloads (needs network access).
      sequence_length: tokens per text, special tokens included (longer texts are truncated);
        at most the backbone's ``max_sequence_length``.
      batch_size: texts per backbone call.
      pooling: ``"mean"``: mean of the backbone's ``sequence_output`` over non-padding
        positions; ``"cls"``: the first position (meaningful for BERT-like encoders).

    Raises:
      FileNotFoundError: ``preset`` names a local path that does not exist.
      ValueError: ``preset`` is a local path but not a preset directory; bad arguments.

    Inputs are built by the preset's ``TextClassifierPreprocessor`` (the packing the model was
    trained with: start/end tokens, padding mask, segment ids) when keras-hub has one for the
    backbone, else by packing the tokenizer's ids with ``StartEndPacker``. Either way the work
    runs in a tf.data pipeline; the backbone runs in inference mode, so results are
    deterministic.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if sequence_length < 2 or batch_size < 1:
        raise ValueError(f"need sequence_length >= 2 and batch_size >= 1, got {sequence_length}, "
                         f"{batch_size}")
    backbone, preprocess = load_text_encoder(preset, sequence_length)
    texts = [str(t) for t in texts]
    if not texts:
        # One placeholder text tells the output width; no rows are kept.
        return _embed(backbone, preprocess, [""], batch_size, pooling)[:0]
    return _embed(backbone, preprocess, texts, batch_size, pooling)


def embed_item_texts(interactions, item_vocab, preset, **kwargs) -> np.ndarray:
    """`embed_texts` of each item's ``title + " " + text`` -> float32 [item_vocab.size, hidden].

    Row i is item index i of ``item_vocab``. Rows 0 (padding) and 1 (OOV), items the item table
    does not describe, and items whose title and text are both empty are zeros.
    ``kwargs`` go to `embed_texts`. Raises ValueError when ``interactions`` has no item table.
    """
    if interactions.items is None:
        raise ValueError(f"{interactions.name}: no item table, so there are no item texts to embed")
    rows, present = _rows_in_item_table(interactions.items, item_vocab)
    texts = [" ".join(part.strip() for part in (title, text) if isinstance(part, str) and part.strip())
             for title, text in zip(present["title"], present["text"])]
    keep = np.asarray([bool(t) for t in texts], bool)
    vectors = embed_texts([t for t in texts if t], preset, **kwargs)
    table = np.zeros((item_vocab.size, vectors.shape[1]), np.float32)
    table[np.asarray(rows, np.int64)[keep]] = vectors
    return table


def load_text_encoder(preset, sequence_length: int = 32):
    """(backbone, preprocess): a keras-hub backbone and a function mapping a batch of strings
    [B] to the backbone's input dict (each [B, sequence_length]); usable in ``Dataset.map``."""
    import keras_hub

    handle = resolve_preset(preset)
    backbone = keras_hub.models.Backbone.from_preset(handle)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(handle)
    max_length = getattr(backbone, "max_sequence_length", None)
    if max_length is not None and sequence_length > max_length:
        raise ValueError(f"sequence_length={sequence_length} exceeds the backbone's "
                         f"max_sequence_length={max_length} (preset {handle!r})")
    input_names = list(backbone.input) if isinstance(backbone.input, dict) else None
    try:
        # The model's own packing (e.g. BERT: [CLS] ... [SEP], segment ids) when keras-hub has it.
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            handle, tokenizer=tokenizer, sequence_length=sequence_length)
    except ValueError:
        preprocessor = _packing_preprocessor(keras_hub, tokenizer, sequence_length, input_names)

    def preprocess(texts):
        inputs = preprocessor(texts)
        if input_names is not None:
            inputs = {name: inputs[name] for name in input_names if name in inputs}
        return inputs

    return backbone, preprocess


def build_tiny_text_preset(path, texts: Sequence[str], hidden_dim: int = 16, num_layers: int = 1,
                           seed: int = 0, *, num_heads: int = 2, vocabulary_size: int = 1000,
                           max_sequence_length: int = 128) -> str:
    """Writes a tiny BERT preset (backbone + tokenizer) into directory ``path``; returns it.

    The WordPiece vocabulary (lowercased, at most ``vocabulary_size`` tokens, "[PAD]" = 0) is
    learnt from ``texts``. The weights are random, drawn from ``seed`` (truncated normal,
    stddev 0.02, as BERT initialises), and untrained: embeddings differ per text and are
    deterministic, but carry no learnt semantics unless you train the backbone. It exists so
    tests, the demo and the examples run offline; for real use pass a pretrained preset to
    `embed_texts`. Existing preset files in ``path`` are overwritten.
    """
    import keras_hub

    texts = [str(t) for t in texts if str(t).strip()]
    if not texts:
        raise ValueError("build_tiny_text_preset needs at least one non-empty text")
    if hidden_dim % num_heads:
        raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string)).batch(1024)
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        dataset, vocabulary_size, reserved_tokens=BERT_RESERVED_TOKENS, lowercase=True)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_sequence_length, dropout=0.0)
    _reinitialize(backbone, seed)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone.save_to_preset(str(path))
    tokenizer.save_to_preset(str(path))
    return str(path)


def resolve_preset(preset) -> str:
    """Checks a local preset directory (returns it as str); passes preset handles through.

    A value is a local path when it is a ``os.PathLike``, exists, starts with "." or "~", or
    contains a path separator without a "://" scheme; anything else (``"bert_tiny_en_uncased"``,
    ``"kaggle://..."``, ``"hf://..."``) is a handle keras-hub resolves (it may download).
    """
    text = os.fspath(preset)
    if not text:
        raise ValueError("preset must be a preset directory or a keras-hub preset handle, got ''")
    separators = [s for s in (os.sep, os.altsep) if s]
    is_path = (isinstance(preset, os.PathLike) or os.path.exists(text) or text.startswith((".", "~"))
               or ("://" not in text and any(s in text for s in separators)))
    if not is_path:
        return text
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"keras-hub preset directory {str(path)!r} does not exist")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a keras-hub preset directory: expected a directory "
                         "with config.json (as written by save_to_preset)")
    return str(path)


# --- helpers ---------------------------------------------------------------------------------
def _packing_preprocessor(keras_hub, tokenizer, sequence_length, input_names):
    """Fallback input builder: tokenizer ids packed as [start] ids [end] + padding."""
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length, start_value=getattr(tokenizer, "start_token_id", None),
        end_value=getattr(tokenizer, "end_token_id", None), pad_value=pad_id,
        return_padding_mask=True)

    def preprocess(texts):
        token_ids, padding_mask = packer(tokenizer(texts))
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if input_names is not None and "segment_ids" in input_names:
            inputs["segment_ids"] = tf.zeros_like(token_ids)
        return inputs

    return preprocess


def _embed(backbone, preprocess, texts, batch_size, pooling) -> np.ndarray:
    dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
               .batch(batch_size)
               .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))

    # One traced graph for all full batches (and one more for a short last batch).
    @tf.function(reduce_retracing=True)
    def embed_batch(inputs):
        return _pool(_sequence_output(backbone(inputs, training=False)), inputs, pooling)

    vectors = np.concatenate([embed_batch(inputs).numpy() for inputs in dataset], axis=0)
    return vectors.astype(np.float32)


def _sequence_output(outputs):
    """The per-token output [B, T, H] of a keras-hub backbone call."""
    if isinstance(outputs, dict):
        if "sequence_output" not in outputs:
            raise ValueError(f"backbone outputs {sorted(outputs)} have no 'sequence_output'")
        outputs = outputs["sequence_output"]
    outputs = tf.convert_to_tensor(outputs)
    if outputs.shape.rank != 3:
        raise ValueError(f"expected a [batch, tokens, hidden] backbone output, got {outputs.shape}")
    return tf.cast(outputs, tf.float32)


def _pool(sequence, inputs, pooling):
    if pooling == "cls":
        return sequence[:, 0]
    mask = inputs.get("padding_mask")
    if mask is None:
        return tf.reduce_mean(sequence, axis=1)
    mask = tf.cast(mask, sequence.dtype)[..., None]
    return tf.reduce_sum(sequence * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def _reinitialize(backbone, seed: int) -> None:
    """Redraws randomly initialised weights from ``seed`` (constant ones, i.e. biases and
    layer-norm scales, stay), so a preset depends on ``seed`` alone, not on global RNG state."""
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        value = np.asarray(variable.numpy())
        if value.size and np.all(value == value.flat[0]):
            continue
        draw = np.clip(rng.standard_normal(value.shape), -2.0, 2.0) * 0.02
        variable.assign(draw.astype(value.dtype))
