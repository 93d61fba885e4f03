"""Any tfmarl policy as an off-policy target: its probabilities of the logged slates.

`target_probabilities(log, policy)` scores a `SlateLog`'s rounds (their ``history``) with:

* a slate policy: a callable ``observation -> int [B, K]`` with observation ``{"history": int32
  [B, L] right-padded with 0, "step": int32 [B]}`` (plus ``"candidates"`` int32 [B, N] when the log
  has them), e.g. `tfmarl.rl`'s greedy, bandit, DQN and multi-agent slate policies. Deterministic
  (indicator per position) unless it offers ``slate_probabilities(observation, slates) -> dict``
  (keys of `SlateTarget`: position, cascade, support, support_probs, conditional_is_marginal) or
  has a positive ``epsilon`` attribute: ε-per-slot exploration around its greedy slate, over the
  log's candidates (closed form, `exploration`). A policy that is neither and answers the same
  observation differently twice is refused;
* a ranking model with ``score_catalog`` and ``max_length`` (`tfmarl.training.SequentialRecommender`):
  its top K over the catalog, history, padding and unknown ids excluded, ties to the lower index;
* a SavedModel directory answering tfmarl's ``serving_default`` contract (history tf.string
  [B, L] -> item_ids tf.string [B, K]), loaded with ``tf.saved_model.load``; ids map through the
  log's ``item_vocab``;
* an int array [n, K] of target slates.

TensorFlow is imported only to run TensorFlow policies, never by this module itself.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from tfmarl.evaluation.ope.exploration import epsilon_slot_cascade, epsilon_slot_marginals
from tfmarl.evaluation.ope.slate import SlateTarget
from tfmarl.evaluation.ope.slate_log import SlateLog

_RESERVED = 2  # padding and unknown-id indices of tfmarl vocabularies


def target_probabilities(log: SlateLog, policy, *, batch_size: int = 1024) -> SlateTarget:
    """The `SlateTarget` of ``policy`` on the rounds of ``log`` (see the module docstring)."""
    if not isinstance(log, SlateLog):
        raise TypeError(f"log must be a SlateLog, got {type(log).__name__}")
    if isinstance(policy, SlateTarget):
        return policy
    if isinstance(policy, np.ndarray):
        return SlateTarget.deterministic(log, policy)
    if isinstance(policy, (str, os.PathLike)):
        return SlateTarget.deterministic(log, _saved_model_slates(log, pathlib.Path(policy), batch_size))
    if hasattr(policy, "score_catalog") and hasattr(policy, "max_length"):
        return SlateTarget.deterministic(log, _ranking_slates(log, policy, batch_size))
    if not callable(policy):
        raise TypeError(f"cannot use a {type(policy).__name__} as a target policy: pass a slate policy, a "
                        "ranking model, a SavedModel directory or target slates [n, K]")
    if log.history is None:
        raise ValueError("the log has no history column: sequence policies need the user's history before each "
                         "impression (load_bandit_feedback(..., history=...))")
    if hasattr(policy, "slate_probabilities"):
        return _hooked(log, policy, batch_size)
    epsilon = float(getattr(policy, "epsilon", 0.0) or 0.0)
    if epsilon > 0:
        return _epsilon_target(log, policy, epsilon, batch_size)
    return SlateTarget.deterministic(log, _policy_slates(log, policy, batch_size))


def _observations(log: SlateLog, batch_size: int):
    for start in range(0, len(log), batch_size):
        rows = slice(start, start + batch_size)
        history = log.history[rows].astype(np.int32)
        observation = {"history": history, "step": np.zeros(len(history), np.int32)}
        if log.candidates is not None:
            observation["candidates"] = log.candidates[rows].astype(np.int32)
        yield rows, observation


def _checked_slates(log: SlateLog, slates, rows, source: str) -> np.ndarray:
    slates = np.asarray(slates)
    expected = (len(log.slates[rows]), log.slate_size)
    if slates.ndim != 2 or slates.shape[0] != expected[0]:
        raise ValueError(f"{source} returned slates of shape {slates.shape} for a batch of {expected[0]} rounds")
    if slates.shape[1] != expected[1]:
        raise ValueError(f"{source} shows slates of {slates.shape[1]} items but the log's slates have "
                         f"{expected[1]}: build the policy with slate_size={expected[1]}")
    return slates if slates.dtype.kind in "USO" else slates.astype(np.int64)


def _policy_slates(log: SlateLog, policy, batch_size: int) -> np.ndarray:
    """The policy's slates, checked deterministic: the first batch is asked twice, and a policy
    that answers differently (LinTS, a sampling multi-agent policy) is refused, since an
    indicator per position would misstate its probabilities."""
    out = np.empty_like(log.slates)
    for number, (rows, observation) in enumerate(_observations(log, batch_size)):
        out[rows] = _checked_slates(log, policy(observation), rows, type(policy).__name__)
        if number == 0:
            again = _checked_slates(log, policy(observation), rows, type(policy).__name__)
            if not np.array_equal(again, out[rows]):
                i = int(np.argmax((again != out[rows]).any(axis=1)))
                raise ValueError(f"{type(policy).__name__} is stochastic (two calls on round {i} gave different "
                                 "slates) and offers no slate_probabilities(observation, slates) nor a closed-form "
                                 "epsilon: its probabilities of the logged slates are unknown")
    return out


def _hooked(log: SlateLog, policy, batch_size: int) -> SlateTarget:
    parts = []
    for rows, observation in _observations(log, batch_size):
        got = dict(policy.slate_probabilities(observation, log.slates[rows]))
        missing = {"position", "cascade", "support", "support_probs"} - set(got)
        if missing:
            raise ValueError(f"{type(policy).__name__}.slate_probabilities returned no {sorted(missing)}")
        parts.append(got)
    stack = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in
             ("position", "cascade", "support", "support_probs")}
    return SlateTarget(**stack, conditional_is_marginal=bool(parts[0].get("conditional_is_marginal", False)))


def _epsilon_target(log: SlateLog, policy, epsilon: float, batch_size: int) -> SlateTarget:
    if log.candidates is None:
        raise ValueError(f"{type(policy).__name__} explores (epsilon={epsilon}) over its candidates, and the log "
                         "records none: load the candidates column, or evaluate it with epsilon=0")
    try:  # the greedy slate is the policy with exploration switched off
        policy.epsilon = 0.0
        greedy = _policy_slates(log, policy, batch_size)
    finally:
        policy.epsilon = epsilon
    outside = ~(greedy[:, :, None] == log.candidates[:, None, :]).any(axis=2)
    if outside.any():
        raise ValueError(f"the greedy slate of round {int(np.argmax(outside.any(axis=1)))} holds items outside the "
                         "logged candidates: the exploration law is defined over those candidates")
    support = log.candidates
    n, k = greedy.shape
    support_probs = epsilon_slot_marginals(np.broadcast_to(support[:, None, :], (n, k, support.shape[1])),
                                           greedy, support, epsilon)
    position = epsilon_slot_marginals(log.slates[:, :, None], greedy, support, epsilon)[:, :, 0]
    cascade = epsilon_slot_cascade(log.slates, greedy, support, epsilon)
    return SlateTarget(position=position, cascade=cascade, support=support.astype(np.int64),
                       support_probs=support_probs, conditional_is_marginal=k == 1)


def _top_k(scores: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
    scores = np.array(scores, np.float64)
    scores[:, :_RESERVED] = -np.inf
    rows = np.broadcast_to(np.arange(len(scores))[:, None], history.shape)
    scores[rows, history] = -np.inf  # padding 0 is already excluded
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _ranking_slates(log: SlateLog, model, batch_size: int) -> np.ndarray:
    import tensorflow as tf

    from tfmarl.agents.blocks import history_window

    if log.history is None:
        raise ValueError("the log has no history column: the ranking model scores the user's history")
    out = np.empty_like(log.slates)
    for rows, observation in _observations(log, batch_size):
        history = observation["history"]
        window = history_window(tf.constant(history), int(model.max_length))
        scores = model.score_catalog(window, training=False).numpy()
        out[rows] = _top_k(scores, history, log.slate_size)
    return out


def _saved_model_slates(log: SlateLog, path: pathlib.Path, batch_size: int) -> np.ndarray:
    import tensorflow as tf

    if not (path / "saved_model.pb").exists():
        raise ValueError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    if log.item_vocab is None or log.history is None:
        raise ValueError("a SavedModel takes string item ids: the log needs item_vocab and history")
    ids = np.array(["", "[UNK]"] + list(log.item_vocab), dtype=object)
    index = {item: j for j, item in enumerate(ids) if j >= _RESERVED}
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = np.empty_like(log.slates)
    for rows, observation in _observations(log, batch_size):
        history = ids[observation["history"]].astype(str)
        history[observation["history"] < _RESERVED] = ""
        got = serve(history=tf.constant(history))["item_ids"].numpy().astype(str)
        got = _checked_slates(log, got, rows, f"SavedModel {path}")
        unknown = [item for item in got.ravel() if item not in index]
        if unknown:
            raise ValueError(f"SavedModel {path} recommends item {unknown[0]!r}, which the log's item_vocab lacks")
        out[rows] = np.vectorize(index.__getitem__, otypes=[np.int64])(got)
    return out
