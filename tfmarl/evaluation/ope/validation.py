"""Validating a fitted session simulator against held-out logged impressions.

`validate_simulator(user_model, heldout_log)` scores the simulator's click model (the
multinomial logit of `tfmarl.envs.SessionEnvironment` at a session's start: utility =
affinity_scale · u·v + popularity_weight · item_bias, history items excluded, against a no-click
option) on the logged slates: AUC, log loss and calibration by decile of the predicted click
probability; compares simulated and logged session lengths (Wasserstein-1 and Kolmogorov-Smirnov
distances); and, for a set of policies, the Kendall tau between their order by simulated return
and by off-policy estimates on the log.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfmarl.evaluation.ope.slate_log import SlateLog

_EPS = 1e-6


@dataclasses.dataclass
class SimulatorValidation:
    """Figures of `validate_simulator` (``format()`` prints them, ``plot_calibration`` draws them)."""

    auc: float
    log_loss: float
    calibration_error: float
    calibration: list
    impressions: int
    session_lengths: dict | None = None
    policies: dict | None = None
    kendall_tau: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [f"click model on {self.impressions} held-out impressions: AUC {self.auc:.3f}, "
                 f"log loss {self.log_loss:.4f}, calibration error {self.calibration_error:.4f}",
                 "decile  predicted  observed  positions"]
        lines += [f"{row['decile']:>6}  {row['predicted']:>9.4f}  {row['observed']:>8.4f}  {row['count']:>9}"
                  for row in self.calibration]
        if self.session_lengths:
            s = self.session_lengths
            lines.append(f"session length: logged {s['logged_mean']:.2f}, simulated {s['simulated_mean']:.2f} "
                         f"(Wasserstein {s['wasserstein']:.2f}, KS {s['ks']:.3f})")
        if self.policies:
            lines.append("policy  simulated return  off-policy estimate [95% CI]")
            for name, row in self.policies.items():
                lines.append(f"{name}  {row['simulated']:.4f}  {row['estimate']:.4f} "
                             f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]")
            lines.append(f"policy-ranking agreement (Kendall tau): {self.kendall_tau:.3f}")
        return "\n".join(lines)

    def plot_calibration(self, path) -> None:
        """Writes a reliability diagram (predicted vs observed click rate per decile) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        predicted = [row["predicted"] for row in self.calibration]
        observed = [row["observed"] for row in self.calibration]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        top = max(predicted + observed + [1e-3]) * 1.1
        ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.plot(predicted, observed, marker="o", label="simulator")
        ax.set_xlabel("predicted click probability (decile mean)")
        ax.set_ylabel("observed click rate")
        ax.set_title(f"Simulator calibration (AUC {self.auc:.3f})")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def click_probabilities(user_model, log: SlateLog, config=None) -> np.ndarray:
    """The simulator's P(click at position k) of each logged slate at session start, [n, K].

    Users are the log's ``users`` (ids of ``user_model``); a round whose user the model does not
    know (or a log without users) takes the interest of its history: the mean of the history's
    item vectors, scaled to the mean norm of the fitted users.
    """
    from tfmarl.envs import SessionConfig

    config = config or SessionConfig(slate_size=log.slate_size)
    slates, history = _remap(user_model, log)
    interest = _interests(user_model, log, history)
    vectors = user_model.item_vectors[slates]                                   # [n, K, d]
    utility = (config.affinity_scale * np.einsum("nkd,nd->nk", vectors, interest)
               + config.popularity_weight * user_model.item_bias[slates]).astype(np.float64)
    if history is not None:
        seen = (slates[:, :, None] == history[:, None, :]).any(axis=2)
        utility[seen] = -np.inf
    top = np.maximum(utility.max(axis=1, keepdims=True), config.no_click_utility)
    weights = np.exp(utility - top)
    return weights / (weights.sum(axis=1, keepdims=True) + np.exp(config.no_click_utility - top))


def _remap(user_model, log: SlateLog):
    """The log's item indices in the user model's vocabulary (unknown ids -> 1)."""
    slates, history = log.slates, log.history
    if log.item_vocab is not None and list(log.item_vocab) != list(user_model.item_vocab):
        index = {item: j + 2 for j, item in enumerate(user_model.item_vocab)}
        table = np.array([0, 1] + [index.get(item, 1) for item in log.item_vocab], np.int64)
        slates = table[slates]
        history = None if history is None else table[history]
    if slates.max() >= user_model.num_items:
        raise ValueError(f"the log holds item index {int(slates.max())} but the simulator knows "
                         f"{user_model.num_items} indices: give the log the simulator's item_vocab")
    return slates, history


def _interests(user_model, log: SlateLog, history) -> np.ndarray:
    n = len(log)
    norms = np.linalg.norm(user_model.user_vectors, axis=1)
    interest = np.zeros((n, user_model.dim), np.float64)
    known = np.zeros(n, bool)
    if log.users is not None:
        number = {str(u): i for i, u in enumerate(user_model.user_ids)}
        users = np.array([number.get(u, -1) for u in log.users])
        known = users >= 0
        interest[known] = user_model.user_vectors[users[known]]
    if (~known).any() and history is not None:
        h = history[~known]
        mean = (user_model.item_vectors[h] * (h >= 2)[:, :, None]).sum(axis=1) / np.maximum((h >= 2).sum(1), 1)[:, None]
        scale = norms.mean() / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        interest[~known] = mean * scale
    return interest


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class only."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel() > 0
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def calibration_by_decile(predicted: np.ndarray, observed: np.ndarray) -> tuple[list, float]:
    """Rows (decile, mean predicted, observed rate, count) over equal-count bins of the predicted
    probability, and the expected calibration error Σ_b (n_b / n) |observed_b − predicted_b|."""
    predicted, observed = np.asarray(predicted, np.float64).ravel(), np.asarray(observed, np.float64).ravel()
    order = np.argsort(predicted, kind="stable")
    rows, error = [], 0.0
    for decile, chunk in enumerate(np.array_split(order, 10), start=1):
        if len(chunk) == 0:
            continue
        p, o = float(predicted[chunk].mean()), float(observed[chunk].mean())
        rows.append({"decile": decile, "predicted": p, "observed": o, "count": int(len(chunk))})
        error += len(chunk) / len(predicted) * abs(o - p)
    return rows, float(error)


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two score lists (NaN with fewer than two items or all ties)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    denominator = math.sqrt(float(np.sum(da != 0)) * float(np.sum(db != 0)))
    return float(np.sum(da * db) / denominator) if denominator > 0 else math.nan


def _length_distances(logged: np.ndarray, simulated: np.ndarray) -> dict:
    grid = np.linspace(0, 1, 201)[1:-1]
    wasserstein = float(np.mean(np.abs(np.quantile(logged, grid) - np.quantile(simulated, grid))))
    points = np.union1d(logged, simulated)
    cdf = lambda x: np.searchsorted(np.sort(x), points, side="right") / len(x)  # noqa: E731
    return {"logged_mean": float(logged.mean()), "simulated_mean": float(simulated.mean()),
            "wasserstein": wasserstein, "ks": float(np.max(np.abs(cdf(logged) - cdf(simulated))))}


def validate_simulator(user_model, heldout_log: SlateLog, *, config=None, policies: dict | None = None,
                       estimator: str | None = None, session_policy=None, num_episodes: int = 500,
                       batch_size: int = 100, seed: int = 0, num_bootstrap: int = 200) -> SimulatorValidation:
    """How well a fitted simulator agrees with held-out logged impressions.

    Args:
      user_model: a `tfmarl.envs.UserModel`.
      heldout_log: a `SlateLog` of impressions the simulator was not fitted on, with per-position
        click rewards (its ``users`` and ``history`` give each impression's user state).
      config: the `SessionConfig` of the simulator (default: defaults with the log's slate size).
      policies: optional ``{name: policy}`` of slate policies; each gets a simulated return
        (`run_episodes` on the held-out users) and an off-policy estimate on the log.
      estimator: the slate estimator for that (default: cascade_dr if the log has top-k
        propensities, else iips).
      session_policy: the policy whose simulated sessions are compared with the logged session
        lengths (default: uniformly random slates); lengths need the log's ``sessions``.
    """
    if not isinstance(heldout_log, SlateLog):
        raise TypeError(f"heldout_log must be a SlateLog, got {type(heldout_log).__name__}")
    if len(heldout_log) == 0:
        raise ValueError("the held-out log is empty")
    clicks = heldout_log.rewards > 0
    predicted = click_probabilities(user_model, heldout_log, config)
    clipped = np.clip(predicted, _EPS, 1 - _EPS)
    log_loss = float(-np.mean(np.where(clicks, np.log(clipped), np.log1p(-clipped))))
    rows, error = calibration_by_decile(predicted, clicks)
    result = SimulatorValidation(auc=auc(predicted, clicks), log_loss=log_loss, calibration_error=error,
                                 calibration=rows, impressions=len(heldout_log))
    if heldout_log.sessions is None and not policies:
        return result
    from tfmarl.envs import SessionConfig, SessionEnvironment, random_slates, run_episodes

    config = config or SessionConfig(slate_size=heldout_log.slate_size)
    env = SessionEnvironment(user_model, config, batch_size=batch_size, users="heldout", seed=seed)
    if heldout_log.sessions is not None:
        _, logged = np.unique(np.asarray(heldout_log.sessions, dtype=object).astype(str), return_counts=True)
        if session_policy is None:
            rng = np.random.default_rng(seed)
            session_policy = lambda obs: random_slates(rng, len(obs["history"]), config.slate_size,  # noqa: E731
                                                       user_model.num_items)
        simulated = run_episodes(env, session_policy, num_episodes, seed=seed)["length"]
        result.session_lengths = _length_distances(logged.astype(np.float64), simulated)
    if policies:
        from tfmarl.evaluation.ope.evaluate import evaluate_policy_offline

        name = estimator or ("cascade_dr" if heldout_log.cascade_propensities is not None else "iips")
        table = {}
        for label, policy in policies.items():
            simulated = float(np.mean(run_episodes(env, policy, num_episodes, seed=seed)["return"]))
            est = evaluate_policy_offline(heldout_log, policy, estimators=(name,), num_bootstrap=num_bootstrap,
                                          seed=seed)[name]
            table[label] = {"simulated": simulated, "estimate": est.value, "ci_low": est.ci_low,
                            "ci_high": est.ci_high, "estimator": name}
        result.policies = table
        result.kendall_tau = kendall_tau([r["simulated"] for r in table.values()],
                                         [r["estimate"] for r in table.values()])
    return result
