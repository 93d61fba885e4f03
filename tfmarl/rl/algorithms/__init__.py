"""One interface for every RL family: `Algorithm` (train / slate_policy / export / learn_from) and
the registry `make_algorithm` / `ALGORITHMS`. Importing this package registers DQN, the bandits and
multi-agent training."""

from tfmarl.rl.algorithms import bandit, dqn, multiagent  # noqa: F401  (register the families)
from tfmarl.rl.algorithms.base import ALGORITHMS, Algorithm, make_algorithm, register

__all__ = ["ALGORITHMS", "Algorithm", "make_algorithm", "register"]
