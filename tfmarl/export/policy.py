"""Export of learned RL policies.

- `save_policy`: TF-Agents `PolicySaver` output (signatures ``action``, ``get_initial_state``,
  ``get_train_step``), written as a new version directory. Loading it without TF-Agents needs
  ``TF_USE_LEGACY_KERAS=1`` and TensorFlow Probability's distributions loaded first
  (``import tensorflow_probability as tfp; tfp.distributions.Deterministic``: TFP 0.22 imports
  lazily and registers the distributions' type specs only when they load).
- `export_candidate_recommender`: the tfmarl serving contract (``history`` strings in,
  ``item_ids``/``scores`` out; see `tfmarl.contract`) for retrieval -> learned scorer ->
  slate, so clients send no reward, discount or step type.
"""

from __future__ import annotations

import pathlib
import time

import tensorflow as tf

import tfmarl
from tfmarl.agents.blocks import NEG_INF, history_window
from tfmarl.contract import INPUT_NAME, OUTPUT_ITEM_IDS, OUTPUT_SCORES, OUTPUT_VALUES, SIGNATURE_KEY
from tfmarl.export.savedmodel import RecommenderServing, history_indices, index_metadata, save_servable, write_version


def save_policy(policy, export_dir, *, batch_size: int | None = None) -> pathlib.Path:
    """Saves a TF-Agents policy with `PolicySaver` as version ``<n+1>`` of ``export_dir``."""
    from tf_agents.policies import policy_saver

    saver = policy_saver.PolicySaver(policy, batch_size=batch_size)
    return write_version(export_dir, lambda path: saver.save(str(path)))


def observed_user_state(model, history, history_length: int, item_vectors):
    """The pretrained user state RL policies observe in the simulator (`CandidateRetriever` on the
    visible history): of the last ``history_length`` items, the last ``max_length`` the model reads."""
    window = history_window(history, min(history_length, model.max_length))
    return model.user_state(window, item_vectors, training=False)


def q_network_scorer(q_network, history_length: int):
    """Scores candidates with a `CandidateQNetwork` (state at session start: step 0)."""

    def score(history, candidates, item_vectors):
        del item_vectors  # the Q-network encodes items with its own (fine-tuned) Content agent
        history = history_window(history, history_length, history_length)
        step = tf.zeros([tf.shape(history)[0]], tf.int32)
        q, _ = q_network({"history": history, "step": step, "candidates": candidates}, training=False)
        return q

    score.num_candidates = int(q_network.input_tensor_spec["candidates"].shape[0])
    return score


def bandit_scorer(policy, model, *, arm_features: str = "item", history_length: int = 20):
    """Scores candidates with a per-arm bandit policy's mean reward estimates; the global and
    per-arm features are built in-graph as in `tfmarl.envs.PerArmBanditEnvironment`: the
    pretrained user state of the last ``history_length`` items (the simulator's visible history)
    and the frozen item vectors."""
    from tf_agents.trajectories import time_step as ts

    def score(history, candidates, item_vectors):
        state = observed_user_state(model, history, history_length, item_vectors)
        arms = tf.gather(item_vectors, candidates)
        if arm_features == "crossed":
            arms = tf.concat([arms, state[:, None, :] * arms], axis=-1)
        b = tf.shape(history)[0]
        step = ts.TimeStep(tf.fill([b], ts.StepType.FIRST), tf.zeros([b]), tf.ones([b]),
                           {"global": state, "per_arm": arms})
        return policy.action(step).info.predicted_rewards_mean

    return score


def multiagent_scorer(learner, *, history_length: int = 20):
    """Scores candidates with the multi-agent policy (a trained `tfmarl.rl.multiagent.MultiAgentLearner`):
    the User agent's facet allocation, the Content agents' proposals and the System agent's
    composition, greedily (largest-remainder allocation), at session start (step 0), from the
    last ``history_length`` items as in training. Returns (composition key, critic value): the
    export ranks and reports ``scores`` by the key (the composed slate's order) and reports the
    critic's values as ``values``."""
    facet_table = tf.constant(learner.facets.item_facet)

    def score(history, candidates, item_vectors):
        del item_vectors  # the agents encode items with their own Content agent
        history = history_window(history, history_length, history_length)
        observation = {"history": history, "step": tf.zeros_like(history[:, 0]), "candidates": candidates,
                       "candidate_facets": tf.gather(facet_table, candidates)}
        q_interest, proposal_q, critic_q = learner.values(observation)
        _, key = learner.compose(learner.facet_probabilities(q_interest), proposal_q, critic_q, observation)
        return key, critic_q if critic_q is not None else proposal_q

    return score


class CandidateRecommenderServing(RecommenderServing):
    """history strings -> pretrained retrieval of ``num_candidates`` (frozen catalog, as in
    `RecommenderServing`; history excluded) -> ``score(history, candidates, item_vectors)`` ->
    top K."""

    def __init__(self, model, score, vocabulary, *, k: int, num_candidates: int, variables,
                 retrieval: str = "brute_force", index_options: dict | None = None):
        super().__init__(model, vocabulary, k, model.max_length, retrieval, name="tfmarl_rl_recommender",
                         index_options=index_options)
        self._fn.score = score  # a plain namespace: only variables are exported
        self.num_candidates = int(num_candidates)
        self.scorer_variables = list(variables)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name=INPUT_NAME)])
    def serve(self, history):
        window, candidates, values, vectors = self.retrieve(history_indices(self.table, history), self.num_candidates)
        # Users who consumed most of the catalog get masked candidates (padding, OOV, history):
        # they must never outrank a real one, whatever the scorer says.
        valid = values > NEG_INF / 2
        scores = self._fn.score(window, candidates, vectors)
        # A scorer may return (ranking key, raw values): e.g. a composed slate ranks by its
        # composition, and its critic's values need not follow that order. ``scores`` is always
        # the ranking key (non-increasing along the slate); the raw values go out as ``values``.
        key, raw = scores if isinstance(scores, tuple) else (scores, None)
        key = tf.where(valid, tf.cast(key, tf.float32), 2 * NEG_INF)
        top = tf.math.top_k(key, k=self.k)
        chosen = tf.gather(candidates, top.indices, batch_dims=1)
        out = {OUTPUT_ITEM_IDS: tf.gather(self.item_strings, chosen), OUTPUT_SCORES: top.values}
        if raw is not None:
            out[OUTPUT_VALUES] = tf.gather(tf.cast(raw, tf.float32), top.indices, batch_dims=1)
        return out


def export_candidate_recommender(model, score, export_dir, *, variables=(), k: int = 10, num_candidates: int = 50,
                                 retrieval: str = "brute_force", index_options: dict | None = None,
                                 metadata: dict | None = None, warmup: bool = True) -> pathlib.Path:
    """Exports retrieval (``model``, a pretrained `SequentialRecommender` with an item
    vocabulary) followed by a learned candidate scorer as version ``<n+1>`` of ``export_dir``.

    Args:
      score: ``(history int32 [B, L], candidates int32 [B, N], item_vectors float32 [num_items, D])
        -> scores [B, N]`` (or ``(ranking key, raw values)``: the key orders the slate and is
        exported as ``scores``, the raw values as an extra output ``values``), e.g. `q_network_scorer`,
        `bandit_scorer` or `multiagent_scorer`; ``item_vectors`` is the frozen catalog.
      variables: the scorer's variables (so the SavedModel holds them).
      retrieval: how the ``num_candidates`` are retrieved, as in `export_recommender`.
      index_options: the knobs of ``retrieval="partitioned"``, as in `export_recommender`.
      warmup: also write TF Serving warm-up requests.
    """
    vocabulary = getattr(model, "item_vocabulary", None)
    if vocabulary is None:
        raise ValueError("the retrieval model has no item_vocabulary")
    if not k <= num_candidates <= model.num_items - 2:
        raise ValueError(f"need k <= num_candidates <= {model.num_items - 2}, got k={k}, num_candidates={num_candidates}")
    expected = getattr(score, "num_candidates", None)
    if expected is not None and expected != num_candidates:
        raise ValueError(f"the scorer was built for {expected} candidates, not num_candidates={num_candidates}")
    module = CandidateRecommenderServing(model, score, vocabulary, k=k, num_candidates=num_candidates,
                                         variables=variables, retrieval=retrieval, index_options=index_options)
    info = {"tfmarl_version": tfmarl.__version__, "k": k, "num_candidates": num_candidates,
            "retrieval": module.retrieval, **index_metadata(module), "signature": SIGNATURE_KEY, "num_items": int(model.num_items),
            "created": time.time(), **(metadata or {})}

    warm = (vocabulary, pathlib.Path(export_dir).name, module.max_length) if warmup else None
    return write_version(export_dir, lambda path: save_servable(module, path, info, warm))
