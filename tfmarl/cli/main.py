"""The `tfmarl` command line: one config drives data -> pretrain -> RL -> evaluate -> export.

    tfmarl quickstart                 the full multi-agent pipeline on built-in synthetic data
    tfmarl train CONFIG               every stage (resumable; finished stages are skipped)
    tfmarl evaluate CONFIG            ranking + simulated-session metrics (runs missing stages)
    tfmarl simulate CONFIG            roll out policies in the fitted simulator
    tfmarl export CONFIG              write a new SavedModel version
    tfmarl serve --model_base_path P  a local server speaking TF Serving's REST API
    tfmarl config                     print the default config (a starting point for CONFIG)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _pipeline(args, config=None):
    import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)
    from tfmarl.cli.config import load_config
    from tfmarl.cli.pipeline import Pipeline

    config = config or load_config(args.config)
    if getattr(args, "run_dir", None):
        config.run_dir = args.run_dir
    return Pipeline(config, fresh=getattr(args, "fresh", False), progress=not getattr(args, "no_progress", False))


def cmd_quickstart(args) -> int:
    from tfmarl.cli.config import default_config

    config = default_config()
    config.run_dir = args.run_dir
    config.export.dir = args.export_dir
    started = time.perf_counter()
    pipeline = _pipeline(args, config)
    state = pipeline.run()
    _summary(pipeline, state)
    print(f"\ndone in {time.perf_counter() - started:.0f}s: report {pipeline.run_dir / 'report.md'}; "
          f"TensorBoard: tensorboard --logdir {pipeline.run_dir / 'tensorboard'}")
    return 0


def _summary(pipeline, state) -> None:
    from tfmarl.cli.report import format_table

    metrics = state.get("metrics", {})
    if metrics.get("ranking"):
        r = metrics["ranking"]
        print("\nNext-item ranking (test split, full catalog):")
        print(format_table([{"model": "pretrained", **r}], ["model"] + [k for k in r if "@" in k]))
    if metrics.get("online"):
        print(f"\nSimulated sessions, held-out users ({metrics['episodes']} per policy):")
        print(format_table([{"policy": k, **v} for k, v in metrics["online"].items()],
                           ["policy", "return_mean", "ctr_mean", "session_length_mean", "diversity", "coverage"]))


def cmd_train(args) -> int:
    pipeline = _pipeline(args)
    stages = args.stages.split(",") if args.stages else None
    state = pipeline.run(stages) if stages else pipeline.run()
    _summary(pipeline, state)
    return 0


def cmd_evaluate(args) -> int:
    pipeline = _pipeline(args)
    _summary(pipeline, pipeline.run(["evaluate"]))
    return 0


def cmd_export(args) -> int:
    pipeline = _pipeline(args)
    marker = pipeline.run_dir / "stages" / "export.json"
    if marker.exists():
        marker.unlink()  # an explicit export always writes a new version
    state = pipeline.run(["export"])
    print(state["export"]["path"])
    return 0


def cmd_simulate(args) -> int:
    import numpy as np

    pipeline = _pipeline(args)
    state = pipeline.run(["rl"])
    from tfmarl.cli.report import format_table
    from tfmarl.envs import SessionEnvironment, run_episodes
    from tfmarl.rl import GreedySlatePolicy, PopularSlatePolicy, RandomSlatePolicy

    session = pipeline._session_config()
    k = session.slate_size
    makers = {"random": lambda: RandomSlatePolicy(state["vocab"].size, k, seed=args.seed),
              "popular": lambda: PopularSlatePolicy(state["counts"], k),
              "greedy": lambda: GreedySlatePolicy(state["retriever"], k), "learned": pipeline.learned_policy}
    rows = []
    for name in args.policies.split(","):
        if name not in makers:
            raise SystemExit(f"unknown policy {name!r}; choose from {', '.join(makers)}")
        policy = makers[name]()
        if policy is None:
            raise SystemExit("no learned policy: the config's rl.algorithm is 'none'")
        env = SessionEnvironment(state["user_model"], session, batch_size=100, users=args.users, seed=args.seed)
        r = run_episodes(env, policy, args.episodes)
        rows.append({"policy": name, "return": float(np.mean(r["return"])), "ctr": float(np.mean(r["ctr"])),
                     "length": float(np.mean(r["length"])), "diversity": r["diversity"], "coverage": r["coverage"]})
    print(format_table(rows, ["policy", "return", "ctr", "length", "diversity", "coverage"]))
    return 0


def cmd_config(args) -> int:
    from tfmarl.cli.config import default_config, dump_config

    print(dump_config(default_config()), end="")
    return 0


def cmd_serve(args) -> int:
    from tfmarl.serving.server import run

    return run(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfmarl", description="Multi-agent RL recommenders on TensorFlow.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name, help_text, func):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("config", help="YAML config (see `tfmarl config`)")
        sub.add_argument("--run-dir", help="override the config's run_dir")
        sub.add_argument("--fresh", action="store_true", help="delete the run directory first")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
        sub.set_defaults(func=func)
        return sub

    q = commands.add_parser("quickstart", help="the full multi-agent pipeline on built-in synthetic data")
    q.add_argument("--run-dir", default="runs/quickstart")
    q.add_argument("--export-dir", default="savedmodels/quickstart")
    q.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)
    train = with_config("train", "run every stage (resumable)", cmd_train)
    train.add_argument("--stages", help="comma-separated stages to run up to, e.g. data,pretrain")
    with_config("evaluate", "ranking and simulated-session metrics", cmd_evaluate)
    with_config("export", "export a new SavedModel version", cmd_export)
    simulate = with_config("simulate", "roll out policies in the fitted simulator", cmd_simulate)
    simulate.add_argument("--policies", default="random,popular,greedy,learned")
    simulate.add_argument("--episodes", type=int, default=500)
    simulate.add_argument("--users", default="heldout", choices=["train", "heldout", "all"])
    simulate.add_argument("--seed", type=int, default=0)
    commands.add_parser("config", help="print the default YAML config").set_defaults(func=cmd_config)
    serve = commands.add_parser("serve", help="serve a model base path over TF Serving's REST API")
    from tfmarl.serving.server import add_arguments

    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarl.cli.config import ConfigError
    from tfmarl.data.errors import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"tfmarl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
