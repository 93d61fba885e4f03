"""The tabulated ε-per-slot cascade probabilities against a brute-force enumeration of swap
patterns, and `SlateLogSimulator`'s logs against its own exact truth."""

import itertools
import math

import numpy as np
import pytest

from tfmarl.evaluation.ope import SlateLogSimulator, SlateTarget, epsilon_slot_cascade, iips, rips


def _enumerated(slates, greedy, candidates, epsilon):
    """P(top k) by summing over every swap pattern and every ordered draw from the free set."""
    n, k = slates.shape
    out = np.zeros((n, k))
    for i in range(n):
        for pattern in itertools.product([False, True], repeat=k):
            prior = epsilon ** sum(pattern) * (1 - epsilon) ** (k - sum(pattern))
            kept = {greedy[i, j] for j in range(k) if not pattern[j]}
            free = [c for c in candidates[i] if c not in kept]
            probability, drawn = prior, 0
            for t in range(k):
                if pattern[t]:
                    ok = slates[i, t] in free
                    probability *= ok / (len(free) - drawn)
                    drawn += 1
                else:
                    probability *= slates[i, t] == greedy[i, t]
                out[i, t] += probability
    return out


@pytest.mark.parametrize("k,n_candidates,epsilon", [(1, 4, 0.3), (3, 5, 0.6), (4, 6, 0.9), (3, 3, 0.4)])
def test_tabulated_cascade_matches_the_enumeration(k, n_candidates, epsilon):
    rng = np.random.default_rng(k)
    candidates = np.stack([rng.permutation(n_candidates + 2)[:n_candidates] + 2 for _ in range(60)])
    greedy = candidates[:, :k]
    slates = []
    for row, g in zip(candidates, greedy):  # greedy items kept, moved, displaced, and items outside
        pool = np.r_[row, 0, 1]
        s = np.where(rng.random(k) < 0.5, g, rng.permutation(pool)[:k])
        slates.append(s if len(set(s)) == k else rng.permutation(pool)[:k])
    slates = np.array(slates)
    np.testing.assert_allclose(epsilon_slot_cascade(slates, greedy, candidates, epsilon),
                               _enumerated(slates, greedy, candidates, epsilon), atol=1e-14)


def test_full_slate_probabilities_sum_to_one():
    k, n_candidates, epsilon = 3, 5, 0.5
    candidates = np.arange(2, 2 + n_candidates)
    slates = np.array(list(itertools.permutations(candidates, k)))
    m = len(slates)
    p = epsilon_slot_cascade(slates, np.tile(candidates[:k], (m, 1)), np.tile(candidates, (m, 1)), epsilon)
    assert p[:, -1].sum() == pytest.approx(1.0, abs=1e-12)
    assert math.isclose(p[:, 0].reshape(n_candidates, -1)[:, 0].sum(), 1.0)


def _simulator(click_model, k=3, contexts=30, seed=0):
    rng = np.random.default_rng(seed)
    candidates = np.stack([rng.permutation(40)[:8] + 2 for _ in range(contexts)])
    attraction = rng.uniform(0.05, 0.7, (contexts, 42))
    return SlateLogSimulator(np.zeros((contexts, 4), int), candidates, attraction, candidates[:, :k], epsilon=0.5,
                             click_model=click_model)


@pytest.mark.parametrize("click_model", ["pbm", "cascade"])
def test_simulated_logs_match_the_exact_values(click_model):
    simulator = _simulator(click_model)
    log, contexts = simulator.sample(60_000, seed=1)
    expected = simulator.expected_rewards(contexts, log.slates)
    np.testing.assert_allclose(log.rewards.mean(axis=0), expected.mean(axis=0), atol=0.01)
    assert log.slate_rewards.mean() == pytest.approx(simulator.logging_value(num_samples=400_000), abs=0.01)
    # A deterministic target: the unbiased estimator of the click model recovers the exact truth.
    target_slates = simulator.candidates[:, [0, 4, 2]]
    truth = simulator.value(target_slates)
    estimator = iips if click_model == "pbm" else rips
    estimate = estimator(log, SlateTarget.deterministic(log, target_slates[contexts]), num_bootstrap=200)
    assert estimate.covers(truth) and abs(estimate.value - truth) < 3 * estimate.std_error < 0.1 * truth


def test_simulator_rejects_what_it_cannot_log():
    simulator = _simulator("pbm")
    with pytest.raises(ValueError, match="epsilon must lie in"):
        SlateLogSimulator(simulator.history, simulator.candidates, simulator.attraction, simulator.behaviour,
                          epsilon=0.0)
    with pytest.raises(ValueError, match="outside its candidates"):
        SlateLogSimulator(simulator.history, simulator.candidates, simulator.attraction,
                          simulator.behaviour + 100, epsilon=0.5)
    with pytest.raises(ValueError, match="click_model"):
        SlateLogSimulator(simulator.history, simulator.candidates, simulator.attraction, simulator.behaviour,
                          epsilon=0.5, click_model="dbn")
    with pytest.raises(ValueError, match="one slate per context"):
        simulator.value(simulator.behaviour[:3])
