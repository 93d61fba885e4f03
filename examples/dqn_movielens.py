"""Double DQN over retrieved candidates, with a Q-network built from the pretrained agents.

    .venv/bin/python examples/dqn_movielens.py ../shared/data/ml-100k
"""

import sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
import numpy as np
from tfmarl.data import build_sequences, leave_one_out, load_movielens
from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes
from tfmarl.envs.candidates import CandidateSessionEnvironment
from tfmarl.export import export_candidate_recommender, q_network_scorer, save_policy
from tfmarl.rl import CandidateRetriever, GreedySlatePolicy, QSlatePolicy, linear_schedule, make_dqn_agent, train_dqn
from tfmarl.training import SequentialRecommender, pretrain

interactions = load_movielens(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-100k")
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)
model = SequentialRecommender(item_vocabulary=vocab)
pretrain(model, split.train, split.valid, epochs=20, verbose=2)
user_model = fit_user_model(interactions, vocab)
retriever = CandidateRetriever(model, num_candidates=50)

env = CandidateSessionEnvironment(SessionEnvironment(user_model, batch_size=64, users="train"), retriever, 50)
agent, q_network = make_dqn_agent(env, model, double=True, gamma=0.9)  # warm-started from the pretrained agents
train_dqn(agent, q_network, env, 1500, epsilon=linear_schedule(0.3, 0.02, 750), log_dir="runs/examples/dqn",
          checkpoint_dir="runs/examples/dqn/checkpoints", progress=True)

for name, policy in (("greedy", GreedySlatePolicy(retriever, 10)), ("dqn", QSlatePolicy(q_network, 10, retriever=retriever))):
    held_out = SessionEnvironment(user_model, batch_size=100, users="heldout", seed=1)
    print(name, "return per session:", np.mean(run_episodes(held_out, policy, 500)["return"]))

print(save_policy(agent.policy, "savedmodels/dqn_policy"))  # TF-Agents PolicySaver
print(export_candidate_recommender(model, q_network_scorer(q_network, 20), "savedmodels/dqn",
                                   variables=q_network.variables, k=10, num_candidates=50))
