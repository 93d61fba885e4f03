"""Multi-agent RL: User, Content and System agents that learn together, with an adaptive reward.

TF-Agents has no multi-agent support; here each role is a TF-Agents `DqnAgent` (or the
documented `CriticBootstrapDqnAgent` extension) trained centrally from joint transitions and
executed decentrally (`compose_slate`). See `roles` for the three roles.
"""

from tfmarl.rl.multiagent.facets import Facets, build_facets, kmeans
from tfmarl.rl.multiagent.reward import SIGNALS, AdaptiveReward, novelty_table, slate_diversity
from tfmarl.rl.multiagent.roles import (CriticBootstrapDqnAgent, MultiAgentRoles, MultiAgentSlatePolicy, allocate_slots,
                                        compose_slate, domain_mask_splitter)
from tfmarl.rl.multiagent.trainer import MultiAgentTrainer, MultiAgentTrainResult

__all__ = ["AdaptiveReward", "CriticBootstrapDqnAgent", "Facets", "MultiAgentRoles", "MultiAgentSlatePolicy",
           "MultiAgentTrainResult",
           "MultiAgentTrainer", "SIGNALS", "allocate_slots", "build_facets", "compose_slate", "domain_mask_splitter",
           "kmeans", "novelty_table", "slate_diversity"]
