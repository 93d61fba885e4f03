"""Speed of this tree against a baseline commit, measured by this one script on one machine.

    python benchmarks/speed.py --data ../shared/data/ml-100k --baseline 6e7d902 --out benchmarks/results/speed.json

The baseline is checked out in a temporary `git worktree` and every measurement runs twice, once
per tree, in a child process whose ``PYTHONPATH`` (and working directory) is that tree: the same
code below drives both, with the same settings. Parts (``--parts``, default all):

- ``dqn``, ``multiagent``: steady-state RL train steps per second (median of ``--repeats`` runs
  per tree, the trees alternating; every run is recorded). ML-100k, the session simulator
  (``fit_user_model``, dim 16) and a pretrained transformer two-tower model (dim 64, max_length
  50); 64 sessions per environment step, 100 retrieved candidates, one train step per
  environment step after warm-up, the algorithms' default replay batch (128), frozen agents for
  the multi-agent policy (its default). The rate is measured between the ``--skip``-th
  environment step and the last one (tracing and warm-up excluded) from time stamps taken in the
  environment's ``step``; one train step follows every environment step in both trees.
- ``returns``: the return per held-out session (``--episodes`` simulator sessions) of DQN and the
  multi-agent policy after ``--return-steps`` training steps, over ``--return-seeds`` seeds (mean
  and 95% t interval); same settings as the throughput parts. The speed-ups must leave them
  unchanged within their intervals (``returns_within_ci``).
- ``pretrain``: next-item targets per second of pretraining and the NDCG@10 it reaches
  (`speed_pretrain.measure`).
- ``tests``: wall time of the README's test command (``make test``: the pytest line of its
  Makefile recipe, read from each tree) in each tree, with this virtualenv (the environment build
  is the same for both and not counted). The tests ``make test`` leaves out (``make test-slow``;
  CI runs both) are not timed here.
- ``demo``: wall time of ``tfmarl quickstart`` (what ``make demo`` runs) in each tree.
- ``profile``: this tree only: where a multi-agent step's time goes, call by call, next to the
  floating-point work of its compiled calls and the time those dots take alone on this machine
  (`speed_profile.measure`; ``multiagent_flop_floor`` sets that floor beside the 5x target when the
  ``multiagent`` part ran in the same invocation).

Ratios are new ÷ baseline for throughputs and new ÷ baseline for times (``test_suite_ratio``,
``demo_ratio``: lower is better).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

import tfmarl  # noqa: E402,F401  (selects tf_keras before TensorFlow; the tree PYTHONPATH names)

REPO = pathlib.Path(__file__).resolve().parents[1]
RL_PARTS = ("dqn", "multiagent")


# --- probes (run in a child process, against whichever tree PYTHONPATH names) --------------------
class StepClock:
    """Time stamps of every environment step (patched into the candidate environment's class)."""

    stamps: list = []
    cpu: list = []  # process CPU seconds (all threads) at the same moments

    @classmethod
    def install(cls):
        from tfmarl.envs.candidates import CandidateSessionEnvironment

        name = "_session_step" if hasattr(CandidateSessionEnvironment, "_session_step") else "_step"
        original = getattr(CandidateSessionEnvironment, name)

        def timed_step(self, action):
            out = original(self, action)
            cls.stamps.append(time.perf_counter())
            cls.cpu.append(time.process_time())
            return out

        setattr(CandidateSessionEnvironment, name, timed_step)

    @classmethod
    def rates(cls, skip: int) -> dict:
        stamps, cpu = cls.stamps[skip:], cls.cpu[skip:]
        if len(stamps) < 2:
            raise RuntimeError(f"only {len(cls.stamps)} environment steps were timed; raise --steps above --skip")
        steps = len(stamps) - 1
        return {"train_steps_per_second": steps / (stamps[-1] - stamps[0]), "timed_steps": steps,
                "cpu_ms_per_step": 1000 * (cpu[-1] - cpu[0]) / steps}


def rl_setup(args):
    import numpy as np
    import tensorflow as tf
    from tfmarl.data import build_sequences, leave_one_out, load_movielens
    from tfmarl.envs import fit_user_model
    from tfmarl.training import SequentialRecommender, pretrain

    interactions = load_movielens(args.data)
    sequences, vocab = build_sequences(interactions)
    split = leave_one_out(sequences)
    user_model = fit_user_model(interactions, vocab, dim=16, seed=0)
    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(item_vocabulary=vocab, dim=64, max_length=50,
                                  item_frequencies=np.bincount(split.train.items, minlength=vocab.size))
    pretrain(model, split.train, split.valid, epochs=args.pretrain_epochs, verbose=0)
    counts = np.bincount(split.train.items, minlength=vocab.size)
    return model, user_model, counts


def train_rl(kind: str, args, model, user_model, counts, steps: int, seed: int):
    """Trains ``kind`` for ``steps`` environment steps in the current tree; returns its slate policy."""
    import tensorflow as tf
    import tfmarl.rl as rl

    epsilon = rl.linear_schedule(0.3, 0.02, steps // 2)
    tf.keras.utils.set_random_seed(seed)
    if hasattr(rl, "make_algorithm"):  # the current interface
        options = {"floors": {"satisfaction": 1.5}} if kind == "multiagent" else {}  # the baseline's reward
        algorithm = rl.make_algorithm(kind, model, user_model, candidates=args.candidates, batch_size=64,
                                      seed=seed, item_counts=counts, epsilon=epsilon, **options)
        algorithm.train(steps)
        return algorithm.slate_policy()
    # the baseline's (6e7d902)
    from tfmarl.envs import SessionEnvironment
    from tfmarl.envs.candidates import CandidateSessionEnvironment

    retriever = rl.CandidateRetriever(model, num_candidates=args.candidates)
    session = SessionEnvironment(user_model, batch_size=64, users="train", seed=seed)
    if kind == "dqn":
        env = CandidateSessionEnvironment(session, retriever, args.candidates)
        agent, q_network = rl.make_dqn_agent(env, model, double=True, gamma=0.9)
        rl.train_dqn(agent, q_network, env, steps, epsilon=epsilon, seed=seed)
        return rl.QSlatePolicy(q_network, 10, retriever=retriever)
    from tfmarl.rl.multiagent import (AdaptiveReward, MultiAgentRoles, MultiAgentSlatePolicy, MultiAgentTrainer,
                                      build_facets)

    facets = build_facets(retriever.item_vectors, 8, 2, seed=seed)
    env = CandidateSessionEnvironment(session, retriever, args.candidates, include_state=True,
                                      item_facets=facets.item_facet)
    roles = MultiAgentRoles(env, retriever.item_vectors, facets, gamma=0.9)
    trainer = MultiAgentTrainer(roles, env, retriever.item_vectors, counts,
                                reward=AdaptiveReward({"satisfaction": 1.5}, learning_rate=0.05),
                                epsilon=epsilon, seed=seed)
    trainer.run(steps)
    return MultiAgentSlatePolicy(roles, retriever)


def probe_rl(kind: str, args) -> dict:
    """Steady-state train steps/s of ``kind`` ("dqn" or "multiagent") in the current tree."""
    import numpy as np

    model, user_model, counts = rl_setup(args)
    StepClock.install()
    train_rl(kind, args, model, user_model, counts, args.steps, args.seed)
    return {**StepClock.rates(args.skip), "load_average": list(os.getloadavg()), "steps": args.steps, "skip": args.skip,
            "candidates": args.candidates, "env_batch": 64, "seed": args.seed,
            "tfmarl": str(pathlib.Path(__import__("tfmarl").__file__).parent), "numpy": np.__version__}


def probe_returns(args) -> dict:
    """Return per held-out session (mean over ``--episodes`` sessions) of DQN and the multi-agent
    policy after ``--return-steps`` training steps, for seeds 0..``--return-seeds``-1."""
    import numpy as np
    from rl import t_ci95  # benchmarks/rl.py's interval, as every RL benchmark reports it
    from tfmarl.envs import SessionEnvironment, run_episodes

    model, user_model, counts = rl_setup(args)
    out = {}
    for kind in args.return_kinds.split(","):
        values = []
        for seed in range(args.return_seeds):
            policy = train_rl(kind, args, model, user_model, counts, args.return_steps, seed)
            env = SessionEnvironment(user_model, batch_size=100, users="heldout", seed=10_000 + seed)
            values.append(float(np.mean(run_episodes(env, policy, args.episodes)["return"])))
            print(f"{kind} seed {seed}: return {values[-1]:.3f}", file=sys.stderr, flush=True)
        out[kind] = {"per_seed": values, "mean": float(np.mean(values)), "ci95": t_ci95(values)}
    return out


def probe(args) -> dict:
    if args.probe in RL_PARTS:
        return probe_rl(args.probe, args)
    if args.probe == "returns":
        return probe_returns(args)
    if args.probe == "profile":
        from speed_profile import measure

        return measure(args, rl_setup=rl_setup, train_rl=train_rl, step_clock=StepClock)
    if args.probe == "pretrain":
        from speed_pretrain import measure

        return measure()  # its own defaults: the same settings in both trees
    raise ValueError(f"unknown probe {args.probe!r}")


# --- the driver ---------------------------------------------------------------------------------
def child_env(tree: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("CI", None)
    return env


def profile_env(tree: pathlib.Path, dump_dir: str) -> dict:
    """`child_env` with every XLA module dumped as optimised HLO text (what the profile counts)."""
    from speed_profile import DUMP_ENV

    flags = f"--xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
    return dict(child_env(tree), XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(), **{DUMP_ENV: dump_dir})


def run_probe(tree: pathlib.Path, part: str, args) -> dict:
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--probe", part, "--data", args.data,
               "--steps", str(args.steps), "--skip", str(args.skip), "--candidates", str(args.candidates),
               "--seed", str(args.seed), "--pretrain-epochs", str(args.pretrain_epochs),
               "--return-steps", str(args.return_steps), "--return-seeds", str(args.return_seeds),
               "--episodes", str(args.episodes), "--return-kinds", args.return_kinds]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out, tempfile.TemporaryDirectory() as dump_dir:
        env = profile_env(tree, dump_dir) if part == "profile" else child_env(tree)
        subprocess.run(command + ["--probe-out", out.name], cwd=tree, env=env, check=True)
        return json.loads(pathlib.Path(out.name).read_text())


def timed_command(tree: pathlib.Path, command: list) -> dict:
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=tree, env=child_env(tree), capture_output=True, text=True)
    seconds = time.perf_counter() - began
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    if proc.returncode != 0:  # recorded, not raised: the time of a run with failures still says something
        print(f"{' '.join(command)} failed in {tree} (exit {proc.returncode}):\n" + "\n".join(tail), file=sys.stderr)
    return {"seconds": round(seconds, 1), "exit_code": proc.returncode, "last_lines": tail}


def make_pytest_args(tree: pathlib.Path, target: str) -> list:
    """The pytest arguments of ``target``'s recipe in ``tree``'s Makefile."""
    import shlex

    lines = (tree / "Makefile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{target}:"):
            for recipe in lines[i + 1:]:
                if not recipe.startswith("\t"):
                    break
                if "-m pytest" in recipe:
                    return shlex.split(recipe.split("-m pytest", 1)[1])
    raise ValueError(f"{tree / 'Makefile'}: no `{target}` recipe that runs `python -m pytest`")


def median_run(runs: list) -> dict:
    """The run with the median train steps/s (the lower middle one of an even count)."""
    ranked = sorted(runs, key=lambda r: r["train_steps_per_second"])
    return ranked[(len(ranked) - 1) // 2]


def measure_tree(tree: pathlib.Path, part: str, args) -> dict:
    print(f"[{time.strftime('%H:%M:%S')}] {part} in {tree}", file=sys.stderr, flush=True)
    if part == "tests":
        return timed_command(tree, [sys.executable, "-m", "pytest", *make_pytest_args(tree, "test")])
    if part == "demo":
        with tempfile.TemporaryDirectory() as run_dir:  # a fresh run each time, outside both trees
            return timed_command(tree, [sys.executable, "-c", "import sys; from tfmarl.cli.main import main; "
                                        "sys.exit(main())", "quickstart", "--run-dir", run_dir,
                                        "--export-dir", os.path.join(run_dir, "savedmodels"), "--no-progress"])
    return run_probe(tree, part, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--baseline", default="6e7d902", help="commit to compare with")
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    parser.add_argument("--parts", default="dqn,multiagent,returns,pretrain,tests,demo")
    parser.add_argument("--steps", type=int, default=400, help="environment steps per RL run")
    parser.add_argument("--skip", type=int, default=100, help="environment steps left out of the timing")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per tree of each throughput part")
    parser.add_argument("--pretrain-epochs", type=int, default=2, help="pretraining of the RL runs' model")
    parser.add_argument("--return-steps", type=int, default=1500, help="training steps before the returns are measured")
    parser.add_argument("--return-seeds", type=int, default=3)
    parser.add_argument("--return-kinds", default="dqn,multiagent")
    parser.add_argument("--episodes", type=int, default=500, help="held-out sessions per returns measurement")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # child: one measurement
    parser.add_argument("--probe-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = str(pathlib.Path(args.data).resolve())
    if args.probe:
        pathlib.Path(args.probe_out).write_text(json.dumps(probe(args)))
        return 0

    out = pathlib.Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    base = pathlib.Path(tempfile.mkdtemp(prefix="tfmarl-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.baseline], check=True,
                   capture_output=True)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        result.update(benchmark="speed", machine=machine(), load_average_start=list(os.getloadavg()),
                      baseline=args.baseline, new=commit.strip()[:12],
                      settings={k: getattr(args, k) for k in ("steps", "skip", "candidates", "seed", "pretrain_epochs",
                                                              "repeats")})
        for part in args.parts.split(","):
            if part == "profile":  # this tree only: the baseline's calls are not these
                profile = dict(measure_tree(REPO, part, args), machine=machine(), commit=result["new"])
                result.setdefault("parts", {})[part] = profile
                multiagent = result["parts"].get("multiagent")
                if "multiagent" in args.parts.split(",") and multiagent:
                    baseline_rate = multiagent["baseline"]["train_steps_per_second"]
                    result["multiagent_flop_floor"] = {
                        "target_ms_per_step": 1000 / (5 * baseline_rate), "flop_floor_ms": profile["flop_floor_ms"],
                        "measured_ms_per_step": 1000 / multiagent["new"]["train_steps_per_second"],
                        "floor_speedup": round(profile["flop_floor_steps_per_second"] / baseline_rate, 2)}
                print(json.dumps({part: profile}, indent=1), file=sys.stderr)
                write_json(out, result)
                continue
            # Baseline first, then this tree, back to back: the same machine state for both. The
            # throughput parts alternate ``--repeats`` times and keep each tree's median run: this
            # host's speed drifts 15-30% between minutes, more than some of the gaps measured.
            rounds = args.repeats if part in RL_PARTS else 1
            runs = [(measure_tree(base, part, args), measure_tree(REPO, part, args)) for _ in range(rounds)]
            old, new = (median_run([r[i] for r in runs]) for i in (0, 1)) if part in RL_PARTS else runs[0]
            if rounds > 1:
                old, new = dict(old, runs=[r[0] for r in runs]), dict(new, runs=[r[1] for r in runs])
            # Parts of one file may come from runs on different hosts: each records its own.
            result.setdefault("parts", {})[part] = {"baseline": old, "new": new, "machine": machine(),
                                                    "commit": result["new"]}
            if part in RL_PARTS:
                rate = "train_steps_per_second"
                result[f"{part}_speedup"] = round(new[rate] / old[rate], 2)
                result[f"{part}_speedup_cpu"] = round(old["cpu_ms_per_step"] / new["cpu_ms_per_step"], 2)
            elif part == "returns":
                result["returns_within_ci"] = {
                    kind: abs(new[kind]["mean"] - old[kind]["mean"]) <= max(new[kind]["ci95"], old[kind]["ci95"])
                    for kind in args.return_kinds.split(",")}
            elif part == "pretrain":
                result["pretrain_speedup"] = round(new["targets_per_second"] / old["targets_per_second"], 2)
                result["pretrain_speedup_cpu"] = round(new["targets_per_cpu_second"] / old["targets_per_cpu_second"], 2)
                result["pretrain_ndcg@10_difference"] = round(new["test_ndcg@10"] - old["test_ndcg@10"], 4)
            else:
                result[f"{'test_suite' if part == 'tests' else part}_ratio"] = round(new["seconds"] / old["seconds"], 3)
            print(json.dumps({part: result["parts"][part]}, indent=1), file=sys.stderr)
            write_json(out, result)  # after every part: nothing measured so far is lost
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
