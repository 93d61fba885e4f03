"""`CandidateSessionEnvironment`: session environment whose actions index retrieved candidates."""

from __future__ import annotations

import concurrent.futures
from typing import Callable

import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec

from tfmarl.envs.session import SessionEnvironment, first_repeat


def check_indices(action, n: int, what: str) -> np.ndarray:
    """``action`` as int64 indices into a list of ``n`` (slate positions, bandit arms).

    Mirrors `SessionEnvironment._check_action`, whose checks are tied to item indices: a float
    action would otherwise be floored silently or fail deep in numpy indexing. The ValueError,
    ``"{what} in [0, n); got ..."``, names the dtype and shape, or the first entry out of range.
    """
    a = np.asarray(action)
    if not np.issubdtype(a.dtype, np.integer):
        example = ""
        if a.size:
            first = 0
            if np.issubdtype(a.dtype, np.floating):  # show a value that is not a whole number, if any
                odd = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
                first = int(odd[0]) if odd.size else 0
            where = np.unravel_index(first, a.shape)
            example = f", e.g. action[{', '.join(map(str, where))}] = {a[where]}"
        raise ValueError(f"{what} in [0, {n}); got non-integer dtype {a.dtype} with shape {a.shape}{example}")
    bad = (a < 0) | (a >= n)
    if bad.any():
        where = [int(x[0]) for x in np.nonzero(bad)]
        raise ValueError(f"{what} in [0, {n}); got action[{', '.join(map(str, where))}] = {a[tuple(where)]} "
                         f"(values in [{a.min()}, {a.max()}])")
    return a.astype(np.int64)


class CandidateSessionEnvironment(py_environment.PyEnvironment):
    """Wraps a `SessionEnvironment` so that a policy picks its slate among N retrieved candidates.

    Each observation gains ``"candidates"``: int32 [N] item indices that ``retrieve`` returns
    for the visible history (for instance a pretrained two-tower model's top N, history excluded;
    see `tfmarl.rl.CandidateRetriever`). The action is the slate as positions into that list:
    int32 [slate_size] distinct values in [0, N). Everything else (rewards, auto-reset,
    `last_info`) is the wrapped environment's.

    Args:
      env: the session environment.
      retrieve: ``history int32 [B, L] -> candidates int32 [B, N]`` (or a dict holding
        ``"candidates"``). When the session has catalog churn (`SessionEnvironment.new_items`),
        it is called as ``retrieve(history, available=mask)`` with the bool [num_items] mask of
        the items that exist now, and must not return the others (`tfmarl.rl.CandidateRetriever`
        takes it).
      num_candidates: N.
      item_facets: int [num_items] facet of every item; adds ``"candidate_facets"`` int32 [N].
    """

    def __init__(self, env: SessionEnvironment, retrieve: Callable, num_candidates: int, *,
                 item_facets=None):
        super().__init__(handle_auto_reset=False)
        k = env.config.slate_size
        # Retrieval excludes the reserved indices and the visible history.
        largest = env.num_items - 2 - env.config.history_length
        if not k <= num_candidates <= largest:
            raise ValueError(f"num_candidates must be in [slate_size={k}, num_items - 2 - history_length={largest}], "
                             f"got {num_candidates}")
        self._env = env
        self._retrieve = retrieve
        self._n = int(num_candidates)
        self._observation_spec = dict(env.observation_spec())
        self._observation_spec["candidates"] = array_spec.BoundedArraySpec(
            (self._n,), np.int32, minimum=0, maximum=env.num_items - 1, name="candidates")
        self._item_facets = None
        if item_facets is not None:
            self._item_facets = np.asarray(item_facets, np.int32)
            if self._item_facets.shape != (env.num_items,) or self._item_facets.min() < 0:
                raise ValueError(f"item_facets must be {env.num_items} non-negative facet ids")
            self._observation_spec["candidate_facets"] = array_spec.BoundedArraySpec(
                (self._n,), np.int32, minimum=0, maximum=int(self._item_facets.max()), name="candidate_facets")
        self._action_spec = array_spec.BoundedArraySpec((k,), np.int32, minimum=0, maximum=self._n - 1,
                                                        name="slate_positions")
        self._candidates = None
        self._user_state = None
        self._pool = None  # the worker thread of begin_step's retrievals, made on first use
        self._pending = None

    @property
    def last_user_state(self):
        """The ``user_state`` [B, D] ``retrieve`` returned with the current candidates (when it
        returns a dict holding one, as `tfmarl.rl.CandidateRetriever` does), else None."""
        return self._user_state

    @property
    def batched(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._env.batch_size

    @property
    def session(self) -> SessionEnvironment:
        return self._env

    @property
    def num_candidates(self) -> int:
        return self._n

    @property
    def last_info(self) -> dict:
        return self._env.last_info

    def observation_spec(self):
        return self._observation_spec

    def action_spec(self):
        return self._action_spec

    def reward_spec(self):
        return self._env.reward_spec()

    def seed(self, seed) -> None:
        self._env.seed(seed)

    def get_info(self):
        return self._env.last_info

    def items_for(self, positions) -> np.ndarray:
        """Slate positions [B, K] of the current observation -> item indices [B, K]."""
        positions = np.asarray(positions)
        if positions.shape != (self.batch_size, self._action_spec.shape[0]):
            raise ValueError(f"slate positions must have shape {(self.batch_size, self._action_spec.shape[0])}, "
                             f"got {positions.shape}")
        positions = check_indices(positions, self._n, "slate positions must lie")
        repeat = first_repeat(positions)
        if repeat is not None:
            # Said in positions, what the policy chose, rather than as the repeated item the session would name.
            raise ValueError(f"slate {repeat[0]} picks candidate position {repeat[1]} more than once; "
                             "the positions of a slate must be distinct")
        return np.take_along_axis(self._candidates, positions, axis=1).astype(np.int32)

    def _with_candidates(self, time_step):
        history = time_step.observation["history"]
        if len(self._env.new_items):
            out = self._retrieve(history, available=self._env.available_items)
        else:
            out = self._retrieve(history)
        candidates = np.asarray(out["candidates"] if isinstance(out, dict) else out, np.int32)
        if candidates.shape != (self.batch_size, self._n):
            raise ValueError(f"retrieve returned shape {candidates.shape}, expected {(self.batch_size, self._n)}")
        self._candidates = candidates
        self._user_state = out.get("user_state") if isinstance(out, dict) else None
        observation = dict(time_step.observation, candidates=candidates)
        if self._item_facets is not None:
            observation["candidate_facets"] = self._item_facets[candidates]
        return time_step._replace(observation=observation)

    def _reset(self):
        self._settle()
        return self._with_candidates(self._env.reset())

    def _step(self, action):
        self._settle()
        return self._with_candidates(self._session_step(action))

    def _session_step(self, action):
        """The wrapped session's step on the slate at ``action``'s positions (no retrieval yet)."""
        return self._env.step(self.items_for(action))

    def begin_step(self, action) -> "PendingStep":
        """`step` in two halves, so that work on this step's feedback overlaps the retrieval of
        the next candidates: the session steps now (``session_step``: its rewards, step types,
        discounts and `last_info`; no candidates yet) while the retrieval runs in a worker
        thread; ``result()`` waits for it and returns what `step` would have. Retrieval reads
        only the new histories, so a trainer's update on this step (e.g. `MultiAgentTrainer`'s)
        can run meanwhile on the other core: the results are the same as stepping in turn."""
        if self.current_time_step() is None:
            raise ValueError("begin_step before reset(): the environment has no current time step")
        self._settle()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfmarl-retrieval")
        session_step = self._session_step(action)
        self._pending = PendingStep(session_step, self._pool.submit(self._with_candidates, session_step), self)
        return self._pending

    def _settle(self) -> None:
        """Waits for a step begun with `begin_step` (one retrieval in flight at a time)."""
        if self._pending is not None:
            self._pending.result()

    def close(self) -> None:
        self._settle()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class PendingStep:
    """A `CandidateSessionEnvironment.begin_step` in flight: ``session_step`` now, the full
    `TimeStep` (with the next candidates) from ``result()``."""

    def __init__(self, session_step, future, env=None):
        self.session_step = session_step
        self._future, self._env = future, env

    def result(self):
        env = self._env
        latest = env is not None and env._pending is self
        if latest:
            env._pending = None  # also when the retrieval failed: its error is raised once, here
        time_step = self._future.result()
        if latest:
            env._current_time_step = time_step  # what PyEnvironment.step records
        return time_step


def begin_step(env, action) -> PendingStep:
    """``env.begin_step(action)`` where ``env`` has it (a `CandidateSessionEnvironment`: the next
    retrieval overlaps what the caller does before ``result()``), else ``env.step(action)`` as a
    step already complete: the RL loops step any environment the same way."""
    if hasattr(env, "begin_step"):
        return env.begin_step(action)
    done = concurrent.futures.Future()
    done.set_result(env.step(action))
    return PendingStep(done.result(), done)
