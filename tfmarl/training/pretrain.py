"""`pretrain`: next-item training of the agents in a Keras `fit` loop."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import tensorflow as tf

from tfmarl.data.pipelines import count_targets, training_dataset
from tfmarl.data.sequences import Sequences
from tfmarl.training.callbacks import EpochThroughput, RankingValidation, ResumableEarlyStopping, Throughput


@dataclasses.dataclass
class PretrainResult:
    history: dict  # per-epoch logs (loss, val_ndcg@10, ...), from epoch 1 also when resumed
    epochs: int  # epochs run (early stopping may end sooner), those before a resume included
    best_epoch: int | None  # 1-based epoch whose weights the model holds (None without validation)
    best_metric: float | None
    train_seconds: float  # time in training batches only (of this call)
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
        `pretrain` again with the same directory resumes from the last finished epoch, with
        the earlier epochs' logs, best weights and patience count (``backup/``: model and
        optimizer; ``progress/``: logs and best weights). Training then ends as it would have
        without the interruption, except that the shuffling order and dropout of the epochs
        after the resume differ (their random streams restart).
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
    restore_best = ranking is not None and patience is not None
    tracker = ResumableEarlyStopping(monitor if ranking else None, patience=patience,
                                     restore_best_weights=restore_best,
                                     state_dir=pathlib.Path(checkpoint_dir) / "progress" if checkpoint_dir else None)
    # The tracker sees the validation metrics, and saves its state before BackupAndRestore backs up.
    cbs = [throughput] + ([ranking] if ranking else []) + [tracker]
    if log_dir is not None:
        cbs.append(tf.keras.callbacks.TensorBoard(str(log_dir), profile_batch=0, histogram_freq=histogram_freq))
    if checkpoint_dir is not None:
        checkpoint_dir = pathlib.Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        cbs.append(tf.keras.callbacks.BackupAndRestore(str(checkpoint_dir / "backup")))
    cbs.extend(callbacks)
    if tracker.resume(model):  # the interrupted run had stopped early: only its cleanup was left
        shutil.rmtree(checkpoint_dir / "backup", ignore_errors=True)
    else:
        model.fit(train, epochs=epochs, callbacks=cbs, verbose=verbose, steps_per_epoch=steps_per_epoch)
    tracker.clear()  # after BackupAndRestore deleted its backup: a crash in between resumes correctly
    history = {}
    for logs in tracker.history:
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
    best_epoch = best_metric = None
    if tracker.best_epoch is not None:  # without patience the model keeps the last epoch's weights
        best_epoch, best_metric = tracker.best_epoch + 1, tracker.best_metric
    return PretrainResult(history=history, epochs=len(tracker.history), best_epoch=best_epoch,
                          best_metric=best_metric, train_seconds=throughput.train_seconds,
                          validation_seconds=ranking.seconds if ranking else 0.0,
                          targets_per_second=throughput.targets_per_second)
