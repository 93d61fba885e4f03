"""Keras callbacks for pretraining: ranking validation and throughput accounting."""

from __future__ import annotations

import time

import tensorflow as tf

from tfmarl.evaluation.ranking import evaluate_ranking


class RankingValidation(tf.keras.callbacks.Callback):
    """Adds full-catalog ranking metrics on a validation set to the epoch logs.

    The metrics appear as ``val_ndcg@10`` etc., so `EarlyStopping`, `ModelCheckpoint` and
    `TensorBoard` placed after this callback see them.
    """

    def __init__(self, eval_set, ks=(10,), prefix: str = "val_", batch_size: int = 256):
        super().__init__()
        self.eval_set = eval_set
        self.ks = ks
        self.prefix = prefix
        self.batch_size = batch_size
        self.seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        metrics = evaluate_ranking(self.model, self.eval_set, self.ks, batch_size=self.batch_size)
        self.seconds += metrics.pop("seconds")
        metrics.pop("users")
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})


class Throughput(tf.keras.callbacks.Callback):
    """Measures time spent in training batches (validation excluded) and targets trained."""

    def __init__(self, targets_per_epoch: int):
        super().__init__()
        self.targets_per_epoch = int(targets_per_epoch)
        self.train_seconds = 0.0
        self.epochs = 0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Keras runs epoch-end work (validation callbacks) after the last batch: count up to it.
        self.train_seconds += getattr(self, "_last", time.perf_counter()) - self._start
        self.epochs += 1

    @property
    def targets_per_second(self) -> float:
        return self.epochs * self.targets_per_epoch / max(self.train_seconds, 1e-9)


class EpochThroughput(Throughput):
    """`Throughput` without the batch hook (ParameterServerStrategy allows epoch-level callbacks
    only); the last batch's end is then the epoch's end."""

    on_train_batch_end = tf.keras.callbacks.Callback.on_train_batch_end
