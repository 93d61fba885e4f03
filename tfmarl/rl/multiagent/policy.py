"""`MultiAgentSlatePolicy`: decentralised execution of the trained agents on session observations."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.rl.policies import SlatePolicy, fit_history


class MultiAgentSlatePolicy(SlatePolicy):
    """Trained `MultiAgentLearner` heads on plain session observations (``{"history", "step"}``):
    retrieval of the candidates, every agent's values from one pass, then the System agent's
    composition (greedy allocation unless ``sample``)."""

    def __init__(self, learner, retriever, *, sample: bool = False):
        super().__init__(learner.slate_size)
        self.deterministic = not sample
        self._retriever = retriever
        self._facet_of = learner.facets.item_facet
        self._history_length = int(learner.network.input_tensor_spec["history"].shape[0])
        self._act = tf.function(lambda observation: learner.act(observation, sample=sample)[0])

    def __call__(self, observation):
        candidates = self._retriever(observation["history"])["candidates"]
        full = {"history": fit_history(observation["history"], self._history_length), "step": observation["step"],
                "candidates": candidates,
                "candidate_facets": self._facet_of[candidates]}
        positions = self._act({k: tf.convert_to_tensor(v) for k, v in full.items()}).numpy()
        return np.take_along_axis(candidates, positions, axis=1).astype(np.int32)
