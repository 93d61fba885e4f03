"""Distributed training: cluster descriptions, ParameterServer (in-process cluster) and
MultiWorkerMirrored (two worker processes on 127.0.0.1) for pretraining and the RL learner.

The clusters run in subprocesses (tests/distributed_worker.py): MultiWorkerMirrored needs one
process per worker, and a parameter-server coordinator rewires its process's eager context for
good, which the other tests in this process must not inherit.
"""

import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.training.strategy import STRATEGIES, cluster_spec, get_strategy, start_server, tf_config_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "distributed_worker.py")
TIMEOUT = 300  # seconds for a whole cluster run (normally well under a minute)


class Tasks:
    """`distributed_worker.py` processes, one per TF_CONFIG from ``configs()`` (called again for
    fresh ports if a port was taken between picking it and binding it)."""

    def __init__(self, mode, configs, out_paths, log_dir):
        self.mode, self.configs, self.out_paths, self.log_dir = mode, configs, out_paths, log_dir
        self.attempt, self.procs, self.logs = 0, [], []

    def start(self):
        self.procs, self.logs = [], []
        for i, (config, out) in enumerate(zip(self.configs(), self.out_paths)):
            env = dict(os.environ, TF_USE_LEGACY_KERAS="1", OPENBLAS_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
            env.pop("TF_CONFIG", None)
            if config is not None:
                env["TF_CONFIG"] = config
            log = open(os.path.join(self.log_dir, f"{self.mode}_{self.attempt}_{i}.log"), "w+")
            self.logs.append(log)
            self.procs.append(subprocess.Popen([sys.executable, WORKER, self.mode, str(out)], env=env, cwd=REPO,
                                               stdout=log, stderr=subprocess.STDOUT))
        self.deadline = time.monotonic() + TIMEOUT
        return self

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def wait(self):
        """Waits for every task (killing all on a timeout); returns their logs or fails the test."""
        timed_out = False
        for proc in self.procs:
            try:
                proc.wait(timeout=max(self.deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        self.kill()
        texts = []
        for log in self.logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
        if not timed_out and all(proc.returncode == 0 for proc in self.procs):
            return texts
        if not timed_out and self.attempt == 0 and any("already in use" in text.lower() for text in texts):
            self.attempt += 1
            return self.start().wait()
        tails = "\n".join(f"--- task {i} (rc={p.returncode}) ---\n{t[-3000:]}" for i, (p, t) in
                          enumerate(zip(self.procs, texts)))
        pytest.fail(f"{self.mode} tasks {'timed out' if timed_out else 'failed'}:\n{tails}")


# --- cluster descriptions ------------------------------------------------------------------------


def test_cluster_spec_and_tf_config():
    cluster = cluster_spec(workers=["h1:2222", "h2:2222"], ps="h3:2222", chief="h0:2222")
    assert cluster == {"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"], "ps": ["h3:2222"]}
    config = json.loads(tf_config_for("worker", 1, cluster))
    assert config == {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    assert json.loads(tf_config_for("worker", 0, workers=["a:1"]))["cluster"] == {"worker": ["a:1"]}
    local = cluster_spec(workers=2, ps=1, chief=True)  # free ports on 127.0.0.1
    addresses = local["chief"] + local["worker"] + local["ps"]
    assert len(set(addresses)) == 4 and all(a.startswith("127.0.0.1:") for a in addresses)
    with pytest.raises(ValueError, match="host:port"):
        cluster_spec(workers=["nohost"])
    with pytest.raises(ValueError, match="no 'ps' tasks"):
        tf_config_for("ps", 0, {"worker": ["a:1"]})
    with pytest.raises(ValueError, match="index 2 out of range"):
        tf_config_for("worker", 2, {"worker": ["a:1", "b:1"]})


def test_tf_config_errors_name_what_is_missing(monkeypatch):
    assert "parameter_server" in STRATEGIES
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RuntimeError, match="parameter_server.*TF_CONFIG"):
        get_strategy("parameter_server")
    cases = [
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, "no 'ps' task"),
        ({"cluster": {"worker": ["b:1"], "ps": ["c:1"]}, "task": {"type": "chief", "index": 0}}, "no 'chief' task"),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]}}, "no \"task\""),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]}, "task": {"type": "ps", "index": 0}},
         "start_server"),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]}, "task": {"type": "chief", "index": 1}},
         "index 1 out of range"),
        ({"task": {"type": "chief", "index": 0}}, "no \"cluster\""),
    ]
    for config, message in cases:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        with pytest.raises(RuntimeError, match=message):
            get_strategy("parameter_server")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}))
    with pytest.raises(RuntimeError, match="multi_worker.*no 'chief' or 'worker' task"):
        get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(RuntimeError, match="not valid JSON"):
        get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", tf_config_for("worker", 0, workers=["a:1"]))
    with pytest.raises(ValueError, match="communication"):
        get_strategy("multi_worker", communication="carrier-pigeon")
    monkeypatch.setenv("TF_CONFIG", tf_config_for("chief", 0, workers=["a:1"], ps=["b:1"], chief="c:1"))
    with pytest.raises(RuntimeError, match="task is 'chief'"):
        start_server()


# --- ParameterServer: an in-process cluster (2 workers, 2 ps) in a subprocess ---------------------


@pytest.fixture(scope="module")
def parameter_server_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parameter_server")
    out = directory / "result.json"
    Tasks("parameter_server", lambda: [None], [out], str(directory)).start().wait()
    return json.loads(out.read_text())


@pytest.mark.slow
def test_parameter_server_shards_embedding_tables_over_ps_tasks(parameter_server_run):
    result = parameter_server_run
    assert result["num_workers"] == 2 and result["num_ps"] == 2
    for table in ("content_table", "embedding_table"):  # 200 x 16 float32 = 12.5 KiB > 4 KiB shards
        placement = result[table]
        assert placement["type"] == "ShardedVariable" and placement["shards"] == 2, placement
        assert placement["shapes"] == [[100, 16], [100, 16]]
        # One shard on each ps task (which task takes shard 0 follows the round-robin order of
        # variable creation).
        assert sorted(placement["devices"]) == ["/job:ps/replica:0/task:0/device:CPU:0",
                                                "/job:ps/replica:0/task:1/device:CPU:0"]
    assert result["head_kernel"]["shards"] == 1  # small variables stay whole
    assert result["head_kernel"]["devices"][0].startswith("/job:ps/")


@pytest.mark.slow
def test_parameter_server_trains_through_the_coordinator(parameter_server_run):
    result = parameter_server_run
    assert result["optimizer_iterations"] == 100  # every scheduled step ran (on either worker)
    assert np.isfinite(result["step_losses"]).all()
    assert result["loss_after"] < 0.2 * result["loss_before"]


@pytest.mark.slow
def test_parameter_server_trains_the_recommender_with_a_sharded_item_table(parameter_server_run):
    result = parameter_server_run
    table = result["recommender_table"]  # 102 items x 16 floats = 6.5 KiB
    assert table["type"] == "ShardedVariable" and table["shapes"] == [[51, 16], [51, 16]]
    losses = np.asarray(result["recommender_losses"])
    assert np.isfinite(losses).all() and losses[-10:].mean() < losses[:10].mean() - 0.2


@pytest.mark.slow
def test_pretrain_under_parameter_server(parameter_server_run):
    """Keras `fit` under ParameterServerStrategy needs a repeated dataset with `steps_per_epoch`
    and epoch-level callbacks only; `pretrain` arranges both."""
    result = parameter_server_run["pretrain"]
    assert "error" not in result, result["error"]
    assert len(result["loss"]) == 2 and np.isfinite(result["loss"]).all()
    assert len(result["val_ndcg@10"]) == 2


@pytest.mark.slow
def test_content_agent_looks_up_sharded_tables_in_order(parameter_server_run):
    """`tf.gather` on a `ShardedVariable` returns rows grouped by shard (and refuses 2-D ids);
    `tf.nn.embedding_lookup` keeps the ids' order. The ContentAgent must use the latter."""
    assert parameter_server_run["content_lookup"] == {"catalog": "ok", "unsorted": "ok", "history": "ok"}


# --- the learner in this process ---------------------------------------------------------------------


def test_transitions_and_sharded_dataset(rl_world):
    from tfmarl.rl.learner import collect_transitions, transitions_dataset

    env = rl_world.candidate_env(batch_size=4, seed=0)
    experience = collect_transitions(env, 5, seed=3)
    assert experience.observation["history"].shape == (16, 2, 6)  # (5 - 1) steps x 4 users, 2 frames
    assert experience.observation["candidates"].shape == (16, 2, 8)
    assert experience.action.shape == (16, 2) and experience.action.max() < 8
    again = collect_transitions(env, 5, seed=3)
    np.testing.assert_array_equal(experience.reward, again.reward)
    # Frame 1 of a window is frame 0 of the next step's window for the same user.
    np.testing.assert_array_equal(experience.observation["history"][:4, 1], experience.observation["history"][4:8, 0])
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    batch = next(iter(transitions_dataset(experience, 8, context, shuffle=False)))
    assert batch.action.shape == (4, 2)  # a global batch of 8 over 2 replicas
    np.testing.assert_array_equal(batch.reward.numpy(), experience.reward[1:8:2])  # this worker's shard
    with pytest.raises(ValueError, match="cannot fill"):
        transitions_dataset(experience, 64, context)


@pytest.mark.slow
def test_learner_trains_checkpoints_and_resumes(rl_world, tmp_path):
    from tfmarl.rl import build_dqn
    from tfmarl.rl.learner import DistributedLearner, collect_transitions, transitions_dataset

    env = rl_world.candidate_env(batch_size=4, seed=0)
    experience = collect_transitions(env, 6, seed=0)

    def dataset_fn(context):
        return transitions_dataset(experience, 8, context, seed=0)

    tf.keras.utils.set_random_seed(0)
    agent, q_network = build_dqn(env, rl_world.model, hidden_units=(8,), target_update_period=2)
    initial = [w.copy() for w in q_network.get_weights()]
    learner = DistributedLearner(agent, dataset_fn, steps_per_call=2, checkpoint_dir=tmp_path, checkpoint_every=2)
    result = learner.run(5)
    assert (result.start_step, result.steps) == (0, 5) and len(result.losses) == 3  # calls of 2, 2, 1 steps
    assert np.isfinite(result.losses).all()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(initial, q_network.get_weights()))
    # A new agent on the same directory resumes at step 5 with the trained weights.
    fresh, fresh_q = build_dqn(env, rl_world.model, hidden_units=(8,), target_update_period=2)
    resumed = DistributedLearner(fresh, dataset_fn, checkpoint_dir=tmp_path)
    assert int(fresh.train_step_counter.numpy()) == 5
    for a, b in zip(q_network.get_weights(), fresh_q.get_weights()):
        np.testing.assert_allclose(a, b)
    assert resumed.run(1).steps == 6


@pytest.mark.slow
def test_learner_under_mirrored_matches_one_device(rl_world, mirrored):
    """Two replicas on half batches take the same steps as one device on the whole batch.

    Without gradient clipping: TF-Agents clips each replica's gradients before they are summed,
    so with clipping that bites the steps differ slightly from one device's."""
    from tfmarl.rl import build_dqn
    from tfmarl.rl.learner import DistributedLearner, collect_transitions, train_step_variable, transitions_dataset

    env = rl_world.candidate_env(batch_size=4, seed=0)
    experience = collect_transitions(env, 5, seed=1)

    def dataset_fn(context):
        return transitions_dataset(experience, 8, context, seed=0)

    options = dict(hidden_units=(8,), target_update_period=2, gradient_clipping=None)
    single, single_q = build_dqn(env, rl_world.model, **options)
    with pytest.raises(ValueError, match="strategy.scope"):
        DistributedLearner(single, dataset_fn, mirrored)
    with mirrored.scope():  # an agent whose step counter replicas cannot increment (no aggregation)
        inside = types.SimpleNamespace(variables=(), train_step_counter=tf.Variable(0, dtype=tf.int64))
    with pytest.raises(ValueError, match="train_step_variable"):
        DistributedLearner(inside, dataset_fn, mirrored)
    with mirrored.scope():
        counter = train_step_variable()
        assert counter.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
        replicated, replicated_q = build_dqn(env, rl_world.model, train_step_counter=counter, **options)
    replicated_q.set_weights(single_q.get_weights())
    replicated._target_q_network.set_weights(single._target_q_network.get_weights())  # noqa: SLF001
    one = DistributedLearner(single, dataset_fn, steps_per_call=3).run(3)
    two = DistributedLearner(replicated, dataset_fn, mirrored, steps_per_call=3).run(3)
    assert two.steps == 3 and int(counter.numpy()) == 3  # counted once per step, not per replica
    np.testing.assert_allclose(two.losses, one.losses, rtol=1e-5)
    # atol 1e-5: the attention's key bias has an exactly zero gradient (softmax ignores a shift
    # shared by all keys), so its entries hold round-off alone (~1e-6), which differs between one
    # device and two half batches; real updates after 3 steps are ~1e-3.
    for a, b in zip(single_q.get_weights(), replicated_q.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- MultiWorkerMirrored: two worker processes ------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def multi_worker_tasks(request, tmp_path_factory):
    """Starts the two workers as soon as this module's tests begin when any selected test needs
    them, so they run while the other tests do; `multi_worker_run` collects them."""
    wanted = any("multi_worker_run" in item.fixturenames for item in request.session.items
                 if item.module is request.module)
    if not wanted:
        yield None
        return
    directory = tmp_path_factory.mktemp("multi_worker")

    def configs():
        cluster = cluster_spec(workers=2)  # free ports on 127.0.0.1
        return [tf_config_for("worker", i, cluster) for i in range(2)]

    tasks = Tasks("multi_worker", configs, [directory / f"worker{i}.npz" for i in range(2)], str(directory)).start()
    yield tasks
    tasks.kill()


@pytest.fixture(scope="module")
def multi_worker_run(multi_worker_tasks):
    multi_worker_tasks.wait()
    return [dict(np.load(out)) for out in multi_worker_tasks.out_paths]


@pytest.mark.slow
def test_multi_worker_pretraining_is_identical_on_both_workers(multi_worker_run):
    first, second = multi_worker_run
    assert first["num_replicas"] == second["num_replicas"] == 2
    np.testing.assert_allclose(first["pre_initial"], second["pre_initial"], rtol=0, atol=0)
    np.testing.assert_allclose(first["pre_final"], second["pre_final"], rtol=1e-6, atol=1e-7)
    assert np.abs(first["pre_final"] - first["pre_initial"]).max() > 1e-2  # training moved the weights
    loss = first["pre_loss"]
    assert loss[-1] < loss[0] and np.isfinite(loss).all()
    np.testing.assert_allclose(first["pre_loss"], second["pre_loss"], rtol=1e-6)
    np.testing.assert_allclose(first["pre_ndcg"], second["pre_ndcg"], rtol=1e-6)  # validation callback ran


@pytest.mark.slow
def test_multi_worker_rl_learner_is_identical_on_both_workers(multi_worker_run):
    first, second = multi_worker_run
    assert first["rl_steps"] == second["rl_steps"] == 12
    np.testing.assert_allclose(first["rl_final"], second["rl_final"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(first["rl_target"], second["rl_target"], rtol=1e-6, atol=1e-7)
    assert np.abs(first["rl_final"] - first["rl_initial"]).max() > 1e-4
    np.testing.assert_allclose(first["rl_losses"], second["rl_losses"], rtol=1e-5)
    assert np.isfinite(first["rl_losses"]).all()


@pytest.mark.slow
def test_multi_worker_multiagent_training_is_identical_on_both_workers(multi_worker_run):
    first, second = multi_worker_run
    assert first["marl_train_steps"] == second["marl_train_steps"] == 10 - 3  # after the warm-up steps
    np.testing.assert_allclose(first["marl_initial"], second["marl_initial"], rtol=0, atol=0)
    np.testing.assert_allclose(first["marl_final"], second["marl_final"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(first["marl_target"], second["marl_target"], rtol=1e-6, atol=1e-7)
    assert np.abs(first["marl_final"] - first["marl_initial"]).max() > 1e-4  # the heads learned
    assert np.isfinite(first["marl_losses"]).all()


@pytest.mark.slow
def test_multi_worker_rl_learner_checkpoints_from_the_chief(multi_worker_run, multi_worker_tasks):
    directory = os.path.join(os.path.dirname(multi_worker_tasks.out_paths[0]), "learner_checkpoints")
    latest = tf.train.latest_checkpoint(directory)
    assert latest is not None and latest.endswith("ckpt-12")  # saved at step 8 and at the end
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("train_step/.ATTRIBUTES/VARIABLE_VALUE") == 12
