"""Off-policy evaluation on generated slate logs with a known ground truth.

    python benchmarks/ope.py --out benchmarks/results/ope.json      # ~10 min on 2 cores

The world: a synthetic catalog (`tfmarl.data.generate_synthetic`), a session simulator fitted on it
(`fit_user_model`), a short pretraining of a two-tower `SequentialRecommender`, and short RL
training through `tfmarl.rl.make_algorithm` (the code `tfmarl train` runs). Target policies from
that stack: ``greedy`` (the pretrained two-tower's top K), ``dqn`` (Double DQN, top K by Q) and
``multiagent`` (User, Content and System agents; one trained per slate size). Logs are generated
in the fitted simulator by `tfmarl.evaluation.ope.SlateLogSimulator`: held-out users at the start
of a session, the N candidates the pretrained model retrieves, a logging policy exploring ε per
slot around the K most popular candidates, clicks from a position-based or a cascade click model
whose attraction is the simulator's click probability; the truth of each target is exact.

The grid is fixed here, before running (`GRID`): catalog = N candidates per round in {10, 20},
logging ε in {0.3, 0.7}, click model in {pbm, cascade} (slates of 1: pbm only, the two coincide),
slates of 1, 3 and 10, sample sizes 1k, 10k and 100k, 10 seeds. Every estimator gets bias, RMSE,
relative error; 95% percentile-bootstrap intervals are computed at 1k and 10k rounds (coverage
pools those replications over the whole grid and the three targets; at 100k only point
estimates). Model-based estimators refit their cross-fitted reward model on each resample
(fewer resamples and folds, `MODEL_BOOTSTRAP`, `FOLDS`). At 10k rounds the value of each learned
policy minus the logging policy's is estimated with its own interval.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402

import tfmarl  # noqa: E402,F401  (selects tf_keras before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmarl.rl.algorithms  # noqa: E402,F401
import tfmarl.rl.multiagent  # noqa: E402,F401
from tfmarl.evaluation.ope import SlateLogSimulator, SlateTarget, evaluate_policy_offline  # noqa: E402

GRID = {"catalog": (10, 20), "epsilon": (0.3, 0.7), "click_model": ("pbm", "cascade"), "slate_size": (1, 3, 10),
        "rounds": (1_000, 10_000, 100_000), "seeds": 10}
TARGETS = ("greedy", "dqn", "multiagent")
SINGLE = ("ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros")
SLATE = ("sips", "iips", "rips", "pseudo_inverse", "cascade_dr")
MODEL_BASED = {"dm", "dr", "sndr", "switch_dr", "dros", "cascade_dr"}
BOOTSTRAP, MODEL_BOOTSTRAP, FOLDS = 100, 30, 2
INTERVAL_ROUNDS = (1_000, 10_000)   # sample sizes with bootstrap intervals
VERSUS_ROUNDS = 10_000              # learned − logging estimates
VERSUS_ESTIMATORS = ("iips", "cascade_dr")
LEARNED = ("dqn", "multiagent")     # the learned targets compared with the logging policy
NUM_CONTEXTS = 400
NO_CLICK_UTILITY = 3.5               # attraction ~0.3 (the simulator default 5.5 gives ~0.06)
HISTORY = 10                        # visible history (= the recommender's max_length)
POLICY_CANDIDATES = 10              # the algorithms choose among the top 10, a subset of every catalog


def own_candidates(policy):
    """The policy on its own retrieved candidates (the Q-network scores exactly N=10 of them),
    whatever candidates the log recorded."""
    return lambda observation: policy({"history": observation["history"], "step": observation["step"]})


def build_stack(args):
    """Synthetic data → simulator → pretrained two-tower → DQN and multi-agent policies."""
    from tfmarl.data import build_sequences, generate_synthetic, leave_one_out
    from tfmarl.envs import SessionConfig, fit_user_model
    from tfmarl.rl import CandidateRetriever, GreedySlatePolicy, QSlatePolicy, linear_schedule, make_algorithm
    from tfmarl.training import SequentialRecommender, pretrain

    started = time.time()
    interactions = generate_synthetic(n_users=800, n_items=300, interactions_per_user=20, seed=0)
    user_model = fit_user_model(interactions, dim=8, seed=0)
    sequences, _ = build_sequences(interactions, user_model.vocabulary)
    split = leave_one_out(sequences)
    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(item_vocabulary=user_model.vocabulary, dim=16, max_length=10, num_layers=1,
                                  num_heads=1, dropout=0.0, k=10)
    pretrain(model, split.train, split.valid, epochs=args.pretrain_epochs, batch_size=128, learning_rate=5e-3,
             verbose=0)
    policies = {}
    common = dict(candidates=POLICY_CANDIDATES, batch_size=16, seed=0)
    dqn = make_algorithm("dqn", model, user_model, session_config=SessionConfig(slate_size=3, history_length=HISTORY),
                         hidden_units=(16,), replay_batch_size=32, epsilon=linear_schedule(0.3, 0.05, args.rl_steps),
                         **common)
    dqn.train(args.rl_steps)
    retriever = CandidateRetriever(model, POLICY_CANDIDATES)
    for k in GRID["slate_size"]:
        config = SessionConfig(slate_size=k, history_length=HISTORY)
        marl = make_algorithm("multiagent", model, user_model, session_config=config, hidden_units=(16,),
                              replay_batch_size=32, warmup_steps=10, facets=4, domains=2, **common)
        marl.train(args.rl_steps)
        policies[k] = {"greedy": GreedySlatePolicy(retriever, k),
                       "dqn": own_candidates(QSlatePolicy(dqn.q_network, k, retriever=retriever)),
                       "multiagent": marl.slate_policy()}
    print(f"stack built in {time.time() - started:.0f}s", file=sys.stderr)
    return {"user_model": user_model, "model": model, "policies": policies, "seconds": time.time() - started}


def cases():
    for k, click, catalog, epsilon in itertools.product(GRID["slate_size"], GRID["click_model"], GRID["catalog"],
                                                        GRID["epsilon"]):
        if k == 1 and click == "cascade":
            continue  # with one position the cascade is the position-based model
        yield {"slate_size": k, "click_model": click, "catalog": catalog, "epsilon": epsilon}


def run_case(stack, case, args):
    from tfmarl.envs import SessionConfig
    from tfmarl.rl import CandidateRetriever

    k = case["slate_size"]
    simulator = SlateLogSimulator.from_user_model(
        stack["user_model"], CandidateRetriever(stack["model"], case["catalog"]), slate_size=k,
        epsilon=case["epsilon"], click_model=case["click_model"], num_contexts=NUM_CONTEXTS, seed=0,
        config=SessionConfig(slate_size=k, history_length=HISTORY, no_click_utility=NO_CLICK_UTILITY))
    pool = {name: simulator.target_slates(policy) for name, policy in stack["policies"][k].items()}
    truth = {name: simulator.value(slates) for name, slates in pool.items()}
    logging_value = simulator.logging_value()
    names = (SINGLE if k == 1 else ()) + SLATE
    rows, versus = [], []
    for rounds, seed in itertools.product(args.rounds, range(args.seeds)):
        log, contexts = simulator.sample(rounds, seed=1000 + seed)
        interval = rounds in INTERVAL_ROUNDS
        for target_name, slates in pool.items():
            target = SlateTarget.deterministic(log, slates[contexts])
            for name in names:
                boot = (MODEL_BOOTSTRAP if name in MODEL_BASED else BOOTSTRAP) if interval else 0
                est = evaluate_policy_offline(log, target, estimators=(name,), num_bootstrap=boot, seed=seed,
                                              **({"num_folds": FOLDS} if name in MODEL_BASED else {}))[name]
                rows.append({**case, "rounds": rounds, "seed": seed, "target": target_name, "estimator": name,
                             "value": est.value, "truth": truth[target_name], "ci_low": est.ci_low,
                             "ci_high": est.ci_high})
            if rounds == VERSUS_ROUNDS and target_name in LEARNED:
                for name in VERSUS_ESTIMATORS:
                    boot = MODEL_BOOTSTRAP if name in MODEL_BASED else BOOTSTRAP
                    est = evaluate_policy_offline(log, target, estimators=(name,), num_bootstrap=boot, seed=seed,
                                                  versus_logging=True,
                                                  **({"num_folds": FOLDS} if name in MODEL_BASED else {}))[name]
                    versus.append({**case, "seed": seed, "target": target_name, "estimator": name,
                                   "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                                   "truth": truth[target_name] - logging_value})
    return rows, versus, {"truth": truth, "logging_value": logging_value}


def summarize(rows, versus):
    """Per (estimator, slate size, rounds): bias, RMSE, mean relative error (averaged over the
    cases and targets of the grid), and interval coverage."""
    import collections

    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["estimator"], r["slate_size"], r["rounds"])].append(r)
    table = {}
    for (name, k, n), group in sorted(groups.items()):
        error = np.array([r["value"] - r["truth"] for r in group])
        relative = np.abs(error) / np.array([r["truth"] for r in group])
        # Bias per (case, target) cell, averaged in absolute value (signed biases cancel otherwise).
        cells = collections.defaultdict(list)
        for r in group:
            cells[(r["click_model"], r["catalog"], r["epsilon"], r["target"])].append(r["value"] - r["truth"])
        with_ci = [r for r in group if np.isfinite(r["ci_low"])]
        table.setdefault(name, {}).setdefault(f"slate{k}", {})[str(n)] = {
            "abs_bias": float(np.mean([abs(np.mean(v)) for v in cells.values()])),
            "rmse": float(np.sqrt(np.mean(error ** 2))), "relative_error": float(np.mean(relative)),
            "coverage": float(np.mean([r["ci_low"] <= r["truth"] <= r["ci_high"] for r in with_ci]))
            if with_ci else None, "replications": len(group)}
    coverage, replications = {}, {}
    for name in SINGLE + SLATE:
        with_ci = [r for r in rows if r["estimator"] == name and np.isfinite(r["ci_low"])]
        if with_ci:
            coverage[name] = float(np.mean([r["ci_low"] <= r["truth"] <= r["ci_high"] for r in with_ci]))
            replications[name] = len(with_ci)
    slate3 = {name: table[name]["slate3"][str(VERSUS_ROUNDS)]["relative_error"] for name in SLATE
              if "slate3" in table.get(name, {}) and str(VERSUS_ROUNDS) in table[name]["slate3"]}
    best = min(slate3, key=slate3.get) if slate3 else None
    versus_summary = {}
    for name in VERSUS_ESTIMATORS:
        group = [v for v in versus if v["estimator"] == name]
        if group:
            versus_summary[name] = {
                "coverage": float(np.mean([v["ci_low"] <= v["truth"] <= v["ci_high"] for v in group])),
                "mean_abs_error": float(np.mean([abs(v["value"] - v["truth"]) for v in group])),
                "replications": len(group)}
    return table, coverage, replications, slate3, best, versus_summary


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [k for k in GRID["slate_size"]]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), sharey=True)
    for ax, k in zip(np.atleast_1d(axes), sizes):
        for name, by_size in table.items():
            cells = by_size.get(f"slate{k}")
            if not cells:
                continue
            ns = sorted(int(n) for n in cells)
            ax.plot(ns, [cells[str(n)]["rmse"] for n in ns], marker="o", label=name,
                    linestyle="--" if name in MODEL_BASED else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("logged rounds")
        ax.set_title(f"slates of {k}")
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("RMSE of V̂(π) (clicks per slate)")
    np.atleast_1d(axes)[-1].legend(fontsize=7, ncol=2)
    fig.suptitle("Off-policy estimators on generated logs (greedy, DQN, multi-agent targets)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/ope.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: next to --out, *_rmse.png)")
    parser.add_argument("--seeds", type=int, default=GRID["seeds"])
    parser.add_argument("--rounds", type=int, nargs="+", default=list(GRID["rounds"]))
    parser.add_argument("--rl-steps", type=int, default=60)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.time()
    stack = build_stack(args)
    rows, versus, truths = [], [], []
    for case in cases():
        t = time.time()
        case_rows, case_versus, info = run_case(stack, case, args)
        rows += case_rows
        versus += case_versus
        truths.append({**case, **info})
        print(f"{case} in {time.time() - t:.1f}s (truth {info['truth']}, logging {info['logging_value']:.4f})",
              file=sys.stderr)
    table, coverage, replications, slate3, best, versus_summary = summarize(rows, versus)
    out = pathlib.Path(args.out)
    plot_path = pathlib.Path(args.plot) if args.plot else out.with_name(out.stem + "_rmse.png")
    plot(table, plot_path)
    payload = {
        "benchmark": "ope", "machine": machine(),
        "grid": {**GRID, "seeds": args.seeds, "rounds": list(args.rounds), "targets": list(TARGETS),
                 "bootstrap": BOOTSTRAP, "model_bootstrap": MODEL_BOOTSTRAP, "model_folds": FOLDS,
                 "interval_rounds": list(INTERVAL_ROUNDS), "contexts": NUM_CONTEXTS,
                 "no_click_utility": NO_CLICK_UTILITY,
                 "logging_policy": "epsilon-per-slot exploration around the K most popular candidates",
                 "rl_steps": args.rl_steps, "pretrain_epochs": args.pretrain_epochs},
        "coverage": coverage, "coverage_replications": replications,
        "slate3_relative_error_10k": slate3,
        "slate3_best_estimator_10k": best,
        "slate3_best_relative_error_10k": slate3.get(best) if best else None,
        "versus_logging": versus_summary,
        "estimators": table,
        "truths": truths,
        "versus_logging_examples": [v for v in versus if v["seed"] == 0 and v["estimator"] == "cascade_dr"],
        "stack_seconds": stack["seconds"], "seconds": time.time() - started, "peak_rss_mb": peak_rss_mb(),
    }
    write_json(out, payload)
    print(f"coverage {coverage}\nslate3 @10k {slate3} (best {best})\nversus logging {versus_summary}")


if __name__ == "__main__":
    main()
