"""Multi-agent RL under catalog churn: items the pretrained agents never saw arrive while RL runs.

    OPENBLAS_NUM_THREADS=1 python benchmarks/marl_churn.py --data ../shared/data/ml-100k \
        --out benchmarks/results/marl_churn_ml100k.json

A random 10% of the MovieLens items (`cold_item_split(how="random")`; ``--new-items newest`` takes
the newest, whose few ratings make the fitted simulator dislike them) are the new items. The
recommender is pretrained without them (its Content agent encodes them from their features,
categories, title tokens and the knowledge graph: `set_known_items`); the simulator is fitted on
all the data, so it knows how users like them. They arrive over the first ``--train-arrival-steps``
steps of RL training, as a live catalog would, and over the first ``--arrival-steps`` of the
held-out evaluation sessions; every policy retrieves only the items that exist.

Policies: ``greedy`` (the pretrained two-tower top-K), ``marl`` (the multi-agent default: clicks
subject to diversity and satisfaction floors; of its N candidates, ``--new-item-candidates`` are
the best new items, which the Content agents can then propose), ``marl_novelty`` (the same plus
a floor on the novelty signal, the self-information of an item under the training popularity,
which is highest for items nobody has interacted with) and ``marl_new_slots`` (``marl`` whose
System agent gives ``--new-item-slots`` of every slate to the critic's best new candidates, in
training and after). Reported per policy and seed: return (clicks per session),
CTR, and ``new_item_click_share`` = clicks on the new items / all clicks.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402
from rl import summarize, t_ci95  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmarl.data  # noqa: E402,F401
import tfmarl.envs  # noqa: E402,F401
import tfmarl.rl.algorithms  # noqa: E402,F401
import tfmarl.rl.multiagent  # noqa: E402,F401
import tfmarl.training  # noqa: E402,F401


def setup(args):
    from tfmarl.agents import ContentAgent
    from tfmarl.data import build_item_features, build_sequences, cold_item_split, load_movielens
    from tfmarl.envs import fit_user_model
    from tfmarl.training import SequentialRecommender, pretrain

    interactions = load_movielens(args.data)
    sequences, vocab = build_sequences(interactions)
    split = cold_item_split(sequences, args.new_fraction, how=args.new_items, seed=0)
    user_model = fit_user_model(interactions, vocab, dim=16, seed=0)  # the simulator knows every item
    features = build_item_features(interactions, vocab, text_vocabulary_size=1000)
    tf.keras.utils.set_random_seed(0)
    content = ContentAgent(vocab.size, dim=64, name="content_agent", id_dropout=args.id_dropout,
                           **features.content_agent_kwargs())
    content.set_item_features(features)
    counts = np.bincount(split.train.items, minlength=vocab.size)
    model = SequentialRecommender(item_vocabulary=vocab, content_agent=content, dim=64, max_length=50,
                                  item_frequencies=counts)
    known = np.ones(vocab.size, bool)
    known[split.cold_items] = False
    model.set_known_items(known)
    started = time.perf_counter()
    result = pretrain(model, split.train, split.valid, epochs=args.pretrain_epochs, patience=3, verbose=0)
    print(f"pretrained without the new items in {time.perf_counter() - started:.0f}s, "
          f"val NDCG@10 {result.best_metric:.4f}", file=sys.stderr)
    return {"vocab": vocab, "split": split, "user_model": user_model, "model": model, "counts": counts,
            "new_items": split.cold_items, "pretrain_val_ndcg@10": result.best_metric}


def evaluate(policy, retriever, ctx, args, seed) -> dict:
    from tfmarl.envs import SessionConfig, SessionEnvironment, run_episodes

    env = SessionEnvironment(ctx["user_model"], SessionConfig(new_item_arrival_steps=args.arrival_steps),
                             batch_size=100, users="heldout", seed=10_000 + seed, new_items=ctx["new_items"])
    retriever.available = lambda: env.available_items  # policies propose only items that exist
    try:
        r = run_episodes(env, policy, args.episodes)
    finally:
        retriever.available = None
    clicks = float(r["clicks"].sum())
    return {"return": float(np.mean(r["return"])), "ctr": float(np.mean(r["ctr"])),
            "session_length": float(np.mean(r["length"])),
            "new_item_click_share": float(r["new_item_clicks"].sum() / max(clicks, 1.0)),
            "new_item_clicks_per_session": float(np.mean(r["new_item_clicks"])),
            "coverage": float(r["coverage"]), "diversity": float(r["diversity"])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--out", default="benchmarks/results/marl_churn_ml100k.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--new-fraction", type=float, default=0.1)
    parser.add_argument("--new-items", choices=("random", "newest"), default="random")
    parser.add_argument("--arrival-steps", type=int, default=20, help="evaluation steps over which new items arrive")
    parser.add_argument("--train-arrival-steps", type=int, default=500, help="RL steps over which they arrive")
    parser.add_argument("--id-dropout", type=float, default=0.8)
    parser.add_argument("--novelty-floor", type=float, default=0.5)
    parser.add_argument("--new-item-candidates", type=int, default=10,
                        help="candidate places the multi-agent policies reserve for new items")
    parser.add_argument("--new-item-slots", type=int, default=2, help="slate slots of marl_new_slots' new items")
    parser.add_argument("--policies", default="marl,marl_novelty,marl_new_slots",
                        help="the multi-agent variants to train (greedy is always measured)")
    args = parser.parse_args(argv)

    from tfmarl.envs import SessionConfig
    from tfmarl.rl import CandidateRetriever, GreedySlatePolicy, make_algorithm

    start = time.perf_counter()
    ctx = setup(args)
    train_config = SessionConfig(new_item_arrival_steps=args.train_arrival_steps)
    variants = args.policies.split(",")
    if variants[0] != "marl":
        raise SystemExit("--policies must start with marl (its default floors are every variant's)")
    per_seed = {"greedy": [], **{name: [] for name in variants}}
    floors = None
    for seed in range(args.seeds):
        for name in variants:
            started = time.perf_counter()
            options = {}
            if floors is not None:
                options["floors"] = dict(floors, novelty=args.novelty_floor) if name == "marl_novelty" else floors
            if name == "marl_new_slots":
                options["new_item_slots"] = args.new_item_slots
            algorithm = make_algorithm("multiagent", ctx["model"], ctx["user_model"], candidates=args.candidates,
                                       session_config=train_config, seed=seed, item_counts=ctx["counts"],
                                       new_items=ctx["new_items"], new_item_candidates=args.new_item_candidates,
                                       **options)
            if floors is None:  # the first (plain marl) run's default floors, fixed for every run
                floors = dict(algorithm.floors)
            if name == "marl":  # the pretrained two-tower's own top 10 (no places reserved)
                plain = CandidateRetriever(ctx["model"], num_candidates=args.candidates)
                per_seed["greedy"].append(evaluate(GreedySlatePolicy(plain, 10), plain, ctx, args, seed))
            algorithm.train(args.steps)
            per_seed[name].append(evaluate(algorithm.slate_policy(), algorithm.retriever, ctx, args, seed))
            print(f"seed {seed} {name} ({time.perf_counter() - started:.0f}s): "
                  f"return {per_seed[name][-1]['return']:.2f}, new-item click share "
                  f"{per_seed[name][-1]['new_item_click_share']:.3f} (greedy {per_seed['greedy'][-1]['return']:.2f}, "
                  f"{per_seed['greedy'][-1]['new_item_click_share']:.3f})", file=sys.stderr)
    summary = {name: summarize(rows) for name, rows in per_seed.items()}
    for name, rows in per_seed.items():
        shares = [r["new_item_click_share"] for r in rows]
        summary[name].update(new_item_click_share_mean=float(np.mean(shares)), new_item_click_share_ci95=t_ci95(shares))
    result = {"machine": machine(), "dataset": "ml-100k",
              "protocol": {"new_items": int(len(ctx["new_items"])), "new_fraction": args.new_fraction,
                           "new_item_choice": args.new_items,
                           "arrival_steps": args.arrival_steps, "train_arrival_steps": args.train_arrival_steps,
                           "rl_steps": args.steps, "seeds": args.seeds,
                           "episodes": args.episodes, "candidates": args.candidates, "id_dropout": args.id_dropout,
                           "new_item_candidates": args.new_item_candidates, "new_item_slots": args.new_item_slots,
                           "floors": floors, "novelty_floor": args.novelty_floor,
                           "pretrain_val_ndcg@10": ctx["pretrain_val_ndcg@10"]},
              "policies": summary, "per_seed": per_seed,
              "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
