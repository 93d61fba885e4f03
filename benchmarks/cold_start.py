"""Cold start: new items ranked from their content and knowledge graph, and users with short histories.

    OPENBLAS_NUM_THREADS=1 python benchmarks/cold_start.py --data ../shared/data/ml-100k \
        --out benchmarks/results/cold_start.json

Cold items (`tfmarl.data.cold_item_split`, 10% of the items, "random" and "newest" splits): every
interaction with them is removed from training; the test targets are the cold items a user went
on to have, ranked after the user's warm history, against the whole catalog (`all_catalog`) and
against the cold items only (`cold_only`). Models:

  content_agent          transformer + ContentAgent: categories, title words (whole words in two
                         or more titles), the release year (numeric) and the knowledge graph
                         (genre, decade on MovieLens), id dropout 0.8 on the scored catalog
                         (histories keep their ids); new items have no id part
  content_agent_word_piece  the same with titles as learnt WordPiece pieces (on 1,682 titles
                         mostly single characters), the library's default title vocabulary
  content_agent_no_kg    the same without the knowledge graph
  content_agent_no_text  the same without title tokens
  lightfm                LightFM (WARP) with the same item features (categories, title tokens,
                         knowledge-graph entities, the release year as one indicator column per
                         year), identity columns for warm items, users as
                         their histories (benchmarks/lightfm_peer.py); skipped if not installed
  cold_popularity        cold items by their popularity *in the test interactions* (an oracle:
                         nothing trained can know it), other items below
  random                 uniform scores

Synthetic data (`generate_synthetic(knowledge_graph=True)`: a "creator" relation groups items
of one style and popularity, a "studio" relation is noise): the Content agent with categories and
the graph (`content_agent_kg`), with categories only (`content_agent_no_kg`) and with a shuffled
graph (`content_agent_shuffled_kg`: same degrees, edges permuted), in the same run and over
``--seeds``; the graph read with ``knowledge_entities="item_mean"`` (an entity is the mean id
vector of its other trained items). `content_agent_kg_embedding` and
`content_agent_shuffled_kg_embedding` read it with a learnt embedding per entity instead (one seed).
Every all-catalog row also has `cold_per_top10` (cold items in a top 10) and `cold_precision@10`
(the share of them that are targets): every target is cold, so showing more cold items lifts the
whole-catalog NDCG as much as ranking them well does.

Cold users (`tfmarl.data.cold_user_split`, ML-100k): 10% of users never trained on; one test
instance per history-length bucket (1, 2-5, 6-20, >20) — the transformer vs train popularity.

Differences between models are paired-bootstrap 95% intervals over test users (`paired_bootstrap`).
Training variance is not in those: on ML-100k, content_agent and LightFM are retrained with each of
``--seeds`` on the same splits, on the synthetic data the three headline graph variants
(`seed_replicates`: per-seed values, their mean and a t interval over seeds, of each model and of
their differences).
Also reported: each Content agent's warm leave-one-out NDCG@10 next to the plain id-only
transformer's, so a cold-start gain is not bought with the warm ranking.

``--parts ml100k,synthetic --merge`` re-runs those parts and keeps the others (cold users, the warm
reference) from the existing ``--out`` file, noting which under ``kept_from_previous_run``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402
import tfmarl  # noqa: E402,F401  (selects tf_keras before TensorFlow loads)

import numpy as np  # noqa: E402

FRACTION = 0.1
MODEL = dict(dim=64, max_length=50, num_layers=2, num_heads=2, dropout=0.2)
TRAIN = dict(epochs=30, batch_size=128, learning_rate=1e-3, patience=3)
ID_DROPOUT = 0.8  # on the scored catalog only (histories keep their ids): see ContentAgent
BOOTSTRAP = 2000
# What each --parts name writes in the JSON: (top-level key, keys inside it; None = the whole entry).
PARTS = {"ml100k": ("ml100k", None), "synthetic": ("synthetic", None),
         "cold_users": ("ml100k", ("cold_users",)), "warm": ("ml100k", ("warm_reference_id_only",))}


def paired_bootstrap(a, b, *, samples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Mean of a - b over paired per-user values, with its percentile-bootstrap 95% interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(len(diff), size=(samples, len(diff)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "ci95": [float(low), float(high)], "users": int(len(diff)),
            "significant": bool(low > 0 or high < 0)}


def features_for(interactions, vocab, *, text=True, knowledge=True, numeric=False, title_vocabulary="words"):
    """Item features; ``numeric``: the release year (from MovieLens titles) as a numeric attribute;
    titles as whole words (``title_vocabulary="words"``) or learnt word pieces ("word_piece")."""
    import pandas as pd

    from tfmarl.data import build_item_features
    from tfmarl.data.knowledge import release_year

    years = None
    if numeric:
        years = pd.DataFrame({"release_year": [release_year(t) for t in interactions.items["title"]]},
                             index=interactions.items.index, dtype=float)
    return build_item_features(interactions, vocab, titles=text, knowledge=knowledge, text_vocabulary_size=1000,
                               title_vocabulary=title_vocabulary, numeric=years)


def train_content_agent(split, vocab, features, *, seed, cold_items, epochs, id_dropout=ID_DROPOUT,
                        agent_kwargs=None):
    """A transformer whose Content agent encodes items from ``features`` (and ``agent_kwargs``,
    e.g. ``knowledge_entities``); cold items unknown."""
    import tensorflow as tf

    from tfmarl.agents import ContentAgent
    from tfmarl.training import SequentialRecommender, pretrain

    tf.keras.utils.set_random_seed(seed)
    content = ContentAgent(vocab.size, dim=MODEL["dim"], name="content_agent", id_dropout=id_dropout,
                           **(features.content_agent_kwargs() if features is not None else {}),
                           **(agent_kwargs or {}))
    if features is not None:
        content.set_item_features(features)
    freq = np.bincount(split.train.items, minlength=vocab.size)
    model = SequentialRecommender(item_vocabulary=vocab, content_agent=content, item_frequencies=freq, **MODEL)
    if cold_items is not None:
        known = np.ones(vocab.size, bool)
        known[cold_items] = False
        model.set_known_items(known)
    train = {k: v for k, v in TRAIN.items() if k != "epochs"}
    start = time.perf_counter()
    result = pretrain(model, split.train, split.valid, epochs=epochs, seed=seed, verbose=0, **train)
    return model, {"epochs": result.epochs, "best_epoch": result.best_epoch, "val_ndcg@10": result.best_metric,
                   "train_seconds": time.perf_counter() - start}


def cold_metrics(model, split, *, warm=True) -> tuple[dict, dict]:
    """(JSON row, per-user NDCG@10 arrays by ranking) of a model on a cold-item split."""
    from tfmarl.evaluation import evaluate_ranking

    row, per_user = {}, {}
    for ranking, candidates in (("all_catalog", None), ("cold_only", split.cold_items)):
        m = evaluate_ranking(model, split.test, ks=(10,), candidates=candidates, per_user=True,
                             num_items=model.num_items, max_length=MODEL["max_length"])
        per_user[ranking] = m.pop("per_user")["ndcg@10"]
        row[ranking] = {k: m[k] for k in ("ndcg@10", "hr@10", "coverage@10", "users")}
    row["all_catalog"].update(cold_exposure(model, split))
    row["cold_ndcg@10"] = row["all_catalog"]["ndcg@10"]
    if warm:
        m = evaluate_ranking(model, split.warm_test, ks=(10,), num_items=model.num_items,
                             max_length=MODEL["max_length"])
        row["warm_ndcg@10"] = m["ndcg@10"]
    return row, per_user


def cold_exposure(model, split, k: int = 10) -> dict:
    """How many cold items a model puts in each whole-catalog top ``k`` (``cold_per_top10``) and
    the share of them that are the user's targets (``cold_precision@10``). Every target is cold, so
    the whole-catalog NDCG rewards showing more cold items as much as ranking them well."""
    import tensorflow as tf

    from tfmarl.agents import mask_excluded
    from tfmarl.data import evaluation_dataset

    is_cold = np.zeros(model.num_items, bool)
    is_cold[split.cold_items] = True
    shown = hits = users = 0
    for batch in evaluation_dataset(split.test, MODEL["max_length"], 256):
        scores = mask_excluded(model.score_catalog(tf.cast(batch["history"], tf.int32)), batch["exclude"]).numpy()
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        targets = batch["targets"].numpy()
        shown += int(is_cold[top].sum())
        hits += int(((top[:, :, None] == targets[:, None, :]) & (targets[:, None, :] > 0)).any(-1).sum())
        users += len(top)
    return {f"cold_per_top{k}": shown / users, f"cold_precision@{k}": hits / max(shown, 1)}


class Scores:
    """A fixed per-item score vector as a `score_catalog` model."""

    def __init__(self, scores):
        import tensorflow as tf

        self.num_items, self.max_length = len(scores), MODEL["max_length"]
        self._scores = tf.constant(np.asarray(scores, np.float32))

    def score_catalog(self, history):
        import tensorflow as tf

        return tf.tile(self._scores[None, :], [tf.shape(history)[0], 1])


def oracle_cold_popularity(split, num_items):
    counts = np.zeros(num_items, np.float32)
    np.add.at(counts, split.test.targets, 1.0)
    scores = np.full(num_items, -1.0, np.float32)
    scores[split.cold_items] = counts[split.cold_items]
    return Scores(scores)


def lightfm_model(split, vocab, features, *, seed, epochs):
    try:
        import lightfm  # noqa: F401
    except ImportError:
        return None
    from lightfm_peer import LightFMRanker, item_feature_matrix

    tables = [t for t in (features.categories, features.title_tokens, features.kg_entities) if t is not None]
    if features.numeric is not None:  # each distinct value (a release year) is one indicator column
        for column in features.numeric.T:
            values = np.unique(column)
            tables.append((np.searchsorted(values, column) + 1)[:, None].astype(np.int32))
    warm = np.setdiff1d(np.arange(2, vocab.size), split.cold_items)
    matrix = item_feature_matrix(vocab.size, warm, tables, identity=True)
    histories = [split.train.items[split.train.offsets[u]:split.train.offsets[u + 1]]
                 for u in range(len(split.train))]
    ranker = LightFMRanker(vocab.size, matrix, epochs=epochs, seed=seed, max_length=MODEL["max_length"])
    return ranker.fit(histories)


def unpack(variant) -> tuple:
    """(item features, ContentAgent keyword arguments) of a variant: features, a callable making
    them, or a (features, kwargs) pair."""
    features, agent_kwargs = variant if isinstance(variant, tuple) else (variant, {})
    return (features() if callable(features) else features), agent_kwargs


def run_cold_items(name, sequences, vocab, args, *, variants, peers=True):
    """Every model on the random and newest cold-item splits of one dataset."""
    from tfmarl.data import cold_item_split

    out = {}
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    for how in args.splits.split(","):
        if name == "synthetic" and how == "newest":
            continue  # synthetic items all exist from the start: "newest" means nothing there
        split = cold_item_split(sequences, FRACTION, how=how, seed=args.seed)
        rows, per_user = {}, {}
        for model_name, variant in variants.items():
            features, agent_kwargs = unpack(variant)
            t0 = time.perf_counter()
            model, info = train_content_agent(split, vocab, features, seed=args.seed, cold_items=split.cold_items,
                                              epochs=args.epochs, id_dropout=args.id_dropout,
                                              agent_kwargs=agent_kwargs)
            rows[model_name], per_user[model_name] = cold_metrics(model, split)
            rows[model_name].update(info)
            print(f"{name}/{how}/{model_name}: cold {rows[model_name]['cold_ndcg@10']:.4f} "
                  f"cold-only {rows[model_name]['cold_only']['ndcg@10']:.4f} "
                  f"warm {rows[model_name]['warm_ndcg@10']:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        if peers and "content_agent" in variants:
            features, _ = unpack(variants["content_agent"])
            t0 = time.perf_counter()
            ranker = lightfm_model(split, vocab, features, seed=args.seed, epochs=args.lightfm_epochs)
            if ranker is not None:
                rows["lightfm"], per_user["lightfm"] = cold_metrics(ranker, split)
                rows["lightfm"]["train_seconds"] = time.perf_counter() - t0
                print(f"{name}/{how}/lightfm: cold {rows['lightfm']['cold_ndcg@10']:.4f}", file=sys.stderr)
            else:
                rows["lightfm"] = {"skipped": "lightfm is not installed (see benchmarks/lightfm_peer.py)"}
            rows["cold_popularity"], per_user["cold_popularity"] = cold_metrics(
                oracle_cold_popularity(split, vocab.size), split, warm=False)
            rng = np.random.default_rng(args.seed)
            rows["random"], per_user["random"] = cold_metrics(Scores(rng.random(vocab.size)), split, warm=False)
        comparisons = {}
        base = "content_agent" if "content_agent" in rows else "content_agent_kg"
        for other in rows:
            if other != base and other in per_user:
                comparisons[f"{base}-{other}"] = {
                    ranking: paired_bootstrap(per_user[base][ranking], per_user[other][ranking], seed=args.seed)
                    for ranking in ("all_catalog", "cold_only")}
        out[how] = {"cold_items": int(len(split.cold_items)), "test_users": int(len(split.test)),
                    "models": rows, "paired_ndcg@10_differences": comparisons}
    return out


# Two-sided 95% Student t quantiles by degrees of freedom (seed-level intervals over a few seeds).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_interval(values) -> dict:
    """Mean of per-seed values with its 95% t interval over the seeds (training variance, which
    the per-user bootstrap of one run does not see)."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "seeds": len(values)}
    half = T95.get(len(values) - 1, 1.96) * float(values.std(ddof=1)) / np.sqrt(len(values))
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": len(values),
            "significant": bool(mean - half > 0 or mean + half < 0)}


def run_seed_replicates(sequences, vocab, args, variants: dict, first: dict, *, splits, pairs,
                        lightfm_features=None) -> dict:
    """``variants`` (and LightFM on ``lightfm_features``) retrained with each of ``--seeds`` on the
    same cold-item splits; ``first`` holds the main run's rows by split. Per model and ranking: the
    per-seed NDCG@10, their mean and t interval; the same for each ``(a, b)`` of ``pairs``, a - b."""
    from tfmarl.data import cold_item_split

    seeds = [args.seed] + [int(x) for x in args.seeds.split(",") if x.strip() and int(x) != args.seed]
    out = {}
    for how in splits:
        split = cold_item_split(sequences, FRACTION, how=how, seed=args.seed)
        rows = {name: [first[how]["models"][name]] for name in variants}
        if lightfm_features is not None:
            rows["lightfm"] = [first[how]["models"].get("lightfm", {})]
        for seed in seeds[1:]:
            for name, variant in variants.items():
                features, agent_kwargs = unpack(variant)
                model, _ = train_content_agent(split, vocab, features, seed=seed, cold_items=split.cold_items,
                                               epochs=args.epochs, id_dropout=args.id_dropout,
                                               agent_kwargs=agent_kwargs)
                rows[name].append(cold_metrics(model, split, warm=False)[0])
            if lightfm_features is not None:
                ranker = lightfm_model(split, vocab, lightfm_features, seed=seed, epochs=args.lightfm_epochs)
                rows["lightfm"].append(cold_metrics(ranker, split, warm=False)[0] if ranker is not None else {})
            print(f"{how}/seed {seed}: " + ", ".join(f"{name} {found[-1].get('cold_ndcg@10', float('nan')):.4f}"
                                                    for name, found in rows.items()), file=sys.stderr)
        entry = {"training_seeds": seeds, "split_seed": args.seed}
        for ranking in ("all_catalog", "cold_only"):
            per_model = {name: [r[ranking]["ndcg@10"] for r in found if ranking in r] for name, found in rows.items()}
            entry[ranking] = {name: {"ndcg@10": values, **seed_interval(values)} for name, values in per_model.items()}
            for a, b in pairs:
                if len(per_model[a]) == len(per_model[b]) == len(seeds):
                    entry[ranking][f"{a}-{b}"] = seed_interval(np.subtract(per_model[a], per_model[b]))
        out[how] = entry
    return out


def run_warm_reference(sequences, vocab, args):
    """The plain id-only transformer's warm leave-one-out NDCG@10 (the ranking benchmark's model)."""
    from tfmarl.data import leave_one_out
    from tfmarl.evaluation import evaluate_ranking

    split = leave_one_out(sequences)
    model, info = train_content_agent(split, vocab, None, seed=args.seed, cold_items=None, epochs=args.epochs,
                                      id_dropout=0.0)
    m = evaluate_ranking(model, split.test, ks=(10,))
    return {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"], **info}


def run_cold_users(sequences, vocab, args):
    from tfmarl.data import cold_user_split
    from tfmarl.evaluation import evaluate_by_history_length

    split = cold_user_split(sequences, FRACTION, seed=args.seed)
    model, info = train_content_agent(split, vocab, None, seed=args.seed, cold_items=None, epochs=args.epochs,
                                      id_dropout=0.0)
    popularity = Scores(np.bincount(split.train.items, minlength=vocab.size).astype(np.float32))
    out = {"cold_users_test_instances": int(len(split.test)), "transformer": info}
    for name, scorer in (("transformer", model), ("popularity", popularity)):
        report = evaluate_by_history_length(scorer, split.test, ks=(10,), history_lengths=split.history_lengths,
                                            num_items=vocab.size, max_length=MODEL["max_length"])
        out.setdefault("buckets", {})[name] = {
            bucket: {k: m[k] for k in ("ndcg@10", "hr@10", "users") if k in m} for bucket, m in report.items()}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-100k", help="MovieLens-100K directory")
    parser.add_argument("--out", default="benchmarks/results/cold_start.json")
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    parser.add_argument("--lightfm-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--synthetic-users", type=int, default=3000)
    parser.add_argument("--synthetic-items", type=int, default=1500)
    parser.add_argument("--variants", default=None, help="comma-separated Content agent variants (default: all)")
    parser.add_argument("--splits", default="random,newest")
    parser.add_argument("--id-dropout", type=float, default=ID_DROPOUT)
    parser.add_argument("--seeds", default="1,2",
                        help="more training seeds for the ML-100k content_agent vs LightFM comparison ('' for none)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the parts of the existing --out JSON that --parts does not re-run")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from {list(PARTS)}")

    from tfmarl.data import build_sequences, generate_synthetic, load_movielens

    start = time.perf_counter()
    result = {"machine": machine(), "protocol": {"cold_fraction": FRACTION, "model": MODEL, "train": TRAIN,
                                                 "id_dropout": args.id_dropout, "bootstrap": BOOTSTRAP,
                                                 "seed": args.seed, "epochs": args.epochs}}
    if parts & {"ml100k", "cold_users", "warm"}:
        movielens = load_movielens(args.data)
        ml_sequences, ml_vocab = build_sequences(movielens)
    if "ml100k" in parts:
        variants = {
            "content_agent": features_for(movielens, ml_vocab, numeric=True),
            "content_agent_word_piece": features_for(movielens, ml_vocab, numeric=True, title_vocabulary="word_piece"),
            "content_agent_no_kg": features_for(movielens, ml_vocab, knowledge=False, numeric=True),
            "content_agent_no_text": features_for(movielens, ml_vocab, text=False, numeric=True),
        }
        ml = run_cold_items("ml100k", ml_sequences, ml_vocab, args, variants=variants)
        result["ml100k"] = {"dataset": movielens.name, "knowledge_graph_triples": len(movielens.knowledge), **ml}
        # The headline keys: the random split, cold items ranked against the whole catalog.
        for model in ("content_agent", "lightfm"):
            row = ml["random"]["models"].get(model, {})
            if "cold_ndcg@10" in row:
                result["ml100k"][model] = {"cold_ndcg@10": row["cold_ndcg@10"], "cold_hr@10": row["all_catalog"]["hr@10"]}
        if args.seeds.strip() and all("content_agent" in ml[how]["models"] for how in ml):
            result["ml100k"]["seed_replicates"] = run_seed_replicates(
                ml_sequences, ml_vocab, args, {"content_agent": variants["content_agent"]}, ml, splits=list(ml),
                pairs=[("content_agent", "lightfm")], lightfm_features=unpack(variants["content_agent"])[0])
    if "warm" in parts:
        result.setdefault("ml100k", {})["warm_reference_id_only"] = run_warm_reference(ml_sequences, ml_vocab, args)
    if "synthetic" in parts:
        synthetic = generate_synthetic(n_users=args.synthetic_users, n_items=args.synthetic_items, seed=args.seed,
                                       knowledge_graph=True)
        sequences, vocab = build_sequences(synthetic)
        shuffled = synthetic.knowledge.shuffled(seed=args.seed)
        graph = features_for(synthetic, vocab, text=False)
        shuffled_graph = features_for(synthetic, vocab, text=False, knowledge=shuffled)
        item_mean = {"knowledge_entities": "item_mean"}
        headline = {
            "content_agent_kg": (graph, item_mean),
            "content_agent_no_kg": features_for(synthetic, vocab, text=False, knowledge=False),
            "content_agent_shuffled_kg": (shuffled_graph, item_mean),
        }
        variants = {**headline, "content_agent_kg_embedding": graph,
                    "content_agent_shuffled_kg_embedding": shuffled_graph}
        syn = run_cold_items("synthetic", sequences, vocab, args, variants=variants, peers=False)
        result["synthetic"] = {"n_users": args.synthetic_users, "n_items": args.synthetic_items, **syn}
        for model in variants:
            if model in syn["random"]["models"]:
                result["synthetic"][model] = {"cold_ndcg@10": syn["random"]["models"][model]["cold_ndcg@10"]}
        headline = {k: v for k, v in headline.items() if k in syn["random"]["models"]}
        if args.seeds.strip() and len(headline) == 3:
            result["synthetic"]["seed_replicates"] = run_seed_replicates(
                sequences, vocab, args, headline, syn, splits=["random"],
                pairs=[("content_agent_kg", "content_agent_shuffled_kg"), ("content_agent_kg", "content_agent_no_kg"),
                       ("content_agent_shuffled_kg", "content_agent_no_kg")])
    if "cold_users" in parts:
        result.setdefault("ml100k", {})["cold_users"] = run_cold_users(ml_sequences, ml_vocab, args)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    if args.merge:
        merge_previous(result, args.out, parts)
    write_json(args.out, result)


def merge_previous(result: dict, path, parts: set) -> None:
    """Copies into ``result`` what the JSON at ``path`` holds for the parts not re-run, and records
    which parts came from that earlier run (and when)."""
    import json

    path = pathlib.Path(path)
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    kept = []
    for part, (top, keys) in PARTS.items():
        if part in parts or top not in previous:
            continue
        if keys is None:
            result[top] = {**previous[top], **result.get(top, {})}  # what this run wrote there wins
        else:
            for key in keys:
                if key in previous[top]:
                    result.setdefault(top, {})[key] = previous[top][key]
        kept.append(part)
    if kept:
        result["kept_from_previous_run"] = {"parts": kept, "machine": previous.get("machine"),
                                            "protocol": previous.get("protocol")}


if __name__ == "__main__":
    main()
