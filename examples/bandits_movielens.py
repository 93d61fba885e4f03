"""Contextual bandits with per-arm features in the simulator fitted from MovieLens.

    .venv/bin/python examples/bandits_movielens.py ../shared/data/ml-100k

Pretrains the two-tower model, fits the session simulator, then trains LinUCB (crossed
features) and NeuralLinUCB (towers over the pretrained user/item vectors) on one-item
recommendations and compares their slates with the greedy two-tower on held-out users.
"""

import sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
import numpy as np
from tfmarl.data import build_sequences, leave_one_out, load_movielens
from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes
from tfmarl.envs.bandit import PerArmBanditEnvironment
from tfmarl.rl import BanditSlatePolicy, CandidateRetriever, GreedySlatePolicy, make_bandit_agent, train_bandit
from tfmarl.training import SequentialRecommender, pretrain

interactions = load_movielens(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-100k")
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)
model = SequentialRecommender(item_vocabulary=vocab)
pretrain(model, split.train, split.valid, epochs=20, verbose=2)
user_model = fit_user_model(interactions, vocab)
retriever = CandidateRetriever(model, num_candidates=50)


def evaluate(policy):
    env = SessionEnvironment(user_model, batch_size=100, users="heldout", seed=1)
    return float(np.mean(run_episodes(env, policy, 300)["return"]))


print("greedy two-tower:", evaluate(GreedySlatePolicy(retriever, 10)))
for name, features in (("linucb", "crossed"), ("neural_linucb", "item")):
    env = PerArmBanditEnvironment(user_model, retriever, retriever.item_vectors, 50, arm_features=features)
    agent = make_bandit_agent(name, env, encoding_network_num_train_steps=100)
    result = train_bandit(agent, env, 300, log_dir=f"runs/examples/{name}", progress=True)
    print(name, "regret per round:", result.curve[0]["regret"], "->", result.curve[-1]["regret"])
    print(name, "slates:", evaluate(BanditSlatePolicy(agent.policy, retriever, 10, arm_features=features)))
