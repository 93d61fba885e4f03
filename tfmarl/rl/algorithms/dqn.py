"""DQN / Double DQN as an `Algorithm`: a Q-network over the retrieved candidates, built from the
pretrained User and Content agents. By default the agents stay frozen (the Q-network's own copies
of them, as pretrained; only its head learns) and the replay stores every observation's user
state from the environment's retrieval; ``trainable_encoders=True`` fine-tunes both agents end to
end instead."""

from __future__ import annotations

from tfmarl.rl.algorithms.base import Algorithm, register


@register("dqn")
class DQN(Algorithm):
    """Options: ``trainable_encoders`` (default False), ``double`` (Double DQN, default), ``gamma``, ``learning_rate``,
    ``target_update_period``, ``hidden_units``, ``epsilon`` (float or ``step -> float``; default
    linear 0.3 → 0.02 over the first 500 steps), ``replay_batch_size``, ``warmup_steps``."""

    def _build(self, *, trainable_encoders: bool = False, double: bool = True, gamma: float = 0.9, learning_rate: float = 1e-3,
               target_update_period: int = 100, hidden_units=(64,), epsilon=None, replay_batch_size: int = 128,
               warmup_steps: int = 20):
        from tfmarl.envs.candidates import CandidateSessionEnvironment
        from tfmarl.rl.dqn import build_dqn
        from tfmarl.rl.loops import linear_schedule

        self._single_replica()
        self.env = CandidateSessionEnvironment(self.session_environment(), self.retriever, self.candidates)
        with self.strategy.scope():
            self.tf_agent, self.q_network = build_dqn(self.env, self.model, double=double, gamma=gamma,
                                                      learning_rate=learning_rate,
                                                      target_update_period=target_update_period,
                                                      hidden_units=hidden_units,
                                                      trainable_encoders=trainable_encoders,
                                                      # frozen agents are the retriever's model's: its user
                                                      # states are the Q-network's
                                                      replay_states=not trainable_encoders)
        self.epsilon = epsilon if epsilon is not None else linear_schedule(0.3, 0.02, 500)
        self.replay_batch_size = int(replay_batch_size)
        self.warmup_steps = int(warmup_steps)

    @classmethod
    def options_from_config(cls, rl) -> dict:
        from tfmarl.rl.loops import linear_schedule

        return {"gamma": rl.gamma, "epsilon": linear_schedule(rl.epsilon_start, rl.epsilon_end, max(rl.steps // 3, 1)),
                "double": rl.dqn.double, "trainable_encoders": rl.dqn.trainable_encoders}

    def train(self, steps: int, *, progress: bool = False):
        from tfmarl.rl.loops import train_dqn

        with self.strategy.scope():
            return train_dqn(self.tf_agent, self.q_network, self.env, steps, batch_size=self.replay_batch_size,
                             warmup_steps=self.warmup_steps,
                             epsilon=self.epsilon, seed=self.seed, log_dir=self.log_dir,
                             checkpoint_dir=self.checkpoint_dir, log_every=max(steps // 20, 1), progress=progress)

    def slate_policy(self):
        from tfmarl.rl.policies import QSlatePolicy

        return QSlatePolicy(self.q_network, self.slate_size, retriever=self.retriever,
                            states_from_retriever=self.q_network.stores_states)

    def scorer(self):
        from tfmarl.export.policy import q_network_scorer

        return q_network_scorer(self.q_network, self.session_config.history_length), self.q_network.variables
