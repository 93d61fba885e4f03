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
