"""Next-item ranking on MovieLens with the RecBole sequential protocol.

    python benchmarks/ranking.py --data ../shared/data/ml-100k --out benchmarks/results/ranking_ml100k.json
    python benchmarks/ranking.py ... --export savedmodels/ml100k   # also export the best model and
                                                                   # re-measure through its serving path

Protocol: every rating is an implicit interaction; each user's items sorted by timestamp (ties keep
file order); last item = test, second to last = validation, the rest train. The test input is
every earlier item (train + validation) and all of them are excluded from the full-catalog
ranking. Early stopping on validation NDCG@10; test figures are those of the best epoch.
Each model trains in its own process so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402
import tfmarl  # noqa: E402,F401  (selects tf_keras before TensorFlow loads, here and in spawned workers)

PROTOCOL = ("leave-one-out (RecBole sequential): time-ordered, last item test, second-to-last "
            "validation; full-catalog ranking; input = all earlier items, all excluded")

MODELS = {
    "transformer": dict(encoder="transformer", dim=64, num_layers=2, num_heads=2, dropout=0.2,
                        learning_rate=1e-3, batch_size=128),
    # Same transformer; the Content agent adds genres and WordPiece title tokens to the id embedding.
    "transformer_features": dict(encoder="transformer", dim=64, num_layers=2, num_heads=2, dropout=0.2,
                                 learning_rate=1e-3, batch_size=128, item_features=True),
    "lstm": dict(encoder="lstm", dim=64, num_layers=1, num_heads=1, dropout=0.2, learning_rate=2e-3,
                 batch_size=128),
}


def load(data_dir):
    from tfmarl.data import build_sequences, leave_one_out, load_movielens

    interactions = load_movielens(data_dir)
    sequences, vocab = build_sequences(interactions)
    return interactions, sequences, vocab, leave_one_out(sequences)


def train_one(name, args, queue):
    import numpy as np
    import tensorflow as tf

    from tfmarl.agents import ContentAgent
    from tfmarl.data import build_item_features
    from tfmarl.evaluation import evaluate_ranking
    from tfmarl.training import SequentialRecommender, pretrain

    hp = dict(MODELS[name])
    interactions, _, vocab, split = load(args.data)
    tf.keras.utils.set_random_seed(args.seed)
    freq = np.bincount(split.train.items, minlength=vocab.size)
    lr, batch_size = hp.pop("learning_rate"), hp.pop("batch_size")
    if hp.pop("item_features", False):
        features = build_item_features(interactions, vocab, text_vocabulary_size=1000)
        hp["content_agent"] = ContentAgent(vocab.size, dim=hp["dim"], name="content_agent",
                                           **features.content_agent_kwargs())
        hp["content_agent"].set_item_features(features)
    model = SequentialRecommender(item_vocabulary=vocab, max_length=args.max_length, item_frequencies=freq, **hp)
    result = pretrain(model, split.train, split.valid, epochs=args.epochs, batch_size=batch_size,
                      learning_rate=lr, patience=args.patience, seed=args.seed, verbose=0)
    metrics = evaluate_ranking(model, split.test, ks=(10,))
    row = {"dataset": interactions.name, "protocol": PROTOCOL, "model": name,
           "ndcg@10": metrics["ndcg@10"], "hr@10": metrics["hr@10"], "mrr@10": metrics["mrr@10"],
           "recall@10": metrics["recall@10"], "coverage@10": metrics["coverage@10"],
           "test_users": metrics["users"], "train_seconds": result.train_seconds,
           "train_targets_per_second": result.targets_per_second, "eval_seconds": metrics["seconds"],
           "epochs": result.epochs, "best_epoch": result.best_epoch, "val_ndcg@10": result.best_metric,
           "hyperparameters": {**MODELS[name], "max_length": args.max_length}}
    if args.export and name == args.export_model:
        from tfmarl.export import export_recommender

        path = export_recommender(model, args.export, metadata={"benchmark": "ranking", "dataset": interactions.name})
        row["export_path"] = str(path)
    row["peak_rss_mb"] = peak_rss_mb()
    queue.put(row)


def pop_baseline(args):
    """Most-popular (train counts) with the same protocol: a sanity anchor (reference 0.040)."""
    import numpy as np
    import tensorflow as tf

    from tfmarl.evaluation import evaluate_ranking

    interactions, _, vocab, split = load(args.data)
    counts = tf.constant(np.bincount(split.train.items, minlength=vocab.size).astype("float32"))

    class Popular:
        num_items, max_length = vocab.size, args.max_length

        def score_catalog(self, history):
            return tf.tile(counts[None, :], [tf.shape(history)[0], 1])

    m = evaluate_ranking(Popular(), split.test, ks=(10,))
    return {"dataset": interactions.name, "protocol": PROTOCOL, "model": "pop", "ndcg@10": m["ndcg@10"],
            "hr@10": m["hr@10"], "mrr@10": m["mrr@10"], "recall@10": m["recall@10"],
            "coverage@10": m["coverage@10"], "test_users": m["users"], "train_seconds": 0.0,
            "train_targets_per_second": None, "eval_seconds": m["seconds"], "peak_rss_mb": peak_rss_mb()}


def serving_path_metrics(export_path, data_dir, k=10):
    """Recomputes test metrics by sending each user's whole history, as strings, to the export."""
    import math

    import numpy as np
    import tensorflow as tf

    _, _, vocab, split = load(data_dir)
    serve = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    test = split.test
    hr = ndcg = mrr = 0.0
    start = time.perf_counter()
    batch = 64
    for lo in range(0, len(test), batch):
        users = range(lo, min(lo + batch, len(test)))
        histories = [vocab.decode(test.user_history(u)).tolist() for u in users]
        width = max(len(h) for h in histories)
        request = np.array([h + [""] * (width - len(h)) for h in histories], dtype=object)
        got = serve(history=tf.constant(request))["item_ids"].numpy().astype(str)
        for row, u in zip(got, users):
            target = vocab.decode(test.user_targets(u))[0]
            hits = np.flatnonzero(row[:k] == target)
            if hits.size:
                hr += 1
                ndcg += 1 / math.log2(hits[0] + 2)
                mrr += 1 / (hits[0] + 1)
    n = len(test)
    return {"ndcg@10": ndcg / n, "hr@10": hr / n, "mrr@10": mrr / n, "users": n,
            "seconds": time.perf_counter() - start, "longest_history": int(np.diff(test.history_offsets).max())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a MovieLens directory, e.g. ml-100k (see README: Getting MovieLens)")
    parser.add_argument("--out", default="benchmarks/results/ranking_ml100k.json")
    parser.add_argument("--models", default="transformer,transformer_features,lstm")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", help="model base path to export the best model to, e.g. savedmodels/ml100k")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    args.export_model = names[0]  # the headline model (transformer by default) is exported
    ctx = mp.get_context("spawn")
    results = [pop_baseline(args)]
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=train_one, args=(name, args, queue))
        proc.start()
        row = queue.get()
        proc.join()
        print(f"{name}: ndcg@10={row['ndcg@10']:.4f} hr@10={row['hr@10']:.4f} "
              f"targets/s={row['train_targets_per_second']:.0f} epochs={row['epochs']}", file=sys.stderr)
        results.append(row)
    payload = {"benchmark": "ranking", "machine": machine(), "results": results,
               "reference": {"pop_ndcg@10": 0.040, "bpr_ndcg@10": 0.067, "ease_ndcg@10": 0.070,
                             "recbole_gru4rec_targets_per_second": 1300, "recbole_sasrec_targets_per_second": 550},
               "targets": {"transformer_ndcg@10": 0.080, "transformer_train_targets_per_second": 13000}}
    exported = next((r for r in results if "export_path" in r), None)
    if exported:
        payload["serving_path"] = {"model": exported["model"], "export_path": exported["export_path"],
                                   **serving_path_metrics(exported["export_path"], args.data)}
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
