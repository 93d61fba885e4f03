"""Slate logs with a known ground truth: `SlateLogSimulator`.

A pool of M contexts (a user's visible history and the N candidates retrieved for it), each with
the probability that the user clicks an item once examined (its *attraction*, e.g. the fitted
simulator's "clicked if shown alone" probability). Each logged round draws a context uniformly,
the logging policy shows an ε-per-slot exploration of a behaviour slate over the candidates (the
law of `tfmarl.rl.QSlatePolicy`, closed-form propensities in `exploration`), and the clicks follow
a click model:

* ``"pbm"`` (position-based): the item at position k is clicked with probability θ_k · a(item);
* ``"cascade"``: the user scans from the top and clicks the first attractive item (each with
  probability a(item)), then stops.

The truth of a target that shows slate π(x) in context x is exact: V(π) = mean over the pool of
Σ_k E[r_k | π(x)]. The logging policy's own value is exact under the position-based model and a
Monte Carlo average of exact per-slate values under the cascade.
"""

from __future__ import annotations

import numpy as np

from tfmarl.evaluation.ope.exploration import epsilon_slot_cascade, epsilon_slot_marginals
from tfmarl.evaluation.ope.slate_log import SlateLog

CLICK_MODELS = ("pbm", "cascade")


def default_position_bias(slate_size: int) -> np.ndarray:
    """θ_k = 1 / √k, the examination probability of position k (1-based) in the position-based model."""
    return 1.0 / np.sqrt(np.arange(1, slate_size + 1))


class SlateLogSimulator:
    """Generates `SlateLog`s with exact propensities and knows every deterministic target's value.

    Args:
      history: int [M, L], each context's visible history (right-padded with 0).
      candidates: int [M, N], the items the logging policy chooses from in each context.
      attraction: float [M, num_items] in [0, 1], click probability of an examined item.
      behaviour: int [M, K], the logging policy's slate before exploration (within the candidates).
      epsilon: the logging policy's per-slot exploration probability (> 0 gives every slate of
        candidates a positive propensity).
      click_model: "pbm" or "cascade".
      position_bias: θ [K] for "pbm" (default `default_position_bias`).
      item_vocab: item ids of indices 2.. (kept on the logs, for SavedModel targets).
    """

    def __init__(self, history, candidates, attraction, behaviour, *, epsilon: float, click_model: str = "pbm",
                 position_bias=None, item_vocab=None):
        self.history = np.asarray(history, np.int64)
        self.candidates = np.asarray(candidates, np.int64)
        self.attraction = np.asarray(attraction, np.float64)
        self.behaviour = np.asarray(behaviour, np.int64)
        m = len(self.history)
        for name, value, ndim in (("history", self.history, 2), ("candidates", self.candidates, 2),
                                  ("attraction", self.attraction, 2), ("behaviour", self.behaviour, 2)):
            if value.ndim != ndim or len(value) != m:
                raise ValueError(f"{name} must be a [{m}, ...] array (one row per context), got shape {value.shape}")
        if not ((self.attraction >= 0) & (self.attraction <= 1)).all():
            raise ValueError("attraction must hold probabilities in [0, 1]")
        if click_model not in CLICK_MODELS:
            raise ValueError(f"click_model must be one of {CLICK_MODELS}, got {click_model!r}")
        k = self.behaviour.shape[1]
        outside = ~(self.behaviour[:, :, None] == self.candidates[:, None, :]).any(axis=2)
        if outside.any():
            raise ValueError(f"the behaviour slate of context {int(np.argmax(outside.any(axis=1)))} holds items "
                             "outside its candidates")
        if not 0.0 < epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in (0, 1] so that every slate of candidates can be logged, "
                             f"got {epsilon}")
        self.epsilon = float(epsilon)
        self.click_model = click_model
        self.position_bias = default_position_bias(k) if position_bias is None else np.asarray(position_bias, float)
        if self.position_bias.shape != (k,):
            raise ValueError(f"position_bias must have one value per position ({k}), got {self.position_bias.shape}")
        self.item_vocab = None if item_vocab is None else [str(t) for t in item_vocab]

    @classmethod
    def from_user_model(cls, user_model, retriever, *, slate_size: int, epsilon: float, click_model: str = "pbm",
                        behaviour="popular", num_contexts: int = 500, config=None, seed: int = 0,
                        position_bias=None) -> "SlateLogSimulator":
        """Contexts from a fitted simulator: held-out users at the start of a session (their visible
        history), candidates retrieved by ``retriever`` (a `tfmarl.rl.CandidateRetriever`),
        attraction = the simulator's probability that the user clicks an item shown alone.

        ``behaviour``: "popular" (the K most popular candidates, by the simulator's item bias) or a
        slate policy (observation -> int [M, K] within the candidates).
        """
        from tfmarl.envs import SessionConfig, SessionEnvironment

        config = config or SessionConfig(slate_size=slate_size)
        env = SessionEnvironment(user_model, config, batch_size=num_contexts, users="heldout", seed=seed)
        observation = env.reset().observation
        history = observation["history"]
        candidates = retriever(history)["candidates"].astype(np.int64)
        if isinstance(behaviour, str):
            if behaviour != "popular":
                raise ValueError(f"behaviour must be 'popular' or a slate policy, got {behaviour!r}")
            order = np.argsort(-user_model.item_bias[candidates], axis=1, kind="stable")[:, :slate_size]
            slates = np.take_along_axis(candidates, order, axis=1)
        else:
            slates = np.asarray(behaviour({**observation, "candidates": candidates.astype(np.int32)}), np.int64)
        return cls(history, candidates, env.oracle_click_probabilities(), slates, epsilon=epsilon,
                   click_model=click_model, position_bias=position_bias, item_vocab=user_model.item_vocab)

    @property
    def slate_size(self) -> int:
        return int(self.behaviour.shape[1])

    @property
    def num_contexts(self) -> int:
        return len(self.history)

    def expected_rewards(self, contexts: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """E[r_k | context, slate], float64 [n, K]."""
        a = np.take_along_axis(self.attraction[contexts], np.asarray(slates, np.int64), axis=1)
        if self.click_model == "pbm":
            return self.position_bias * a
        unexamined = np.cumprod(np.concatenate([np.ones((len(a), 1)), 1 - a[:, :-1]], axis=1), axis=1)
        return a * unexamined

    def value(self, target_slates) -> float:
        """V(π) of the target showing ``target_slates`` [M, K] (one per context), exactly."""
        target_slates = np.asarray(target_slates, np.int64)
        if target_slates.shape != (self.num_contexts, self.slate_size):
            raise ValueError(f"target slates must be one slate per context, shape {(self.num_contexts, self.slate_size)}"
                             f", got {target_slates.shape}")
        return float(self.expected_rewards(np.arange(self.num_contexts), target_slates).sum(axis=1).mean())

    def logging_value(self, *, num_samples: int = 200_000, seed: int = 0) -> float:
        """V(μ) of the logging policy: exact for "pbm" (through the position marginals), a Monte
        Carlo mean of exact per-slate values over ``num_samples`` slates for "cascade"."""
        contexts = np.arange(self.num_contexts)
        if self.click_model == "pbm":
            k, cands = self.slate_size, self.candidates
            marginals = epsilon_slot_marginals(np.broadcast_to(cands[:, None, :], (len(cands), k, cands.shape[1])),
                                               self.behaviour, cands, self.epsilon)          # [M, K, N]
            a = np.take_along_axis(self.attraction, cands, axis=1)                           # [M, N]
            return float(np.mean(np.einsum("mkn,mn,k->m", marginals, a, self.position_bias)))
        rng = np.random.default_rng(seed)
        contexts = rng.integers(0, self.num_contexts, num_samples)
        return float(self.expected_rewards(contexts, self._explore(contexts, rng)).sum(axis=1).mean())

    def _explore(self, contexts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """ε-per-slot exploration of the behaviour slates of ``contexts`` (as `explore_positions`)."""
        greedy, cands = self.behaviour[contexts], self.candidates[contexts]
        n, k = greedy.shape
        swap = rng.random((n, k)) < self.epsilon
        greedy_at = (greedy[:, :, None] == cands[:, None, :]).argmax(-1)                     # positions
        rows = np.arange(n)[:, None]
        taken = np.zeros(cands.shape, bool)
        taken[np.broadcast_to(rows, (n, k))[~swap], greedy_at[~swap]] = True
        shuffled = np.argsort(rng.random(cands.shape), axis=1)
        free = np.take_along_axis(shuffled, np.argsort(taken[rows, shuffled], axis=1, kind="stable"), axis=1)
        fill = free[rows, np.maximum(np.cumsum(swap, axis=1) - 1, 0)]
        return np.take_along_axis(cands, np.where(swap, fill, greedy_at), axis=1)

    def sample(self, n: int, seed: int = 0) -> tuple[SlateLog, np.ndarray]:
        """A log of ``n`` rounds, and the context index of each round (int [n])."""
        rng = np.random.default_rng(seed)
        contexts = rng.integers(0, self.num_contexts, int(n))
        slates = self._explore(contexts, rng)
        a = np.take_along_axis(self.attraction[contexts], slates, axis=1)
        if self.click_model == "pbm":
            clicks = rng.random(slates.shape) < self.position_bias * a
        else:
            attractive = rng.random(slates.shape) < a
            clicks = attractive & (np.cumsum(attractive, axis=1) == 1)
        greedy, cands = self.behaviour[contexts], self.candidates[contexts]
        log = SlateLog(slates, clicks.astype(np.float64),
                       epsilon_slot_marginals(slates[:, :, None], greedy, cands, self.epsilon)[:, :, 0],
                       epsilon_slot_cascade(slates, greedy, cands, self.epsilon), history=self.history[contexts],
                       candidates=cands, item_vocab=self.item_vocab,
                       metadata={"generator": "SlateLogSimulator", "click_model": self.click_model,
                                 "epsilon": self.epsilon})
        return log, contexts

    def pool_log(self) -> SlateLog:
        """One round per context showing the behaviour slate (for computing targets' slates on the pool)."""
        contexts = np.arange(self.num_contexts)
        greedy, cands = self.behaviour, self.candidates
        return SlateLog(greedy, np.zeros(greedy.shape),
                        epsilon_slot_marginals(greedy[:, :, None], greedy, cands, self.epsilon)[:, :, 0],
                        epsilon_slot_cascade(greedy, greedy, cands, self.epsilon), history=self.history[contexts],
                        candidates=cands, item_vocab=self.item_vocab)

    def target_slates(self, policy) -> np.ndarray:
        """The slates a deterministic target (anything `target_probabilities` takes) shows in each
        context, int64 [M, K]."""
        from tfmarl.evaluation.ope.adapter import target_probabilities

        target = target_probabilities(self.pool_log(), policy)
        if target.slates is None:
            raise ValueError("the target is stochastic: its value needs its slate distribution, not one slate")
        return target.slates
