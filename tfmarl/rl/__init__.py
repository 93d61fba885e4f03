"""Reinforcement learning: TF-Agents bandits and DQN built from the tfmarl agents, slate policies,
training loops.

Agents stay TF-Agents-free; this package adapts them (`networks`) into TF-Agents agents.
"""

from tfmarl.rl.bandits import BANDITS, explore, make_bandit_agent, predicted_rewards
from tfmarl.rl.dqn import consumed_positions, make_dqn_agent
from tfmarl.rl.learner import (DistributedLearner, LearnerResult, collect_transitions, train_agent_distributed,
                               train_step_variable, transitions_dataset)
from tfmarl.rl.loops import TrainResult, linear_schedule, train_bandit, train_dqn
from tfmarl.rl.networks import CandidateQNetwork, PerArmRewardNetwork, PerArmTowerNetwork, pretrain_towers
from tfmarl.rl.policies import (BanditSlatePolicy, GreedySlatePolicy, PopularSlatePolicy, QSlatePolicy,
                                RandomSlatePolicy, SlatePolicy, SlatePyPolicy, top_positions)
from tfmarl.rl.retrieval import CandidateRetriever

__all__ = [
    "BANDITS", "BanditSlatePolicy", "CandidateQNetwork", "CandidateRetriever", "DistributedLearner",
    "GreedySlatePolicy", "LearnerResult", "collect_transitions", "train_agent_distributed", "train_step_variable",
    "transitions_dataset",
    "PerArmRewardNetwork", "PerArmTowerNetwork", "PopularSlatePolicy", "QSlatePolicy", "RandomSlatePolicy",
    "SlatePolicy", "SlatePyPolicy", "TrainResult", "consumed_positions", "explore", "linear_schedule",
    "make_bandit_agent", "make_dqn_agent", "predicted_rewards", "pretrain_towers", "top_positions", "train_bandit",
    "train_dqn",
]
