"""`pretrain`: next-item training of the agents in a Keras `fit` loop."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import tensorflow as tf

from tfmarl.data.pipelines import count_targets, training_dataset
from tfmarl.data.sequences import Sequences
from tfmarl.training.callbacks import EpochThroughput, RankingValidation, Throughput


@dataclasses.dataclass
class PretrainResult:
    history: dict  # per-epoch logs (loss, val_ndcg@10, ...)
    epochs: int  # epochs run (early stopping may end sooner)
    best_epoch: int | None  # 1-based epoch whose weights the model holds (None without validation)
    best_metric: float | None
    train_seconds: float  # time in training batches only
    validation_seconds: float
    targets_per_second: float  # next-item targets trained per second of train_seconds


def pretrain(model, train, valid=None, *, epochs: int = 20, batch_size: int = 128,
             learning_rate: float = 1e-3, stride: int | None = None, patience: int | None = 3,
             monitor: str = "val_ndcg@10", log_dir=None, checkpoint_dir=None, seed: int = 0,
             verbose=1, callbacks=(), optimizer=None, histogram_freq: int = 0,
             steps_per_epoch: int | None = None) -> PretrainResult:
    """Trains ``model`` (a `SequentialRecommender`) on next-item prediction with ``fit``.

    Args:
      train: `Sequences` (windowed with the model's ``max_length``) or a ready `tf.data.Dataset`.
      valid: an `EvalSet` ranked after every epoch (full catalog); enables early stopping on
        ``monitor`` and keeps the best epoch's weights.
      patience: epochs without improvement before stopping (None: never stop early).
      log_dir: TensorBoard directory (scalars per epoch, validation metrics included; with
        ``histogram_freq`` > 0, histograms of every weight, embeddings included, every that many epochs).
      checkpoint_dir: where an interrupted run's state is backed up each epoch; calling
        `pretrain` again with the same directory resumes from the last finished epoch.
      optimizer: defaults to Adam(learning_rate).
    The model is compiled here unless it already is; build it under a strategy's scope to
    train under that strategy.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    # ParameterServerStrategy: Keras `fit` runs through a ClusterCoordinator, which needs an
    # endless dataset with `steps_per_epoch` and allows epoch-level callbacks only.
    coordinated = getattr(model.distribute_strategy, "_should_use_with_coordinator", False)
    if isinstance(train, Sequences):
        if train.num_interactions == 0:
            raise ValueError("training sequences are empty")
        targets_per_epoch = count_targets(train)
        train = training_dataset(train, model.max_length, batch_size, stride=stride, seed=seed)
        if coordinated:
            steps_per_epoch = steps_per_epoch or int(train.cardinality())
            train = train.repeat()
    else:
        targets_per_epoch = 0
    if coordinated and steps_per_epoch is None:
        raise ValueError("under ParameterServerStrategy pass steps_per_epoch with a repeated dataset")
    with model.distribute_strategy.scope():
        if not model.built:
            model.build_all()  # variables must exist before BackupAndRestore can restore them
        if getattr(model, "optimizer", None) is None or not model._is_compiled:
            model.compile(optimizer=optimizer or tf.keras.optimizers.Adam(learning_rate))
    throughput = (EpochThroughput if coordinated else Throughput)(targets_per_epoch)
    ranking = RankingValidation(valid) if valid is not None else None
    cbs = [throughput] + ([ranking] if ranking else [])
    if ranking and patience is not None:
        cbs.append(tf.keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience,
                                                    restore_best_weights=True))
    if log_dir is not None:
        cbs.append(tf.keras.callbacks.TensorBoard(str(log_dir), profile_batch=0, histogram_freq=histogram_freq))
    if checkpoint_dir is not None:
        checkpoint_dir = pathlib.Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        cbs.append(tf.keras.callbacks.BackupAndRestore(str(checkpoint_dir / "backup")))
    cbs.extend(callbacks)
    fit = model.fit(train, epochs=epochs, callbacks=cbs, verbose=verbose, steps_per_epoch=steps_per_epoch)
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    best_epoch = best_metric = None
    if ranking and monitor in history:
        values = history[monitor]
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        best_epoch, best_metric = best + 1, values[best]
        if patience is None:
            pass  # weights are the last epoch's; best_epoch is informative only
    return PretrainResult(history=history, epochs=len(history.get("loss", [])), best_epoch=best_epoch,
                          best_metric=best_metric, train_seconds=throughput.train_seconds,
                          validation_seconds=ranking.seconds if ranking else 0.0,
                          targets_per_second=throughput.targets_per_second)
