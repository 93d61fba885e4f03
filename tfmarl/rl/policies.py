"""Slate policies for `tfmarl.envs.SessionEnvironment`: baselines and learned ones.

A slate policy maps a batched session observation ``{"history": [B, L], "step": [B]}`` to a slate
int32 [B, K] of distinct item indices. `SlatePyPolicy` adapts any of them to a TF-Agents
`PyPolicy` so TF-Agents drivers can run them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.bandits.specs import utils as bandit_spec_utils
from tf_agents.policies import py_policy
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts

from tfmarl.data.vocab import NUM_RESERVED
from tfmarl.envs.session import random_slates
from tfmarl.rl.xla import step_function


class SlatePolicy:
    """Base class: ``policy(observation) -> slate int32 [B, slate_size]``.

    ``deterministic``: whether the same observation always gets the same slate (off-policy
    evaluation scores such a policy by its slates; a sampling policy needs its own distribution)."""

    deterministic = True

    def __init__(self, slate_size: int):
        self.slate_size = int(slate_size)

    def __call__(self, observation) -> np.ndarray:
        raise NotImplementedError


class RandomSlatePolicy(SlatePolicy):
    """Uniformly random distinct items."""

    deterministic = False

    def __init__(self, num_items: int, slate_size: int, seed: int = 0):
        super().__init__(slate_size)
        self.num_items = int(num_items)
        self._rng = np.random.default_rng(seed)

    def __call__(self, observation):
        b = len(observation["history"])
        return random_slates(self._rng, b, self.slate_size, self.num_items)


class PopularSlatePolicy(SlatePolicy):
    """The most interacted-with items of the training log, minus the visible history."""

    def __init__(self, item_counts, slate_size: int):
        super().__init__(slate_size)
        counts = np.asarray(item_counts, np.float64).copy()
        counts[:NUM_RESERVED] = -np.inf
        self._order = np.argsort(-counts, kind="stable")[: slate_size + 512].astype(np.int32)

    def __call__(self, observation):
        history = np.asarray(observation["history"])
        seen = (self._order[None, :, None] == history[:, None, :]).any(-1)  # [B, P]
        rank = np.argsort(seen, axis=1, kind="stable")[:, : self.slate_size]
        return self._order[rank]


def fit_history(history, length: int) -> np.ndarray:
    """Histories of any width as the networks observe them in training: each row's known items
    (index >= 2), their last ``length``, right-padded with 0 to ``length`` columns, int32."""
    history = np.asarray(history, np.int32)
    if history.shape[1] == length and ((history >= 2) | (history == 0)).all() and \
            not ((history[:, :-1] == 0) & (history[:, 1:] != 0)).any():
        return history  # already right-padded known items
    out = np.zeros((len(history), length), np.int32)
    for row, items in enumerate(history):
        known = items[items >= 2][-length:]
        out[row, :len(known)] = known
    return out


def top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties to the lower index)."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]


def explore_positions(greedy: np.ndarray, num_candidates: int, epsilon: float, rng: np.random.Generator):
    """Replaces each slot of ``greedy`` [B, K] (positions) with probability ``epsilon`` by a random
    position not already in the slate."""
    if epsilon <= 0:
        return greedy
    b, k = greedy.shape
    swap = rng.random((b, k)) < epsilon
    if not swap.any():
        return greedy
    # Every row's shuffle is drawn (the same random stream whichever rows explore); only the rows
    # that explore are sorted.
    noise = rng.random((b, num_candidates))
    explored = np.flatnonzero(swap.any(axis=1))
    slates, swap = greedy[explored], swap[explored]
    rows = np.arange(len(explored))[:, None]
    taken = np.zeros((len(explored), num_candidates), bool)
    taken[np.broadcast_to(rows, slates.shape)[~swap], slates[~swap]] = True
    shuffled = np.argsort(noise[explored], axis=1)
    free_first = np.take_along_axis(shuffled, np.argsort(taken[rows, shuffled], axis=1, kind="stable"), axis=1)
    out = np.array(greedy, np.int64)
    out[explored] = np.where(swap, free_first[rows, np.cumsum(swap, axis=1) - 1], slates)
    return out


class GreedySlatePolicy(SlatePolicy):
    """The pretrained two-tower model's top K (myopic: the most likely next items)."""

    def __init__(self, retriever, slate_size: int):
        super().__init__(slate_size)
        if retriever.num_candidates < slate_size:
            raise ValueError("the retriever returns fewer candidates than the slate size")
        self._retriever = retriever

    def __call__(self, observation):
        return self._retriever(observation["history"])["candidates"][:, : self.slate_size]


class BanditSlatePolicy(SlatePolicy):
    """Top K of a per-arm bandit policy's predicted rewards over the retrieved candidates.

    ``policy`` is a TF-Agents policy emitting ``predicted_rewards_mean`` (e.g. an agent's
    ``policy``); arm features are built as in `tfmarl.envs.PerArmBanditEnvironment`.
    """

    def __init__(self, policy, retriever, slate_size: int, *, arm_features: str = "item"):
        super().__init__(slate_size)
        self._policy = policy
        self._retriever = retriever
        self._crossed = arm_features == "crossed"
        self._action = tf.function(policy.action)

    def scores(self, observation):
        out = self._retriever(observation["history"])
        state = out["user_state"].astype(np.float32)
        arms = self._retriever.item_vectors[out["candidates"]]
        if self._crossed:
            arms = np.concatenate([arms, state[:, None, :] * arms], axis=-1)
        b = len(state)
        step = ts.TimeStep(tf.fill([b], ts.StepType.FIRST), tf.zeros([b]), tf.ones([b]),
                           {bandit_spec_utils.GLOBAL_FEATURE_KEY: tf.constant(state),
                            bandit_spec_utils.PER_ARM_FEATURE_KEY: tf.constant(arms)})
        return out["candidates"], self._action(step).info.predicted_rewards_mean.numpy()

    def __call__(self, observation):
        candidates, scores = self.scores(observation)
        return np.take_along_axis(candidates, top_positions(scores, self.slate_size), axis=1)


class QSlatePolicy(SlatePolicy):
    """Top K candidates by Q-value (SlateQ-style), with optional ε-exploration per slot.

    Works on `tfmarl.envs.CandidateSessionEnvironment` observations (which carry
    ``candidates``) through `positions`, and on plain session observations through ``__call__``
    (retrieving candidates itself; with ``states_from_retriever``, for a frozen Q-network whose
    agents are the retriever's model's, the retrieval's user state is passed on as the
    observation's ``"state"`` instead of being computed again).
    """

    def __init__(self, q_network, slate_size: int, *, retriever=None, epsilon: float = 0.0, seed: int = 0,
                 states_from_retriever: bool = False):
        super().__init__(slate_size)
        if states_from_retriever and not getattr(q_network, "stores_states", False):
            raise ValueError("states_from_retriever needs a Q-network with frozen agents (trainable_encoders=False)")
        self._states_from_retriever = bool(states_from_retriever)
        self._q = q_network
        self._retriever = retriever
        self.epsilon = float(epsilon)
        self._rng = np.random.default_rng(seed)
        self._q_values = step_function(lambda obs: q_network(obs, training=False)[0],
                                       distributed=tf.distribute.has_strategy())

    @property
    def deterministic(self) -> bool:
        return self.epsilon == 0  # with ε > 0 its slot distribution has a closed form (tfmarl.evaluation.ope)

    def q_values(self, observation) -> np.ndarray:
        length = int(self._q.input_tensor_spec["history"].shape[0])
        observation = dict(observation, history=fit_history(observation["history"], length))
        obs = {k: tf.constant(np.asarray(observation[k], np.int32)) for k in ("history", "step", "candidates")}
        if "state" in observation and getattr(self._q, "stores_states", False):  # computed once, upstream
            obs["state"] = tf.constant(np.asarray(observation["state"], np.float32))
        return self._q_values(obs).numpy()

    def positions(self, observation) -> np.ndarray:
        """Slate as candidate positions [B, K] for an observation with ``candidates``."""
        return self.positions_from_q(self.q_values(observation))

    def positions_from_q(self, q: np.ndarray) -> np.ndarray:
        greedy = top_positions(q, self.slate_size)
        return explore_positions(greedy, q.shape[1], self.epsilon, self._rng).astype(np.int32)

    def __call__(self, observation):
        if "candidates" not in observation:
            if self._retriever is None:
                raise ValueError("observation has no candidates and the policy has no retriever")
            retrieved = self._retriever(observation["history"])
            observation = dict(observation, candidates=retrieved["candidates"])
            length = int(self._q.input_tensor_spec["history"].shape[0])
            if self._states_from_retriever and np.shape(observation["history"])[1] <= length:
                observation["state"] = retrieved["user_state"]
        positions = self.positions(observation)
        return np.take_along_axis(np.asarray(observation["candidates"]), positions, axis=1).astype(np.int32)


class SlatePyPolicy(py_policy.PyPolicy):
    """Adapts a `SlatePolicy` to TF-Agents' `PyPolicy` for a session environment's specs."""

    def __init__(self, slate_policy: SlatePolicy, time_step_spec, action_spec):
        super().__init__(time_step_spec, action_spec)
        self._slate_policy = slate_policy

    def _action(self, time_step, policy_state):
        return policy_step.PolicyStep(np.asarray(self._slate_policy(time_step.observation), np.int32), policy_state, ())
