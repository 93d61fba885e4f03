"""Slate estimators, the new single-action ones, cross-fitting and V(π) − V(μ) intervals, on
generated logs with a known truth.

The world: C contexts, each with N candidate items; the logging policy explores ε per slot around
a behaviour slate (closed-form propensities, `exploration`); clicks follow a position-based
model (P(click at k) = θ_k · attraction) or a cascade (the user clicks the first attractive item).
"""

import itertools

import numpy as np
import pytest

from tfmarl.evaluation.ope import (BanditLog, SlateLog, SlateTarget, cascade_dr, cross_fit, direct_method,
                                   doubly_robust, dros, epsilon_slot_cascade, epsilon_slot_marginals,
                                   evaluate_policy_offline, fold_ids, iips, ips, pseudo_inverse, rips, sips, sndr,
                                   switch_dr, target_probabilities)

C, N, K = 6, 5, 3


class SlateWorld:
    def __init__(self, click_model="pbm", epsilon=0.5, seed=0):
        rng = np.random.default_rng(seed)
        self.click_model, self.epsilon = click_model, epsilon
        self.candidates = np.stack([rng.permutation(20)[:N] + 2 for _ in range(C)])      # items 2..21
        self.attraction = rng.uniform(0.05, 0.6, (C, N))                                  # per candidate
        self.theta = np.array([1.0, 0.7, 0.45])
        self.behaviour = np.stack([self.candidates[c, rng.permutation(N)[:K]] for c in range(C)])
        self.target = np.stack([self.candidates[c, np.argsort(-self.attraction[c])[:K]] for c in range(C)])

    def attract(self, c, slates):
        pos = (slates[:, :, None] == self.candidates[c][:, None, :]).argmax(-1)           # [n, K]
        return np.take_along_axis(self.attraction[c], pos, axis=1)

    def expected_clicks(self, c, slates):
        a = self.attract(c, slates)
        if self.click_model == "pbm":
            return self.theta * a
        return a * np.cumprod(np.concatenate([np.ones((len(a), 1)), 1 - a[:, :-1]], axis=1), axis=1)

    def value(self, slates_by_context):
        return float(np.mean(self.expected_clicks(np.arange(C), slates_by_context).sum(axis=1)))

    def simulate(self, n, seed):
        rng = np.random.default_rng(seed)
        c = rng.integers(0, C, n)
        greedy, cands = self.behaviour[c], self.candidates[c]
        swap = rng.random((n, K)) < self.epsilon
        gpos = (greedy[:, :, None] == cands[:, None, :]).argmax(-1)
        rows = np.arange(n)[:, None]
        taken = np.zeros((n, N), bool)
        taken[np.broadcast_to(rows, (n, K))[~swap], gpos[~swap]] = True
        shuffled = np.argsort(rng.random((n, N)), axis=1)
        free = np.take_along_axis(shuffled, np.argsort(taken[rows, shuffled], axis=1, kind="stable"), axis=1)
        slates = np.take_along_axis(cands, np.where(swap, free[rows, np.cumsum(swap, 1) - 1], gpos), axis=1)
        if self.click_model == "pbm":
            clicks = (rng.random((n, K)) < self.expected_clicks(c, slates)).astype(float)
        else:  # the user scans down and clicks the first attractive item
            attractive = rng.random((n, K)) < self.attract(c, slates)
            clicks = (attractive & (np.cumsum(attractive, axis=1) == 1)).astype(float)
        position = epsilon_slot_marginals(slates[:, :, None], greedy, cands, self.epsilon)[:, :, 0]
        cascade = epsilon_slot_cascade(slates, greedy, cands, self.epsilon)
        history = np.c_[c + 30, np.zeros((n, 2), int)]
        return SlateLog(slates, clicks, position, cascade, history=history, candidates=cands), c


def test_cascade_clicks_are_the_cascade_model():
    world = SlateWorld("cascade")
    log, c = world.simulate(40_000, seed=0)
    expected = np.mean(world.expected_clicks(c, log.slates), axis=0)
    np.testing.assert_allclose(log.rewards.mean(axis=0), expected, atol=0.01)


def _brute_force(log, target):
    """Per-round loops, as the papers write them."""
    out = {name: [] for name in ("sips", "iips", "rips", "pi")}
    for i in range(len(log)):
        r, mu_k, mu_c = log.rewards[i], log.position_propensities[i], log.cascade_propensities[i]
        pi_k, pi_c = target.position[i], target.cascade[i]
        out["sips"].append(pi_c[-1] / mu_c[-1] * r.sum())
        out["iips"].append(sum(pi_k[k] / mu_k[k] * r[k] for k in range(K)))
        out["rips"].append(sum(pi_c[k] / mu_c[k] * r[k] for k in range(K)))
        out["pi"].append((sum(pi_k[k] / mu_k[k] for k in range(K)) - K + 1) * r.sum())
    return {name: float(np.mean(v)) for name, v in out.items()}


def test_slate_estimators_match_a_brute_force_computation():
    world = SlateWorld("cascade", epsilon=0.6)
    log, c = world.simulate(300, seed=1)
    target = SlateTarget.deterministic(log, world.target[c])
    brute = _brute_force(log, target)
    for name, est in (("sips", sips), ("iips", iips), ("rips", rips), ("pi", pseudo_inverse)):
        assert est(log, target, num_bootstrap=0).value == pytest.approx(brute[name], rel=1e-12), name
    # Cascade-DR with fixed predictions q[i, k, 0] (logged item) and q[i, k, 1] (the deterministic
    # target's own item at position k).
    q = np.random.default_rng(0).random((len(log), K, 2))
    w = target.cascade / log.cascade_propensities
    total = 0.0
    for i in range(len(log)):
        for k in range(K):
            before = 1.0 if k == 0 else w[i, k - 1]
            total += w[i, k] * (log.rewards[i, k] - q[i, k, 0]) + before * q[i, k, 1]
    assert cascade_dr(log, target, q, num_bootstrap=0).value == pytest.approx(total / len(log), rel=1e-12)


def test_single_action_estimators_match_a_brute_force_computation():
    rng = np.random.default_rng(3)
    n, a = 200, 4
    mu, pi = rng.dirichlet(np.ones(a), n), rng.dirichlet(np.ones(a), n)
    actions = np.array([rng.choice(a, p=p) for p in mu])
    rewards = rng.random(n)
    log = BanditLog(rewards, actions, mu[np.arange(n), actions], behaviour_probs=mu)
    q = rng.random((n, a))
    w = pi[np.arange(n), actions] / mu[np.arange(n), actions]
    dm = np.sum(pi * q, axis=1)
    res = rewards - q[np.arange(n), actions]
    assert sndr(log, pi, q, num_bootstrap=0).value == pytest.approx(dm.mean() + np.sum(w * res) / w.sum())
    tau = np.median(w)
    assert switch_dr(log, pi, q, tau=tau, num_bootstrap=0).value == pytest.approx(
        np.mean(dm + np.where(w <= tau, w, 0) * res))
    lam = 2.0
    assert dros(log, pi, q, shrinkage=lam, num_bootstrap=0).value == pytest.approx(
        np.mean(dm + lam * w / (w ** 2 + lam) * res))
    # Large thresholds recover DR.
    dr = doubly_robust(log, pi, q, num_bootstrap=0).value
    assert switch_dr(log, pi, q, tau=1e12, num_bootstrap=0).value == pytest.approx(dr)
    assert dros(log, pi, q, shrinkage=1e12, num_bootstrap=0).value == pytest.approx(dr)


@pytest.mark.parametrize("click_model, names", [("pbm", ("sips", "iips", "rips", "cascade_dr")),
                                                ("cascade", ("sips", "rips", "cascade_dr"))])
def test_unbiased_under_their_click_model_and_wrong_propensities_fail(click_model, names):
    world = SlateWorld(click_model, epsilon=0.5)
    truth = world.value(world.target)
    values = {name: [] for name in names}
    wrong = []
    for seed in range(150):
        log, c = world.simulate(400, seed=100 + seed)
        target = SlateTarget.deterministic(log, world.target[c])
        for name in names:
            fn = {"sips": sips, "iips": iips, "rips": rips, "cascade_dr": cascade_dr}[name]
            values[name].append(fn(log, target, num_bootstrap=0, num_folds=2) if name == "cascade_dr"
                                else fn(log, target, num_bootstrap=0))
        # Control: propensities from the wrong exploration rate (0.9 instead of 0.5).
        bad = SlateLog(log.slates, log.rewards,
                       epsilon_slot_marginals(log.slates[:, :, None], world.behaviour[c], log.candidates, 0.9)[:, :, 0],
                       epsilon_slot_cascade(log.slates, world.behaviour[c], log.candidates, 0.9))
        wrong.append(rips(bad, target, num_bootstrap=0).value)
    for name, estimates in values.items():
        v = np.array([e.value for e in estimates])
        assert abs(v.mean() - truth) < 4 * v.std(ddof=1) / np.sqrt(len(v)), (name, v.mean(), truth)
    v = np.array(wrong)
    assert abs(v.mean() - truth) > 6 * v.std(ddof=1) / np.sqrt(len(v))


def test_iips_is_biased_under_the_cascade():
    world = SlateWorld("cascade", epsilon=0.5)
    truth = world.value(world.target)
    v = []
    for seed in range(100):
        log, c = world.simulate(400, seed=seed)
        v.append(iips(log, SlateTarget.deterministic(log, world.target[c]), num_bootstrap=0).value)
    v = np.array(v)
    assert abs(v.mean() - truth) > 4 * v.std(ddof=1) / np.sqrt(len(v))


def test_cross_fitting_never_predicts_a_fitted_round():
    log, _ = SlateWorld().simulate(100, seed=0)
    seen = []

    class Recorder:
        def fit(self, log, weights):
            fitted = set(np.flatnonzero(weights > 0))
            seen.append(fitted)
            return lambda rows, items=None: seen.append(("predict", fitted, set(rows))) or np.zeros(items.shape)

    folds = fold_ids(len(log), 4, seed=0)
    counts = np.bincount(np.random.default_rng(0).integers(0, 100, 100), minlength=100)
    for weights in (None, counts):
        fitted = cross_fit(Recorder(), log, folds, weights)
        assert len(fitted) == 4
        for rows, predict in fitted:
            predict(rows, np.zeros((len(rows), K, 1)))
    predictions = [entry for entry in seen if isinstance(entry, tuple)]
    assert len(predictions) == 8
    for _, fitted, predicted in predictions:
        assert fitted and not fitted & predicted
    assert sorted(np.bincount(folds)) == [25, 25, 25, 25]


@pytest.mark.slow
def test_dm_interval_carries_the_reward_model_uncertainty():
    # A context-free target (always arm 0) on a log without features: with the per-arm table
    # refitted per resample, DM's interval covers the truth about as often as it should.
    rng = np.random.default_rng(0)
    a, q = 4, np.array([0.3, 0.5, 0.2, 0.6])
    covered = 0
    for seed in range(60):
        n = 300
        actions = rng.integers(0, a, n)
        rewards = (rng.random(n) < q[actions]).astype(float)
        log = BanditLog(rewards, actions, np.full(n, 1 / a), behaviour_probs=np.full((n, a), 1 / a))
        target = np.tile(np.eye(a)[0], (n, 1))
        est = direct_method(log, target, num_bootstrap=200, seed=seed)
        covered += est.covers(q[0])
        assert est.ci_high - est.ci_low > 0.05
    assert covered >= 50


def test_difference_with_logging_has_its_own_interval():
    world = SlateWorld("pbm")
    log, c = world.simulate(4000, seed=5)
    target = SlateTarget.deterministic(log, world.target[c])
    value, diff = rips(log, target, seed=1), rips(log, target, seed=1, versus_logging=True)
    assert diff.relative_to == "logging"
    assert diff.value == pytest.approx(value.value - log.slate_rewards.mean())
    assert diff.ci_low < diff.value < diff.ci_high
    # Paired resampling: the difference's interval is not the two intervals' widths added.
    assert diff.ci_high - diff.ci_low < (value.ci_high - value.ci_low) + 0.05
    results = evaluate_policy_offline(log, world.target[c], num_bootstrap=100, versus_logging=True)
    assert list(results) == ["sips", "iips", "rips", "pseudo_inverse", "cascade_dr"]
    assert all(e.relative_to == "logging" for e in results.values())
    # The target ranks by attraction: it beats the logging policy, and the interval says so.
    assert results["cascade_dr"].ci_low > 0 and results["iips"].ci_low > 0


def test_epsilon_closed_forms_sum_to_one_and_match_sampling():
    world = SlateWorld(epsilon=0.4)
    log, c = world.simulate(60_000, seed=2)
    items = np.broadcast_to(log.candidates[:, None, :], (len(log), K, N))
    np.testing.assert_allclose(epsilon_slot_marginals(items, world.behaviour[c], log.candidates, 0.4).sum(-1), 1)
    slates = np.array(list(itertools.permutations(world.candidates[0], K)))
    joint = epsilon_slot_cascade(slates, np.repeat(world.behaviour[:1], len(slates), 0),
                                 np.repeat(world.candidates[:1], len(slates), 0), 0.4)[:, -1]
    assert joint.sum() == pytest.approx(1.0)
    mine = log.slates[c == 0]
    key = {tuple(s): i for i, s in enumerate(slates)}
    frequency = np.bincount([key[tuple(s)] for s in mine], minlength=len(slates)) / len(mine)
    se = np.sqrt(joint * (1 - joint) / len(mine))
    assert (np.abs(frequency - joint) <= 4.5 * se + 1e-9).all()


def test_single_slot_logs_run_the_single_action_estimators():
    world = SlateWorld("pbm")
    log, c = world.simulate(2000, seed=0)
    one = SlateLog(log.slates[:, :1], log.rewards[:, :1], log.position_propensities[:, :1],
                   log.cascade_propensities[:, :1], history=log.history, candidates=log.candidates)
    results = evaluate_policy_offline(one, world.target[c][:, :1], num_bootstrap=0)
    assert {"ips", "dr", "sndr", "switch_dr", "dros", "sips", "iips"} <= set(results)
    assert results["ips"].value == pytest.approx(results["iips"].value) == pytest.approx(results["sips"].value)
    # A callable slate policy: deterministic, reading the history (context id) it is given.
    policy = lambda obs: world.target[obs["history"][:, 0] - 30][:, :1]  # noqa: E731
    assert target_probabilities(one, policy).position.sum() == SlateTarget.deterministic(
        one, world.target[c][:, :1]).position.sum()
