"""Keras callbacks for pretraining: ranking validation, resumable early stopping and throughput
accounting."""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import time

import numpy as np
import tensorflow as tf

from tfmarl.atomic import atomic_savez, atomic_write_text
from tfmarl.evaluation.ranking import evaluate_ranking

logger = logging.getLogger(__name__)


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


class ResumableEarlyStopping(tf.keras.callbacks.Callback):
    """`EarlyStopping(mode="max")` that survives a crash: it keeps every epoch's logs, tracks the
    best epoch on ``monitor`` (higher is better; the earliest of equals), stops after ``patience``
    epochs without improvement (None: never) and, with ``restore_best_weights``, ends training on
    the best epoch's weights.

    With ``state_dir`` it writes, atomically at every epoch end, the logs of every epoch so far
    (``history.json``) and the best epoch's weights (``best-<epoch>.npz``). The best metric, best
    epoch, patience counter and stop decision are replayed from the logs, so a run resumed by
    `BackupAndRestore` ends exactly as an uninterrupted one would. For that: call `resume` before
    ``fit``; place this callback *before* `BackupAndRestore`, so that an epoch's state is on disk
    before that epoch's backup (the backup is then at most one epoch behind, and `on_epoch_begin`
    drops the epoch it will train again); call `clear` once ``fit`` has deleted the backup.
    """

    STATE = "history.json"

    def __init__(self, monitor: str | None = None, patience: int | None = None,
                 restore_best_weights: bool = False, state_dir=None):
        super().__init__()
        self.monitor = monitor
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.state_dir = pathlib.Path(state_dir) if state_dir is not None else None
        self._replay([], 0)

    # --- tracking -----------------------------------------------------------------------------------

    def _replay(self, history, start: int) -> None:
        """Resets to the state after the epochs ``start, start + 1, ...`` that logged ``history``."""
        self.start, self.history = start, []  # history[i]: the logs of epoch start + i
        self.best, self.best_epoch, self.wait, self.stopped = -np.inf, None, 0, False  # best_epoch: 0-based
        self._best_weights = None  # in memory when the best epoch ran in this process
        for i, logs in enumerate(history):
            self._track(start + i, logs)

    def _track(self, epoch: int, logs) -> bool:
        """Folds in one epoch's logs, as `EarlyStopping` does; True when ``epoch`` becomes the best."""
        self.history.append({k: float(v) for k, v in logs.items()})
        current = logs.get(self.monitor) if self.monitor else None
        if current is None:
            return False
        before = self.best_epoch
        if self.best_epoch is None:
            self.best_epoch = epoch  # the first epoch's weights when no epoch improves (NaN)
        self.wait += 1
        if current > self.best:
            self.best, self.best_epoch, self.wait = float(current), epoch, 0
        elif self.patience is not None and self.wait >= self.patience and epoch > 0:
            self.stopped = True
        return self.best_epoch != before

    @property
    def best_metric(self) -> float | None:
        return None if self.best_epoch is None else self.history[self.best_epoch - self.start][self.monitor]

    # --- persistence ----------------------------------------------------------------------------

    def _weights_path(self, epoch: int) -> pathlib.Path:
        return self.state_dir / f"best-{epoch}.npz"

    def _writes(self) -> bool:  # under multi-worker strategies only the chief writes
        strategy = self.model.distribute_strategy if self.model is not None else None
        return self.state_dir is not None and getattr(getattr(strategy, "extended", None), "should_checkpoint", True)

    def resume(self, model) -> bool:
        """Loads the state an interrupted run left in ``state_dir`` (nothing there: a fresh start).
        True when that run had already stopped early: ``model`` then holds the best weights and
        ``fit`` must not run again."""
        self.set_model(model)
        path = self.state_dir / self.STATE if self.state_dir is not None else None
        if path is None or not path.exists():
            return False
        state = json.loads(path.read_text())
        self._replay(state["history"], state["start"])
        if self.stopped:
            self.on_train_end()
        return self.stopped

    def clear(self) -> None:
        """Deletes the saved state (once training has finished and its backup is gone)."""
        if self.state_dir is not None and self._writes():
            for path in [*self.state_dir.glob("best-*.npz"), self.state_dir / self.STATE]:
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.state_dir.rmdir()

    # --- callback hooks -------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._synced = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._synced:
            return
        self._synced = True
        # The first epoch fit runs tells which epochs the restored backup holds: forget later ones.
        keep = epoch - self.start
        if not 0 <= keep <= len(self.history):
            if self.history:
                logger.warning("the saved history (epochs %d-%d) does not reach epoch %d: tracking the best "
                               "epoch from there", self.start + 1, self.start + len(self.history), epoch + 1)
            self._replay([], epoch)
        elif keep < len(self.history):
            self._replay(self.history[:keep], self.start)

    def on_epoch_end(self, epoch, logs=None):
        previous_best = self.best_epoch
        if self._track(epoch, logs or {}) and self.restore_best_weights:
            self._best_weights = self.model.get_weights()
            if self._writes():
                atomic_savez(self._weights_path(epoch), {f"w{i:05d}": w for i, w in enumerate(self._best_weights)})
        if self._writes():
            atomic_write_text(self.state_dir / self.STATE, json.dumps({"start": self.start, "history": self.history}))
            # Keep the previous best too: the backup may still be at the previous epoch.
            for path in self.state_dir.glob("best-*.npz"):
                if int(path.stem.split("-")[1]) not in (self.best_epoch, previous_best):
                    path.unlink(missing_ok=True)
        if self.stopped:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if not self.restore_best_weights or self.best_epoch is None:
            return
        if self._best_weights is None:  # the best epoch ran before a resume
            path = self._weights_path(self.best_epoch)
            if not path.exists():  # e.g. saved by a run that did not keep best weights
                logger.warning("%s is missing: keeping the last epoch's weights", path)
                return
            with np.load(path) as saved:
                self._best_weights = [saved[name] for name in sorted(saved.files)]
        self.model.set_weights(self._best_weights)


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
