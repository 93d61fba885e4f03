"""Multi-agent RL: the agents' heads learning known answers, adaptive reward weights, resume,
fine-tuning, distribution, export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from fakes import event_values
from tfmarl.rl.multiagent import (AdaptiveReward, Facets, MultiAgentLearner, MultiAgentTrainer, allocate_slots,
                                  build_facets, compose_slate, kmeans, slate_diversity)

N, K, B, D, F = 12, 2, 16, 4, 4
ITEMS = np.arange(2, 2 + N)  # item indices of the fixed candidate list
MARKERS = (2 + N, 3 + N)  # the history items that tell the groups apart: group 1 (A), group 0 (B)
NUM_ITEMS = 4 + N
ITEM_FACET = np.zeros(NUM_ITEMS, np.int32)
ITEM_FACET[ITEMS] = np.arange(N) % F  # facets 0..3 in turn; facets {0, 1} = domain 0, {2, 3} = domain 1
FACETS = Facets(ITEM_FACET, np.eye(F, D, dtype=np.float32), np.array([0, 0, 1, 1], np.int32))
VECTORS = np.zeros((NUM_ITEMS, D), np.float32)
VECTORS[ITEMS] = np.eye(F, D)[ITEM_FACET[ITEMS]] + 0.01 * np.arange(N)[:, None]
VECTORS[MARKERS[0]], VECTORS[MARKERS[1]] = [1.0, 1.0, 0, 0], [-1.0, -1.0, 0, 0]


def agents_model(seed=0):
    """A small "pretrained" recommender: the Content agent's id vectors are VECTORS (facet
    directions; the markers opposite), the User agent a one-layer GRU over them."""
    from tfmarl.training import SequentialRecommender

    tf.keras.utils.set_random_seed(seed)
    model = SequentialRecommender(num_items=NUM_ITEMS, dim=D, encoder="gru", max_length=3, num_layers=1, dropout=0.0,
                                  k=K)
    model.build_all()
    model.content_agent.id_embeddings.assign(VECTORS)
    return model


MODEL = None


def shared_model():
    global MODEL
    if MODEL is None:
        MODEL = agents_model()
    return MODEL


class _Config:
    slate_size, max_steps = K, 5


class _Session:
    config = _Config()


class FacetWorld(py_environment.PyEnvironment):
    """A known answer: users of group A (history: marker A) click the first slate item of facet
    ``good_a``, users of group B (marker B) the first of facet ``good_b``; nothing else is clicked.
    Sessions last 5 steps. Observations carry item ids only, as the session environments do."""

    def __init__(self, good_a=0, good_b=2, seed=0):
        super().__init__(handle_auto_reset=False)
        self.good = (good_a, good_b)
        self._rng = np.random.default_rng(seed)
        self.session, self.num_candidates = _Session(), N
        self._spec = {
            "history": array_spec.BoundedArraySpec((3,), np.int32, 0, NUM_ITEMS - 1, name="history"),
            "step": array_spec.BoundedArraySpec((), np.int32, 0, 5, name="step"),
            "candidates": array_spec.BoundedArraySpec((N,), np.int32, 0, NUM_ITEMS - 1, name="candidates"),
            "candidate_facets": array_spec.BoundedArraySpec((N,), np.int32, 0, F - 1, name="candidate_facets")}
        self.last_info = {}

    batched = property(lambda self: True)
    batch_size = property(lambda self: B)
    observation_spec = lambda self: self._spec  # noqa: E731
    action_spec = lambda self: array_spec.BoundedArraySpec((K,), np.int32, 0, N - 1)  # noqa: E731

    def _observation(self):
        history = np.zeros((B, 3), np.int32)
        history[:, 0] = np.where(self._group == 1, MARKERS[0], MARKERS[1])
        return {"history": history, "step": self._steps.copy(),
                "candidates": np.tile(ITEMS, (B, 1)).astype(np.int32),
                "candidate_facets": np.tile(ITEM_FACET[ITEMS], (B, 1))}

    def _reset(self):
        self._group = self._rng.integers(0, 2, B)
        self._steps = np.zeros(B, np.int32)
        self._done = np.zeros(B, bool)
        return ts.TimeStep(np.zeros(B, np.int32), np.zeros(B, np.float32), np.ones(B, np.float32), self._observation())

    def _step(self, positions):
        restart = self._done.copy()
        good = np.where(self._group == 1, self.good[0], self.good[1])
        facet = ITEM_FACET[ITEMS[positions]]
        hit = facet == good[:, None]
        click = hit.any(1) & ~restart
        slot = np.where(click, hit.argmax(1), -1)
        self.last_info = {"click": click.astype(np.float32), "satisfaction": click.astype(np.float32),
                          "conversion": np.zeros(B, np.float32), "chosen_slot": slot.astype(np.int32)}
        self._steps = np.where(restart, 0, self._steps + 1).astype(np.int32)
        if restart.any():
            self._group[restart] = self._rng.integers(0, 2, restart.sum())
        self._done = self._steps >= 5
        step_type = np.where(restart, 0, np.where(self._done, 2, 1)).astype(np.int32)
        return ts.TimeStep(step_type, click.astype(np.float32), np.where(self._done, 0.0, 1.0).astype(np.float32),
                           self._observation())


def make_learner(env, **kwargs):
    tf.keras.utils.set_random_seed(0)
    options = dict(gamma=0.5, learning_rate=5e-3, hidden_units=(16,), target_update_period=20)
    return MultiAgentLearner(env, shared_model(), FACETS, **{**options, **kwargs})


def make_trainer(env, tmp=None, log_dir=None, **learner_kwargs):
    learner = make_learner(env, **learner_kwargs)
    trainer = MultiAgentTrainer(learner, env, VECTORS, np.ones(NUM_ITEMS), batch_size=32, warmup_steps=5,
                                epsilon=0.2, checkpoint_dir=tmp, log_dir=log_dir,
                                reward=AdaptiveReward({"diversity": 0.0}))
    return learner, trainer


@pytest.fixture(scope="module")
def trained():
    env = FacetWorld()
    learner, trainer = make_trainer(env)
    result = trainer.run(250, log_every=50)
    return env, learner, result


def group_observation(env, group):
    env.reset()
    env._group[:] = group
    return {k: tf.constant(v) for k, v in env._observation().items()}


@pytest.mark.slow
def test_user_agent_learns_which_facet_pays_for_each_group(trained):
    env, learner, _ = trained
    for group, good in ((1, 0), (0, 2)):
        probs = learner.facet_probabilities(learner.values(group_observation(env, group))[0]).numpy()
        assert probs.argmax(1).tolist() == [good] * B, (group, probs[0])


def test_content_agents_and_composed_slate_serve_the_paying_facet(trained):
    env, learner, _ = trained
    for group, good in ((1, 0), (0, 2)):
        positions, _ = learner.act(group_observation(env, group))
        facets = ITEM_FACET[ITEMS[positions.numpy()]]
        assert (facets == good).any(1).all()
        # The owning Content agent values its paying facet's items above its other facet's.
        q = learner.network(group_observation(env, group))[0]["proposals"].numpy()[0, FACETS.facet_domain[good]]
        paying = ITEM_FACET[ITEMS] == good
        other = ITEM_FACET[ITEMS] == (good + 1)
        assert q[paying].mean() > q[other].mean()


def test_critic_learns_values_and_training_improves_return(trained):
    env, learner, result = trained
    obs = group_observation(env, 1)
    q = learner.network(obs)[0]["critic"].numpy()[0]
    assert q[ITEM_FACET[ITEMS] == 0].mean() > q[ITEM_FACET[ITEMS] == 3].mean()
    returns = [p["session_return"] for p in result.curve if "session_return" in p]
    assert returns[-1] > returns[0] and returns[-1] > 3.5  # 5 steps, up to one click each


def logged_feedback(steps, seed=1):
    """Feedback logged elsewhere: FacetWorld sessions under a uniformly random slate policy."""
    env, rng = FacetWorld(seed=seed), np.random.default_rng(seed)
    time_step, log = env.reset(), []
    for _ in range(steps):
        positions = np.argsort(rng.random((B, N)), axis=1)[:, :K].astype(np.int32)
        next_step = env.step(positions)
        log.append((time_step, positions, next_step, dict(env.last_info)))
        time_step = next_step
    return log


@pytest.mark.slow
def test_heads_learn_from_a_stream_of_logged_feedback(tmp_path):
    env = FacetWorld()
    env.step = env.reset = None  # learning from the stream never steps the environment
    learner, trainer = make_trainer(env, tmp_path / "ckpt")
    exported = []
    result = trainer.learn_from(logged_feedback(250), log_every=50, export_every=100, export_fn=exported.append)
    assert result.start_step == 0 and result.steps == 250 and exported == [100, 200]
    assert [p["step"] for p in result.curve] == [50, 100, 150, 200, 250]
    observed = FacetWorld()
    for group, good in ((1, 0), (0, 2)):  # the facet that pays for each group, learned off-policy
        probs = learner.facet_probabilities(learner.values(group_observation(observed, group))[0]).numpy()
        assert probs.argmax(1).tolist() == [good] * B, (group, probs[0])
    # The stream continues where it stopped, after a restart too.
    _, resumed = make_trainer(env, tmp_path / "ckpt")
    assert int(resumed.global_step.numpy()) == 250
    assert resumed.learn_from(logged_feedback(10, seed=2)).steps == 260
    bad = logged_feedback(1)[0]
    with pytest.raises(ValueError, match="feedback lacks chosen_slot"):
        resumed.learn_from([(*bad[:3], {k: v for k, v in bad[3].items() if k != "chosen_slot"})])
    with pytest.raises(ValueError, match="must hold the trainer's 16 sessions"):
        resumed.learn_from([(bad[0], bad[1][:3], bad[2], bad[3])])


@pytest.mark.slow
def test_histograms_are_computed_only_for_a_log_dir(tmp_path):
    """With a log_dir every log point writes the heads' value histograms beside the scalars;
    without one the extra pass over the network that they need is never run."""
    env = FacetWorld()
    env.step = env.reset = None
    _, logged = make_trainer(env, log_dir=tmp_path)
    logged.learn_from(logged_feedback(12), log_every=6)
    tags = event_values(tmp_path)
    assert [step for step, _ in tags["multiagent/facet_probabilities"]] == [6, 12]
    assert {"multiagent/proposal_q", "multiagent/critic_q", "reward_weights/diversity"} <= set(tags)
    _, silent = make_trainer(env)

    def values(_):
        raise AssertionError("histogram values computed without a log_dir")

    silent._values = values
    assert [p["step"] for p in silent.learn_from(logged_feedback(12), log_every=6).curve] == [6, 12]


@pytest.mark.slow
def test_xla_step_functions_compute_what_the_plain_ones_do(monkeypatch):
    """The XLA-compiled train step and acting (TFMARL_XLA, off elsewhere in the suite) take the
    same step and choose the same slates as plain tf.functions, and the trainer uses them."""
    monkeypatch.setenv("TFMARL_XLA", "1")
    env = FacetWorld()
    env.step = env.reset = None
    learners, trainers = zip(*(make_trainer(env) for _ in range(2)))
    for network in ("network", "target_network"):  # the same starting point (seeding is not enough)
        for a, b in zip(getattr(learners[1], network).variables, getattr(learners[0], network).variables):
            a.assign(b)
    assert trainers[0]._act.function._jit_compile
    trainers[0].learn_from(logged_feedback(5), log_every=5)  # warm-up only: fills the replay
    sample = trainers[0].sample()
    plain = tf.function(learners[1].train)(sample)
    compiled = tf.function(learners[0].train, jit_compile=True)(sample)
    for name in plain:
        np.testing.assert_allclose(compiled[name].numpy(), plain[name].numpy(), rtol=1e-4, atol=1e-6)
    for a, b in zip(learners[0].network.variables, learners[1].network.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    observation = {k: tf.convert_to_tensor(v) for k, v in FacetWorld().reset().observation.items()}
    act = lambda obs: learners[0].act_with_state(obs)[0]  # noqa: E731 - greedy slates
    np.testing.assert_array_equal(tf.function(act, jit_compile=True)(observation).numpy(),
                                  tf.function(act)(observation).numpy())
    assert trainers[0].learn_from(logged_feedback(8, seed=3)).train_steps_per_second > 0  # the XLA train step


def test_fixed_shape_call_traces_once_per_shape_and_computes_the_same():
    """The loop's compiled calls go to the concrete function of their arguments' shapes: one
    trace per distinct shapes (and dtypes), the same results as calling the tf.function."""
    from tfmarl.rl.xla import FixedShapeCall

    weights = tf.Variable([[1.0], [2.0]])

    def affine(x, extra):
        return tf.matmul(x["a"], weights) + tf.cast(extra, tf.float32)

    call, reference = FixedShapeCall(tf.function(affine)), tf.function(affine)
    for rows in (3, 3, 5, 3):
        x = {"a": tf.fill([rows, 2], float(rows))}
        np.testing.assert_allclose(call(x, tf.constant(1)).numpy(), reference(x, tf.constant(1)).numpy())
    weights.assign([[0.0], [1.0]])  # variables are read at call time, not frozen at tracing
    np.testing.assert_allclose(call({"a": tf.ones([3, 2])}, tf.constant(0)).numpy(), np.ones([3, 1]))
    assert len(call._concrete) == 2 and call(x, tf.constant(1.0)).shape == (3, 1) and len(call._concrete) == 3
    assert FixedShapeCall(tf.function(lambda x, y=None: x if y is None else x + y))(tf.ones(2), None).shape == (2,)


def test_transition_packer_round_trips_the_replay_layout():
    """The trainer passes its ~20 transition fields to the compiled add-and-train call as one
    array per dtype; unpacked inside, they are the fields (shapes, dtypes, values) it packed."""
    from tfmarl.rl.multiagent.trainer import TransitionPacker

    spec = {"step_type": tf.TensorSpec((), tf.int32), "discount": tf.TensorSpec((), tf.float32),
            "observation": {"history": tf.TensorSpec((5,), tf.int32), "candidates": tf.TensorSpec((3,), tf.int32)},
            "rewards": {"a": tf.TensorSpec((), tf.float32)}, "state": tf.TensorSpec((2, 2), tf.float32)}
    rng = np.random.default_rng(0)
    transition = tf.nest.map_structure(
        lambda s: (rng.integers(0, 100, (4, *s.shape)) if s.dtype == tf.int32  # int64 arrays: cast on packing
                   else rng.normal(size=(4, *s.shape))), spec)
    packer = TransitionPacker(spec)
    packed = packer.pack(transition)
    assert sorted(a.shape for a in packed) == [(4, 2 + 4), (4, 1 + 5 + 3)]
    unpacked = tf.function(lambda *arrays: packer.unpack(arrays))(*packed)
    for leaf, want, got in zip(tf.nest.flatten(spec), tf.nest.flatten(transition), tf.nest.flatten(unpacked)):
        assert got.dtype == leaf.dtype and got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.astype(leaf.dtype.as_numpy_dtype))
    with pytest.raises((ValueError, TypeError)):
        packer.pack({k: v for k, v in transition.items() if k != "state"})


def test_temperature_tracks_the_entropy_target(trained):
    _, learner, result = trained
    assert result.curve[-1]["temperature"] != pytest.approx(1.0)
    assert abs(result.curve[-1]["facet_entropy"] - learner.target_entropy) < 0.5


def test_adaptive_reward_weights_follow_their_constraints():
    reward = AdaptiveReward({"diversity": 0.5, "satisfaction": 1.0}, learning_rate=0.5, momentum=0.0)
    for _ in range(5):  # diversity violated, satisfaction met
        reward.update({"diversity": np.full(8, 0.2), "satisfaction": np.full(8, 2.0)})
    assert reward.weights["diversity"] > 0.5 and reward.weights["satisfaction"] == 0.0
    for _ in range(10):  # now diversity is met: its multiplier decays back to 0
        reward.update({"diversity": np.full(8, 0.9), "satisfaction": np.full(8, 2.0)})
    assert reward.weights["diversity"] == 0.0 and reward.weights["click"] == 1.0
    fixed = AdaptiveReward({"diversity": 0.5}, adapt=False)
    fixed.update({"diversity": np.zeros(4)})
    assert fixed.weights["diversity"] == 0.0
    signals = {"click": np.array([1.0, 0.0]), "satisfaction": np.array([2.0, 0.0]), "conversion": np.zeros(2),
               "diversity": np.array([0.5, 0.5]), "novelty": np.zeros(2)}
    r = AdaptiveReward({"diversity": 0.0}, initial={"diversity": 2.0}).reward(signals)
    np.testing.assert_allclose(r, [2.0, 1.0])
    with pytest.raises(FloatingPointError):
        AdaptiveReward().reward(dict(signals, click=np.array([np.nan, 0.0])))
    with pytest.raises(ValueError, match="unknown signal"):
        AdaptiveReward({"dwell": 1.0})


@pytest.mark.slow
def test_reward_weights_move_during_training_when_a_floor_is_violated():
    env = FacetWorld()
    tf.keras.utils.set_random_seed(0)
    learner = make_learner(env, hidden_units=(8,))
    reward = AdaptiveReward({"diversity": 5.0, "novelty": 0.0})  # diversity can never reach 5
    trainer = MultiAgentTrainer(learner, env, VECTORS, np.ones(NUM_ITEMS), reward=reward, warmup_steps=2)
    result = trainer.run(20, log_every=5)
    weights = [p["weight/diversity"] for p in result.curve]
    assert weights == sorted(weights) and weights[-1] > 0
    assert all(p["weight/novelty"] == 0.0 for p in result.curve)


def test_composition_fills_allocations_and_breaks_ties_deterministically():
    probs = tf.constant([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    quota = allocate_slots(probs, 3, sample=False).numpy()
    assert quota.sum(1).tolist() == [3, 3] and quota[1].tolist() == [0, 0, 0, 3]
    sampled = allocate_slots(probs, 3, sample=True, seed=1).numpy()
    assert sampled.sum(1).tolist() == [3, 3] and sampled[1, 3] == 3
    facets = tf.constant([[0, 0, 1, 1, 3, 3]] * 2)
    content = tf.constant([[1.0, 2.0, 5.0, 0.0, 9.0, 8.0]] * 2)
    positions, _ = compose_slate(probs, content, None, facets, 3)
    # Row 0: 3 x [0.5, 0.5] -> 1.5 each; the extra slot goes to the lower facet: facet 0 gets 2, facet 1 one.
    assert set(positions.numpy()[0]) == {0, 1, 2}
    # Row 1: facet 3 gets all 3 slots but has only two items; the best remaining item fills the third.
    assert set(positions.numpy()[1]) == {4, 5, 2}


def test_new_item_slots_go_to_the_best_new_candidates_and_the_facets_share_the_rest():
    probs = tf.constant([[0.5, 0.5, 0.0, 0.0]] * 3)
    facets = tf.constant([[0, 0, 1, 1, 3, 3]] * 3)
    content = tf.constant([[1.0, 2.0, 5.0, 0.0, 9.0, 8.0]] * 3)
    critic = tf.constant([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]] * 3)
    new = tf.constant([[False, False, False, True, True, True],  # three new: the critic's best two
                       [False, False, False, False, False, True],  # one new: it and 2 facet slots
                       [False] * 6])  # none: the plain composition
    for sample in (False, True):
        positions, _ = compose_slate(probs, content, critic, facets, 3, sample=sample, seed=2,
                                     new_candidates=new, new_item_slots=2)
        slates = [set(row) for row in positions.numpy()]
        assert {4, 5} <= slates[0] and len(slates[0] & {0, 1, 2}) == 1
        assert 5 in slates[1] and len(slates[1] & {0, 1, 2, 3}) == 2
        if not sample:  # greedy: one slot per facet
            assert slates[1] == {1, 2, 5}
            assert slates[2] == {0, 1, 2}  # as without new-item slots (the test above, row 0)
    totals = allocate_slots(probs, 3, sample=False, totals=tf.constant([1, 2, 3])).numpy()
    assert totals.sum(1).tolist() == [1, 2, 3]
    sampled = allocate_slots(probs, 3, sample=True, seed=3, totals=tf.constant([1, 2, 3])).numpy()
    assert sampled.sum(1).tolist() == [1, 2, 3] and sampled[:, 2:].sum() == 0


def test_facets_cluster_item_vectors():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 6) * 5
    vectors = np.concatenate([np.zeros((2, 6)), np.repeat(centres, 20, 0) + rng.normal(size=(60, 6))])
    facets = build_facets(vectors, 3, 2, seed=0)
    labels = facets.item_facet[2:].reshape(3, 20)
    assert all(len(set(row)) == 1 for row in labels) and len({row[0] for row in labels}) == 3
    assert facets.num_domains == 2 and facets.item_facet[:2].tolist() == [0, 0]
    with pytest.raises(ValueError):
        kmeans(vectors, 0)
    assert slate_diversity(np.array([[[1.0, 0], [1.0, 0]], [[1.0, 0], [0, 1.0]]])).round(6).tolist() == [0.0, 1.0]


@pytest.mark.slow
def test_ablations_construct_and_train():
    for kwargs in ({"use_critic": False}, {"num_content_agents": 1}):
        learner, trainer = make_trainer(FacetWorld(), **kwargs)
        assert ("critic" in learner.heads) == kwargs.get("use_critic", True)
        assert learner.num_content_agents == (1 if "num_content_agents" in kwargs else 2)
        result = trainer.run(12, log_every=6)
        assert any(k.startswith("loss/") for k in result.curve[-1])
    with pytest.raises(ValueError, match="num_content_agents"):
        make_learner(FacetWorld(), num_content_agents=3)


@pytest.mark.slow
def test_interrupted_training_resumes_every_head(tmp_path):
    learner, trainer = make_trainer(FacetWorld(), tmp=tmp_path)
    trainer.run(30, checkpoint_every=10)
    saved = [v.numpy().copy() for v in learner.network.variables + learner.target_network.variables]
    saved_weights = dict(trainer.reward.weights)
    saved_temperature = float(learner.log_temperature.numpy())
    saved_optimizer_steps = int(learner.temperature_optimizer.iterations.numpy())
    continuation = np.random.Generator(type(trainer._rng.bit_generator)())
    continuation.bit_generator.state = trainer._rng.bit_generator.state
    expected = continuation.random(5)  # what the exploration stream would draw next
    fresh_learner, fresh = make_trainer(FacetWorld(seed=1), tmp=tmp_path)
    assert int(fresh.global_step.numpy()) == 30
    assert int(fresh_learner.temperature_optimizer.iterations.numpy()) == saved_optimizer_steps > 0
    np.testing.assert_array_equal(fresh._rng.random(5), expected)  # exploration continues its stream
    for variable, value in zip(fresh_learner.network.variables + fresh_learner.target_network.variables, saved):
        np.testing.assert_allclose(variable.numpy(), value)
    assert int(fresh_learner.train_step.numpy()) == int(learner.train_step.numpy()) > 0
    assert float(fresh_learner.log_temperature.numpy()) == pytest.approx(saved_temperature)
    assert fresh.reward.weights == saved_weights
    assert int(fresh.replay.num_frames()) > 0
    result = fresh.run(40)
    assert result.start_step == 30 and result.steps == 40


@pytest.mark.slow
def test_streaming_exports_refreshed_versions_and_they_load_without_tfmarl(tmp_path, trained_cycle_model):
    """Streaming mode with the real pipeline: candidates from a pretrained model, the policy keeps
    learning and a new SavedModel version appears at each interval."""
    from tfmarl.data import generate_synthetic
    from tfmarl.envs import SessionConfig, SessionEnvironment, fit_user_model
    from tfmarl.envs.candidates import CandidateSessionEnvironment
    from tfmarl.export import export_candidate_recommender, multiagent_scorer
    from tfmarl.rl import CandidateRetriever

    model = trained_cycle_model  # items m0..m29
    interactions = generate_synthetic(n_users=60, n_items=30, interactions_per_user=12, seed=0)
    interactions.log["item_id"] = "m" + (interactions.log["item_id"].astype(int) - 1).astype(str)
    interactions.items.index = "m" + (interactions.items.index.astype(int) - 1).astype(str)
    interactions.items.index.name = "item_id"
    user_model = fit_user_model(interactions, model.item_vocabulary, dim=4, seed=0)
    retriever = CandidateRetriever(model, num_candidates=12)
    facets = build_facets(retriever.item_vectors, 4, 2, seed=0)
    env = CandidateSessionEnvironment(
        SessionEnvironment(user_model, SessionConfig(slate_size=3, history_length=5), batch_size=8, seed=0),
        retriever, 12, item_facets=facets.item_facet)
    learner = MultiAgentLearner(env, model, facets, hidden_units=(8,))
    trainer = MultiAgentTrainer(learner, env, retriever.item_vectors, np.ones(model.num_items), warmup_steps=2)
    export = lambda step: export_candidate_recommender(  # noqa: E731
        model, multiagent_scorer(learner, history_length=5), tmp_path / "marl",
        variables=learner.variables, k=3, num_candidates=12, metadata={"step": step})
    result = trainer.run(12, export_every=6, export_fn=export)
    assert [os.path.basename(p) for p in result.exports] == ["1", "2"]
    code = f"""
import json, sys, tensorflow as tf
serve = tf.saved_model.load({str(tmp_path / 'marl' / '2')!r}).signatures["serving_default"]
out = serve(history=tf.constant([["m1", "m2", ""], ["", "", ""], ["zz", "m5", ""]]))
print(json.dumps({{"ids": out["item_ids"].numpy().astype(str).tolist(), "scores": out["scores"].numpy().tolist(),
                   "values": out["values"].numpy().tolist(),
                   "leaked": [m for m in ("tfmarl", "tf_agents") if m in sys.modules]}}))
"""
    env_vars = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_vars)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == [] and len(out["ids"]) == 3 and all(len(r) == 3 for r in out["ids"])
    assert not {"m1", "m2"} & set(out["ids"][0]) and "m5" not in out["ids"][2]
    assert all(len(set(r)) == 3 for r in out["ids"])
    assert np.isfinite(out["scores"]).all() and np.isfinite(out["values"]).all()
    assert (np.diff(out["scores"], axis=1) <= 0).all()  # the slate's order is the order of the scores
    info = json.loads((tmp_path / "marl" / "2" / "assets.extra" / "tfmarl.json").read_text())
    assert info["step"] == 12

    # The export serves the slates the trained policy composes at session start ...
    from tfmarl.rl.multiagent import MultiAgentSlatePolicy

    history = env.reset().observation["history"]
    requests = model.item_vocabulary.decode(history).astype(str)
    serve = tf.saved_model.load(str(tmp_path / "marl" / "2")).signatures["serving_default"]
    served = serve(history=tf.constant(requests))["item_ids"].numpy().astype(str)
    slates = MultiAgentSlatePolicy(learner, retriever)({"history": history, "step": np.zeros(len(history), np.int32)})
    np.testing.assert_array_equal(served, model.item_vocabulary.decode(slates).astype(str))
    # ... and, like the learner in training, sees only the last history_length items of a longer history.
    score = multiagent_scorer(learner, history_length=5)
    assert (history > 1).all()  # every visible history is full: 5 known items
    longer = np.concatenate([np.roll(history, 1, axis=1), history], axis=1)  # 10 items, the same last 5
    candidates = tf.constant(retriever(history)["candidates"])
    for a, b in zip(score(tf.constant(longer), candidates, retriever.item_vectors),
                    score(tf.constant(history), candidates, retriever.item_vectors)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fine_tuning_moves_the_agents_layers_and_frozen_training_does_not():
    """``trainable_encoders`` decides whether RL changes the pretrained User/Content agents; the
    heads learn either way. Fine-tuned, a train step runs the shared encoders once (on the
    observations and next observations together); frozen, it runs no User agent at all: the
    replay holds the states computed when acting, which equal the agents' encoding."""
    for trainable in (False, True):
        learner, trainer = make_trainer(FacetWorld(), trainable_encoders=trainable, encoder_learning_rate=1e-2)
        before_agents = [w.copy() for w in learner.network.user_agent.get_weights()]
        before_heads = [w.copy() for w in learner.network.head("critic").get_weights()]
        trainer.run(12, log_every=6)
        moved_agents = max(np.abs(a - b).max() for a, b in zip(learner.network.user_agent.get_weights(), before_agents))
        moved_heads = max(np.abs(a - b).max() for a, b in zip(learner.network.head("critic").get_weights(),
                                                               before_heads))
        assert moved_heads > 1e-4
        assert (moved_agents > 1e-4) == trainable, (trainable, moved_agents)
        sample = trainer.sample()
        assert ("state" in sample) == (not trainable)
        if not trainable:
            for frame in (0, 1):
                np.testing.assert_allclose(
                    sample["state"][:, frame].numpy(),
                    learner.network.encode_state(sample["observation"]["history"][:, frame]).numpy(), atol=1e-5)
        calls, encode = [], learner.network.encode
        learner.network.encode = lambda observation: calls.append(1) or encode(observation)
        tf.function(learner.train).get_concrete_function(sample)
        assert len(calls) == (1 if trainable else 0)


@pytest.mark.slow
def test_learner_under_mirrored_matches_one_device(mirrored):
    """The joint step on two replicas (half batches each) equals one device's on the whole batch."""
    env = FacetWorld()
    single, trainer = make_trainer(env, gradient_clipping=None)
    trainer.run(10, log_every=5)
    sample = trainer.sample()
    with mirrored.scope():
        replicated = make_learner(env, gradient_clipping=None)
    replicated.network.set_weights(single.network.get_weights())
    replicated.target_network.set_weights(single.target_network.get_weights())
    # Same optimizer state: both take their first step on this sample from fresh optimizers.
    fresh = make_learner(env, gradient_clipping=None)
    fresh.network.set_weights(single.network.get_weights())
    fresh.target_network.set_weights(single.target_network.get_weights())
    one = tf.function(fresh.train)(sample)
    two = tf.function(replicated.train)(sample)
    for name in fresh.heads:
        np.testing.assert_allclose(two[name].numpy(), one[name].numpy(), rtol=1e-5)
    for a, b in zip(fresh.network.get_weights(), replicated.network.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(replicated.train_step.numpy()) == 1  # counted once, not once per replica


@pytest.mark.parametrize("rows", [1, 3, 100])
def test_value_head_computes_what_its_direct_form_does(rows):
    """`_ValueHead.call` never builds the [B, X, 3D + 1] input: adapting the X rows (few) or
    folding the adapter into each state's weights (many), or reading pre-adapted rows (per state,
    or shared by every state as the interest head's centroids), must all give `naive_call`'s
    values, and the same gradients."""
    from tfmarl.rl.multiagent.networks import _ValueHead

    d, b = 8, 4
    head = _ValueHead(d, (16,), dot_scale=0.7)
    head.build()
    rng = np.random.default_rng(rows)
    for v in head.weights:  # away from the identity start, so a wrong adapter use shows
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(np.float32))
    state = tf.constant(rng.normal(size=(b, d)), tf.float32)
    items = tf.constant(rng.normal(size=(b, rows, d)), tf.float32)
    step = tf.constant(rng.uniform(size=b), tf.float32)
    base = tf.constant(rng.normal(size=(b, rows)), tf.float32)
    shared = tf.constant(rng.normal(size=(rows, d)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        want = head.naive_call(state, items, step)
        got = head(state, items, step)
        unknown_rows = tf.function(lambda i: head(state, i, step),  # X unknown: the folded form
                                   input_signature=[tf.TensorSpec([None, None, d])])(items)
        pre_adapted = head(state, items, step, adapted_items=head.item_adapter(items))
        want_shared = head.naive_call(state, tf.broadcast_to(shared, (b, rows, d)), step)
        got_shared = head(state, None, step, adapted_items=head.item_adapter(shared))
    for values in (got, unknown_rows, pre_adapted):
        np.testing.assert_allclose(values.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_shared.numpy(), want_shared.numpy(), rtol=1e-4, atol=1e-4)
    for pair in ((got, want), (got_shared, want_shared)):
        for a, b_ in zip(*(tape.gradient(v, head.trainable_weights) for v in pair)):
            np.testing.assert_allclose(a.numpy(), b_.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(head(state, items, step, base=base).numpy(),
                               head.naive_call(state, items, step, base=base).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hidden_units", [(16,), (8, 4)])
def test_stacked_heads_compute_what_each_head_does_alone(hidden_units):
    """`MultiAgentNetwork.stacked_values` (every item head in one batched product per layer) gives
    each head's own `head_values`, and the same gradients: on shared candidates (acting, with and
    without their ids) and on one own row per head (a train step's chosen items); with fewer rows
    than units (rows adapted directly) and more (the per-state weights), one layer or two."""
    env = FacetWorld()
    learner = make_learner(env, hidden_units=hidden_units)
    network = learner.network
    rng = np.random.default_rng(3)
    for v in network.trainable_variables:  # away from the identity start, so a wrong weight shows
        v.assign(v + rng.normal(scale=0.3, size=v.shape).astype(np.float32))
    observation = {k: tf.convert_to_tensor(v) for k, v in env.reset().observation.items()}
    state, items = network.encode(observation)
    names = learner.heads[1:]
    step, candidates = observation["step"], observation["candidates"]
    own = tf.constant(rng.normal(size=(len(names), *items.shape[:1], 1, items.shape[-1])), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        cases = [(network.stacked_values(names, state, items, step, candidates),
                  tf.stack([network.head_values(n, state, items, step, candidates) for n in names])),
                 (network.stacked_values(names, state, items, step),
                  tf.stack([network.head_values(n, state, items, step) for n in names])),
                 (network.stacked_values(names, state, own, step),
                  tf.stack([network.head_values(n, state, own[i], step) for i, n in enumerate(names)]))]
    for stacked, alone in cases:
        assert stacked.shape == alone.shape
        np.testing.assert_allclose(stacked.numpy(), alone.numpy(), rtol=1e-4, atol=1e-4)
        variables = [v for n in names for v in network.head(n).trainable_variables]
        for a, b in zip(tape.gradient(stacked, variables), tape.gradient(alone, variables)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="interest"):
        network.stacked_values(["interest"], state, items, step)


def test_learner_gives_new_item_slots_to_items_its_content_agent_never_trained_on():
    """``new_item_slots``: every slate (acting greedily or sampling, and the export's key) holds the
    critic's best new candidates, those the Content agent does not know."""
    model = agents_model(seed=1)
    known = np.ones(NUM_ITEMS, bool)
    new_items = ITEMS[[1, 5]]
    known[new_items] = False
    model.set_known_items(known)
    env = FacetWorld()
    tf.keras.utils.set_random_seed(0)
    learner = MultiAgentLearner(env, model, FACETS, hidden_units=(16,), new_item_slots=1)
    plain = MultiAgentLearner(env, model, FACETS, hidden_units=(16,))
    observation = {k: tf.convert_to_tensor(v) for k, v in env.reset().observation.items()}
    for sample in (False, True):
        slates = ITEMS[learner.act(observation, sample=sample, seed=4)[0].numpy()]
        assert (np.isin(slates, new_items).sum(1) >= 1).all()
    assert not np.isin(ITEMS[plain.act(observation)[0].numpy()], new_items).any()  # they would not be shown
    from tfmarl.export.policy import multiagent_scorer

    key, _ = multiagent_scorer(learner, history_length=3)(observation["history"], observation["candidates"], None)
    top = ITEMS[tf.math.top_k(key, K).indices.numpy()]
    assert (np.isin(top, new_items).sum(1) >= 1).all()
    with pytest.raises(ValueError, match="new_item_slots"):
        MultiAgentLearner(env, model, FACETS, new_item_slots=-1)
