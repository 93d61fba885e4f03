"""The System agent's adaptive reward: weights over signals, moved by Lagrange multipliers.

The stated objective is to maximise the long-term return of the ``objective`` signal (clicks
by default) subject to floors on other signals' running means, e.g. ``diversity >= d_min``.
The training reward is the Lagrangian

    r = sum_s w_s * signal_s,   w_objective = 1,   w_c = lambda_c for each constrained signal c,

and each multiplier follows projected dual ascent on its constraint:

    lambda_c <- clip(lambda_c + lr * (floor_c - mean_c), 0, max_weight)

so a weight grows while its constraint is violated and decays back toward 0 once it is met.
"""

from __future__ import annotations

import numpy as np

from tfmarl.envs.metrics import slate_diversity  # noqa: F401  (re-exported: a reward signal)

SIGNALS = ("click", "satisfaction", "conversion", "diversity", "novelty")


class AdaptiveReward:
    """Lagrangian reward weights.

    Args:
      floors: {signal: floor on its running mean per step}; those signals' weights adapt.
      objective: the signal whose return is maximised (weight 1).
      learning_rate: dual step size.
      max_weight: cap on any multiplier.
      momentum: running-mean factor for the constraint estimates.
      adapt: False freezes the weights at their initial values (the fixed-reward ablation).
      initial: initial multipliers (default 0).
    """

    def __init__(self, floors: dict | None = None, *, objective: str = "click", learning_rate: float = 0.05,
                 max_weight: float = 5.0, momentum: float = 0.9, adapt: bool = True, initial: dict | None = None):
        floors = dict(floors or {})
        for name in (objective, *floors, *(initial or {})):
            if name not in SIGNALS:
                raise ValueError(f"unknown signal {name!r}; signals are {', '.join(SIGNALS)}")
        if objective in floors:
            raise ValueError(f"the objective {objective!r} cannot also carry a floor")
        self.objective = objective
        self.floors = floors
        self.learning_rate = float(learning_rate)
        self.max_weight = float(max_weight)
        self.momentum = float(momentum)
        self.adapt = bool(adapt)
        self.multipliers = {name: float((initial or {}).get(name, 0.0)) for name in floors}
        self.running = {name: None for name in floors}

    @property
    def weights(self) -> dict:
        """Current weight of every signal."""
        w = {name: 0.0 for name in SIGNALS}
        w[self.objective] = 1.0
        w.update(self.multipliers)
        return w

    def reward(self, signals: dict) -> np.ndarray:
        """Weighted sum of per-element signal arrays [B] -> reward [B] (float32)."""
        w = self.weights
        total = sum(w[name] * np.asarray(signals[name], np.float64) for name in SIGNALS if w[name])
        total = np.asarray(total, np.float64)
        if not np.isfinite(total).all():
            raise FloatingPointError("adaptive reward is not finite: a signal holds NaN or inf")
        return total.astype(np.float32)

    def update(self, signals: dict, mask=None) -> dict:
        """One dual-ascent step from a batch of per-step signals ([B] arrays; ``mask`` selects the
        elements that count). Returns the new weights."""
        for name, floor in self.floors.items():
            values = np.asarray(signals[name], np.float64)
            if mask is not None:
                values = values[np.asarray(mask, bool)]
            if values.size == 0:
                continue
            mean = float(values.mean())
            previous = self.running[name]
            self.running[name] = mean if previous is None else self.momentum * previous + (1 - self.momentum) * mean
            if self.adapt:
                step = self.learning_rate * (floor - self.running[name])
                self.multipliers[name] = float(np.clip(self.multipliers[name] + step, 0.0, self.max_weight))
        return self.weights

    def state(self) -> dict:
        return {"multipliers": dict(self.multipliers), "running": dict(self.running)}

    def load_state(self, state: dict) -> None:
        self.multipliers.update(state["multipliers"])
        self.running.update(state["running"])


def novelty_table(item_counts) -> np.ndarray:
    """Self-information of each item under the training popularity, scaled to [0, 1]."""
    counts = np.asarray(item_counts, np.float64) + 1.0
    info = -np.log(counts / counts.sum())
    return ((info - info.min()) / max(info.max() - info.min(), 1e-12)).astype(np.float32)
