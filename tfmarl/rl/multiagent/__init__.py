"""Multi-agent RL: the User, Content and System agents learn together, with an adaptive reward.

TF-Agents has no multi-agent support. Here the pretrained agents (`tfmarl.agents` layers) carry RL
heads in one `MultiAgentNetwork` — the User agent's interest head, one proposal head per Content
agent (domain), the System agent's critic head — trained centrally from joint transitions by the
`MultiAgentLearner` (one shared encoder pass and one joint TD step per train step) and executed
decentrally (`compose_slate`, `MultiAgentSlatePolicy`). `MultiAgentTrainer` runs the loop.
"""

from tfmarl.rl.multiagent.composition import allocate_slots, compose_slate
from tfmarl.rl.multiagent.facets import Facets, build_facets, kmeans
from tfmarl.rl.multiagent.learner import MultiAgentLearner
from tfmarl.rl.multiagent.networks import MultiAgentNetwork
from tfmarl.rl.multiagent.policy import MultiAgentSlatePolicy
from tfmarl.rl.multiagent.reward import SIGNALS, AdaptiveReward, novelty_table, slate_diversity
from tfmarl.rl.multiagent.trainer import MultiAgentTrainer, MultiAgentTrainResult

__all__ = ["AdaptiveReward", "Facets", "MultiAgentLearner", "MultiAgentNetwork", "MultiAgentSlatePolicy",
           "MultiAgentTrainResult", "MultiAgentTrainer", "SIGNALS", "allocate_slots", "build_facets", "compose_slate",
           "kmeans", "novelty_table", "slate_diversity"]
