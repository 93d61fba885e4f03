"""Training loops for the RL agents: collection, replay, checkpoints, TensorBoard.

Both loops are resumable: with a ``checkpoint_dir`` they save the agent (and the replay buffer)
and the step counter every ``checkpoint_every`` steps, and a second call with the same directory
continues from the last checkpoint instead of starting over.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory
from tf_agents.utils import common

from tfmarl.envs.candidates import begin_step
from tfmarl.rl.bandits import behaviour_probabilities, check_exact_propensities, explore
from tfmarl.rl.dqn import consumed_positions
from tfmarl.rl.policies import QSlatePolicy
from tfmarl.rl.xla import step_function


@dataclasses.dataclass
class TrainResult:
    """What a training loop did: steps run in this call, time, throughput and a learning curve."""

    start_step: int
    steps: int  # the step counter at the end (checkpointed runs resume from it)
    seconds: float
    env_steps_per_second: float  # user-steps (batch elements) per second
    train_steps_per_second: float
    curve: list  # dicts with "step" and the logged metrics


def _to_tensors(nest):
    return tf.nest.map_structure(tf.convert_to_tensor, nest)


def _checkpointer(checkpoint_dir, **objects):
    if checkpoint_dir is None:
        return None
    checkpointer = common.Checkpointer(str(checkpoint_dir), max_to_keep=1, **objects)
    checkpointer.initialize_or_restore()
    return checkpointer


def _writer(log_dir):
    return tf.summary.create_file_writer(str(log_dir)) if log_dir is not None else tf.summary.create_noop_writer()


def progress_range(start: int, stop: int, enabled: bool, description: str):
    """``range(start, stop)``, with progress on standard output when ``enabled`` (a bar on a
    terminal, periodic lines elsewhere: `tfmarl.progress.progress`)."""
    from tfmarl.progress import progress

    return progress(range(start, stop), initial=start, total=stop, description=description, enabled=enabled)


def train_bandit(agent, env, num_rounds: int, *, exploration_epsilon: float = 0.0, seed: int = 0, log_dir=None,
                 checkpoint_dir=None, checkpoint_every: int = 100, log_every: int = 10, ope_log=None,
                 progress: bool = False) -> TrainResult:
    """Runs ``num_rounds`` rounds of a per-arm bandit agent in ``env`` (a batched per-arm
    py environment such as `PerArmBanditEnvironment`), training on each round's batch.

    Args:
      exploration_epsilon: ε-uniform exploration on top of the agent's collect policy; the
        propensity of every logged action is then known exactly (see `explore`).
      ope_log: a `tfmarl.evaluation.BanditLogWriter`; each round's contexts, arms, actions,
        rewards, exact propensities and behaviour distributions are appended (for off-policy
        evaluation). The propensities combine ``exploration_epsilon`` with the agent's own
        randomness (NeuralEpsilonGreedy's ε); Thompson sampling ("lints") has no exact
        propensities and raises ValueError (see `check_exact_propensities`).
      log_dir: TensorBoard directory: reward, regret (when ``env`` has an oracle), loss.
    """
    policy = agent.collect_policy
    if ope_log is not None:
        check_exact_propensities(policy)  # before any round runs: e.g. Thompson sampling has none
    logged_policy = policy if ope_log is not None else None  # propensities are used only when logged
    rng = np.random.default_rng(seed)
    global_step = tf.Variable(0, dtype=tf.int64, name="bandit_round")
    checkpointer = _checkpointer(checkpoint_dir, agent=agent, global_step=global_step)
    start = int(global_step.numpy())
    train = common.function(agent.train)
    act = common.function(policy.action)
    writer = _writer(log_dir)
    time_step = env.reset()
    curve, began = [], time.perf_counter()
    batch = env.batch_size
    rewards_window, regret_window = [], []
    for round_index in progress_range(start, num_rounds, progress, "bandit"):
        observation = time_step.observation
        tf_step = _to_tensors(ts.TimeStep(np.full(batch, ts.StepType.FIRST, np.int32), np.zeros(batch, np.float32),
                                          np.ones(batch, np.float32), observation))
        per_arm = observation["per_arm"]
        num_actions = observation.get("num_actions")
        own_step = act(tf_step)
        step, propensity = explore(own_step, per_arm, exploration_epsilon, rng, policy=logged_policy,
                                   num_actions=num_actions)
        if ope_log is not None:  # before training: the policy's own ε may depend on the train step
            behaviour = behaviour_probabilities(own_step, per_arm.shape[1], exploration_epsilon, policy=policy,
                                                num_actions=num_actions)
        action = step.action.numpy()
        arm_ids = getattr(env, "candidates", None)
        arm_ids = None if arm_ids is None else arm_ids.copy()
        next_step = env.step(action)
        reward = np.asarray(next_step.reward, np.float32)
        if not np.isfinite(reward).all():
            raise FloatingPointError(f"round {round_index}: the environment returned a non-finite reward")
        experience = trajectory.Trajectory(
            step_type=tf.fill([batch, 1], ts.StepType.FIRST), observation=tf.nest.map_structure(
                lambda x: tf.expand_dims(tf.convert_to_tensor(x), 1), observation),
            action=tf.expand_dims(step.action, 1),
            policy_info=tf.nest.map_structure(lambda x: tf.expand_dims(x, 1), step.info),
            next_step_type=tf.fill([batch, 1], ts.StepType.LAST), reward=tf.constant(reward[:, None]),
            discount=tf.zeros([batch, 1]))
        loss = float(train(experience).loss)
        if ope_log is not None:
            ope_log.add(rewards=reward, actions=action, propensities=propensity, arm_ids=arm_ids,
                        behaviour_probs=behaviour, context=observation["global"], arm_features=per_arm)
        time_step = next_step
        global_step.assign_add(1)
        rewards_window.append(reward.mean())
        if hasattr(env, "last_regret"):
            regret_window.append(float(np.mean(env.last_regret)))
        done = round_index + 1
        if done % log_every == 0 or done == num_rounds:
            point = {"step": done, "reward": float(np.mean(rewards_window)), "loss": loss}
            if regret_window:
                point["regret"] = float(np.mean(regret_window))
            curve.append(point)
            with writer.as_default():
                for key, value in point.items():
                    if key != "step":
                        tf.summary.scalar(f"bandit/{key}", value, step=done)
            rewards_window, regret_window = [], []
        if checkpointer is not None and (done % checkpoint_every == 0 or done == num_rounds):
            checkpointer.save(global_step)
    writer.flush()
    seconds = time.perf_counter() - began
    rounds = max(num_rounds - start, 0)
    return TrainResult(start, max(start, num_rounds), seconds, rounds * batch / max(seconds, 1e-9), rounds / max(seconds, 1e-9),
                       curve)


def linear_schedule(start: float, end: float, steps: int):
    """ε(step): linear from ``start`` to ``end`` over ``steps`` steps, then ``end``."""
    return lambda step: end + (start - end) * max(0.0, 1.0 - step / max(steps, 1))


def train_dqn(agent, q_network, env, num_steps: int, *, batch_size: int = 128, replay_capacity: int = 50_000,
              warmup_steps: int = 20, epsilon=0.1, seed: int = 0, log_dir=None, checkpoint_dir=None,
              checkpoint_every: int = 500, log_every: int = 50, progress: bool = False) -> TrainResult:
    """Collects with the Q-network's top-K slate policy (ε-exploration per slot) in ``env`` (a
    `CandidateSessionEnvironment`), stores (observation, consumed candidate, reward, next
    observation) in a uniform replay buffer, and trains ``agent`` on 2-step samples every step.

    Args:
      epsilon: a float or ``step -> float`` (e.g. `linear_schedule`).
      replay_capacity: transitions kept (over all batch elements).
      log_dir: TensorBoard: session return and CTR of finished sessions, loss, epsilon, Q-values.
      checkpoint_dir: the agent, the replay buffer and the step are checkpointed here.
    """
    epsilon_fn = epsilon if callable(epsilon) else (lambda _: float(epsilon))
    batch = env.batch_size
    replay = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        agent.collect_data_spec, batch_size=batch, max_length=max(replay_capacity // batch, 2))
    global_step = tf.Variable(0, dtype=tf.int64, name="env_step")
    checkpointer = _checkpointer(checkpoint_dir, agent=agent, replay_buffer=replay, global_step=global_step)
    start = int(global_step.numpy())
    policy = QSlatePolicy(q_network, env.session.config.slate_size, seed=seed + start)
    replay_states = "state" in agent.time_step_spec.observation  # see build_dqn(replay_states=True)
    # Storing a step's transitions, sampling and the train step in one compiled call (a compiled
    # add alone during warm-up): no dataset iterator and no eager per-field ops between
    # environment steps. (The agent's step itself with XLA: the replay's sampling ops have no XLA
    # kernels.)
    agent_train = step_function(agent.train, distributed=tf.distribute.has_strategy())

    @common.function
    def add_batch(items):
        replay.add_batch(items)  # its graph-mode result is an op, which tf.function cannot return

    @common.function
    def add_and_train(items):
        replay.add_batch(items)  # automatic control dependencies: sampled after the add
        return agent_train(replay.get_next(sample_batch_size=batch_size, num_steps=2)[0])

    writer = _writer(log_dir)

    def observed(time_step):
        if not replay_states:
            return time_step
        state = env.last_user_state
        if state is None:
            raise ValueError("the agent replays user states but the environment's retrieval returned none "
                             "(retrieve must return a dict with user_state, as CandidateRetriever does)")
        return time_step._replace(observation=dict(time_step.observation, state=np.asarray(state, np.float32)))

    time_step = observed(env.reset())
    session_return, session_clicks, session_steps = np.zeros(batch), np.zeros(batch), np.zeros(batch)
    finished, losses, q_means, curve = [], [], [], []
    train_steps, began = 0, time.perf_counter()
    for step_index in progress_range(start, num_steps, progress, "dqn"):
        policy.epsilon = epsilon_fn(step_index)
        q = policy.q_values(time_step.observation)
        positions = policy.positions_from_q(q)
        q_means.append(float(q.mean()))
        # The next candidates are retrieved while this step is stored and trained on.
        pending = begin_step(env, positions)
        next_step = pending.session_step  # its rewards, step types and discounts
        info = env.last_info
        action = consumed_positions(positions, info)
        items = _to_tensors(trajectory.Trajectory(
            step_type=time_step.step_type, observation=time_step.observation, action=action, policy_info=(),
            next_step_type=next_step.step_type, reward=np.asarray(next_step.reward, np.float32),
            discount=next_step.discount))
        if step_index + 1 - start > warmup_steps:
            losses.append(float(add_and_train(items).loss))
            train_steps += 1
        else:
            add_batch(items)
        active = ~time_step.is_last()
        session_return += np.where(active, next_step.reward, 0.0)
        session_clicks += np.where(active, info["click"], 0.0)
        session_steps += active
        ended = active & next_step.is_last()
        for b in np.flatnonzero(ended):
            finished.append((session_return[b], session_clicks[b] / max(session_steps[b], 1), session_steps[b]))
        session_return[ended] = session_clicks[ended] = session_steps[ended] = 0.0
        time_step = observed(pending.result())
        global_step.assign_add(1)
        done = step_index + 1
        if done % log_every == 0 or done == num_steps:
            point = {"step": done, "epsilon": policy.epsilon, "q_mean": float(np.mean(q_means))}
            if losses:
                point["loss"] = float(np.mean(losses))
            if finished:
                values = np.array(finished)
                point.update(session_return=float(values[:, 0].mean()), ctr=float(values[:, 1].mean()),
                             session_length=float(values[:, 2].mean()), sessions=len(finished))
            curve.append(point)
            with writer.as_default():
                for key, value in point.items():
                    if key not in ("step", "sessions"):
                        tf.summary.scalar(f"dqn/{key}", value, step=done)
                tf.summary.histogram("dqn/q_values", q, step=done)
            finished, losses, q_means = [], [], []
        if checkpointer is not None and (done % checkpoint_every == 0 or done == num_steps):
            checkpointer.save(global_step)
    writer.flush()
    seconds = time.perf_counter() - began
    steps = max(num_steps - start, 0)
    return TrainResult(start, max(start, num_steps), seconds, steps * batch / max(seconds, 1e-9),
                       train_steps / max(seconds, 1e-9), curve)
