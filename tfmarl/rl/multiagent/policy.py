"""`MultiAgentSlatePolicy`: decentralised execution of the trained agents on session observations."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmarl.rl.policies import SlatePolicy, fit_history


class MultiAgentSlatePolicy(SlatePolicy):
    """Trained `MultiAgentLearner` heads on plain session observations (``{"history", "step"}``):
    retrieval of the candidates, every agent's values from one pass, then the System agent's
    composition (greedy allocation unless ``sample``). With ``states_from_retriever`` (frozen
    agents that are the retriever's model's, as `make_algorithm` builds them) the retrieval's user
    state is the agents' own and is not computed a second time."""

    def __init__(self, learner, retriever, *, sample: bool = False, states_from_retriever: bool = False):
        super().__init__(learner.slate_size)
        self.deterministic = not sample
        self._retriever = retriever
        self._facet_of = learner.facets.item_facet
        self._history_length = int(learner.network.input_tensor_spec["history"].shape[0])
        if states_from_retriever and not learner.stores_states:
            raise ValueError("states_from_retriever needs frozen agents (trainable_encoders=False)")
        self._reuse_state = bool(states_from_retriever)
        self._act = tf.function(lambda observation, state=None: learner.act_with_state(
            observation, sample=sample, state=state)[0])

    def __call__(self, observation):
        retrieved = self._retriever(observation["history"])
        candidates = retrieved["candidates"]
        full = {"history": fit_history(observation["history"], self._history_length), "step": observation["step"],
                "candidates": candidates,
                "candidate_facets": self._facet_of[candidates]}
        full = {k: tf.convert_to_tensor(v) for k, v in full.items()}
        if self._reuse_state and observation["history"].shape[1] <= self._history_length:
            positions = self._act(full, tf.convert_to_tensor(retrieved["user_state"], tf.float32)).numpy()
        else:  # the retriever saw more history than the agents do: encode what they see
            positions = self._act(full).numpy()
        return np.take_along_axis(candidates, positions, axis=1).astype(np.int32)
