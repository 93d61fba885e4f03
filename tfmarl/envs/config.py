"""`SessionConfig`: the parameters of the session simulator's dynamics, and the reward signals.

Numpy-free and TF-free, so configs validate (e.g. in `tfmarl.cli`) without loading TF-Agents.
The equations the fields enter are in `tfmarl.envs.session`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

SIGNALS = ("click", "satisfaction", "conversion")


@dataclasses.dataclass
class SessionConfig:
    """Parameters of the session dynamics (the equations are in `tfmarl.envs.session`).

    The defaults were tuned on ML-100k: sessions last ~9 steps under random slates, ~14 under
    a myopic click-maximising oracle (`myopic_oracle_policy`) and ~24 under
    `quality_variety_oracle_policy`, whose return is ~75% higher; almost none reach
    ``max_steps``. They hold on `generate_synthetic`'s default world (1000 users x 500 items:
    ~8, ~10 and ~14 steps, +25% return). ``no_click_utility`` sets the click-through level and
    is the first thing to adjust for other data: fitted affinities and popularity spreads are
    smaller on small catalogs or logs (a 120-item, 20-interactions-per-user world has the myopic
    oracle at ~50% CTR and the long-term advantage gone) and larger on heavy-tailed ones.

    Attributes:
      slate_size: items per recommendation.
      history_length: length of the visible history in observations.
      max_steps: hard cap on recommendations per session.
      initial_budget: the user's time budget at the start of a session.
      step_cost: budget every recommendation costs.
      no_click_cost: extra budget a slate without a click costs (disappointment).
      satisfaction_gain: budget regained per unit of satisfaction of a clicked item.
      affinity_scale: alpha, weight of the user-item affinity in the click utility.
      popularity_weight: weight of the item's popularity propensity in the click utility.
      no_click_utility: utility of not clicking.
      boredom_increment: boredom added to the category of a consumed item.
      boredom_decay: factor applied to all boredom every step.
      boredom_satisfaction: weight of the category's boredom in satisfaction.
      interest_step: eta, how far a consumed item pulls the user's interests toward itself.
      satisfaction_affinity: weight of the affinity in satisfaction.
      satisfaction_noise: standard deviation of the noise of satisfaction.
      conversion_bias, conversion_scale: P(conversion | click) = sigmoid(scale * satisfaction + bias).
      reward_weights: reward = sum of weight * signal over "click", "satisfaction", "conversion".
      new_item_fraction: catalog churn: this share of the real items is new, absent when the
        environment starts and arriving over its first ``new_item_arrival_steps`` steps (a
        seeded random choice; `SessionEnvironment(new_items=...)` names them instead).
      new_item_arrival_steps: environment steps (`step` calls, across sessions) over which the
        new items arrive, evenly, in a seeded random order.
    """

    slate_size: int = 10
    history_length: int = 20
    max_steps: int = 50
    initial_budget: float = 10.0
    step_cost: float = 1.0
    no_click_cost: float = 0.5
    satisfaction_gain: float = 0.25
    affinity_scale: float = 2.5
    popularity_weight: float = 0.5
    no_click_utility: float = 5.5
    boredom_increment: float = 1.0
    boredom_decay: float = 0.8
    boredom_satisfaction: float = 0.5
    interest_step: float = 0.2
    satisfaction_affinity: float = 0.1
    satisfaction_noise: float = 1.0
    conversion_bias: float = -2.0
    conversion_scale: float = 1.0
    reward_weights: dict = dataclasses.field(default_factory=lambda: {"click": 1.0})
    new_item_fraction: float = 0.0
    new_item_arrival_steps: int = 200

    def __post_init__(self):
        for name in ("slate_size", "history_length", "max_steps", "new_item_arrival_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"SessionConfig.{name} must be an integer >= 1, got {value!r}")
            setattr(self, name, int(value))
        nonnegative = ("initial_budget", "step_cost", "no_click_cost", "satisfaction_gain", "boredom_increment",
                       "boredom_satisfaction", "satisfaction_noise")
        for field in dataclasses.fields(self):
            if field.type not in ("float", float):
                continue
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"SessionConfig.{field.name} must be a finite number, got {value!r}")
            if field.name in nonnegative and value < 0:
                raise ValueError(f"SessionConfig.{field.name} must be >= 0, got {value!r}")
            setattr(self, field.name, float(value))
        if self.initial_budget <= 0:
            raise ValueError(f"SessionConfig.initial_budget must be > 0, got {self.initial_budget!r}")
        if not 0.0 <= self.new_item_fraction < 1.0:
            raise ValueError(f"SessionConfig.new_item_fraction must be in [0, 1), got {self.new_item_fraction!r}")
        for name in ("boredom_decay", "interest_step"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SessionConfig.{name} must be in [0, 1], got {value!r}")
        if not isinstance(self.reward_weights, dict):
            raise ValueError(f"SessionConfig.reward_weights must be a dict over {SIGNALS}, "
                             f"got {type(self.reward_weights).__name__}")
        weights = {}
        for key, value in self.reward_weights.items():
            if key not in SIGNALS:
                raise ValueError(f"SessionConfig.reward_weights has unknown signal {key!r}; known: {SIGNALS}")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"SessionConfig.reward_weights[{key!r}] must be a finite number, got {value!r}")
            weights[key] = float(value)
        self.reward_weights = weights

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
