"""The `tfmarl` command line."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time


def _stage(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def quickstart(args) -> int:
    """Synthetic data -> pretrain the agents -> evaluate -> export, in a few minutes on 2 cores."""
    import numpy as np

    import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)
    import tensorflow as tf

    from tfmarl.agents import ContentAgent
    from tfmarl.cli.report import format_table
    from tfmarl.data import build_item_features, build_sequences, generate_synthetic, leave_one_out
    from tfmarl.evaluation import evaluate_ranking
    from tfmarl.export import export_recommender
    from tfmarl.training import SequentialRecommender, pretrain

    run_dir = pathlib.Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()

    t = _stage(f"data: synthetic catalog of {args.items} items, {args.users} users (seed {args.seed})")
    interactions = generate_synthetic(n_users=args.users, n_items=args.items, interactions_per_user=40,
                                      seed=args.seed)
    sequences, vocab = build_sequences(interactions)
    split = leave_one_out(sequences)
    features = build_item_features(interactions, vocab, title_length=8, text_vocabulary_size=500)
    print(f"{interactions}; train targets {split.train.num_interactions}, test users {len(split.test)} "
          f"({time.perf_counter() - t:.1f}s)")

    t = _stage("pretrain: transformer User agent + Content agent (ids, categories, title tokens), full softmax")
    content = ContentAgent(vocab.size, dim=64, name="content_agent", **features.content_agent_kwargs())
    content.set_item_features(features)
    model = SequentialRecommender(item_vocabulary=vocab, content_agent=content, max_length=args.max_length,
                                  item_frequencies=np.bincount(split.train.items, minlength=vocab.size))
    result = pretrain(model, split.train, split.valid, epochs=args.epochs, patience=3,
                      log_dir=run_dir / "tensorboard", checkpoint_dir=run_dir / "checkpoints",
                      verbose=1 if sys.stdout.isatty() else 2)
    print(f"{result.epochs} epochs, best {result.best_epoch} (val NDCG@10 {result.best_metric:.4f}); "
          f"{result.targets_per_second:,.0f} targets/s ({time.perf_counter() - t:.1f}s)")

    t = _stage("evaluate: full-catalog ranking of each test user's next item (history excluded)")
    counts = tf.constant(np.bincount(split.train.items, minlength=vocab.size).astype("float32"))

    class MostPopular:
        num_items, max_length = vocab.size, args.max_length

        def score_catalog(self, history):
            return tf.tile(counts[None, :], [tf.shape(history)[0], 1])

    rows = []
    for name, scorer in (("most popular", MostPopular()), ("tfmarl transformer", model)):
        m = evaluate_ranking(scorer, split.test, ks=(10,))
        rows.append({"model": name, **{k: m[k] for k in ("hr@10", "ndcg@10", "mrr@10", "coverage@10")}})
    print(format_table(rows, ["model", "hr@10", "ndcg@10", "mrr@10", "coverage@10"]))
    (run_dir / "metrics.json").write_text(json.dumps(rows, indent=2))

    t = _stage(f"export: SavedModel under {args.export_dir}")
    path = export_recommender(model, args.export_dir, metadata={"source": "tfmarl quickstart"})
    user = 0
    example = vocab.decode(split.test.user_history(user)[-5:]).tolist()
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    answer = serve(history=tf.constant([example]))["item_ids"].numpy().astype(str)[0].tolist()
    print(f"wrote {path}\nrequest  {json.dumps({'instances': [{'history': example}]})}\n"
          f"response item_ids {answer}")
    print(f"\ndone in {time.perf_counter() - started:.0f}s. TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfmarl", description="Multi-agent RL recommenders on TensorFlow.")
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quickstart", help="synthetic data -> pretrain -> evaluate -> export")
    q.add_argument("--run-dir", default="runs/quickstart")
    q.add_argument("--export-dir", default="savedmodels/quickstart")
    q.add_argument("--users", type=int, default=3000)
    q.add_argument("--items", type=int, default=1000)
    q.add_argument("--epochs", type=int, default=15)
    q.add_argument("--max-length", type=int, default=50)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=quickstart)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
