"""One task of the distributed tests (tests/test_distributed.py starts it as a subprocess).

    python tests/distributed_worker.py multi_worker OUT.npz
        One MultiWorkerMirrored worker (the cluster and this task come from TF_CONFIG): (a)
        pretrains a tiny `SequentialRecommender` with `pretrain`, (b) trains a Double DQN on
        recorded transitions with `DistributedLearner`, warm-started from (a) and retrieving with
        it, (c) trains the multi-agent algorithm under the strategy. Writes the weights before/after
        and the losses of each to OUT.npz.

    python tests/distributed_worker.py parameter_server OUT.json
        The chief of an in-process parameter-server cluster (2 workers and 2 ps as
        `tf.distribute.Server`s in this process, on free 127.0.0.1 ports): checks how
        ``get_strategy("parameter_server")`` shards embedding tables, then trains a small
        embedding model and a `SequentialRecommender` through a `ClusterCoordinator`, and the
        recommender with `pretrain`. Writes what it saw to OUT.json.

A subprocess, not the pytest process: MultiWorkerMirrored needs one process per worker, and
connecting to a parameter-server cluster rewires the process's eager context for good.
"""

import json
import os
import sys
import time

STARTED = time.perf_counter()

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import tfmarl  # noqa: E402,F401  (selects tf_keras before TensorFlow resolves tf.keras)
import tensorflow as tf  # noqa: E402

from tfmarl.training.strategy import cluster_spec, get_strategy, tf_config_for  # noqa: E402


def flat(weights) -> np.ndarray:
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in weights])


# --- MultiWorkerMirrored --------------------------------------------------------------------------


def multi_worker(out_path: str) -> None:
    began = time.perf_counter()
    # The strategy first: MultiWorkerMirrored must exist before TensorFlow runs any op.
    strategy = get_strategy("multi_worker", communication="ring")
    from tfmarl.data import build_sequences, leave_one_out
    from tfmarl.data.synthetic import generate_synthetic
    from tfmarl.envs import SessionConfig, SessionEnvironment, fit_user_model
    from tfmarl.envs.candidates import CandidateSessionEnvironment
    from tfmarl.rl import CandidateRetriever, build_dqn
    from tfmarl.rl.learner import DistributedLearner, collect_transitions, train_step_variable, transitions_dataset
    from tfmarl.training import SequentialRecommender, pretrain

    out = {"num_replicas": strategy.num_replicas_in_sync, "import_seconds": began - STARTED}
    interactions = generate_synthetic(n_users=60, n_items=30, interactions_per_user=12, seed=0)
    user_model = fit_user_model(interactions, dim=8, seed=0)
    sequences, _ = build_sequences(interactions, user_model.vocabulary)
    split = leave_one_out(sequences)

    # (a) pretraining under the strategy (the model is built in its scope; `pretrain` compiles
    # it there and Keras `fit` shards the dataset over the workers).
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = SequentialRecommender(item_vocabulary=user_model.vocabulary, dim=8, max_length=6, num_layers=1,
                                      num_heads=1, dropout=0.1, k=5)
        model.build_all()
    out["pre_initial"] = flat(model.get_weights())
    pretrain_began = time.perf_counter()
    result = pretrain(model, split.train, split.valid, epochs=3, batch_size=32, learning_rate=2e-2, patience=None,
                      verbose=0, seed=0)
    out["pre_final"] = flat(model.get_weights())
    out["pre_loss"] = np.asarray(result.history["loss"])
    out["pre_ndcg"] = np.asarray(result.history["val_ndcg@10"])
    out["pre_seconds"] = time.perf_counter() - pretrain_began
    rl_began = time.perf_counter()

    # (b) the RL learner: a Double DQN warm-started from the pretrained agents, trained on
    # transitions recorded in a small candidate environment that retrieves with the model.
    config = SessionConfig(slate_size=3, history_length=6, max_steps=4, no_click_utility=2.0)
    env = CandidateSessionEnvironment(SessionEnvironment(user_model, config, batch_size=4, seed=0),
                                      CandidateRetriever(model, 8), 8)
    experience = collect_transitions(env, 12, seed=0)
    with strategy.scope():
        agent, q_network = build_dqn(env, model, hidden_units=(16,), target_update_period=4,
                                          train_step_counter=train_step_variable())
    out["rl_initial"] = flat(q_network.get_weights())
    # Checkpoints go to a directory both workers see (the chief writes; worker 1 a scratch copy).
    checkpoint_dir = os.path.join(os.path.dirname(os.path.abspath(out_path)), "learner_checkpoints")
    learner = DistributedLearner(agent, lambda ctx: transitions_dataset(experience, 16, ctx, seed=0), strategy,
                                 steps_per_call=4, checkpoint_dir=checkpoint_dir, checkpoint_every=8)
    trained = learner.run(12)
    learner.close()
    out["rl_final"] = flat(q_network.get_weights())
    out["rl_target"] = flat(agent._target_q_network.get_weights())  # noqa: SLF001 - synced every 4 steps
    out["rl_losses"] = np.asarray(trained.losses)
    out["rl_steps"] = trained.steps
    out["rl_seconds"] = time.perf_counter() - rl_began

    # (c) multi-agent training under the strategy: the learner's joint step runs on both workers'
    # replicas (each worker collects its own sessions; the gradients are all-reduced).
    from tfmarl.rl import make_algorithm

    marl = make_algorithm("multiagent", model, user_model, session_config=config, candidates=8, batch_size=4,
                          seed=0, facets=3, domains=2, hidden_units=(8,), replay_batch_size=8, warmup_steps=3,
                          strategy=strategy, floors={"diversity": 0.1})
    out["marl_initial"] = flat(marl.learner.network.get_weights())
    marl_result = marl.train(10)
    out["marl_final"] = flat(marl.learner.network.get_weights())
    out["marl_target"] = flat(marl.learner.target_network.get_weights())
    out["marl_train_steps"] = int(marl.learner.train_step.numpy())
    out["marl_losses"] = np.asarray([p["loss/critic"] for p in marl_result.curve if "loss/critic" in p])
    out["seconds"] = time.perf_counter() - STARTED
    np.savez(out_path, **out)


# --- ParameterServer (in-process cluster) ---------------------------------------------------------


def parameter_server(out_path: str) -> None:
    from tfmarl.agents import ContentAgent

    cluster = cluster_spec(workers=2, ps=2, chief=True)  # free 127.0.0.1 ports
    # As TensorFlow's parameter-server tutorial does for in-process clusters: enough inter-op
    # threads that a worker never waits on itself on a machine with few cores.
    worker_config = tf.compat.v1.ConfigProto()
    worker_config.inter_op_parallelism_threads = 3
    servers_spec = tf.train.ClusterSpec({job: cluster[job] for job in ("worker", "ps")})
    servers = [tf.distribute.Server(servers_spec, job_name=job, task_index=i, protocol="grpc", config=worker_config,
                                    start=True)
               for job in ("worker", "ps") for i in range(len(cluster[job]))]
    os.environ["TF_CONFIG"] = tf_config_for("chief", 0, cluster)
    # Tables of 4 KiB and more are cut into (at most one shard per ps) pieces of >= 4 KiB.
    strategy = get_strategy("parameter_server", min_shard_bytes=4 << 10)
    out = {"num_workers": strategy.extended._num_workers, "num_ps": strategy.extended._num_ps}  # noqa: SLF001

    num_items, dim = 200, 16  # a 12.5 KiB id table -> 2 shards; the 64-byte head stays whole
    with strategy.scope():
        content = ContentAgent(num_items, dim=dim, name="content_agent")
        content.build()
        embedding = tf.keras.layers.Embedding(num_items, dim, name="item_embedding")
        head = tf.keras.layers.Dense(1, name="head")
        embedding.build([None])
        head.build([None, dim])
        # Small Adam steps: the two workers update the same variables without locking, and at 0.05
        # their interleaved steps once drove the product embedding x head apart (loss 0.9 -> 379).
        optimizer = tf.keras.optimizers.Adam(0.02)

    def placement(variable):
        parts = getattr(variable, "variables", [variable])
        return {"type": type(variable).__name__, "shards": len(parts),
                "shapes": [list(p.shape) for p in parts], "devices": [p.device for p in parts]}

    out["content_table"] = placement(content.id_embeddings)
    out["embedding_table"] = placement(embedding.embeddings)
    out["head_kernel"] = placement(head.kernel)

    # Does the ContentAgent look sharded ids up in order? (tf.gather on a ShardedVariable returns
    # the rows grouped by shard; tf.nn.embedding_lookup keeps the ids' order.)
    table = tf.convert_to_tensor(content.id_embeddings).numpy()
    out["content_lookup"] = {}
    for name, ids in (("catalog", np.arange(num_items)), ("unsorted", np.array([150, 3, 120, 7])),
                      ("history", np.array([[150, 3, 120], [7, 199, 0]]))):
        try:
            ok = np.allclose(content(tf.constant(ids, tf.int32)).numpy(), table[ids])
            out["content_lookup"][name] = "ok" if ok else "rows out of order"
        except Exception as e:  # noqa: BLE001 - reported to the test
            out["content_lookup"][name] = f"{type(e).__name__}: {str(e).splitlines()[0]}"

    # A few asynchronous training steps through the coordinator: regress a fixed target per item.
    targets = np.random.default_rng(0).normal(size=num_items).astype(np.float32)
    variables = embedding.trainable_variables + head.trainable_variables

    def dataset_fn(context):
        data = tf.data.Dataset.from_tensor_slices((np.arange(num_items, dtype=np.int32), targets))
        data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.shuffle(num_items, seed=context.input_pipeline_id).repeat().batch(
            context.get_per_replica_batch_size(32))

    def full_loss():
        predictions = head(embedding(tf.range(num_items)))[:, 0]
        return float(tf.reduce_mean(tf.square(predictions - targets)))

    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    iterator = iter(coordinator.create_per_worker_dataset(
        lambda: strategy.distribute_datasets_from_function(dataset_fn)))

    @tf.function
    def train_step(iterator):
        def replica_step(batch):
            item_ids, y = batch
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(head(embedding(item_ids))[:, 0] - y))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return strategy.run(replica_step, args=(next(iterator),))

    out["loss_before"] = full_loss()
    scheduled = [coordinator.schedule(train_step, args=(iterator,)) for _ in range(100)]
    coordinator.join()
    out["step_losses"] = [float(r.fetch()) for r in scheduled]
    out["loss_after"] = full_loss()
    out["optimizer_iterations"] = int(optimizer.iterations.numpy())

    # Our recommender in the same custom loop: its item table is sharded too, and its loss
    # (`compute_loss`) is what `pretrain` minimises.
    from tfmarl.data import build_sequences, training_dataset
    from tfmarl.data.synthetic import generate_synthetic
    from tfmarl.training import SequentialRecommender

    sequences, vocabulary = build_sequences(generate_synthetic(n_users=80, n_items=100, interactions_per_user=10,
                                                               seed=0))
    with strategy.scope():
        recommender = SequentialRecommender(item_vocabulary=vocabulary, dim=16, max_length=6, num_layers=1,
                                            num_heads=1, dropout=0.0, k=5)
        recommender.build_all()
        recommender_optimizer = tf.keras.optimizers.Adam(1e-2)
    out["recommender_table"] = placement(recommender.content_agent.id_embeddings)

    def recommender_dataset_fn(context):
        data = training_dataset(sequences, recommender.max_length, context.get_per_replica_batch_size(32),
                                seed=context.input_pipeline_id, repeat=True)
        return data.shard(context.num_input_pipelines, context.input_pipeline_id)

    recommender_iterator = iter(coordinator.create_per_worker_dataset(
        lambda: strategy.distribute_datasets_from_function(recommender_dataset_fn)))

    @tf.function
    def recommender_step(iterator):
        def replica_step(batch):
            with tf.GradientTape() as tape:
                loss = recommender.compute_loss(batch, training=True)
            gradients = tape.gradient(loss, recommender.trainable_variables)
            recommender_optimizer.apply_gradients(zip(gradients, recommender.trainable_variables))
            return loss

        return strategy.run(replica_step, args=(next(iterator),))

    scheduled = [coordinator.schedule(recommender_step, args=(recommender_iterator,)) for _ in range(40)]
    coordinator.join()
    out["recommender_losses"] = [float(r.fetch()) for r in scheduled]

    # `pretrain` (Keras fit, which runs through the coordinator too) with ranking validation.
    from tfmarl.data import leave_one_out
    from tfmarl.training import pretrain

    split = leave_one_out(sequences)
    try:
        result = pretrain(recommender, split.train, split.valid, epochs=2, batch_size=32, learning_rate=1e-2,
                          patience=None, verbose=0)
        out["pretrain"] = {"loss": result.history["loss"], "val_ndcg@10": result.history["val_ndcg@10"]}
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["pretrain"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    out["seconds"] = time.perf_counter() - STARTED
    with open(out_path, "w") as f:
        json.dump(out, f)
    del servers  # kept alive until here: the cluster's workers and ps live in this process


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    {"multi_worker": multi_worker, "parameter_server": parameter_server}[mode](path)
    # The results are written. Leave at once: in-process gRPC servers have no clean shutdown, and
    # interpreter teardown with live cluster connections can take half a minute.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
