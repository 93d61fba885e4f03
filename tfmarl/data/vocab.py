"""String-id vocabularies. Index 0 is padding (the empty string), index 1 the OOV bucket."""

from __future__ import annotations

import json
from typing import Iterable

import numpy as np

from tfmarl.atomic import atomic_write_text

PAD_INDEX = 0
OOV_INDEX = 1
NUM_RESERVED = 2


class Vocabulary:
    """Maps string ids to dense int indices and back.

    ``""`` maps to ``PAD_INDEX`` (0), unknown ids to ``OOV_INDEX`` (1), and the known ids to
    2..size-1 in the order given. This is the layout of ``tf.keras.layers.StringLookup(
    mask_token="", num_oov_indices=1)``, so the same indices are computed in graphs (see
    `lookup_layer`) and exported models.
    """

    def __init__(self, tokens: Iterable[str]):
        tokens = [str(t) for t in tokens]
        index = {}
        for t in tokens:
            if t == "":
                raise ValueError("the empty string is reserved for padding and cannot be a vocabulary id")
            if t in index:
                raise ValueError(f"id {t!r} appears more than once in the vocabulary")
            index[t] = len(index) + NUM_RESERVED
        self._tokens = tokens
        self._index = index

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    @property
    def size(self) -> int:
        """Number of indices, reserved ones included (what an embedding table needs)."""
        return len(self._tokens) + NUM_RESERVED

    def __len__(self) -> int:
        return self.size

    def __contains__(self, token) -> bool:
        return token in self._index

    def lookup(self, ids) -> np.ndarray:
        """String ids (any shape) -> int32 indices; "" -> 0, unknown -> 1."""
        arr = np.asarray(ids, dtype=object)
        flat = [PAD_INDEX if t == "" else self._index.get(str(t), OOV_INDEX) for t in arr.ravel()]
        return np.asarray(flat, dtype=np.int32).reshape(arr.shape)

    def decode(self, indices) -> np.ndarray:
        """Int indices (any shape) -> string ids; padding -> "", OOV -> "[OOV]"."""
        table = np.asarray(["", "[OOV]"] + self._tokens, dtype=object)
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= self.size):
            raise IndexError(f"index out of range [0, {self.size}) for this vocabulary")
        return table[indices]

    def lookup_layer(self):
        """A tf_keras `StringLookup` computing `lookup` inside a graph."""
        import tensorflow as tf

        return tf.keras.layers.StringLookup(vocabulary=self._tokens, mask_token="", num_oov_indices=1)

    def save(self, path) -> None:
        """Writes the vocabulary as JSON, atomically."""
        atomic_write_text(path, json.dumps({"tokens": self._tokens}))

    @classmethod
    def load(cls, path) -> "Vocabulary":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f)["tokens"])

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __repr__(self):
        return f"Vocabulary(size={self.size})"
