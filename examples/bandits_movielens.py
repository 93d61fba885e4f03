"""Contextual bandits with per-arm features in the simulator fitted from MovieLens.

    .venv/bin/python examples/bandits_movielens.py path/to/ml-100k

Pretrains the two-tower model, fits the session simulator, then trains LinUCB (crossed
features) and NeuralLinUCB (towers over the pretrained user/item vectors) on one-item
recommendations through the algorithm interface and compares their slates with the greedy
two-towerimport sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
import numpy as np
from tfmarl.data import build_sequences, leave_one_out, load_movielens
from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes
from tfmarl.rl import GreedySlatePolicy, make_algorithm
from tfmarl.training import SequentialRecommender, pretrain

if len(sys.argv) != 2:
    sys.exit(__doc__)
interactions = load_movielens(sys.argv[1])
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)
model = SequentialRecommender(item_vocabulary=vocab)
pretrain(model, split.train, split.valid, epochs=20, verbose=2)
user_model = fit_user_model(interactions, vocab)


def evaluate(policy):
    env = SessionEnvironment(user_model, batch_size=100, users="heldout", seed=1)
    return float(np.mean(run_episodes(env, policy, 300)["return"]))


for name in ("linucb", "neural_linucb"):  # LinUCB on crossed features, NeuralLinUCB on the agents' vectors
    bandit = make_algorithm(name, model, user_model, candidates=50, batch_size=32, encoder_train_steps=100,
                            log_dir=f"runs/examples/{name}")
    if name == "linucb":
        print("greedy two-tower:", evaluate(GreedySlatePolicy(bandit.retriever, 10)))
    result = bandit.train(300, progress=True)
    print(name, "regret per round:", result.curve[0]["regret"], "->", result.curve[-1]["regret"])
    print(name, "slates:", evaluate(bandit.slate_policy()))
