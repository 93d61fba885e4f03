"""`MultiAgentTrainer`: centralised training of the agents' RL heads from one joint replay buffer.

Each environment step stores one *joint transition* per session: the shared observation (the
visible history as item ids, the candidates and their facets), every head's action (critic: the
consumed candidate; interest head: the consumed item's facet; each proposal head: the consumed
candidate if its Content agent proposed it, else its best-placed slate item), every head's reward
(global reward for the critic and the interest head, difference reward for the Content agents)
and a weight (0 for a Content agent with no item on the slate). Every step the
`MultiAgentLearner` takes one joint step on a sampled batch, the interest policy's temperature
follows its entropy target and the System agent's reward weights take a dual-ascent step.
Checkpoints hold the networks, optimizers, the replay buffer, the temperature, the step and the
reward weights; a second `run` with the same directory resumes.
With ``export_every`` the policy is exported as a new SavedModel version at that interval while
it keeps learning (streaming mode); `learn_from` learns the same way from a stream of feedback that
arrives from elsewhere (another simulator process, or logs) instead of stepping the environment.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
import tensorflow as tf
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.specs import tensor_spec
from tf_agents.utils import common

from tfmarl.atomic import atomic_write_text
from tfmarl.envs.candidates import begin_step
from tfmarl.rl.multiagent.reward import AdaptiveReward, novelty_table, slate_diversity
from tfmarl.rl.loops import progress_range
from tfmarl.rl.policies import explore_positions
from tfmarl.rl.xla import FixedShapeCall, step_function

REWARD_STATE_FILE = "reward_weights.json"
RNG_STATE_FILE = "exploration_rng.json"
FEEDBACK = ("click", "satisfaction", "conversion", "chosen_slot")  # per-step signals the trainer learns from


class TransitionPacker:
    """The fields of a nest of specs (``spec``: a replay layout, an observation) as one [B, width]
    array per dtype, and back.

    A tf.function call binds and converts every argument on the host, ~0.1 ms each: at the ~20
    fields of a joint transition that outweighs a train step's arithmetic, so the trainer passes
    two or three packed arrays and unpacks them inside the compiled call. Its replay buffer stores
    the packed arrays too (``packed_spec``): adding and sampling touch two or three tables, not ~20.
    """

    def __init__(self, spec):
        self._spec = spec
        self._leaves = tf.nest.flatten(spec)
        self._dtypes = sorted({leaf.dtype for leaf in self._leaves}, key=lambda dtype: dtype.name)
        widths = {dtype: sum(leaf.shape.num_elements() for leaf in self._leaves if leaf.dtype == dtype)
                  for dtype in self._dtypes}
        self.packed_spec = tuple(tf.TensorSpec([widths[dtype]], dtype, name=f"packed_{dtype.name}")
                                 for dtype in self._dtypes)

    def pack(self, transition) -> tuple:
        """Numpy arrays [B, width], one per dtype, of ``transition`` (``spec``'s structure)."""
        tf.nest.assert_same_structure(self._spec, transition)
        values = tf.nest.flatten(transition)
        groups = {dtype: [] for dtype in self._dtypes}
        for leaf, value in zip(self._leaves, values):
            value = np.asarray(value, leaf.dtype.as_numpy_dtype)
            groups[leaf.dtype].append(value.reshape(value.shape[0], -1))
        return tuple(np.concatenate(groups[dtype], axis=1) for dtype in self._dtypes)

    def unpack(self, packed):
        """The tensors of `pack`'s arrays ([..., width], e.g. a replay sample's [batch, 2, width]),
        in ``spec``'s structure (each field [..., *its shape])."""
        columns = dict(zip(self._dtypes, packed))
        offsets = dict.fromkeys(self._dtypes, 0)
        lead = tf.shape(packed[0])[:-1]
        out = []
        for leaf in self._leaves:
            width = leaf.shape.num_elements()
            start = offsets[leaf.dtype]
            offsets[leaf.dtype] += width
            out.append(tf.reshape(columns[leaf.dtype][..., start:start + width],
                                  tf.concat([lead, tf.constant(leaf.shape.as_list(), tf.int32)], 0)))
        return tf.nest.pack_sequence_as(self._spec, out)


@dataclasses.dataclass
class MultiAgentTrainResult:
    start_step: int
    steps: int
    seconds: float
    env_steps_per_second: float
    train_steps_per_second: float
    curve: list
    exports: list


class MultiAgentTrainer:
    """Trains a `MultiAgentLearner` in a `CandidateSessionEnvironment` with ``item_facets``.

    Create it outside any ``strategy.scope()`` (its replay buffer lives on the host); the
    learner trains under its own strategy.

    Args:
      learner: the agents' RL heads and their joint training step.
      env: the environment.
      item_vectors: pretrained item vectors (diversity signal) [num_items, D].
      item_counts: training popularity (novelty signal) [num_items].
      reward: the System agent's `AdaptiveReward` (default: clicks only, fixed).
      epsilon: per-slot exploration (float or step -> float).
      states_from_env: the environment's retrieval returns the User-agent state of each
        observation (`CandidateSessionEnvironment.last_user_state`) that the learner's frozen
        agents would compute (they are the retriever's model's): acting and the replay use it
        instead of encoding every history a second time.
      checkpoint_dir, log_dir: resumable checkpoints and TensorBoard.
    """

    def __init__(self, learner, env, item_vectors, item_counts, *, reward: AdaptiveReward | None = None,
                 batch_size: int = 128, replay_capacity: int = 50_000, warmup_steps: int = 20, epsilon=0.05,
                 seed: int = 0, checkpoint_dir=None, log_dir=None, states_from_env: bool = False):
        self.learner, self.env = learner, env
        self.reward = reward or AdaptiveReward(adapt=False)
        self._vectors = np.asarray(item_vectors, np.float32)
        self._novelty = novelty_table(item_counts)
        self._epsilon = epsilon if callable(epsilon) else (lambda _: float(epsilon))
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._warmup = warmup_steps
        b = env.batch_size
        observation_spec = tensor_spec.from_spec(env.time_step_spec()).observation
        names = learner.heads
        scalar = lambda dtype: tf.TensorSpec((), dtype)  # noqa: E731
        self._spec = {"step_type": scalar(tf.int32), "next_step_type": scalar(tf.int32), "discount": scalar(tf.float32),
                      "observation": observation_spec, "actions": {n: scalar(tf.int32) for n in names},
                      "rewards": {n: scalar(tf.float32) for n in names},
                      "weights": {n: scalar(tf.float32) for n in names}}
        if learner.stores_states:
            self._spec["state"] = tf.TensorSpec((learner.state_dim,), tf.float32)
        self._packer = TransitionPacker(self._spec)
        self.replay = tf_uniform_replay_buffer.TFUniformReplayBuffer(self._packer.packed_spec, batch_size=b,
                                                                     max_length=max(replay_capacity // b, 2))
        self.global_step = tf.Variable(0, dtype=tf.int64, name="marl_env_step")
        self._checkpoint_dir = pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._checkpointer = None
        if self._checkpoint_dir is not None:
            self._checkpointer = common.Checkpointer(
                str(self._checkpoint_dir), max_to_keep=1, replay_buffer=self.replay, global_step=self.global_step,
                **learner.checkpoint_objects())
            self._checkpointer.initialize_or_restore()
            state_file = self._checkpoint_dir / REWARD_STATE_FILE
            if state_file.exists():
                self.reward.load_state(json.loads(state_file.read_text()))
            rng_file = self._checkpoint_dir / RNG_STATE_FILE
            if rng_file.exists():  # so a resumed run explores as the uninterrupted one would
                self._rng.bit_generator.state = json.loads(rng_file.read_text())
        # Without a log_dir nothing is written, so the histograms' extra pass over the network is skipped.
        self._histograms = log_dir is not None
        self._writer = (tf.summary.create_file_writer(str(log_dir)) if self._histograms
                        else tf.summary.create_noop_writer())
        if states_from_env and not learner.stores_states:
            raise ValueError("states_from_env needs frozen agents (trainable_encoders=False): fine-tuned agents "
                             "drift away from the retriever's")
        self._states_from_env = bool(states_from_env)

        # Acting takes the observation packed as well (its fields are all int32: one argument).
        self._observation_packer = TransitionPacker(observation_spec)

        def act(*packed_and_state):
            *packed, state = packed_and_state
            return learner.act_with_state(self._observation_packer.unpack(packed), sample=True, state=state)

        self._act = FixedShapeCall(step_function(act, distributed=learner.distributed))
        self._encode_state = tf.function(learner.network.encode_state)
        self._values = step_function(learner.values, distributed=learner.distributed)
        self._batch_size = int(batch_size)
        # One call per environment step stores its transitions, samples and takes the joint step
        # (its gradient step XLA-compiled inside; sampling has no XLA kernels): no host round trip
        # in between. The transitions come packed, a few arguments instead of one per field, and
        # stay packed in the replay until the compiled step unpacks its sample.
        def gradient_step(*packed_sample):  # the XLA module's name, which the profile reads
            return learner.gradient_step(self._packer.unpack(packed_sample))

        gradient_step = step_function(gradient_step, distributed=learner.distributed)
        self._add_and_train = FixedShapeCall(common.function(lambda *packed: self._add_then(packed, gradient_step)))
        self._loss_names = [*learner.heads, "entropy"]  # the order of _add_then's losses
        self._add_batch = common.function(lambda *packed: self._add_to_replay(packed))
        self._facet_owner = learner.facet_owner.numpy()
        self.weight_history = []

    # --- one environment step --------------------------------------------------------------
    def _joint_transition(self, time_step, positions, next_step, info, state=None):
        learner = self.learner
        b = self.env.batch_size
        missing = [k for k in FEEDBACK if k not in info]
        if missing:
            raise ValueError(f"feedback lacks {', '.join(missing)}; it needs {', '.join(FEEDBACK)} (each [batch])")
        if np.shape(positions)[0] != b or np.shape(info["chosen_slot"]) != (b,):
            raise ValueError(f"feedback batches must hold the trainer's {b} sessions (its replay layout); got "
                             f"positions {np.shape(positions)} and chosen_slot {np.shape(info['chosen_slot'])}")
        rows = np.arange(b)
        candidates = np.asarray(time_step.observation["candidates"])
        facets = np.asarray(time_step.observation["candidate_facets"])
        slot = np.asarray(info["chosen_slot"])
        clicked = slot >= 0
        chosen = np.maximum(slot, 0)
        consumed = positions[rows, chosen]
        owner_slots = self._facet_owner[facets[rows[:, None], positions]]  # [B, K]
        consumed_owner = owner_slots[rows, chosen]
        items = candidates[rows[:, None], positions]
        signals = {"click": info["click"], "satisfaction": info["satisfaction"], "conversion": info["conversion"],
                   "diversity": slate_diversity(self._vectors[items]),
                   "novelty": self._novelty[items].mean(axis=1)}
        active = ~np.asarray(time_step.is_last())
        self.reward.update(signals, mask=active)
        w = self.reward.weights
        item_reward = sum(w[s] * np.asarray(signals[s], np.float64) for s in ("click", "satisfaction", "conversion"))
        total = self.reward.reward(signals)
        actions = {"interest": facets[rows, consumed]}
        rewards = {"interest": total}
        weights = {"interest": np.ones(b, np.float32)}
        if learner.use_critic:
            actions["critic"], rewards["critic"], weights["critic"] = consumed, total, np.ones(b, np.float32)
        for m in range(learner.num_content_agents):
            mine = owner_slots == m
            first_mine = positions[rows, np.argmax(mine, axis=1)]
            own_click = clicked & (consumed_owner == m)
            actions[f"proposal_{m}"] = np.where(own_click, consumed, first_mine)
            # Difference reward: without this agent's item the click (and its item-level reward) would
            # not have happened; slate-level terms are the User agent's and the critic's.
            rewards[f"proposal_{m}"] = np.where(own_click, item_reward, 0.0).astype(np.float32)
            weights[f"proposal_{m}"] = mine.any(axis=1).astype(np.float32)
        transition = {"step_type": time_step.step_type, "next_step_type": next_step.step_type,
                      "discount": next_step.discount, "observation": time_step.observation,
                      "actions": {k: np.asarray(v, np.int32) for k, v in actions.items()},
                      "rewards": {k: np.asarray(v, np.float32) for k, v in rewards.items()},
                      "weights": weights}
        if self.learner.stores_states:
            if state is None:
                state = self._encode_state(tf.convert_to_tensor(time_step.observation["history"]))
            transition["state"] = np.asarray(state, np.float32)
        return transition, signals, total

    def sample(self) -> dict:
        """A uniform replay sample in the learner's layout: every field [batch_size, 2] (the
        transition's step and the next)."""
        return self._packer.unpack(self._sample_packed())

    def _sample_packed(self) -> tuple:
        return tuple(self.replay.get_next(sample_batch_size=self._batch_size, num_steps=2)[0])

    def _add_to_replay(self, packed) -> None:
        self.replay.add_batch(tuple(packed))  # its graph-mode result is an op, which tf.function cannot return

    def _add_then(self, packed, gradient_step) -> dict:
        self._add_to_replay(packed)  # automatic control dependencies: sampled after the add
        losses = gradient_step(*self._sample_packed())  # unpacked inside the compiled step
        self.learner.sync_target()  # outside the compiled step (`MultiAgentLearner.sync_target`)
        return tf.stack([losses[name] for name in self._loss_names])  # one host copy, not one per loss

    def add_transitions(self, transitions: dict) -> None:
        """Ingests joint transitions (this trainer's replay layout, leading dimension = env batch),
        e.g. logged feedback streamed from elsewhere."""
        self._add_batch(*map(tf.convert_to_tensor, self._packer.pack(transitions)))

    # --- the loop ----------------------------------------------------------------------------
    def run(self, num_steps: int, *, log_every: int = 50, checkpoint_every: int = 500, export_every: int | None = None,
            export_fn=None, progress: bool = False) -> MultiAgentTrainResult:
        """Steps the environment until the step counter reaches ``num_steps`` (resuming from a
        checkpoint if there is one), training every step. ``export_fn(step)`` runs every
        ``export_every`` steps (streaming: a refreshed SavedModel version while learning)."""
        env = self.env
        steps = progress_range(int(self.global_step.numpy()), num_steps, progress, "multi-agent")

        def simulated_feedback():
            time_step = env.reset()
            for step_index in steps:
                packed_observation = map(tf.convert_to_tensor, self._observation_packer.pack(time_step.observation))
                given = env.last_user_state if self._states_from_env else None
                if self._states_from_env and given is None:
                    raise ValueError("states_from_env: the environment's retrieval returned no user_state")
                positions, _, state = self._act(
                    *packed_observation, None if given is None else tf.convert_to_tensor(given, tf.float32))
                positions = explore_positions(positions.numpy(), env.num_candidates, self._epsilon(step_index),
                                              self._rng)
                # The next candidates are retrieved while this step is stored and trained on.
                pending = begin_step(env, positions.astype(np.int32))
                yield (time_step, positions, pending.session_step, env.last_info,
                       state.numpy() if given is None else given)
                time_step = pending.result()

        return self._learn(simulated_feedback(), log_every=log_every, checkpoint_every=checkpoint_every,
                           export_every=export_every, export_fn=export_fn)

    def learn_from(self, feedback, *, log_every: int = 50, checkpoint_every: int = 500,
                   export_every: int | None = None, export_fn=None) -> MultiAgentTrainResult:
        """Keeps learning from a stream of feedback, updating the learner in place: each item is
        ``(time_step, positions, next_time_step, signals)`` for one step of the trainer's B
        sessions, in the environment's layout: the observed `TimeStep`s (observation with
        ``history``, ``step``, ``candidates``, ``candidate_facets``), the slate shown as positions
        among the candidates int [B, K], and ``signals`` {``click``, ``satisfaction``,
        ``conversion``: float [B]; ``chosen_slot``: int [B], -1 for no click} — what a
        `CandidateSessionEnvironment` returns, whether live, simulated elsewhere or replayed from
        logs. Row b of consecutive items must be the same session stream. Every item counts as one
        step: the heads train (after warm-up), the reward weights adapt, checkpoints and TensorBoard
        are written as in `run`, and ``export_fn(step)`` runs every ``export_every`` steps."""
        return self._learn(((*item, None) for item in feedback), log_every=log_every,
                           checkpoint_every=checkpoint_every, export_every=export_every, export_fn=export_fn)

    def _learn(self, feedback, *, log_every, checkpoint_every, export_every, export_fn) -> MultiAgentTrainResult:
        """`learn_from` over items that also carry the observation's state (None: computed here)."""
        b = self.env.batch_size
        start = done = int(self.global_step.numpy())
        stats = {"return": np.zeros(b), "clicks": np.zeros(b), "steps": np.zeros(b)}
        finished, window, curve, exports = [], {}, [], []
        began, train_steps, saved = time.perf_counter(), 0, start
        observation = None  # the latest step's, for the histograms of each log point
        try:
            for time_step, positions, next_step, signals_in, state in feedback:
                positions = np.asarray(positions)
                transition, signals, total = self._joint_transition(time_step, positions, next_step, signals_in, state)
                losses = {}
                if done + 1 - start > self._warmup:  # this step trains
                    packed = map(tf.convert_to_tensor, self._packer.pack(transition))
                    losses = dict(zip(self._loss_names, self._add_and_train(*packed).numpy()))
                    train_steps += 1
                else:
                    self.add_transitions(transition)
                observation = time_step.observation
                active = ~np.asarray(time_step.is_last())
                stats["return"] += np.where(active, signals["click"], 0.0)
                stats["clicks"] += np.where(active, signals["click"], 0.0)
                stats["steps"] += active
                any_active = active.any()
                for key, values in (("diversity", signals["diversity"]), ("satisfaction", signals["satisfaction"]),
                                    ("novelty", signals["novelty"]), ("shaped_reward", total)):
                    window.setdefault(key, []).append(float(np.asarray(values)[active].mean()) if any_active else 0.0)
                ended = active & np.asarray(next_step.is_last())
                for i in np.flatnonzero(ended):
                    finished.append((stats["return"][i], stats["clicks"][i] / max(stats["steps"][i], 1),
                                     stats["steps"][i]))
                for values in stats.values():
                    values[ended] = 0.0
                done += 1
                for name, value in losses.items():
                    window.setdefault(f"loss/{name}" if name != "entropy" else "facet_entropy", []).append(float(value))
                if done % log_every == 0:
                    curve.append(self._log_point(done, window, finished, observation))
                    finished, window = [], {}
                if self._checkpointer is not None and done % checkpoint_every == 0:
                    self.global_step.assign(done)
                    self.save()
                    saved = done
                if export_every and export_fn is not None and done % export_every == 0:
                    self.global_step.assign(done)
                    exports.append(str(export_fn(done)))
        finally:  # the step counter is kept in Python while stepping (an eager op a step costs ~0.5 ms)
            self.global_step.assign(done)
        if done > start and done % log_every:  # the last, partial interval
            curve.append(self._log_point(done, window, finished, observation))
        if self._checkpointer is not None and done > saved:
            self.save()
        self._writer.flush()
        seconds = time.perf_counter() - began
        return MultiAgentTrainResult(start, done, seconds, (done - start) * b / max(seconds, 1e-9),
                                     train_steps / max(seconds, 1e-9), curve, exports)

    def _log_point(self, done, window, finished, observation) -> dict:
        """One learning-curve point (and its TensorBoard summaries) for the interval ending at ``done``."""
        point = {"step": done, "temperature": float(self.learner.temperature.numpy()),
                 **{k: float(np.mean(v)) for k, v in window.items()},
                 **{f"weight/{k}": v for k, v in self.reward.weights.items()}}
        if finished:
            values = np.array(finished)
            point.update(session_return=float(values[:, 0].mean()), ctr=float(values[:, 1].mean()),
                         session_length=float(values[:, 2].mean()))
        self.weight_history.append({"step": done, **self.reward.weights})
        with self._writer.as_default():
            for key, value in point.items():
                if key == "step":
                    continue
                tag = (f"reward_weights/{key[7:]}" if key.startswith("weight/") else f"multiagent/{key}")
                tf.summary.scalar(tag, value, step=done)
            if not self._histograms:
                return point
            observation = {k: tf.convert_to_tensor(v) for k, v in observation.items()}
            q_interest, proposal_q, critic_q = self._values(observation)
            tf.summary.histogram("multiagent/facet_probabilities", self.learner.facet_probabilities(q_interest),
                                 step=done)
            tf.summary.histogram("multiagent/proposal_q", proposal_q, step=done)
            if critic_q is not None:
                tf.summary.histogram("multiagent/critic_q", critic_q, step=done)
        return point

    def save(self) -> None:
        """Checkpoints the networks and optimizers, the replay buffer, the temperature, the step,
        the reward weights and the exploration random state."""
        if self._checkpointer is None:
            raise ValueError("this trainer has no checkpoint_dir")
        self._checkpointer.save(self.global_step)
        atomic_write_text(self._checkpoint_dir / REWARD_STATE_FILE, json.dumps(self.reward.state()))
        atomic_write_text(self._checkpoint_dir / RNG_STATE_FILE, json.dumps(self._rng.bit_generator.state))
