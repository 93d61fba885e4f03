"""Tokenizing item texts with keras-hub tokenizers inside tf.data pipelines, into fixed-width
int32 tables where 0 is padding (the Content agent's title tokens, `tfmarl.data.ItemFeatures`).

Importing this module does not import TensorFlow or keras-hub: the functions do, when called
(keras-hub is Keras 3; it is used here only to tokenize inside tf.data pipelines).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
# Names tokenizers give their padding token; one of these at index 0 means "0 is padding".
_PADDING_NAMES = frozenset({"[PAD]", "[pad]", "<pad>", "<PAD>", "", "<|pad|>"})


def tokenize_texts(texts: Sequence[str], tokenizer, length: int, batch_size: int = 1024,
                   skip_ids: Sequence[int] = ()) -> np.ndarray:
    """Tokenizes ``texts`` in a tf.data pipeline -> int32 [len(texts), length], 0 = padding.

    ``tokenizer`` is a keras-hub tokenizer (Keras 3 preprocessing layer, mapped over batches of
    strings). Its output may be ragged (no ``sequence_length``) or dense; either way it is
    truncated / padded to ``length``. Ids index `tokenizer_vocabulary(tokenizer)`.

    The tokenizer's padding id is its ``pad_token_id`` if it has one, else 0 when its
    vocabulary's first token is a padding token ("[PAD]", "<pad>"). When that id is 0 (BERT,
    T5, Gemma; also keras-hub's GPT-2, which pads with id 0 = "!") ids are the tokenizer's own.
    Otherwise (e.g. RoBERTa: 0 = "<s>", padding = 1; or a plain tokenizer with no padding token)
    every real token id is shifted up by one, to free 0 for padding. A dense output's padding
    positions are recognised by value (0, or ``pad_token_id``), so tokens with those ids are
    dropped; a tokenizer without ``sequence_length`` (ragged output) keeps every token.
    ``skip_ids`` (the tokenizer's own ids) are left out before the rows are cut to ``length``
    (with ragged output), e.g. the unknown-word id of `learn_word_tokenizer`'s vocabulary.
    """
    import tensorflow as tf

    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, length), np.int32)
    shift, pad_id = _padding_shift(tokenizer)

    def to_table(batch):
        ids = tokenizer(batch)
        if ids.dtype == tf.string:
            raise ValueError("the tokenizer returns strings; give it an integer dtype")
        ids = tf.cast(ids, tf.int32)
        for skipped in skip_ids:
            if isinstance(ids, tf.RaggedTensor):
                ids = tf.ragged.boolean_mask(ids, ids != skipped)
            else:  # a dense row keeps its width: the skipped token's place becomes padding
                ids = tf.where(ids == skipped, pad_id or 0, ids)
        if isinstance(ids, tf.RaggedTensor):
            # Ragged: lengths are exact, so every value is a real token.
            ids = (ids + shift).to_tensor(default_value=0, shape=[None, length])
        else:
            ids = ids[:, :length]
            real = ids != 0 if pad_id in (None, 0) else (ids != 0) & (ids != pad_id)
            ids = tf.where(real, ids + shift, 0)
            ids = tf.pad(ids, [[0, 0], [0, length - tf.shape(ids)[1]]])
        # Some tokenizers (byte-pair without the piece) emit -1 for unknown text: no token.
        return tf.maximum(ids, 0)

    dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
               .batch(batch_size)
               .map(to_table, num_parallel_calls=tf.data.AUTOTUNE))
    return np.concatenate([b.numpy() for b in dataset], axis=0).astype(np.int32)


def tokenizer_vocabulary(tokenizer) -> list[str]:
    """The token list `tokenize_texts` ids index (position = id, position 0 = "[PAD]")."""
    vocab = _ordered_vocabulary(tokenizer)
    shift, _ = _padding_shift(tokenizer)
    # shift 0: the tokenizer's own padding token sits at 0 (renamed "[PAD]"); shift 1: prepended.
    return [PAD_TOKEN] + vocab[1:] if shift == 0 else [PAD_TOKEN] + vocab


def learn_word_piece_tokenizer(texts, vocabulary_size, sequence_length):
    """A lowercasing keras-hub WordPieceTokenizer whose vocabulary is learnt from ``texts``."""
    import tensorflow as tf
    import keras_hub

    if vocabulary_size < 3:
        raise ValueError(f"text_vocabulary_size must be >= 3, got {vocabulary_size}")
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant([t for t in texts if t], tf.string))
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        dataset.batch(1024), vocabulary_size, reserved_tokens=[PAD_TOKEN, UNK_TOKEN], lowercase=True)
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, sequence_length=sequence_length, lowercase=True, oov_token=UNK_TOKEN)


def learn_word_tokenizer(texts, min_count: int = 2):
    """A lowercasing keras-hub WordPieceTokenizer whose vocabulary is the whole words that occur in
    at least ``min_count`` of ``texts`` ("[PAD]" and "[UNK]" first, then the words by decreasing
    count): one id per word, no sub-word pieces. Its output is ragged; a word outside the
    vocabulary (a number, punctuation, a rare word) is "[UNK]", which `tokenize_texts` can skip.

    For short texts of a small catalog (film titles) where `learn_word_piece_tokenizer` keeps
    mostly single characters (its pieces need about 10 occurrences): a word shared by two titles
    ("star", "trek", "wallace") is then one feature, as in LightFM's bag of words.
    """
    import collections
    import re

    import keras_hub

    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    # Words as the tokenizer splits them (whitespace and punctuation), letters only: numbers such
    # as release years are better given as numeric attributes.
    counts = collections.Counter(word for text in texts if text
                                 for word in set(re.findall(r"[^\W\d_]+", str(text).lower())))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if not words:
        raise ValueError(f"no word occurs in {min_count} or more of the {len(texts)} texts: lower min_count")
    return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=[PAD_TOKEN, UNK_TOKEN, *words], lowercase=True,
                                                   oov_token=UNK_TOKEN)


# --- helpers ---------------------------------------------------------------------------------
def _ordered_vocabulary(tokenizer) -> list[str]:
    mapping = getattr(tokenizer, "vocabulary", None)
    if isinstance(mapping, dict):
        # BytePairTokenizer: get_vocabulary() lists dict keys, which need not be in id order.
        return sorted(mapping, key=mapping.get)
    return list(tokenizer.get_vocabulary())


def _padding_shift(tokenizer) -> tuple[int, int | None]:
    """(shift, pad_id): shift is 0 when the tokenizer's id 0 is its padding, else 1."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is not None:
        return (0 if pad_id == 0 else 1), int(pad_id)
    first = _ordered_vocabulary(tokenizer)[:1]
    return (0 if first and first[0] in _PADDING_NAMES else 1), None
