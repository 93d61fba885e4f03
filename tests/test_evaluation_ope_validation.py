"""`validate_simulator`: a simulator scored against logs it generated itself must look right."""

import numpy as np

from tfmarl.data import generate_synthetic
from tfmarl.envs import fit_user_model
from tfmarl.evaluation.ope import SlateLog
from tfmarl.evaluation.ope.validation import auc, click_probabilities, kendall_tau, validate_simulator


def _model_and_log(n=3000, k=3, seed=0):
    interactions = generate_synthetic(n_users=120, n_items=60, interactions_per_user=10, seed=0)
    model = fit_user_model(interactions, dim=4, seed=0)
    rng = np.random.default_rng(seed)
    users = rng.choice(model.heldout_users, n)
    slates = np.stack([rng.choice(np.arange(2, model.num_items), k, replace=False) for _ in range(n)])
    log = SlateLog(slates, np.zeros((n, k)), np.full((n, k), 0.1), users=[str(model.user_ids[u]) for u in users],
                   item_vocab=model.item_vocab)
    p = click_probabilities(model, log)
    choice = np.array([rng.choice(k + 1, p=np.append(row, 1 - row.sum())) for row in p])
    rewards = np.eye(k + 1)[choice][:, :k]
    return model, SlateLog(slates, rewards, log.position_propensities, users=log.users, item_vocab=model.item_vocab,
                           sessions=[str(u) for u in users])


def test_a_simulator_validates_against_its_own_clicks(tmp_path):
    model, log = _model_and_log()
    result = validate_simulator(model, log, num_episodes=50, batch_size=25)
    assert result.auc > 0.6 and result.calibration_error < 0.02
    assert len(result.calibration) == 10 and result.session_lengths["simulated_mean"] > 0
    # Shuffled clicks: the same predictions no longer rank the clicks.
    shuffled = SlateLog(log.slates, np.random.default_rng(1).permutation(log.rewards), log.position_propensities,
                        users=log.users, item_vocab=log.item_vocab)
    assert abs(validate_simulator(model, shuffled).auc - 0.5) < 0.05
    text = result.format()
    assert "AUC" in text and "decile" in text and "session length" in text
    result.plot_calibration(tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_metric_helpers():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0


def _generated_log(model, config, n, seed=1):
    """Impressions the simulator itself generates at session start: uniformly random slates of the
    real items (exact propensities), one MNL choice each."""
    from tfmarl.envs import SessionEnvironment, random_slates

    env = SessionEnvironment(model, config, batch_size=n, users="heldout", seed=seed)
    history = env.reset().observation["history"]
    rng = np.random.default_rng(seed)
    k, m = config.slate_size, model.num_items - 2
    slates = random_slates(rng, n, k, model.num_items)
    p = env.oracle_click_probabilities(slates)
    choice = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)     # k = no click
    rewards = np.eye(k + 1)[choice][:, :k]
    cascade = np.cumprod(1.0 / (m - np.arange(k)), axis=0) * np.ones((n, 1))
    return SlateLog(slates, rewards, np.full((n, k), 1.0 / m), cascade, history=history, item_vocab=model.item_vocab)


def _ranked_policies(model, config):
    """Slates by the rank of a click-utility proxy (the history's mean item vector as interest):
    the top K, the K around the median, the bottom K: a known order."""
    def ranked(offset):
        def policy(observation):
            history = np.asarray(observation["history"])
            real = history >= 2
            interest = (model.item_vectors[history] * real[..., None]).sum(1) / np.maximum(real.sum(1), 1)[:, None]
            utility = (config.affinity_scale * interest @ model.item_vectors.T
                       + config.popularity_weight * model.item_bias[None, :])
            utility[:, :2] = np.nan
            np.put_along_axis(utility, history, np.nan, axis=1)
            order = np.argsort(-np.nan_to_num(utility, nan=-np.inf), axis=1, kind="stable")
            usable = np.isfinite(utility).sum(axis=1).min()
            start = {"best": 0, "middle": usable // 2, "worst": usable - config.slate_size}[offset]
            return order[:, start:start + config.slate_size].astype(np.int32)
        return policy
    return {name: ranked(name) for name in ("worst", "middle", "best")}


def test_policy_ranking_agrees_only_with_the_generating_simulator():
    import dataclasses

    from tfmarl.envs import SessionConfig

    interactions = generate_synthetic(n_users=150, n_items=60, interactions_per_user=10, seed=0)
    model = fit_user_model(interactions, dim=4, seed=0)
    config = SessionConfig(slate_size=2, history_length=6, max_steps=3, no_click_utility=3.0)
    log = _generated_log(model, config, 6000)
    policies = _ranked_policies(model, config)
    result = validate_simulator(model, log, config=config, policies=policies, estimator="iips", num_episodes=200,
                                batch_size=50, num_bootstrap=50)
    simulated = [result.policies[name]["simulated"] for name in ("worst", "middle", "best")]
    estimated = [result.policies[name]["estimate"] for name in ("worst", "middle", "best")]
    assert simulated == sorted(simulated) and estimated == sorted(estimated)
    assert result.kendall_tau == 1.0
    assert "Kendall tau" in result.format()
    # Control: a simulator whose user-item affinities are reversed ranks the same policies otherwise.
    wrong = dataclasses.replace(model, item_vectors=-model.item_vectors)
    control = validate_simulator(wrong, log, config=config, policies=policies, estimator="iips", num_episodes=200,
                                 batch_size=50, num_bootstrap=50)
    assert control.kendall_tau == -1.0
