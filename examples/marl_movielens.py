"""The User, Content and System agents learning together, with an adaptive reward (MovieLens
simulator), through the algorithm interface.

    .venv/bin/python examples/marl_movielens.py path/to/ml-100k [--fine-tune]

- User agent: its interest head picks an interest facet per slot (softmax over Q_U(s, f), learnable
  temperature), from the UserAgent's state of the visible history.
- Content agents: one proposal head per domain (group of facets), over the ContentAgent's item vectors.
- System agent: the critic head on the SystemAgent's score; composes the slate; credits each Content
  agent (difference reward); adapts the reward weights (Lagrange multipliers) to keep diversity and
  satisfaction above their floors while maximising clicks per session.
With --fine-tune RL also fine-tunes the agents' pretrained layers (default: frozen).
"""

import sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
import numpy as np
from tfmarl.data import build_sequences, leave_one_out, load_movielens
from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes
from tfmarl.rl import GreedySlatePolicy, make_algorithm
from tfmarl.training import SequentialRecommender, get_strategy, pretrain

args = [a for a in sys.argv[1:] if a != "--fine-tune"]
if len(args) != 1:
    sys.exit(__doc__)
interactions = load_movielens(args[0])
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)
model = SequentialRecommender(item_vocabulary=vocab)
pretrain(model, split.train, split.valid, epochs=20, verbose=2)
user_model = fit_user_model(interactions, vocab)

marl = make_algorithm("multiagent", model, user_model, candidates=100, batch_size=64, facets=8, domains=2,
                      item_counts=np.bincount(split.train.items, minlength=vocab.size),
                      diversity_floor=1.5, satisfaction_floor=1.5, trainable_encoders="--fine-tune" in sys.argv,
                      strategy=get_strategy("auto"), log_dir="runs/examples/marl",
                      checkpoint_dir="runs/examples/marl/checkpoints")
marl.train(1500, progress=True)
print("reward weights:", marl.reward.weights)

for name, policy in (("greedy", GreedySlatePolicy(marl.retriever, 10)), ("marl", marl.slate_policy())):
    r = run_episodes(SessionEnvironment(user_model, batch_size=100, users="heldout", seed=1), policy, 500)
    print(f"{name}: return {np.mean(r['return']):.2f}, diversity {r['diversity']:.3f}")

print(marl.export("savedmodels/marl", k=10))
