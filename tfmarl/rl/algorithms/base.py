"""The one algorithm interface of `tfmarl.rl`, and its registry.

Every RL family (DQN, the per-arm bandits, multi-agent) is an `Algorithm`: built from a pretrained
`SequentialRecommender` (whose User, Content and System agents it learns with) and a fitted
simulator (`tfmarl.envs.UserModel`), it

- ``train(steps)``: trains until its step counter reaches ``steps``; with ``checkpoint_dir`` a
  second call (or a new process) resumes from the last checkpoint, so ``train(n)`` after a finished
  run restores it without training further;
- ``slate_policy()``: the learned policy as a `tfmarl.rl.SlatePolicy` over plain session
  observations (``{"history", "step"}``), for `tfmarl.envs.run_episodes` and evaluation;
- ``export(dir)``: a new SavedModel version with the `tfmarl.contract` serving signature
  (retrieval → learned scorer → slate);
- ``learn_from(feedback)``: keeps learning from a stream of feedback that arrives from elsewhere
  (where the family supports it).

`make_algorithm(name, model, user_model, **options)` builds one by name; `ALGORITHMS` lists them.
The CLI, `benchmarks/` and `examples/` all go through this interface, and nothing outside this
registry branches on an algorithm's name. A new family subclasses `Algorithm`, implements
``_build``, ``train``, ``slate_policy`` and ``scorer``, and registers itself with `register`.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf

ALGORITHMS: dict = {}


def register(*names: str):
    """Class decorator: registers an `Algorithm` subclass under ``names``."""

    def decorate(cls):
        for name in names:
            ALGORITHMS[name] = cls
        return cls

    return decorate


def make_algorithm(name: str, model, user_model, **options) -> "Algorithm":
    """The algorithm registered as ``name`` (see `ALGORITHMS`), built with ``options`` (the shared
    ones of `Algorithm` and the family's own)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown RL algorithm {name!r}; choose one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name](model, user_model, algorithm=name, **options)


class Algorithm:
    """Base class of the RL families (see the module docstring for the contract).

    Args:
      model: the pretrained `SequentialRecommender`: candidate retrieval (frozen) and the agents the
        family learns with.
      user_model: the simulator's `UserModel` (training sessions use its ``"train"`` users).
      session_config: the `tfmarl.envs.SessionConfig` of the training sessions.
      candidates: N, the retrieved candidates a policy chooses its slate among.
      batch_size: concurrent simulated sessions.
      seed: environment, exploration and initialisation seed.
      item_counts: training popularity per item index (the novelty signal; popularity baselines).
      new_items: item indices that arrive over time in the training sessions (catalog churn, on
        ``session_config.new_item_arrival_steps``; see `tfmarl.envs.SessionEnvironment`); the
        retriever then proposes only the items that exist.
      new_item_candidates: places among the N candidates reserved for the best new items (those
        the pretrained Content agent does not know; `tfmarl.rl.CandidateRetriever`).
      checkpoint_dir: resumable checkpoints; log_dir: TensorBoard.
      strategy: a `tf.distribute.Strategy` to build and train under (default: the current one).
    """

    def __init__(self, model, user_model, *, algorithm: str | None = None, session_config=None,
                 candidates: int = 100, batch_size: int = 64, seed: int = 0, item_counts=None, new_items=None,
                 new_item_candidates: int = 0,
                 checkpoint_dir=None, log_dir=None, strategy: tf.distribute.Strategy | None = None, **options):
        from tfmarl.envs import SessionConfig
        from tfmarl.rl.retrieval import CandidateRetriever

        self.name = algorithm or type(self).__name__.lower()
        self.model = model
        self.user_model = user_model
        self.session_config = session_config or SessionConfig()
        self.candidates = int(candidates)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.item_counts = item_counts
        self.new_items = None if new_items is None else np.asarray(new_items, np.int64)
        self.checkpoint_dir = pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.log_dir = log_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.retriever = CandidateRetriever(model, num_candidates=self.candidates,
                                            new_item_candidates=new_item_candidates)
        tf.keras.utils.set_random_seed(self.seed)
        self._build(**options)

    @property
    def slate_size(self) -> int:
        return self.session_config.slate_size

    def session_environment(self, batch_size: int | None = None):
        """A training `SessionEnvironment` (the simulator's train users) for this algorithm."""
        from tfmarl.envs import SessionEnvironment

        return SessionEnvironment(self.user_model, self.session_config, batch_size=batch_size or self.batch_size,
                                  users="train", seed=self.seed, new_items=self.new_items)

    def _single_replica(self) -> None:
        """Families whose loop trains on one replica refuse multi-replica strategies up front."""
        if self.strategy.num_replicas_in_sync > 1:
            raise ValueError(f"{self.name} trains on one replica; under {type(self.strategy).__name__} with "
                             f"{self.strategy.num_replicas_in_sync} replicas use the multiagent algorithm, or "
                             "tfmarl.rl.DistributedLearner on collected transitions (docs/distributed.md)")

    # --- the contract ----------------------------------------------------------------------
    def _build(self, **options) -> None:
        raise NotImplementedError

    def train(self, steps: int, *, progress: bool = False):
        """Trains until the step counter reaches ``steps`` (resuming from ``checkpoint_dir``);
        returns a result with ``seconds``, ``train_steps_per_second``, ``env_steps_per_second`` and
        the learning ``curve``."""
        raise NotImplementedError

    def slate_policy(self):
        """The learned policy as a `SlatePolicy` over ``{"history", "step"}`` observations."""
        raise NotImplementedError

    def scorer(self):
        """``(score, variables)`` for `tfmarl.export.export_candidate_recommender`."""
        raise NotImplementedError

    def learn_from(self, feedback, **kwargs):
        """Keeps learning from feedback that arrives from elsewhere (see `MultiAgentTrainer.learn_from`)."""
        raise TypeError(f"{self.name} learns only by stepping its simulator (train); learn_from is supported by: "
                        + ", ".join(sorted(n for n, c in ALGORITHMS.items() if c.learn_from is not Algorithm.learn_from)))

    def export(self, export_dir, *, k: int = 10, retrieval: str = "brute_force", index_options: dict | None = None,
               metadata: dict | None = None, warmup: bool = True) -> pathlib.Path:
        """Writes version ``<n+1>`` of ``export_dir``: retrieval of the N candidates, this
        algorithm's learned scorer, the top ``k`` (the `tfmarl.contract` signature). ``retrieval``
        and ``index_options`` (the knobs of ``"partitioned"``) as in `tfmarl.export.export_recommender`."""
        from tfmarl.export.policy import export_candidate_recommender

        score, variables = self.scorer()
        return export_candidate_recommender(self.model, score, export_dir, variables=variables, k=k,
                                            num_candidates=self.candidates, retrieval=retrieval,
                                            index_options=index_options,
                                            metadata={"algorithm": self.name, **(metadata or {})}, warmup=warmup)
