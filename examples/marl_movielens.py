"""User, Content and System agents learning together, with an adaptive reward (MovieLens simulator).

    .venv/bin/python examples/marl_movielens.py ../shared/data/ml-100k

- User agent: picks an interest facet per slot (softmax over Q_U(s, k), learnable temperature).
- Content agents: one per domain (group of facets); each proposes items of its facets.
- System agent: a centralised critic; composes the slate; credits each agent (difference
  reward); adapts the reward weights (Lagrange multipliers) to keep diversity and satisfaction
  above their floors while maximising clicks per session.
"""

import sys

import tfmarl  # noqa: F401  (selects tf_keras; import before TensorFlow)
import numpy as np
from tfmarl.data import build_sequences, leave_one_out, load_movielens
from tfmarl.envs import SessionEnvironment, fit_user_model, run_episodes
from tfmarl.envs.candidates import CandidateSessionEnvironment
from tfmarl.export import export_candidate_recommender, multiagent_scorer
from tfmarl.rl import CandidateRetriever, GreedySlatePolicy, linear_schedule
from tfmarl.rl.multiagent import (AdaptiveReward, MultiAgentRoles, MultiAgentSlatePolicy, MultiAgentTrainer,
                                  build_facets)
from tfmarl.training import SequentialRecommender, pretrain

interactions = load_movielens(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-100k")
sequences, vocab = build_sequences(interactions)
split = leave_one_out(sequences)
model = SequentialRecommender(item_vocabulary=vocab)
pretrain(model, split.train, split.valid, epochs=20, verbose=2)
user_model = fit_user_model(interactions, vocab)
retriever = CandidateRetriever(model, num_candidates=100)
facets = build_facets(retriever.item_vectors, num_facets=8, num_domains=2)  # 2 Content agents

env = CandidateSessionEnvironment(SessionEnvironment(user_model, batch_size=64, users="train"), retriever, 100,
                                  include_state=True, item_facets=facets.item_facet)
roles = MultiAgentRoles(env, retriever.item_vectors, facets)
reward = AdaptiveReward({"diversity": 0.45, "satisfaction": 1.5})  # floors the System agent enforces
trainer = MultiAgentTrainer(roles, env, retriever.item_vectors, np.bincount(split.train.items, minlength=vocab.size),
                            reward=reward, epsilon=linear_schedule(0.2, 0.02, 500), log_dir="runs/examples/marl",
                            checkpoint_dir="runs/examples/marl/checkpoints")
trainer.run(1500, progress=True)
print("reward weights:", reward.weights)

for name, policy in (("greedy", GreedySlatePolicy(retriever, 10)), ("marl", MultiAgentSlatePolicy(roles, retriever))):
    r = run_episodes(SessionEnvironment(user_model, batch_size=100, users="heldout", seed=1), policy, 500)
    print(f"{name}: return {np.mean(r['return']):.2f}, diversity {r['diversity']:.3f}")

print(export_candidate_recommender(model, multiagent_scorer(roles, model, facets), "savedmodels/marl",
                                   variables=roles.variables, k=10, num_candidates=100))
