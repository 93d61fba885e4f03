"""A RecSim-style interest-evolution session simulator as a batched TF-Agents `PyEnvironment`.

Each of the B batch elements is one user session. At every step the policy shows a slate of
``slate_size`` distinct items; the user clicks at most one of them (multinomial logit with a
no-click option), rates what they clicked (satisfaction), maybe converts, and the user's hidden
state evolves: interests drift toward what they consumed, boredom with the consumed category
grows, and a time budget is spent or replenished. The session ends when the budget runs out or
after ``max_steps`` recommendations. Everything is vectorised over the batch in numpy.

Dynamics, for user b at one step with slate s (`SessionConfig` fields, defaults in brackets):

  affinity_i   = u_b . v_i     (fitted taste relative to the average user; std 1 over random pairs)
  utility_i    = affinity_scale [2.5] * affinity_i + popularity_weight [0.5] * item_bias_i
                 - boredom_b[cat_i]
                 (-inf for items the user has already consumed: the visible starting history
                 and everything clicked in this session)
  P(click i)   = exp(utility_i) / (exp(no_click_utility [5.5]) + sum_j exp(utility_j))
  satisfaction = item_quality_i + satisfaction_affinity [0.1] * affinity_i
                 - boredom_satisfaction [0.5] * boredom_b[cat_i] + satisfaction_noise [1.0] * N(0, 1)
  conversion   ~ Bernoulli(sigmoid(conversion_scale [1.0] * satisfaction + conversion_bias [-2.0]))
  every step:    boredom_b <- boredom_decay [0.8] * boredom_b
  on a click:    u_b <- |u_b^0| * normalise(u_b + interest_step [0.2] * (v_i - u_b))
                 (interests turn toward the item; their norm stays that of the fitted user)
                 boredom_b[cat_i] += boredom_increment [1.0]
                 budget_b += satisfaction_gain [0.25] * satisfaction - step_cost [1.0]
                 the item is appended to the visible history
  no click:      budget_b -= no_click_cost [0.5] + step_cost [1.0]
  end:           budget_b <= 0 or steps == max_steps [50]   (budget starts at initial_budget [10])

The boredom and affinity in satisfaction are those before the step's update; satisfaction,
conversion and the interest/boredom/budget updates only happen for a click.

Catalog churn (``new_item_fraction`` / ``new_items``): new items are absent when the environment
starts and arrive, evenly, over its first ``new_item_arrival_steps`` steps; until an item
arrives nobody can click it (utility -inf). Their affinities and quality are the fitted ones,
unknown to a policy that never saw them. ``last_info["new_item_click"]`` flags clicks on them.

So a click-maximising (myopic) policy, which favours popular items of the user's favourite
category, spends the budget faster than one that also serves high-quality items and varies
the categories: the return (clicks per session by default) rewards the long view.

Policies observe only the visible history and the step counter. `SessionEnvironment` exposes
oracle helpers (true click probabilities, expected satisfaction) for evaluation code such as
regret computations and upper-bound policies (`tfmarl.envs.oracles`); they are not part of the
observation. `random_slates` draws valid actions; rollouts and their metrics are in
`tfmarl.envs.metrics`.
"""

from __future__ import annotations

import numbers

import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from tfmarl.data.vocab import NUM_RESERVED
from tfmarl.envs.config import SIGNALS, SessionConfig
from tfmarl.envs.fit import UserModel

_FIRST, _MID, _LAST = (np.int32(ts.StepType.FIRST), np.int32(ts.StepType.MID), np.int32(ts.StepType.LAST))


def random_slates(rng: np.random.Generator, batch: int, slate_size: int, num_items: int) -> np.ndarray:
    """``batch`` uniformly random slates of ``slate_size`` distinct real items, int32 [batch, slate_size].

    ``num_items`` is the number of item indices, reserved ones included (`SessionEnvironment.
    num_items`); items are drawn from 2..num_items-1. Vectorised Floyd sampling, then a random
    order within each slate.
    """
    population = num_items - NUM_RESERVED
    if slate_size > population:
        raise ValueError(f"cannot draw {slate_size} distinct items from {population} real items")
    out = np.empty((batch, slate_size), dtype=np.int64)
    for column, j in enumerate(range(population - slate_size, population)):
        pick = rng.integers(0, j + 1, size=batch)
        if column:
            taken = (out[:, :column] == pick[:, None]).any(axis=1)
            pick = np.where(taken, j, pick)
        out[:, column] = pick
    order = np.argsort(rng.random((batch, slate_size)), axis=1)
    return (np.take_along_axis(out, order, axis=1) + NUM_RESERVED).astype(np.int32)


def first_repeat(slates: np.ndarray) -> tuple[int, int] | None:
    """(row, value) of the first slate [B, K] that holds a value twice, or None."""
    ordered = np.sort(slates, axis=1)
    repeated = ordered[:, 1:] == ordered[:, :-1]
    if not repeated.any():
        return None
    row, column = (int(x[0]) for x in np.nonzero(repeated))
    return row, int(ordered[row, column])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class SessionEnvironment(py_environment.PyEnvironment):
    """Batched interest-evolution sessions (see the module docstring for the dynamics).

    Args:
      user_model: the fitted `UserModel`.
      config: `SessionConfig` (default: the defaults).
      batch_size: B, the number of concurrent sessions.
      users: the pool sessions draw their user from: "train", "heldout", "all" or an array of
        user numbers.
      seed: seeds everything random; the same seed and actions give the same time steps.
        Which user the k-th session of batch element b gets depends only on (seed, b, k), and
        the random numbers of the t-th `step` call only on (seed, t), so policies compared with
        the same seed face the same users and the same noise (common random numbers).
      reward: "scalar" (float32 per element: sum of reward_weights[s] * signal_s) or
        "signals" (a dict of float32 "click", "satisfaction", "conversion").
      new_items: item indices that arrive over time (catalog churn; see the module docstring),
        instead of the config's seeded random ``new_item_fraction``.

    Observation (leading batch dimension B): ``{"history": int32 [history_length]`` (the
    consumed items visible to the policy, oldest first, right-padded with 0), ``"step": int32``
    (recommendations made so far in the session)``}``. Action: int32 [slate_size] distinct item
    indices in [2, num_items). After an element returns LAST, the next `step` starts a new
    session for it alone (FIRST, reward 0, its row of the action ignored: only the shape and
    dtype of the whole action are checked).
    """

    def __init__(self, user_model: UserModel, config: SessionConfig | None = None, *, batch_size: int = 64,
                 users="train", seed: int = 0, reward: str = "scalar", new_items=None):
        super().__init__(handle_auto_reset=False)
        if not isinstance(user_model, UserModel):
            raise TypeError(f"user_model must be a UserModel, got {type(user_model).__name__}")
        config = SessionConfig() if config is None else config
        if not isinstance(config, SessionConfig):
            raise TypeError(f"config must be a SessionConfig, got {type(config).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if reward not in ("scalar", "signals"):
            raise ValueError(f"reward must be 'scalar' or 'signals', got {reward!r}")
        if config.slate_size > user_model.num_items - NUM_RESERVED:
            raise ValueError(f"slate_size {config.slate_size} exceeds the {user_model.num_items - NUM_RESERVED} "
                             "real items")
        self._model = user_model
        self._config = config
        self._batch = int(batch_size)
        self._reward_mode = reward
        self._pool = self._user_pool(users)
        self._weights = np.array([config.reward_weights.get(s, 0.0) for s in SIGNALS], dtype=np.float64)
        n, k, h = user_model.num_items, config.slate_size, config.history_length
        self._observation_spec = {
            "history": array_spec.BoundedArraySpec((h,), np.int32, minimum=0, maximum=n - 1, name="history"),
            "step": array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=config.max_steps, name="step"),
        }
        self._action_spec = array_spec.BoundedArraySpec((k,), np.int32, minimum=NUM_RESERVED, maximum=n - 1,
                                                        name="slate")
        if reward == "scalar":
            self._reward_spec = array_spec.ArraySpec((), np.float32, name="reward")
        else:
            self._reward_spec = {s: array_spec.ArraySpec((), np.float32, name=s) for s in SIGNALS}
        b, d, c = self._batch, user_model.dim, user_model.num_categories
        self._user = np.zeros(b, dtype=np.int64)
        self._interest = np.zeros((b, d), dtype=np.float32)
        self._norm = np.zeros(b, dtype=np.float32)
        self._budget = np.zeros(b, dtype=np.float64)
        self._boredom = np.zeros((b, c), dtype=np.float32)
        self._steps = np.zeros(b, dtype=np.int32)
        self._history = np.zeros((b, h), dtype=np.int32)
        self._history_len = np.zeros(b, dtype=np.int32)
        self._consumed = np.zeros((b, n), dtype=bool)
        self._done = np.zeros(b, dtype=bool)
        self._rows = np.arange(b)
        self._dummy_slate = np.arange(NUM_RESERVED, NUM_RESERVED + k, dtype=np.int64)
        self._new_items, self._arrival = self._arrivals(new_items, seed)
        self._is_new = np.zeros(n, dtype=bool)
        self._is_new[self._new_items] = True
        self.last_info = self._empty_info()
        self.seed(seed)

    # --- TF-Agents interface -------------------------------------------------------------
    @property
    def batched(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._batch

    def observation_spec(self):
        return self._observation_spec

    def action_spec(self):
        return self._action_spec

    def reward_spec(self):
        return self._reward_spec

    def seed(self, seed) -> None:
        """Re-seeds the user draws and the dynamics; the next `reset` starts afresh."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        sequence = np.random.SeedSequence(int(seed))
        self._user_key = sequence.generate_state(1, np.uint64)[0]
        self._rng = np.random.default_rng(sequence.spawn(1)[0])
        self._episodes = np.zeros(self._batch, dtype=np.uint64)
        self._clock = 0  # step calls since seeding: new items arrive on this clock
        self._current_time_step = None

    def get_info(self):
        return self.last_info

    def _reset(self):
        self._reset_rows(self._rows)
        self._done[:] = False
        self.last_info = self._empty_info()
        b = self._batch
        return ts.TimeStep(np.full(b, _FIRST, np.int32), self._reward_array(np.zeros((3, b))),
                           np.ones(b, np.float32), self._observation())

    def _step(self, action):
        cfg, model = self._config, self._model
        restart = self._done.copy()
        active = ~restart
        slate = self._check_action(action, active)
        b, k = slate.shape
        rows = self._rows
        # Random numbers for every element, used or not, so the stream does not depend on the policy.
        gumbel = self._rng.gumbel(size=(b, k + 1))
        noise = self._rng.standard_normal(b)
        coin = self._rng.random(b)

        affinity, utility, boredom = self._slate_terms(slate)
        if np.isnan(utility).any():
            bad = int(np.flatnonzero(np.isnan(utility).any(axis=1))[0])
            raise FloatingPointError(f"NaN click utility for batch element {bad} (user {int(self._user[bad])}): "
                                     "the user model holds NaN/inf parameters")
        scores = np.concatenate([utility, np.full((b, 1), cfg.no_click_utility)], axis=1) + gumbel
        choice = scores.argmax(axis=1)
        click = (choice < k) & active
        slot = np.minimum(choice, k - 1)
        item = np.where(click, slate[rows, slot], 0)
        satisfaction = np.where(
            click,
            model.item_quality[item] + cfg.satisfaction_affinity * affinity[rows, slot]
            - cfg.boredom_satisfaction * boredom[rows, slot] + cfg.satisfaction_noise * noise,
            0.0)
        with np.errstate(over="ignore"):
            p_convert = 1.0 / (1.0 + np.exp(-(cfg.conversion_scale * satisfaction + cfg.conversion_bias)))
        conversion = click & (coin < p_convert)
        self._clock += 1
        signals = np.stack([click.astype(np.float64), satisfaction, conversion.astype(np.float64)])
        reward = self._weights @ signals
        if not (np.isfinite(reward).all() and np.isfinite(satisfaction).all()):
            bad = int(np.flatnonzero(~(np.isfinite(reward) & np.isfinite(satisfaction)))[0])
            raise FloatingPointError(
                f"non-finite reward for batch element {bad} (user {int(self._user[bad])}, item {int(item[bad])}, "
                f"satisfaction {satisfaction[bad]}): the user model holds NaN/inf parameters")

        # State updates (elements that restart are re-initialised below).
        self._boredom *= cfg.boredom_decay
        clicked = np.flatnonzero(click)
        if clicked.size:
            chosen = item[clicked]
            self._boredom[clicked, model.item_category[chosen]] += cfg.boredom_increment
            self._move_interest(clicked, model.item_vectors[chosen])
            self._append_history(clicked, chosen)
            self._consumed[clicked, chosen] = True
        self._budget[active] -= cfg.step_cost
        self._budget += np.where(click, cfg.satisfaction_gain * satisfaction, 0.0)
        self._budget[active & ~click] -= cfg.no_click_cost
        self._steps[active] += 1
        ended = active & ((self._budget <= 0) | (self._steps >= cfg.max_steps))

        restarting = np.flatnonzero(restart)
        if restarting.size:
            self._reset_rows(restarting)
        self._done = ended
        self.last_info = {
            "click": click.astype(np.float32), "satisfaction": satisfaction.astype(np.float32),
            "conversion": conversion.astype(np.float32),
            "chosen_slot": np.where(click, slot, -1).astype(np.int32), "chosen_item": item.astype(np.int32),
            "new_item_click": (click & self._is_new[item]).astype(np.float32),
        }
        step_type = np.where(restart, _FIRST, np.where(ended, _LAST, _MID)).astype(np.int32)
        discount = np.where(ended, 0.0, 1.0).astype(np.float32)
        return ts.TimeStep(step_type, self._reward_array(signals), discount, self._observation())

    # --- oracle helpers (evaluation only; never part of an observation) -------------------
    @property
    def num_items(self) -> int:
        """Number of item indices, reserved ones included (actions lie in [2, num_items))."""
        return self._model.num_items

    @property
    def user_model(self) -> UserModel:
        return self._model

    @property
    def config(self) -> SessionConfig:
        return self._config

    def oracle_click_probabilities(self, slate=None) -> np.ndarray:
        """ORACLE: true click probabilities under the current hidden user states.

        With ``slate`` (int [B, k] item indices, any k >= 1): the probability that each slate
        item is clicked if this slate is shown now, float64 [B, k] (1 - row sum = no click).
        Without: for every item, the probability that it is clicked if shown alone, float64
        [B, num_items] (0 for reserved and already consumed items); ranking by it ranks by
        click utility. For evaluation (regret, upper bounds) only: it reads the simulator's
        hidden state, which policies must not see.
        """
        cfg = self._config
        if slate is None:
            utility = self._catalog_utility()
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(cfg.no_click_utility - utility))
        slate = self._check_oracle_slate(slate)
        _, utility, _ = self._slate_terms(slate)
        top = np.maximum(utility.max(axis=1, keepdims=True), cfg.no_click_utility)
        weights = np.exp(utility - top)
        return weights / (weights.sum(axis=1, keepdims=True) + np.exp(cfg.no_click_utility - top))

    def oracle_expected_satisfaction(self, slate=None) -> np.ndarray:
        """ORACLE: expected satisfaction (noise-free) of consuming each item now.

        float64 [B, k] for a slate, or [B, num_items] for the whole catalog (0 for reserved
        rows). Evaluation only, like `oracle_click_probabilities`.
        """
        cfg, model = self._config, self._model
        if slate is None:
            affinity = self._interest @ model.item_vectors.T
            boredom = self._boredom[:, model.item_category]
            out = (model.item_quality[None, :] + cfg.satisfaction_affinity * affinity
                   - cfg.boredom_satisfaction * boredom).astype(np.float64)
            out[:, :NUM_RESERVED] = 0.0
            return out
        slate = self._check_oracle_slate(slate)
        affinity, _, boredom = self._slate_terms(slate)
        return (model.item_quality[slate] + cfg.satisfaction_affinity * affinity
                - cfg.boredom_satisfaction * boredom).astype(np.float64)

    # --- internals -----------------------------------------------------------------------
    def _user_pool(self, users) -> np.ndarray:
        model = self._model
        if isinstance(users, str):
            if users == "train":
                pool = model.train_users
            elif users == "heldout":
                pool = model.heldout_users
            elif users == "all":
                pool = np.arange(model.num_users)
            else:
                raise ValueError(f"users must be 'train', 'heldout', 'all' or an array of user numbers, got {users!r}")
        else:
            pool = np.asarray(users)
            if pool.ndim != 1 or not np.issubdtype(pool.dtype, np.integer):
                raise ValueError("users must be 'train', 'heldout', 'all' or a 1-d array of integer user numbers")
            if pool.size and (pool.min() < 0 or pool.max() >= model.num_users):
                raise ValueError(f"users must lie in [0, {model.num_users}), got values in "
                                 f"[{pool.min()}, {pool.max()}]")
        if len(pool) == 0:
            raise ValueError(f"the user pool {users if isinstance(users, str) else 'given'!r} is empty")
        return np.asarray(pool, dtype=np.int64)

    def _reset_rows(self, rows: np.ndarray) -> None:
        model, h = self._model, self._config.history_length
        episode = self._episodes[rows]
        self._episodes[rows] += np.uint64(1)
        with np.errstate(over="ignore"):
            mixed = _splitmix64(_splitmix64(self._user_key + rows.astype(np.uint64)) ^ episode)
        users = self._pool[(mixed % np.uint64(len(self._pool))).astype(np.int64)]
        self._user[rows] = users
        vectors = model.user_vectors[users]
        self._interest[rows] = vectors
        self._norm[rows] = np.linalg.norm(vectors, axis=1)
        self._budget[rows] = self._config.initial_budget
        self._boredom[rows] = 0.0
        self._steps[rows] = 0
        self._consumed[rows] = False
        offsets = model.user_histories.offsets
        end = offsets[users + 1]
        start = np.maximum(end - h, offsets[users])
        length = (end - start).astype(np.int32)
        position = np.arange(h)
        valid = position[None, :] < length[:, None]
        index = np.minimum(start[:, None] + position[None, :], max(len(model.user_histories.items) - 1, 0))
        history = np.where(valid, model.user_histories.items[index], 0).astype(np.int32)
        self._history[rows] = history
        self._history_len[rows] = length
        self._consumed[np.broadcast_to(rows[:, None], history.shape)[valid], history[valid]] = True

    def _observation(self) -> dict:
        return {"history": self._history.copy(), "step": self._steps.copy()}

    def _reward_array(self, signals: np.ndarray):
        if self._reward_mode == "scalar":
            return (self._weights @ signals).astype(np.float32)
        return {s: signals[i].astype(np.float32) for i, s in enumerate(SIGNALS)}

    def _empty_info(self) -> dict:
        b = self._batch
        return {"click": np.zeros(b, np.float32), "satisfaction": np.zeros(b, np.float32),
                "conversion": np.zeros(b, np.float32), "chosen_slot": np.full(b, -1, np.int32),
                "chosen_item": np.zeros(b, np.int32), "new_item_click": np.zeros(b, np.float32)}

    def _check_action(self, action, active: np.ndarray) -> np.ndarray:
        a = np.asarray(action)
        expected = (self._batch, self._config.slate_size)
        if a.shape != expected:
            raise ValueError(f"action must be a slate of item indices with shape (batch_size, slate_size) = "
                             f"{expected}, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"action must hold integer item indices, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if not active.all():
            a[~active] = self._dummy_slate  # ignored: those elements start a new session
        n = self._model.num_items
        bad = (a < NUM_RESERVED) | (a >= n)
        if bad.any():
            row, column = (int(x[0]) for x in np.nonzero(bad))
            value = int(a[row, column])
            if value in (0, 1):
                raise ValueError(f"action[{row}, {column}] = {value} is a reserved index (0 = padding, 1 = OOV); "
                                 f"recommend real items in [{NUM_RESERVED}, {n})")
            raise ValueError(f"action[{row}, {column}] = {value} is outside the item indices [{NUM_RESERVED}, {n})")
        repeat = first_repeat(a)
        if repeat is not None:
            raise ValueError(f"slate {repeat[0]} recommends item {repeat[1]} more than once; "
                             "the items of a slate must be distinct")
        return a

    def _check_oracle_slate(self, slate) -> np.ndarray:
        a = np.asarray(slate)
        if a.ndim != 2 or a.shape[0] != self._batch or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"slate must be integer item indices of shape (batch_size={self._batch}, k), "
                             f"got {a.dtype} {a.shape}")
        if a.size and (a.min() < NUM_RESERVED or a.max() >= self._model.num_items):
            raise ValueError(f"slate items must lie in [{NUM_RESERVED}, {self._model.num_items})")
        return a.astype(np.int64)

    def _slate_terms(self, slate: np.ndarray):
        """Affinity, click utility and boredom of each slate item, [B, k] each."""
        cfg, model = self._config, self._model
        vectors = model.item_vectors[slate]
        affinity = np.matmul(vectors, self._interest[:, :, None])[:, :, 0]
        boredom = np.take_along_axis(self._boredom, model.item_category[slate], axis=1)
        utility = (cfg.affinity_scale * affinity + cfg.popularity_weight * model.item_bias[slate]
                   - boredom).astype(np.float64)
        utility[np.take_along_axis(self._consumed, slate, axis=1)] = -np.inf
        if len(self._new_items):
            utility[~self.available_items[slate]] = -np.inf  # not arrived yet
        return affinity, utility, boredom

    def _catalog_utility(self) -> np.ndarray:
        cfg, model = self._config, self._model
        affinity = self._interest @ model.item_vectors.T
        utility = (cfg.affinity_scale * affinity + cfg.popularity_weight * model.item_bias[None, :]
                   - self._boredom[:, model.item_category]).astype(np.float64)
        utility[self._consumed] = -np.inf
        utility[:, :NUM_RESERVED] = -np.inf
        if len(self._new_items):
            utility[:, ~self.available_items] = -np.inf
        return utility

    # --- catalog churn -----------------------------------------------------------------------
    @property
    def new_items(self) -> np.ndarray:
        """The item indices that arrive over time (empty without churn), int64."""
        return self._new_items.copy()

    @property
    def available_items(self) -> np.ndarray:
        """bool [num_items]: the items that exist now (every item but the new ones not arrived yet)."""
        available = np.ones(self._model.num_items, dtype=bool)
        available[self._new_items[self._arrival > self._clock]] = False
        return available

    def _arrivals(self, new_items, seed) -> tuple[np.ndarray, np.ndarray]:
        """(new item indices, the step each arrives at), from ``new_items`` or the config."""
        n = self._model.num_items
        if new_items is None:
            count = int(round(self._config.new_item_fraction * (n - NUM_RESERVED)))
            rng = np.random.default_rng([int(seed), 17])
            new_items = rng.choice(np.arange(NUM_RESERVED, n), size=count, replace=False)
        new_items = np.asarray(new_items)
        if new_items.ndim != 1 or (new_items.size and not np.issubdtype(new_items.dtype, np.integer)):
            raise ValueError("new_items must be a 1-d array of item indices")
        new_items = new_items.astype(np.int64)
        if new_items.size and (new_items.min() < NUM_RESERVED or new_items.max() >= n):
            raise ValueError(f"new_items must lie in [{NUM_RESERVED}, {n})")
        if len(np.unique(new_items)) != len(new_items):
            raise ValueError("new_items repeat an item")
        if n - NUM_RESERVED - len(new_items) < self._config.slate_size:
            raise ValueError(f"only {n - NUM_RESERVED - len(new_items)} items exist at the start, fewer than "
                             f"slate_size={self._config.slate_size}")
        order = np.random.default_rng([int(seed), 18]).permutation(len(new_items))
        arrival = np.empty(len(new_items), np.int64)
        arrival[order] = 1 + np.arange(len(new_items)) * self._config.new_item_arrival_steps // max(len(new_items), 1)
        return new_items, arrival

    def _move_interest(self, rows: np.ndarray, targets: np.ndarray) -> None:
        eta = self._config.interest_step
        moved = self._interest[rows] + eta * (targets - self._interest[rows])
        length = np.linalg.norm(moved, axis=1)
        scale = np.where(length > 1e-12, self._norm[rows] / np.maximum(length, 1e-12), 1.0)
        self._interest[rows] = moved * scale[:, None]

    def _append_history(self, rows: np.ndarray, items: np.ndarray) -> None:
        h = self._config.history_length
        position = self._history_len[rows]
        full = position >= h
        if full.any():
            shift = rows[full]
            self._history[shift, :-1] = self._history[shift, 1:]
            position = np.minimum(position, h - 1)
        self._history[rows, position] = items
        self._history_len[rows] = np.minimum(position + 1, h)
