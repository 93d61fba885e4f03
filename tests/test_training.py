"""Pretraining: losses, learning, strategies, serialisation, TensorBoard, resumable checkpoints."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.data import training_dataset
from tfmarl.evaluation import evaluate_ranking
from tfmarl.training import SequentialRecommender, get_strategy, pretrain


def small_model(num_items=32, **kwargs):
    kwargs.setdefault("dim", 16)
    kwargs.setdefault("max_length", 12)
    kwargs.setdefault("num_layers", 1)
    return SequentialRecommender(num_items=num_items, **kwargs)


def test_trained_model_learns_the_cycle(trained_cycle_model, cycle_split):
    metrics = evaluate_ranking(trained_cycle_model, cycle_split.test, ks=(1, 10))
    assert metrics["hr@1"] > 0.9  # the next item is determined by the last one
    assert metrics["ndcg@10"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("loss,interaction", [("full", "dot"), ("in_batch", "dot"), ("sampled", "dot"),
                                              ("sampled", "mlp"), ("full", "dcn")])
def test_every_loss_reduces_the_loss(cycle_split, loss, interaction):
    from tfmarl.agents import SystemAgent

    tf.keras.utils.set_random_seed(1)
    freq = np.bincount(cycle_split.train.items, minlength=32)
    model = small_model(loss=loss, num_negatives=8, item_frequencies=freq,
                        system_agent=SystemAgent(k=5, interaction=interaction, hidden_units=(16,)))
    result = pretrain(model, cycle_split.train, epochs=4, batch_size=32, learning_rate=5e-3, verbose=0)
    losses = result.history["loss"]
    assert losses[-1] < losses[0] and np.isfinite(losses).all()
    assert result.targets_per_second > 0


@pytest.mark.slow
def test_encoders_train_end_to_end(cycle_split):
    for encoder in ("gru", "lstm"):
        tf.keras.utils.set_random_seed(2)
        model = small_model(encoder=encoder)
        result = pretrain(model, cycle_split.train, cycle_split.valid, epochs=6, batch_size=32,
                          learning_rate=1e-2, verbose=0)
        assert result.best_metric > 0.3, encoder


def test_model_config_round_trip_and_weights(trained_cycle_model, cycle_split):
    clone = SequentialRecommender.from_config(trained_cycle_model.get_config())
    assert clone.get_config() == trained_cycle_model.get_config()
    clone.build_all()
    clone.set_weights(trained_cycle_model.get_weights())
    history = tf.constant([[2, 3, 4, 0]])
    np.testing.assert_allclose(clone.score_catalog(history), trained_cycle_model.score_catalog(history), atol=1e-5)
    assert clone.item_vocabulary == trained_cycle_model.item_vocabulary


def test_call_returns_top_k_without_history(trained_cycle_model):
    out = trained_cycle_model(tf.constant([[5, 6, 7, 0]]))
    assert out["items"].shape == (1, 5)
    assert not set(out["items"].numpy()[0]) & {0, 1, 5, 6, 7}
    assert out["items"].numpy()[0, 0] == 8  # the cycle continues


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="loss"):
        small_model(loss="bpr")
    from tfmarl.training.recommender import FULL_SOFTMAX_MAX_ITEMS

    # "auto": exact softmax while the catalog's logits fit, sampled softmax beyond.
    assert SequentialRecommender(num_items=FULL_SOFTMAX_MAX_ITEMS).loss_type == "full"
    assert SequentialRecommender(num_items=FULL_SOFTMAX_MAX_ITEMS + 1).loss_type == "sampled"
    with pytest.raises(ValueError, match="item_frequencies"):
        small_model(item_frequencies=[1, 2])
    with pytest.raises(ValueError, match="num_items or item_vocabulary"):
        SequentialRecommender()
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("gpus")


def test_get_strategy_mirrored_over_logical_cpus():
    assert get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"]).num_replicas_in_sync == 2
    assert get_strategy("cpu").num_replicas_in_sync == 1
    with pytest.raises(RuntimeError, match="TF_CONFIG"):
        get_strategy("multi_worker")


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(cycle_split, mirrored):
    strategy = mirrored
    tf.keras.utils.set_random_seed(3)
    with strategy.scope():
        model = small_model(dim=32)
    result = pretrain(model, cycle_split.train, cycle_split.valid, epochs=6, batch_size=32,
                      learning_rate=5e-3, verbose=0)
    assert result.best_metric > 0.5
    assert isinstance(model.user_agent.cold_start, tf.distribute.DistributedValues)


def test_mirrored_loss_matches_single_device(cycle_split, mirrored):
    """The replicas' summed gradients equal the single-device gradient of the global mean loss."""
    batch = next(iter(training_dataset(cycle_split.train, 12, 16, shuffle=False)))
    tf.keras.utils.set_random_seed(4)
    single = small_model()
    single.compute_loss(batch)
    strategy = mirrored
    with strategy.scope():
        replicated = small_model()
        replicated.compute_loss(batch)
    replicated.set_weights(single.get_weights())
    expected = single.compute_loss(batch).numpy()
    dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).unbatch().batch(16))
    per_replica = tf.function(lambda b: strategy.run(replicated.compute_loss, (b,)))(next(iter(dist)))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
    assert total == pytest.approx(expected, rel=1e-5)


def test_tensorboard_logs_validation_ndcg(trained_cycle_model, cycle_log_dir):
    # The shared model's pretraining (conftest.py) ran with log_dir=cycle_log_dir.
    tags = {}
    for path in glob.glob(str(cycle_log_dir / "*" / "events.out.tfevents.*")):
        run = os.path.basename(os.path.dirname(path))
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.setdefault(run, set()).update(v.tag for v in event.summary.value)
    assert "epoch_loss" in tags["train"]
    assert "epoch_ndcg@10" in tags["validation"]  # TensorBoard files val_* under "validation"


class Interrupt(tf.keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("simulated crash")


def test_interrupted_pretraining_resumes_from_checkpoint(tmp_path, cycle_split):
    tf.keras.utils.set_random_seed(5)
    model = small_model()
    with pytest.raises(KeyboardInterrupt):
        pretrain(model, cycle_split.train, epochs=4, batch_size=64, verbose=0, checkpoint_dir=tmp_path,
                 callbacks=[Interrupt(1)])
    assert os.path.isdir(tmp_path / "backup")
    epochs_seen, weights_seen = [], []

    class Record(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_seen.append(epoch)
            weights_seen.append(self.model.get_weights())

    fresh = small_model()
    result = pretrain(fresh, cycle_split.train, epochs=4, batch_size=64, verbose=0, checkpoint_dir=tmp_path,
                      callbacks=[Record()])
    assert epochs_seen == [2, 3]  # epochs 0 and 1 were done before the crash
    assert result.epochs == 4 and len(result.history["loss"]) == 4  # the history covers them too
    # The resumed model starts from the interrupted one's weights, not from scratch.
    for resumed, interrupted in zip(weights_seen[0], model.get_weights(), strict=True):
        np.testing.assert_array_equal(resumed, interrupted)
    assert not os.path.isdir(tmp_path / "backup") or not os.listdir(tmp_path / "backup")
    assert not os.path.exists(tmp_path / "progress")


def deterministic_pretrain(split, **kwargs):
    """5 epochs, patience 2, of a model whose training is a function of its weights and optimizer
    state alone (no dropout, no shuffling: their random streams restart on resume). Validation
    NDCG@10 reaches 1.0 at epoch 3, so training stops after epoch 5 with epoch 3's weights."""
    tf.keras.utils.set_random_seed(7)
    model = small_model(dropout=0.0)
    result = pretrain(model, training_dataset(split.train, 12, 64, shuffle=False), split.valid, epochs=8,
                      patience=2, learning_rate=0.02, verbose=0, **kwargs)
    return model, result


@pytest.fixture(scope="module")
def uninterrupted(cycle_split):
    model, result = deterministic_pretrain(cycle_split)
    assert (result.best_epoch, result.epochs) == (3, 5)  # the scenario the resume test relies on
    return model.get_weights(), result


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["after_best", "before_backup", "at_stop"])
def test_resumed_pretraining_ends_as_an_uninterrupted_run(tmp_path, cycle_split, uninterrupted, monkeypatch, crash):
    """Best epoch, best metric, best weights, patience count and the stop decision survive a crash."""
    expected_weights, expected = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        if crash == "before_backup":  # the tracker saved epoch 4, BackupAndRestore did not: resume at 4
            backup = tf.keras.callbacks.BackupAndRestore._backup

            def crashing_backup(self, epoch, batch=0):
                if epoch == 3:
                    raise KeyboardInterrupt("crash before the backup")
                backup(self, epoch, batch)

            with monkeypatch.context() as patch:
                patch.setattr(tf.keras.callbacks.BackupAndRestore, "_backup", crashing_backup)
                deterministic_pretrain(cycle_split, checkpoint_dir=tmp_path)
        else:  # after the epoch's backup: after epoch 4, or 5 (stopped early: only the cleanup was left)
            at = {"after_best": 3, "at_stop": 4}[crash]
            deterministic_pretrain(cycle_split, checkpoint_dir=tmp_path, callbacks=[Interrupt(at)])
    model, result = deterministic_pretrain(cycle_split, checkpoint_dir=tmp_path)
    assert (result.best_epoch, result.epochs) == (expected.best_epoch, expected.epochs)
    assert result.best_metric == expected.best_metric
    assert result.history.keys() == expected.history.keys()
    for key, values in expected.history.items():
        np.testing.assert_allclose(result.history[key], values, rtol=1e-4, err_msg=key)
    for got, want in zip(model.get_weights(), expected_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert not os.path.isdir(tmp_path / "backup") or not os.listdir(tmp_path / "backup")
    assert not os.path.exists(tmp_path / "progress")


@pytest.mark.parametrize("case", ["typical", "reserved_positives", "underflow"])
def test_full_softmax_loss_matches_the_masked_cross_entropy(case):
    """The fused full-catalog loss has the value and gradients of mask_excluded logits through
    sparse_softmax_cross_entropy_with_logits, also for positives at reserved indices and for rows
    whose positive's probability underflows."""
    from tfmarl.agents.system import mask_excluded
    from tfmarl.training.recommender import full_softmax_loss

    rng = np.random.default_rng(0)
    positives = rng.integers(2, 50, 40)
    if case == "reserved_positives":
        positives[:2] = [0, 1]
    queries = tf.constant(rng.normal(size=(40, 8)) * (30.0 if case == "underflow" else 1.0), tf.float32)
    items = tf.constant(rng.normal(size=(50, 8)), tf.float32)
    positives = tf.constant(positives, tf.int32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([queries, items])
        logits = mask_excluded(tf.matmul(queries, items, transpose_b=True))
        expected = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(positives, logits))
        got = full_softmax_loss(queries, positives, items)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    for want, have in zip(tape.gradient(expected, [queries, items]), tape.gradient(got, [queries, items]), strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)
