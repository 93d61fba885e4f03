"""RL policies in the session simulator fitted from MovieLens, plus TF-Agents' own MovieLens bandit.

    python benchmarks/rl.py --data ../shared/data/ml-100k --out benchmarks/results/rl_ml100k.json

1. Fits the session simulator (`fit_user_model`) and pretrains the two-tower sequential model
   (transformer User agent) on the ML-100k leave-one-out train split; the pretrained model
   retrieves N candidates for every policy that needs them.
2. For each seed: trains LinUCB and NeuralLinUCB in the per-arm bandit environment and
   (Double) DQN in the candidate session environment, on the simulator's *train* users; then
   evaluates every policy (random, popular, greedy two-tower, linucb, neural_linucb, dqn) on
   the *held-out* users: return per session, CTR, session length, catalog coverage and
   intra-list diversity. Reports the mean and 95% CI (t) over seeds.
3. TF-Agents' `MovieLensPerArmPyEnvironment` (u.data, rank 20, 20 arms, batch 8): cumulative
   regret of TF-Agents' LinUCB configured as in its MovieLens example (alpha 10, tikhonov 0.001,
   per-arm) vs tfmarl's NeuralLinUCB whose towers were pretrained on the logged ratings; same
   rounds and seeds.
4. Off-policy evaluation: the LinUCB run logs its contexts, arms, actions and propensities
   (ε-exploration); IPS, SNIPS, DM and DR estimate the greedy two-tower policy's click rate from
   those logs, compared with its true (oracle) value.
Writes the JSON and a PNG of learning curves and the policy comparison.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402

import tfmarl  # noqa: E402,F401  (selects tf_keras before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

POLICIES = ("random", "popular", "greedy", "linucb", "neural_linucb", "dqn")


# Student t 0.975 quantiles for 1..30 degrees of freedom (then ~normal).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t_ci95(values) -> float:
    """Half-width of the 95% t confidence interval of the mean."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n < 2:
        return float("nan")
    quantile = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return float(quantile * values.std(ddof=1) / np.sqrt(n))


def summarize(rows) -> dict:
    """Per-seed evaluation rows of one policy -> the benchmark's summary: each metric's mean and
    95% CI over seeds, and the per-seed values."""
    summary = {}
    for metric, key in (("return", "return_mean"), ("ctr", "ctr_mean"), ("session_length", "session_length_mean"),
                        ("coverage", "coverage"), ("diversity", "diversity")):
        values = [r[metric] for r in rows]
        summary.update({key: float(np.mean(values)), f"{metric}_ci95": t_ci95(values)})
    summary.update(seeds=len(rows), per_seed={metric: [r[metric] for r in rows] for metric in rows[0]})
    return summary


def setup(args):
    from tfmarl.data import build_sequences, leave_one_out, load_movielens
    from tfmarl.envs import fit_user_model
    from tfmarl.rl import CandidateRetriever
    from tfmarl.training import SequentialRecommender, pretrain

    interactions = load_movielens(args.data)
    sequences, vocab = build_sequences(interactions)
    split = leave_one_out(sequences)
    user_model = fit_user_model(interactions, vocab, dim=16, seed=0)
    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(item_vocabulary=vocab, dim=64, max_length=50,
                                  item_frequencies=np.bincount(split.train.items, minlength=vocab.size))
    started = time.perf_counter()
    result = pretrain(model, split.train, split.valid, epochs=args.pretrain_epochs, patience=3, verbose=0)
    print(f"pretrained in {time.perf_counter() - started:.0f}s, val NDCG@10 {result.best_metric:.4f}", file=sys.stderr)
    retriever = CandidateRetriever(model, num_candidates=args.candidates)
    counts = np.bincount(split.train.items, minlength=vocab.size)
    return {"interactions": interactions, "vocab": vocab, "split": split, "user_model": user_model, "model": model,
            "retriever": retriever, "counts": counts, "pretrain_val_ndcg@10": result.best_metric}


def evaluate(policy, ctx, args, seed):
    from tfmarl.envs import SessionEnvironment, run_episodes

    env = SessionEnvironment(ctx["user_model"], batch_size=100, users="heldout", seed=10_000 + seed)
    r = run_episodes(env, policy, args.episodes)
    return {"return": float(np.mean(r["return"])), "ctr": float(np.mean(r["ctr"])),
            "session_length": float(np.mean(r["length"])), "coverage": float(r["coverage"]),
            "diversity": float(r["diversity"])}


def train_bandit_policy(name, ctx, args, seed, ope_log=None, rounds=None):
    """A per-arm bandit through the algorithm interface (the code `tfmarl train` runs)."""
    from tfmarl.rl import make_algorithm

    rounds = rounds or args.bandit_rounds
    algorithm = make_algorithm(name, ctx["model"], ctx["user_model"], candidates=args.candidates, batch_size=32,
                               seed=seed, encoder_train_steps=rounds // 3,
                               exploration_epsilon=args.ope_epsilon if ope_log else 0.0, ope_log=ope_log)
    result = algorithm.train(rounds)
    return algorithm.slate_policy(), result


def train_dqn_policy(ctx, args, seed):
    """Double DQN through the algorithm interface (the code `tfmarl train` runs)."""
    from tfmarl.rl import linear_schedule, make_algorithm

    algorithm = make_algorithm("dqn", ctx["model"], ctx["user_model"], candidates=args.candidates, batch_size=64,
                               seed=seed, double=True, gamma=0.9,
                               epsilon=linear_schedule(0.3, 0.02, args.dqn_steps // 2))
    result = algorithm.train(args.dqn_steps)
    return algorithm.slate_policy(), result, algorithm


def compare_policies(ctx, args):
    from tfmarl.rl import GreedySlatePolicy, PopularSlatePolicy, RandomSlatePolicy

    per_seed = {name: [] for name in POLICIES}
    curves = {"dqn": [], "linucb": [], "neural_linucb": []}
    speed = {"dqn_train_steps_per_second": [], "dqn_env_steps_per_second": [], "bandit_rounds_per_second": []}
    dqn_objects = None
    for seed in range(args.seeds):
        started = time.perf_counter()
        fixed = {"random": RandomSlatePolicy(ctx["vocab"].size, 10, seed=seed),
                 "popular": PopularSlatePolicy(ctx["counts"], 10),
                 "greedy": GreedySlatePolicy(ctx["retriever"], 10)}
        for name, policy in fixed.items():
            per_seed[name].append(evaluate(policy, ctx, args, seed))
        for name in ("linucb", "neural_linucb"):
            policy, result = train_bandit_policy(name, ctx, args, seed)
            per_seed[name].append(evaluate(policy, ctx, args, seed))
            curves[name].append(result.curve)
            speed["bandit_rounds_per_second"].append(result.train_steps_per_second)
        policy, result, objects = train_dqn_policy(ctx, args, seed)
        dqn_objects = dqn_objects or objects
        per_seed["dqn"].append(evaluate(policy, ctx, args, seed))
        curves["dqn"].append(result.curve)
        speed["dqn_train_steps_per_second"].append(result.train_steps_per_second)
        speed["dqn_env_steps_per_second"].append(result.env_steps_per_second)
        print(f"seed {seed} ({time.perf_counter() - started:.0f}s): " + ", ".join(
            f"{n} {per_seed[n][-1]['return']:.2f}" for n in POLICIES), file=sys.stderr)
    summary = {name: summarize(rows) for name, rows in per_seed.items()}
    return summary, curves, {k: float(np.mean(v)) for k, v in speed.items()}, dqn_objects


def off_policy_evaluation(ctx, args):
    """LinUCB trains with ε-uniform exploration and its loop logs every round with exact
    propensities; from those logs IPS, SNIPS, DM and DR estimate the click rate of the greedy
    two-tower policy (always the top retrieved candidate, arm 0), compared with its oracle value
    on the same user pool."""
    from tfmarl.envs.bandit import PerArmBanditEnvironment
    from tfmarl.evaluation import BanditLogWriter, evaluate_policy_offline, fit_reward_model, read_logs

    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="tfmarl-ope-"))
    with BanditLogWriter(log_dir, flush_every=8192) as writer:
        train_bandit_policy("linucb", ctx, args, seed=1234, ope_log=writer, rounds=args.ope_rounds)
    log = read_logs(log_dir)
    n, arms = len(log), log.num_arms
    target = np.zeros((n, arms))
    target[:, 0] = 1.0
    estimates = evaluate_policy_offline(log, target, fit_reward_model(log), seed=0)
    env = PerArmBanditEnvironment(ctx["user_model"], ctx["retriever"], ctx["retriever"].item_vectors, args.candidates,
                                  batch_size=256, users="train", seed=777)
    true_values = []
    for _ in range(40):
        env.reset()
        true_values.append(env.expected_rewards()[:, 0].mean())
    truth = float(np.mean(true_values))
    return {name: {"estimate": e.value, "ci95": [e.ci_low, e.ci_high], "true_value": truth,
                   "abs_error": abs(e.value - truth), "rounds": n, "behaviour_epsilon": args.ope_epsilon}
            for name, e in estimates.items()}


def movielens_per_arm(args):
    """TF-Agents' LinUCB (its MovieLens example's settings) vs tfmarl NeuralLinUCB with pretrained towers."""
    from tf_agents.bandits.agents import lin_ucb_agent
    from tf_agents.bandits.environments import movielens_per_arm_py_environment

    from tfmarl.rl import PerArmTowerNetwork, build_bandit, pretrain_towers
    from tfmarl.rl.bandits import _tensor_specs

    data_file = str(pathlib.Path(args.data) / "u.data")
    results = {"linucb": [], "tfmarl": []}
    for seed in range(args.movielens_seeds):
        for name in results:
            np.random.seed(seed)
            random.seed(seed)
            tf.keras.utils.set_random_seed(seed)
            env = movielens_per_arm_py_environment.MovieLensPerArmPyEnvironment(
                data_file, 20, batch_size=8, num_actions=20, csv_delimiter="\t")
            if name == "linucb":
                time_step_spec, action_spec = _tensor_specs(env)
                agent = lin_ucb_agent.LinearUCBAgent(time_step_spec, action_spec, tikhonov_weight=0.001, alpha=10.0,
                                                     accepts_per_arm_features=True, dtype=tf.float32)
            else:
                # The towers are pretrained on the logged ratings (u.data) in the environment's own
                # feature space: user rows of U, movie rows of V (the env's rank-20 SVD).
                encoder = PerArmTowerNetwork(tf.nest.map_structure(
                    lambda s: tf.TensorSpec(s.shape, s.dtype), env.observation_spec()), encoding_dim=20)
                ratings = np.loadtxt(data_file, dtype=np.int64)[:, :3]
                users, movies = ratings[:, 0] - 1, ratings[:, 1] - 1
                # pylint: disable=protected-access  (the env's features; same SVD the env computed)
                pretrain_towers(encoder, env._u_hat[users], env._v_hat[movies], ratings[:, 2].astype(np.float32),
                                epochs=20, seed=seed)
                agent = build_bandit("neural_linucb", env, encoder=encoder, encoding_network_num_train_steps=-1,
                                          alpha=1.0)
            regret = _run_movielens(agent, env, args.movielens_rounds)
            results[name].append(regret)
            print(f"movielens per-arm seed {seed} {name}: cumulative regret {regret[-1]:.1f}", file=sys.stderr)
    return {"steps": args.movielens_rounds, "batch_size": 8, "num_actions": 20, "rank": 20,
            "seeds": args.movielens_seeds,
            "linucb_regret": float(np.mean([r[-1] for r in results["linucb"]])),
            "tfmarl_regret": float(np.mean([r[-1] for r in results["tfmarl"]])),
            "tfmarl_pretraining": "towers pretrained on every logged rating in u.data, with the environment's own "
                                  "user/movie feature rows (the observations it shows) for those pairs; the reward is "
                                  "the rank-20 SVD reconstruction of the same rating matrix, so the gap measures a "
                                  "warm start from the logs, not faster online learning",
            "linucb_regret_per_seed": [float(r[-1]) for r in results["linucb"]],
            "tfmarl_regret_per_seed": [float(r[-1]) for r in results["tfmarl"]],
            "curves": {k: np.mean(v, axis=0)[:: max(args.movielens_rounds // 50, 1)].tolist() for k, v in results.items()}}


def _run_movielens(agent, env, rounds):
    """Cumulative expected regret (mean over the batch) after each round."""
    from tf_agents.trajectories import time_step as ts
    from tf_agents.trajectories import trajectory
    from tf_agents.utils import common

    act = common.function(agent.collect_policy.action)
    train = common.function(agent.train)
    time_step = env.reset()
    cumulative, total = [], 0.0
    b = env.batch_size
    for _ in range(rounds):
        observation = time_step.observation
        step = act(ts.TimeStep(tf.fill([b], ts.StepType.FIRST), tf.zeros([b]), tf.ones([b]),
                               tf.nest.map_structure(lambda x: tf.constant(x, tf.float32), observation)))
        next_step = env.step(step.action.numpy())
        regret = env.compute_optimal_reward() - next_step.reward
        total += float(np.mean(regret))
        cumulative.append(total)
        experience = trajectory.Trajectory(
            tf.fill([b, 1], ts.StepType.FIRST),
            tf.nest.map_structure(lambda x: tf.constant(x, tf.float32)[:, None], observation),
            step.action[:, None], tf.nest.map_structure(lambda x: x[:, None], step.info),
            tf.fill([b, 1], ts.StepType.LAST), tf.constant(next_step.reward, tf.float32)[:, None], tf.zeros([b, 1]))
        train(experience)
        time_step = next_step
    return np.array(cumulative)


def env_speed(ctx):
    from tfmarl.envs import SessionEnvironment
    from tfmarl.envs.session import random_slates

    env = SessionEnvironment(ctx["user_model"], batch_size=1000, users="all", seed=0)
    rng = np.random.default_rng(0)
    env.reset()
    started, steps = time.perf_counter(), 200
    for _ in range(steps):
        env.step(random_slates(rng, 1000, 10, env.num_items))
    return 1000 * steps / (time.perf_counter() - started)


def plot(path, summary, curves, movielens):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = list(summary)
    means = [summary[n]["return_mean"] for n in names]
    errors = [summary[n]["return_ci95"] for n in names]
    axes[0].bar(names, means, yerr=errors, capsize=4, color="#4c72b0")
    axes[0].set_title("Return per session, held-out users (95% CI over seeds)")
    axes[0].tick_params(axis="x", rotation=30)
    for run in curves["dqn"]:
        xs = [p["step"] for p in run if "session_return" in p]
        axes[1].plot(xs, [p["session_return"] for p in run if "session_return" in p], alpha=0.6)
    axes[1].axhline(summary["greedy"]["return_mean"], color="k", ls="--", label="greedy two-tower (held-out)")
    axes[1].set_title("DQN: return of training sessions")
    axes[1].set_xlabel("environment step (batch of 64 sessions)")
    axes[1].legend()
    if movielens:
        xs = np.linspace(0, movielens["steps"], len(movielens["curves"]["linucb"]))
        axes[2].plot(xs, movielens["curves"]["linucb"], label="TF-Agents LinUCB (example config)")
        axes[2].plot(xs, movielens["curves"]["tfmarl"], label="tfmarl NeuralLinUCB, pretrained towers")
        axes[2].set_title("MovieLensPerArmPyEnvironment: cumulative regret")
        axes[2].set_xlabel("round (batch of 8)")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a MovieLens directory, e.g. ml-100k (see README: Getting MovieLens)")
    parser.add_argument("--out", default="benchmarks/results/rl_ml100k.json")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=1000, help="held-out sessions per policy and seed")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--bandit-rounds", type=int, default=300)
    parser.add_argument("--dqn-steps", type=int, default=1500)
    parser.add_argument("--ope-epsilon", type=float, default=0.5)
    parser.add_argument("--ope-rounds", type=int, default=1000, help="logged rounds (batches of 32) for OPE")
    parser.add_argument("--movielens-rounds", type=int, default=1000)
    parser.add_argument("--movielens-seeds", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ctx = setup(args)
    summary, curves, speed, _ = compare_policies(ctx, args)
    ope = off_policy_evaluation(ctx, args)
    movielens = movielens_per_arm(args) if args.movielens_rounds > 0 else None
    out = pathlib.Path(args.out)
    plot(out.with_suffix(".png"), summary, curves, movielens)
    greedy = summary["greedy"]["return_mean"]
    payload = {
        "benchmark": "rl", "machine": machine(), "dataset": ctx["interactions"].name,
        "protocol": ("session simulator fitted from ML-100k (weighted ALS, 16 dims); policies trained on the "
                     "simulator's train users, evaluated on held-out users; slate 10; N retrieved candidates "
                     "from the pretrained transformer two-tower model; return = clicks per session"),
        "settings": vars(args), "pretrain_val_ndcg@10": ctx["pretrain_val_ndcg@10"],
        "policies": summary,
        "ratios": {"dqn_over_greedy": summary["dqn"]["return_mean"] / greedy},
        "targets": {"dqn_over_greedy": 1.10, "tfmarl_regret_over_linucb_regret": 0.5},
        "env_steps_per_second": env_speed(ctx), **speed,
        "movielens_per_arm": movielens, "ope": ope,
        "curves": {"dqn": curves["dqn"], "linucb": curves["linucb"], "neural_linucb": curves["neural_linucb"]},
        "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
    }
    if movielens:
        payload["ratios"]["tfmarl_regret_over_linucb_regret"] = movielens["tfmarl_regret"] / movielens["linucb_regret"]
    write_json(out, payload)


if __name__ == "__main__":
    main()
