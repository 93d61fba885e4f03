"""Multi-agent RL (User, Content and System agents) in the session simulator fitted from MovieLens.

    python benchmarks/marl.py --data ../shared/data/ml-100k --out benchmarks/results/marl_ml100k.json

Same simulator, pretrained retrieval model, seeds and held-out users as `benchmarks/rl.py`
(whose functions it reuses). Every variant trains through the algorithm interface
(`tfmarl.rl.make_algorithm("multiagent", ...)`, the code `tfmarl train` runs). Trains, per seed, `marl` and its ablations on the simulator's train
users and evaluates them on held-out users:
  marl (= marl_frozen)       User agent (interest head) + one Content agent per domain (proposal
                             heads) + System agent (critic, composition, adaptive reward), the
                             pretrained agents' layers frozen (the default)
  marl_fine_tuned            the same with the agents' layers fine-tuned end to end by RL
  marl_no_critic             no centralised critic: every head bootstraps from itself
  marl_fixed_reward          reward weights frozen at their start (clicks only)
  marl_fixed_shaped_reward   reward weights frozen at the mean weights of the same seed's marl run:
                             is it the shaping or its adaptation during training that pays?
  marl_single_content_agent  one Content agent owns every facet
The baselines of #3 (random, popular, greedy, linucb, neural_linucb, dqn) come from
``--baselines`` (the rl benchmark's JSON, when its settings match) or are recomputed.
The System agent's stated objective: maximise clicks per session subject to
  mean slate diversity >= diversity_floor (x greedy's) and mean satisfaction per step >= floor.
Writes the JSON and a PNG of the reward weights over training and of the comparison.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402
from rl import POLICIES, compare_policies, evaluate, setup, summarize  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Everything this long run will use, imported now: later edits to the sources cannot reach it.
import tfmarl.export.policy  # noqa: E402,F401
import tfmarl.export.warmup  # noqa: E402,F401
import tfmarl.data  # noqa: E402,F401
import tfmarl.envs.candidates  # noqa: E402,F401
import tfmarl.envs.metrics  # noqa: E402,F401
import tfmarl.envs.session  # noqa: E402,F401
import tfmarl.rl.algorithms  # noqa: E402,F401
import tfmarl.training  # noqa: E402,F401
import tfmarl.rl.multiagent  # noqa: E402,F401

VARIANTS = {
    "marl": {},  # the default: frozen agents' layers (recorded as marl_frozen too)
    "marl_fine_tuned": {"trainable_encoders": True},
    "marl_no_critic": {"use_critic": False},
    "marl_fixed_reward": {"adaptive_reward": False},
    "marl_fixed_shaped_reward": {"adaptive_reward": False},  # initial weights: the marl run's mean weights
    "marl_single_content_agent": {"num_content_agents": 1},
}
SAME_RUN = {"marl_frozen": "marl"}  # names recorded from another variant's runs
MAIN = ("marl", "marl_fine_tuned")  # run for every seed; the ablations for the first --ablation-seeds


def mean_weights(curve) -> dict:
    """The reward multipliers averaged over a training curve (points carry ``weight/<signal>``)."""
    names = {k[len("weight/"):] for point in curve for k in point if k.startswith("weight/")}
    return {n: float(np.mean([p[f"weight/{n}"] for p in curve])) for n in names}


def train_variant(name, ctx, args, seed, floors, initial_weights=None):
    from tfmarl.rl import linear_schedule, make_algorithm

    algorithm = make_algorithm("multiagent", ctx["model"], ctx["user_model"], candidates=args.candidates,
                               batch_size=64, seed=seed, item_counts=ctx["counts"], facets=args.facets,
                               domains=args.domains, floors=floors, gamma=0.9, initial_weights=initial_weights,
                               epsilon=linear_schedule(0.2, 0.02, args.steps // 3), **VARIANTS[name])
    return algorithm, algorithm.train(args.steps)


def load_baselines(path, args):
    try:
        previous = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    settings = previous.get("settings", {})
    # The protocol (episodes, pretraining, data) must match; the number of seeds need not.
    same = all(settings.get(k) == getattr(args, k) for k in ("episodes", "pretrain_epochs")) and \
        pathlib.Path(settings.get("data", "")).resolve() == pathlib.Path(args.data).resolve()
    if not same:
        print(f"{path}: settings differ from this run; recomputing the baselines", file=sys.stderr)
        return None
    return {name: previous["policies"][name] for name in POLICIES}


def plot(path, summary, weight_curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    names = list(summary)
    axes[0].bar(names, [summary[n]["return_mean"] for n in names], yerr=[summary[n]["return_ci95"] for n in names],
                capsize=4, color=["#c44e52" if n.startswith("marl") else "#4c72b0" for n in names])
    axes[0].set_title("Return per session, held-out users (95% CI over seeds)")
    axes[0].tick_params(axis="x", rotation=40)
    for signal, style in (("satisfaction", "-"), ("diversity", "--")):
        for i, curve in enumerate(weight_curves):
            axes[1].plot([p["step"] for p in curve], [p[f"weight/{signal}"] for p in curve], style,
                         color="C0" if signal == "satisfaction" else "C1", alpha=0.7,
                         label=f"{signal} weight" if i == 0 else None)
    axes[1].set_title("System agent: adaptive reward weights during training (marl, every seed)")
    axes[1].set_xlabel("environment step (batch of 64 sessions)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a MovieLens directory, e.g. ml-100k (see README: Getting MovieLens)")
    parser.add_argument("--out", default="benchmarks/results/marl_ml100k.json")
    parser.add_argument("--baselines", default="benchmarks/results/rl_ml100k.json")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ablation-seeds", type=int, default=None, help="seeds of the ablations (default: --seeds)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100, help="candidates the multi-agent policy chooses among")
    parser.add_argument("--facets", type=int, default=8)
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--diversity-floor", type=float, default=1.5, help="x greedy's slate diversity")
    parser.add_argument("--satisfaction-floor", type=float, default=1.5, help="mean satisfaction per step")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--export", help="model base path to export seed 0's marl policy to")
    # Settings of the rl benchmark, used if its baselines must be recomputed.
    parser.add_argument("--bandit-rounds", type=int, default=300)
    parser.add_argument("--dqn-steps", type=int, default=1500)
    parser.add_argument("--ope-epsilon", type=float, default=0.5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.ablation_seeds = args.seeds if args.ablation_seeds is None else min(args.ablation_seeds, args.seeds)

    from tfmarl.rl import CandidateRetriever, make_algorithm

    ctx = setup(args)
    # The floors, stated relative to the greedy two-tower's slate diversity, are the same for every run.
    probe = make_algorithm("multiagent", ctx["model"], ctx["user_model"], candidates=args.candidates,
                           facets=args.facets, domains=args.domains, floors={})
    greedy_diversity = probe.greedy_diversity()
    floors = {"diversity": args.diversity_floor * greedy_diversity, "satisfaction": args.satisfaction_floor}

    per_seed = {name: [] for name in VARIANTS}  # an ablation's list holds its --ablation-seeds runs
    weight_curves, curves, speed = [], {name: [] for name in VARIANTS}, {name: [] for name in VARIANTS}
    for seed in range(args.seeds):
        for name in VARIANTS:
            if name not in MAIN and seed >= args.ablation_seeds:
                continue
            t0 = time.perf_counter()
            shaped = mean_weights(curves["marl"][-1]) if name == "marl_fixed_shaped_reward" else None
            algorithm, result = train_variant(name, ctx, args, seed, floors, shaped)
            per_seed[name].append(evaluate(algorithm.slate_policy(), ctx, args, seed))
            curves[name].append(result.curve)
            speed[name].append(result.train_steps_per_second)
            if name == "marl":
                weight_curves.append(result.curve)
                if seed == 0 and args.export:
                    path = algorithm.export(args.export, k=10, metadata={"benchmark": "marl", "policy": "marl"})
                    print(f"exported {path}", file=sys.stderr)
            print(f"seed {seed} {name}: return {per_seed[name][-1]['return']:.2f} "
                  f"({time.perf_counter() - t0:.0f}s, {result.train_steps_per_second:.1f} train steps/s)",
                  file=sys.stderr)

    summary = {}
    baselines = load_baselines(args.baselines, args)
    baseline_source = args.baselines
    if baselines is None:
        rl_args = argparse.Namespace(**{**vars(args), "candidates": 50})
        rl_ctx = dict(ctx, retriever=CandidateRetriever(ctx["model"], num_candidates=50))
        baselines, *_ = compare_policies(rl_ctx, rl_args)
        baseline_source = "recomputed"
    summary.update(baselines)
    summary.update({name: summarize(rows) for name, rows in per_seed.items()})
    summary.update({alias: dict(summary[source], same_run_as=source) for alias, source in SAME_RUN.items()})
    out = pathlib.Path(args.out)
    plot(out.with_suffix(".png"), summary, weight_curves)
    greedy, dqn, marl = (summary[n]["return_mean"] for n in ("greedy", "dqn", "marl"))
    payload = {
        "benchmark": "marl", "machine": machine(), "dataset": ctx["interactions"].name,
        "protocol": ("same simulator, pretrained retrieval, seeds and held-out users as benchmarks/rl.py; "
                     "the multi-agent policy chooses among the top-N retrieved candidates; return = clicks per session"),
        "settings": vars(args), "baselines_from": baseline_source,
        "objective": {"maximise": "clicks per session", "floors": floors,
                      "greedy_slate_diversity_pretrained_vectors": greedy_diversity},
        "policies": summary,
        "ratios": {"marl_over_greedy": marl / greedy, "marl_over_dqn": marl / dqn,
                   "marl_over_marl_fixed_reward": marl / summary["marl_fixed_reward"]["return_mean"],
                   "marl_over_marl_fixed_shaped_reward": marl / summary["marl_fixed_shaped_reward"]["return_mean"],
                   "marl_diversity_minus_greedy": summary["marl"]["diversity"] - summary["greedy"]["diversity"],
                   "marl_fine_tuned_over_marl_frozen": summary["marl_fine_tuned"]["return_mean"] / marl},
        "targets": {"marl_over_greedy": 1.15, "marl_over_dqn": 1.0, "marl_over_marl_fixed_reward": 1.0,
                    "marl_diversity_minus_greedy": 0.0},
        "marl_train_steps_per_second": float(np.mean(speed["marl"])),
        "train_steps_per_second": {name: float(np.mean(v)) for name, v in speed.items()},
        "default_variant": {"marl": "marl_frozen (trainable_encoders=False)"},
        "curves": curves, "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
    }
    write_json(out, payload)


if __name__ == "__main__":
    main()
