"""Reinforcement learning with the tfmarl agents: one algorithm interface (`make_algorithm`: DQN, the
per-arm bandits, multi-agent), slate policies, training loops, and the TF-Agents pieces they use.

The agents (`tfmarl.agents`) stay TF-Agents-free; this package adapts them (`networks`,
`multiagent.MultiAgentNetwork`) into TF-Agents networks and learners.
"""

from tfmarl.rl.algorithms import ALGORITHMS, Algorithm, make_algorithm, register
from tfmarl.rl.bandits import BANDITS, explore, build_bandit, predicted_rewards
from tfmarl.rl.dqn import consumed_positions, build_dqn
from tfmarl.rl.learner import (DistributedLearner, LearnerResult, collect_transitions, train_agent_distributed,
                               train_step_variable, transitions_dataset)
from tfmarl.rl.loops import TrainResult, linear_schedule, train_bandit, train_dqn
from tfmarl.rl.networks import CandidateQNetwork, PerArmRewardNetwork, PerArmTowerNetwork, pretrain_towers
from tfmarl.rl.policies import (BanditSlatePolicy, GreedySlatePolicy, PopularSlatePolicy, QSlatePolicy,
                                RandomSlatePolicy, SlatePolicy, SlatePyPolicy, top_positions)
from tfmarl.rl.retrieval import CandidateRetriever

__all__ = [
    "ALGORITHMS", "Algorithm", "make_algorithm", "register", "BANDITS", "BanditSlatePolicy", "CandidateQNetwork", "CandidateRetriever", "DistributedLearner",
    "GreedySlatePolicy", "LearnerResult", "collect_transitions", "train_agent_distributed", "train_step_variable",
    "transitions_dataset",
    "PerArmRewardNetwork", "PerArmTowerNetwork", "PopularSlatePolicy", "QSlatePolicy", "RandomSlatePolicy",
    "SlatePolicy", "SlatePyPolicy", "TrainResult", "consumed_positions", "explore", "linear_schedule",
    "build_bandit", "build_dqn", "predicted_rewards", "pretrain_towers", "top_positions", "train_bandit",
    "train_dqn",
]
