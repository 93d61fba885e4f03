"""Pretraining throughput and quality on synthetic data, comparable across code versions.

    python benchmarks/speed_pretrain.py                       # prints one JSON object
    python benchmarks/speed_pretrain.py --epochs 8 --users 4000

To compare with an older commit, run this same file against that commit's package:

    git worktree add /tmp/base 6e7d902
    (cd /tmp/base && PYTHONPATH=/tmp/base python /path/to/benchmarks/speed_pretrain.py)

Only API shared by every version since 6e7d902 is used: `generate_synthetic`, `build_sequences`,
`leave_one_out`, `SequentialRecommender(num_items=..., item_frequencies=...)`, `pretrain(...,
callbacks=...)` and `evaluate_ranking`. Throughput is measured here (not taken from
`PretrainResult`): next-item targets trained per second of training batches, over the epochs
after the first ``--warmup-epochs`` (tracing / compilation and pipeline warm-up excluded).
A target is one next-item position with a non-zero weight, plus each user's first item
(predicted from the cold-start state): `Sequences.num_interactions` per epoch.
Quality: NDCG@10 (full-catalog ranking, history excluded) on the leave-one-out validation and
test users of the model after the last epoch (no early stopping).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine  # noqa: E402  (also sets OPENBLAS_NUM_THREADS=1)
import tfmarl  # noqa: E402  (selects tf_keras before TensorFlow loads)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--interactions-per-user", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup-epochs", type=int, default=1, help="epochs left out of the throughput")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def measure(args=None) -> dict:
    """Trains the default transformer recommender and returns throughput, quality and context.

    ``args``: a namespace from `parse_args` (None: the defaults).
    """
    import numpy as np
    import tensorflow as tf

    from tfmarl.data import build_sequences, generate_synthetic, leave_one_out
    from tfmarl.evaluation import evaluate_ranking
    from tfmarl.training import SequentialRecommender, pretrain

    args = parse_args([]) if args is None else args
    if args.epochs <= args.warmup_epochs:
        raise ValueError("--epochs must exceed --warmup-epochs")
    interactions = generate_synthetic(n_users=args.users, n_items=args.items,
                                      interactions_per_user=args.interactions_per_user, seed=args.seed)
    sequences, vocab = build_sequences(interactions)
    split = leave_one_out(sequences)
    targets_per_epoch = int(split.train.num_interactions)

    class EpochTimes(tf.keras.callbacks.Callback):
        """Wall and process CPU seconds from each epoch's start to its last training batch's end."""

        def __init__(self):
            super().__init__()
            self.seconds, self.cpu_seconds = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = self._last = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, batch, logs=None):
            self._last = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(self._last[0] - self._start[0])
            self.cpu_seconds.append(self._last[1] - self._start[1])

    tf.keras.utils.set_random_seed(args.seed)
    freq = np.bincount(split.train.items, minlength=vocab.size)
    model = SequentialRecommender(num_items=vocab.size, item_frequencies=freq)  # default transformer
    times = EpochTimes()
    start = time.perf_counter()
    result = pretrain(model, split.train, epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, patience=None, seed=args.seed, verbose=0,
                      callbacks=[times])
    wall = time.perf_counter() - start
    measured = times.seconds[args.warmup_epochs:]
    measured_cpu = times.cpu_seconds[args.warmup_epochs:]
    valid = evaluate_ranking(model, split.valid, ks=(10,))
    test = evaluate_ranking(model, split.test, ks=(10,))
    return {
        "benchmark": "speed_pretrain",
        "tfmarl": str(pathlib.Path(tfmarl.__file__).resolve().parent),
        "settings": {**vars(args), "model": "SequentialRecommender defaults (transformer, dim 64, max_length 50, "
                                            f"loss {model.loss_type!r})",
                     "num_items": int(vocab.size), "train_targets_per_epoch": targets_per_epoch,
                     "valid_users": int(valid["users"]), "test_users": int(test["users"])},
        "targets_per_second": len(measured) * targets_per_epoch / sum(measured),
        # CPU seconds of this process (all threads): steadier than wall time on a shared machine.
        "targets_per_cpu_second": len(measured_cpu) * targets_per_epoch / sum(measured_cpu),
        "epoch_seconds": [round(s, 3) for s in times.seconds],
        "epoch_cpu_seconds": [round(s, 3) for s in times.cpu_seconds],
        "first_epoch_seconds": times.seconds[0],
        "pretrain_wall_seconds": wall,
        "final_loss": float(result.history["loss"][-1]),
        "val_ndcg@10": float(valid["ndcg@10"]),
        "test_ndcg@10": float(test["ndcg@10"]),
        "tensorflow": tf.__version__,
        "machine": machine(),
    }


if __name__ == "__main__":
    print(json.dumps(measure(parse_args()), indent=2))
