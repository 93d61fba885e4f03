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
import pathlib
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _config(args):
    """The command's configuration: the default one for quickstart, else the YAML file given."""
    import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)
    from tfmarl.cli.config import default_config, load_config

    if args.command == "quickstart":
        config = default_config()
        config.export.dir = args.export_dir
    else:
        config = load_config(args.config)
    if getattr(args, "run_dir", None):
        config.run_dir = args.run_dir
    return config


def _pipeline(args, config):
    from tfmarl.cli.pipeline import Pipeline

    return Pipeline(config, fresh=getattr(args, "fresh", False), progress=not getattr(args, "no_progress", False))


def cmd_quickstart(args, config) -> int:
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


def cmd_train(args, config) -> int:
    pipeline = _pipeline(args, config)
    stages = args.stages.split(",") if args.stages else None
    state = pipeline.run(stages) if stages else pipeline.run()
    _summary(pipeline, state)
    return 0


def cmd_evaluate(args, config) -> int:
    pipeline = _pipeline(args, config)
    _summary(pipeline, pipeline.run(["evaluate"]))
    return 0


def cmd_export(args, config) -> int:
    pipeline = _pipeline(args, config)
    marker = pipeline.run_dir / "stages" / "export.json"
    if marker.exists():
        marker.unlink()  # an explicit export always writes a new version
    state = pipeline.run(["export"])
    print(state["export"]["path"])
    return 0


SIMULATED_POLICIES = ("random", "popular", "greedy", "learned")


def cmd_simulate(args, config) -> int:
    import numpy as np

    pipeline = _pipeline(args, config)
    state = pipeline.run(["rl"])
    from tfmarl.cli.config import ConfigError
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
        policy = makers[name]()
        if policy is None:
            raise ConfigError("--policies: no learned policy, the config's rl.algorithm is 'none'")
        env = SessionEnvironment(state["user_model"], session, batch_size=100, users=args.users, seed=args.seed)
        r = run_episodes(env, policy, args.episodes)
        rows.append({"policy": name, "return": float(np.mean(r["return"])), "ctr": float(np.mean(r["ctr"])),
                     "length": float(np.mean(r["length"])), "diversity": r["diversity"], "coverage": r["coverage"]})
    print(format_table(rows, ["policy", "return", "ctr", "length", "diversity", "coverage"]))
    return 0


def cmd_config(args, config=None) -> int:
    from tfmarl.cli.config import default_config, dump_config

    print(dump_config(default_config()), end="")
    return 0


def cmd_serve(args, config=None) -> int:
    from tfmarl.serving.server import run

    return run(args) or 0


EXAMPLES = {
    "quickstart": """example:
  tfmarl quickstart                      # writes runs/quickstart/report.md and savedmodels/quickstart/1
  tfmarl quickstart --fresh --verbose    # start over, with third-party logs on the terminal""",
    "train": """example:
  tfmarl config > my.yaml                # then edit it: data.source, data.path, rl.algorithm, ...
  tfmarl train my.yaml                   # every stage; run it again to resume
  tfmarl train my.yaml --stages data,pretrain""",
    "evaluate": """example:
  tfmarl evaluate my.yaml                # ranking metrics and simulated sessions, held-out users""",
    "export": """example:
  tfmarl export my.yaml                  # a new version under the config's export.dir""",
    "simulate": """example:
  tfmarl simulate my.yaml --policies greedy,learned --episodes 200 --users heldout""",
    "config": """example:
  tfmarl config > my.yaml                # the default config, every key with its default""",
    "serve": """example:
  tfmarl serve --model_base_path savedmodels/quickstart --port 8501
  curl -d '{"inputs": {"history": [["i1", "i2"]]}}' localhost:8501/v1/models/quickstart:predict""",
}

CONSOLE_HELP = ("show third-party warnings and TensorFlow's logs on the terminal (by default they go to "
                "RUN_DIR/logs/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfmarl", description="Multi-agent RL recommenders on TensorFlow.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__ + "\n" + EXAMPLES["quickstart"])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text, func):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(func=func)
        return sub

    def with_config(name, help_text, func):
        sub = command(name, help_text, func)
        sub.add_argument("config", help="YAML config (see `tfmarl config`)")
        sub.add_argument("--run-dir", help="override the config's run_dir")
        sub.add_argument("--fresh", action="store_true", help="delete the run directory first")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
        sub.add_argument("--verbose", action="store_true", help=CONSOLE_HELP)
        return sub

    q = command("quickstart", "the full multi-agent pipeline on built-in synthetic data", cmd_quickstart)
    q.add_argument("--run-dir", default="runs/quickstart")
    q.add_argument("--export-dir", default="savedmodels/quickstart")
    q.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    q.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    q.add_argument("--verbose", action="store_true", help=CONSOLE_HELP)
    train = with_config("train", "run every stage (resumable)", cmd_train)
    train.add_argument("--stages", help="comma-separated stages to run up to, e.g. data,pretrain")
    with_config("evaluate", "ranking and simulated-session metrics", cmd_evaluate)
    with_config("export", "export a new SavedModel version", cmd_export)
    simulate = with_config("simulate", "roll out policies in the fitted simulator", cmd_simulate)
    simulate.add_argument("--policies", default=",".join(SIMULATED_POLICIES),
                          help=f"comma-separated, from {', '.join(SIMULATED_POLICIES)}")
    simulate.add_argument("--episodes", type=int, default=500)
    simulate.add_argument("--users", default="heldout", choices=["train", "heldout", "all"])
    simulate.add_argument("--seed", type=int, default=0)
    command("config", "print the default YAML config", cmd_config)
    serve = command("serve", "serve a model base path over TF Serving's REST (8501) and gRPC (8500) APIs", cmd_serve)
    from tfmarl.serving.server import add_arguments

    add_arguments(serve)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate":
        unknown = [p for p in args.policies.split(",") if p not in SIMULATED_POLICIES]
        if unknown:  # before any stage runs
            parser.error(f"--policies: unknown policy {unknown[0]!r}; choose from {', '.join(SIMULATED_POLICIES)}")
    from tfmarl.cli.config import ConfigError
    from tfmarl.data.errors import DataError

    try:
        if not hasattr(args, "verbose"):  # config, serve: no pipeline, nothing to quieten
            return args.func(args)
        return _run_pipeline_command(args)
    except (ConfigError, DataError) as e:
        print(f"tfmarl: error: {e}", file=sys.stderr)
        return 2


def _run_pipeline_command(args) -> int:
    """Runs a pipeline command with third-party output in ``run_dir/logs/`` (unless --verbose);
    an unexpected exception prints its last frames and where the whole traceback is."""
    from tfmarl.cli.console import QuietConsole, describe_failure

    console = QuietConsole(args.command, verbose=args.verbose)
    try:
        with console:
            config = _config(args)  # may import TensorFlow: already inside the block
            if console.keep_in(pathlib.Path(config.run_dir) / "logs") is not None:
                print(console.notice(), flush=True)
            return args.func(args, config)
    except KeyboardInterrupt:
        print("\ntfmarl: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
    except Exception as e:
        from tfmarl.cli.config import ConfigError
        from tfmarl.data.errors import DataError

        if isinstance(e, (ConfigError, DataError)):
            console.discard()
            raise
        if args.verbose:
            raise
        console.record("".join(traceback.format_exception(e)))
        print(describe_failure(e, console.path), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
