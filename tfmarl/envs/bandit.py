"""`PerArmBanditEnvironment`: a contextual bandit with per-arm features over the session simulator."""

from __future__ import annotations

from typing import Callable

import numpy as np
from tf_agents.bandits.environments import bandit_py_environment
from tf_agents.bandits.specs import utils as bandit_spec_utils
from tf_agents.specs import array_spec

from tfmarl.envs.candidates import check_indices
from tfmarl.envs.config import SessionConfig
from tfmarl.envs.fit import UserModel
from tfmarl.envs.session import SessionEnvironment

ARM_FEATURES = ("item", "crossed")


class PerArmBanditEnvironment(bandit_py_environment.BanditPyEnvironment):
    """Each round: a fresh user per batch element, N candidate items retrieved for the user's
    visible history, one item recommended; reward 1 if the user clicks it when shown alone
    (the session simulator's choice model), else 0.

    Observation (TF-Agents per-arm layout): ``"global"`` float32 [D] = the user's state from
    ``retrieve`` (e.g. a pretrained UserAgent); ``"per_arm"`` float32 [N, D] = the candidates'
    item vectors, or [N, 2D] = [item, state ⊙ item] with ``arm_features="crossed"`` (so that a
    linear model on concatenated global and arm features, like TF-Agents' per-arm LinUCB, can
    express user × item affinity). Action: int32 arm index in [0, N).

    Args:
      user_model: the fitted simulator.
      retrieve: ``history int32 [B, L] -> {"candidates": [B, N], "user_state": [B, D]}``
        (see `tfmarl.rl.CandidateRetriever`).
      item_vectors: float32 [num_items, D] arm features.
      num_candidates: N.
      config, users, seed: as for `SessionEnvironment`.

    `last_expected_reward`, `last_optimal_reward` (oracle click probabilities of the chosen and
    of the best candidate) and `last_regret` describe the previous round, for regret metrics.
    """

    def __init__(self, user_model: UserModel, retrieve: Callable, item_vectors, num_candidates: int, *,
                 config: SessionConfig | None = None, batch_size: int = 32, users="train", seed: int = 0,
                 arm_features: str = "item"):
        if arm_features not in ARM_FEATURES:
            raise ValueError(f"arm_features must be one of {ARM_FEATURES}, got {arm_features!r}")
        self._session = SessionEnvironment(user_model, config, batch_size=batch_size, users=users, seed=seed)
        self._retrieve = retrieve
        self._items = np.asarray(item_vectors, np.float32)
        self._n = int(num_candidates)
        self._crossed = arm_features == "crossed"
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        d = self._items.shape[1]
        observation_spec = {
            bandit_spec_utils.GLOBAL_FEATURE_KEY: array_spec.ArraySpec((d,), np.float32),
            bandit_spec_utils.PER_ARM_FEATURE_KEY: array_spec.ArraySpec((self._n, 2 * d if self._crossed else d),
                                                                        np.float32),
        }
        action_spec = array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=self._n - 1, name="arm")
        super().__init__(observation_spec, action_spec, name="per_arm_session_bandit")
        self.last_expected_reward = self.last_optimal_reward = self.last_regret = np.zeros(batch_size)
        self.candidates = None

    @property
    def batched(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._session.batch_size

    @property
    def session(self) -> SessionEnvironment:
        return self._session

    def _observe(self):
        history = self._session.reset().observation["history"]
        out = self._retrieve(history)
        self.candidates = np.asarray(out["candidates"], np.int32)
        if self.candidates.shape != (self.batch_size, self._n):
            raise ValueError(f"retrieve returned candidates of shape {self.candidates.shape}, "
                             f"expected {(self.batch_size, self._n)}")
        state = np.asarray(out["user_state"], np.float32)
        arms = self._items[self.candidates]
        if self._crossed:
            arms = np.concatenate([arms, state[:, None, :] * arms], axis=-1)
        # Click probability of each candidate shown alone (oracle), for rewards and regret.
        self._arm_probs = self._session.oracle_click_probabilities()[np.arange(self.batch_size)[:, None],
                                                                      self.candidates]
        # Checked here: a NaN probability would otherwise lose every comparison and pay 0 silently.
        broken = ~np.isfinite(self._arm_probs).all(axis=1)
        if broken.any():
            rows = np.flatnonzero(broken)
            users = self._session._user[rows]
            raise FloatingPointError(
                f"non-finite click probabilities for batch elements {rows.tolist()} (users {users.tolist()}): "
                "the user model holds NaN/inf parameters")
        return {bandit_spec_utils.GLOBAL_FEATURE_KEY: state, bandit_spec_utils.PER_ARM_FEATURE_KEY: arms}

    def _apply_action(self, action):
        action = np.asarray(action).reshape(-1)
        what = f"actions must be {self.batch_size} arm indices"
        if action.shape != (self.batch_size,):
            raise ValueError(f"{what} in [0, {self._n}); got shape {action.shape} after flattening: {action}")
        action = check_indices(action, self._n, what)
        p = self._arm_probs[np.arange(self.batch_size), action]
        self.last_expected_reward = p
        self.last_optimal_reward = self._arm_probs.max(axis=1)
        self.last_regret = self.last_optimal_reward - p
        return (self._rng.random(self.batch_size) < p).astype(np.float32)  # _observe checked p is finite

    def expected_rewards(self) -> np.ndarray:
        """ORACLE: click probability of every current candidate shown alone, [B, N]."""
        return self._arm_probs.copy()
