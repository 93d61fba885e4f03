"""Distributed training of TF-Agents agents (our DQN included) under a `tf.distribute.Strategy`.

The learner follows `tf_agents.train.learner.Learner`: the experience dataset is distributed
with ``strategy.distribute_datasets_from_function`` (each worker builds its own input pipeline,
sharded by the `tf.distribute.InputContext` it is given), every step runs ``agent.train`` on each
replica with ``strategy.run``, and the optimizer sums the replicas' gradients (TF-Agents scales
each replica's loss by the global batch size, so the sum is the gradient of the global mean).
Several steps run inside one `tf.function` (``steps_per_call``) to save round trips.

Unlike that class it needs no root directory, shards the input per worker, and checkpoints only
from the chief worker (other workers write to throw-away directories, as MultiWorkerMirrored
requires every worker to take part in the save).

With two replicas on half batches the steps equal one device's on the whole batch, except that
TF-Agents clips gradients (``gradient_clipping``) per replica, before the replicas' gradients
are summed: where clipping bites, the distributed steps differ slightly from one device's.

The agent (and with it every variable: networks, optimizer, train step counter) must be created
inside ``strategy.scope()``, with a train step counter that replicas may increment
(`train_step_variable`)::

    strategy = get_strategy("multi_worker")
    with strategy.scope():
        agent, q_network = build_dqn(env, model, train_step_counter=train_step_variable())
    experience = collect_transitions(env, 200, seed=0)
    learner = DistributedLearner(agent, lambda ctx: transitions_dataset(experience, 64, ctx), strategy)
    result = learner.run(1000)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from tf_agents.trajectories import trajectory
from tf_agents.utils import common

from tfmarl.rl.dqn import consumed_positions


@dataclasses.dataclass
class LearnerResult:
    """What `DistributedLearner.run` did."""

    start_step: int  # the train step counter before the call
    steps: int  # the counter after it
    seconds: float
    train_steps_per_second: float
    losses: list  # the global mean loss of the last step of every call (see ``steps_per_call``)


def train_step_variable(name: str = "train_step") -> tf.Variable:
    """An int64 step counter that replicas can increment (each step counts once, not once per
    replica). Create it inside ``strategy.scope()`` and pass it as the agent's
    ``train_step_counter``."""
    return tf.Variable(0, dtype=tf.int64, name=name, trainable=False,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class DistributedLearner:
    """Trains ``agent`` on batches of ``dataset_fn`` under ``strategy``.

    Args:
      agent: a `tf_agents.agents.TFAgent` created under ``strategy.scope()``.
      dataset_fn: ``input_context -> tf.data.Dataset`` of *per-replica* batches of experience
        (a `Trajectory` nest shaped [batch, time, ...], e.g. [B, 2, ...] for DQN), or of
        ``(experience, sample_info)`` pairs as a replay buffer's ``as_dataset`` yields. Use
        ``input_context.get_per_replica_batch_size`` and ``input_context.shard`` (or
        `transitions_dataset`, which does both).
      strategy: defaults to the current one (``tf.distribute.get_strategy()``).
      steps_per_call: train steps per `tf.function` call.
      checkpoint_dir: where the agent and the step counter are checkpointed (every
        ``checkpoint_every`` steps and at the end of `run`); a new learner on the same
        directory resumes from the last checkpoint.
      input_options: `tf.distribute.InputOptions` for the distributed dataset.
    """

    def __init__(self, agent, dataset_fn, strategy: tf.distribute.Strategy | None = None, *,
                 steps_per_call: int = 1, checkpoint_dir=None, checkpoint_every: int = 1000,
                 max_checkpoints_to_keep: int = 1, input_options: tf.distribute.InputOptions | None = None):
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be positive, got {steps_per_call}")
        self.agent = agent
        self.strategy = strategy or tf.distribute.get_strategy()
        self.steps_per_call = int(steps_per_call)
        self.checkpoint_every = int(checkpoint_every)
        self.train_step = agent.train_step_counter
        if getattr(self.strategy, "_should_use_with_coordinator", False):
            raise NotImplementedError(
                "ParameterServerStrategy trains asynchronously through a ClusterCoordinator "
                "(coordinator.schedule), which this synchronous learner does not do; use "
                "MultiWorkerMirrored, Mirrored or TPU for the RL learner")
        _check_created_under(self.strategy, agent)
        with self.strategy.scope():
            self._dataset = self.strategy.distribute_datasets_from_function(dataset_fn, options=input_options)
            self._iterator = iter(self._dataset)
        # As in tf_agents' Learner: keep autograph out of the agent's own train function.
        self._agent_train = tf.autograph.experimental.do_not_convert(agent.train)
        self._train = common.function(self._train_steps, autograph=True)
        with self.strategy.scope():
            # Trace inside the scope so that every variable (optimizer slots included) exists
            # before a checkpoint is restored.
            self._train.get_concrete_function(self._iterator, tf.constant(1, tf.int64))
        self._checkpointer = None
        self._scratch_dir = None
        if checkpoint_dir is not None:
            directory = str(checkpoint_dir)
            if not _is_chief(self.strategy):
                # Every MultiWorkerMirrored worker must join the save; only the chief's counts.
                self._scratch_dir = tempfile.mkdtemp(prefix="tfmarl_learner_worker_")
                directory = self._scratch_dir
            with self.strategy.scope():
                self._checkpointer = common.Checkpointer(directory, max_to_keep=max_checkpoints_to_keep,
                                                         agent=agent, train_step=self.train_step)
                self._checkpointer.initialize_or_restore()
                if self._scratch_dir is not None and os.path.isdir(str(checkpoint_dir)):
                    # Non-chief workers resume from the chief's checkpoints too.
                    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
                    if latest:
                        tf.train.Checkpoint(agent=agent, train_step=self.train_step).restore(latest).expect_partial()

    def _single_step(self, iterator):
        experience = _experience_of(next(iterator))
        loss_info = self.strategy.run(self._agent_train, args=(experience,))
        # Each replica's loss is already divided by the global batch size: the sum over
        # replicas is the global mean.
        return tf.cast(self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss_info.loss, axis=None), tf.float32)

    def _train_steps(self, iterator, num_steps):
        # One trace of the agent's train step, in a loop (the loss is reduced every step, a
        # scalar all-reduce next to the gradients' ones, so the loop carries a plain tensor).
        loss = tf.constant(np.nan, tf.float32)
        for _ in tf.range(num_steps):
            loss = self._single_step(iterator)
        return loss

    def run(self, num_steps: int) -> LearnerResult:
        """Runs ``num_steps`` train steps (in calls of ``steps_per_call``)."""
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        start = int(self.train_step.numpy())
        losses, began, done, saved = [], time.perf_counter(), 0, True
        with self.strategy.scope():
            while done < num_steps:
                steps = min(self.steps_per_call, num_steps - done)
                loss = self._train(self._iterator, tf.constant(steps, tf.int64))
                losses.append(float(loss))
                done += steps
                saved = False
                if not np.isfinite(losses[-1]):
                    raise FloatingPointError(f"train step {start + done}: the loss is {losses[-1]}")
                if self._checkpointer is not None and self.checkpoint_every > 0 and \
                        (start + done) // self.checkpoint_every > (start + done - steps) // self.checkpoint_every:
                    self._checkpointer.save(self.train_step)
                    saved = True
            if self._checkpointer is not None and not saved:
                self._checkpointer.save(self.train_step)
        seconds = time.perf_counter() - began
        return LearnerResult(start, int(self.train_step.numpy()), seconds, num_steps / max(seconds, 1e-9), losses)

    def close(self) -> None:
        """Removes a non-chief worker's scratch checkpoint directory."""
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
            self._scratch_dir = None


def train_agent_distributed(agent, dataset_fn, strategy: tf.distribute.Strategy | None = None,
                            num_steps: int = 1000, **kwargs) -> LearnerResult:
    """Builds a `DistributedLearner` (``kwargs`` go to it) and runs ``num_steps`` steps."""
    learner = DistributedLearner(agent, dataset_fn, strategy, **kwargs)
    try:
        return learner.run(num_steps)
    finally:
        learner.close()


# --- experience --------------------------------------------------------------------------------


def collect_transitions(env, num_steps: int, *, policy=None, seed: int = 0) -> trajectory.Trajectory:
    """Runs ``env`` (a `CandidateSessionEnvironment`) for ``num_steps`` steps and returns its
    transitions as 2-step trajectories, the layout DQN trains on: a `Trajectory` of numpy arrays
    shaped [(num_steps - 1) * batch, 2, ...], whose action is the candidate the user consumed
    (slot 0's when nothing was clicked), as `train_dqn` stores it.

    Args:
      policy: ``(observation, rng) -> positions int [B, K]``; default: uniformly random slates.
      seed: seeds the environment and the default policy (same seed, same transitions).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (a transition spans two steps), got {num_steps}")
    rng = np.random.default_rng(seed)
    env.seed(seed)
    k = env.action_spec().shape[0]
    n = env.num_candidates
    if policy is None:
        def policy(observation, rng):  # noqa: ARG001 - same signature as custom policies
            return np.argsort(rng.random((env.batch_size, n)), axis=1)[:, :k].astype(np.int32)
    frames = []
    time_step = env.reset()
    for _ in range(num_steps):
        positions = np.asarray(policy(time_step.observation, rng), np.int32)
        next_step = env.step(positions)
        action = consumed_positions(positions, env.last_info)
        frames.append(trajectory.Trajectory(
            step_type=np.asarray(time_step.step_type, np.int32),
            observation={key: np.asarray(value) for key, value in time_step.observation.items()},
            action=action, policy_info=(), next_step_type=np.asarray(next_step.step_type, np.int32),
            reward=np.asarray(next_step.reward, np.float32), discount=np.asarray(next_step.discount, np.float32)))
        time_step = next_step
    # frames: T x [B, ...] -> windows [(T - 1) * B, 2, ...] of consecutive frames of one user.
    stacked = tf.nest.map_structure(lambda *xs: np.stack(xs, axis=0), *frames)  # [T, B, ...]

    def windows(x):
        pairs = np.stack([x[:-1], x[1:]], axis=2)  # [T-1, B, 2, ...]
        return pairs.reshape((-1,) + pairs.shape[2:])

    return tf.nest.map_structure(windows, stacked)


def transitions_dataset(experience, batch_size: int, input_context: tf.distribute.InputContext | None = None, *,
                        seed: int = 0, shuffle: bool = True, repeat: bool = True) -> tf.data.Dataset:
    """Batches of recorded ``experience`` (a nest of arrays with a leading transition axis, as
    `collect_transitions` returns) for `DistributedLearner`.

    ``batch_size`` is the global batch: with an ``input_context`` each replica gets
    ``batch_size / num_replicas`` and each input pipeline (worker) a disjoint shard of the
    transitions. Batches are full (remainders dropped), so every replica trains on as many
    transitions; the order is fixed by ``seed``.
    """
    per_replica = batch_size
    dataset = tf.data.Dataset.from_tensor_slices(experience)
    if input_context is not None:
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        if input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    count = int(dataset.cardinality())
    if count < per_replica:
        raise ValueError(f"{count} transitions per input pipeline cannot fill a per-replica batch of {per_replica}")
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(per_replica, drop_remainder=True).prefetch(2)


# --- helpers -----------------------------------------------------------------------------------


def _experience_of(sample):
    if isinstance(sample, trajectory.Trajectory):
        return sample
    if isinstance(sample, tuple) and len(sample) == 2 and not hasattr(sample, "_fields"):
        return sample[0]  # (experience, sample_info) from a replay buffer's as_dataset
    data = getattr(sample, "data", None)
    return data if data is not None else sample


def _is_chief(strategy) -> bool:
    extended = strategy.extended
    if not getattr(extended, "_in_multi_worker_mode", lambda: False)():
        return True
    return bool(getattr(extended, "should_checkpoint", True))


def _check_created_under(strategy, agent) -> None:
    """Fails early, with the fix, when the agent was not built for ``strategy``."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return  # the default strategy: nothing to check
    variables = agent.variables
    variables = list(variables() if callable(variables) else variables)
    foreign = [v.name for v in variables if not strategy.extended.variable_created_in_scope(v)]
    if foreign:
        raise ValueError(f"the agent's variables were not created under this strategy's scope (e.g. {foreign[0]}): "
                         "build the agent inside `with strategy.scope():`")
    counter = agent.train_step_counter
    aggregation = getattr(counter, "aggregation", tf.VariableAggregation.NONE)
    if strategy.num_replicas_in_sync > 1 and aggregation == tf.VariableAggregation.NONE:
        raise ValueError("the agent's train_step_counter cannot be incremented by several replicas: create it "
                         "with tfmarl.rl.learner.train_step_variable() inside the strategy's scope")
