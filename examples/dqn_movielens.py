"""Double DQN over retrieved candidates, through the algorithm interface; the Q-network is built from
the pretrained User and Content agents (frozen, the default; trainable_encoders=True fine-tunes them).

    .venv/bin/python examples/dqn_movielens.py path/to/ml-100k
"""

import sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
import numpy as np
from tfmarl.data import build_sequences, leave_one_out, load_movielens
from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes
from tfmarl.export import save_policy
from tfmarl.rl import GreedySlatePolicy, linear_schedule, make_algorithm
from tfmarl.training import SequentialRecommender, pretrain

if len(sys.argv) != 2:
    sys.exit(__doc__)
interactions = load_movielens(sys.argv[1])
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)
model = SequentialRecommender(item_vocabulary=vocab)
pretrain(model, split.train, split.valid, epochs=20, verbose=2)
user_model = fit_user_model(interactions, vocab)

dqn = make_algorithm("dqn", model, user_model, candidates=50, batch_size=64, gamma=0.9,
                     epsilon=linear_schedule(0.3, 0.02, 750), log_dir="runs/examples/dqn",
                     checkpoint_dir="runs/examples/dqn/checkpoints")
dqn.train(1500, progress=True)

for name, policy in (("greedy", GreedySlatePolicy(dqn.retriever, 10)), ("dqn", dqn.slate_policy())):
    held_out = SessionEnvironment(user_model, batch_size=100, users="heldout", seed=1)
    print(name, "return per session:", np.mean(run_episodes(held_out, policy, 500)["return"]))

print(save_policy(dqn.tf_agent.policy, "savedmodels/dqn_policy"))  # TF-Agents PolicySaver
print(dqn.export("savedmodels/dqn", k=10))  # the tfmarl serving contract
