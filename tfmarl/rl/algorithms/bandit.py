"""The per-arm contextual bandits (TF-Agents LinUCB, LinTS, NeuralLinUCB, NeuralEpsilonGreedy) as an
`Algorithm`: context = the pretrained User agent's state, arms = the retrieved candidates' pretrained
item vectors (frozen: ``trainable_encoders`` is not an option; the neural agents train their own
towers on top)."""

from __future__ import annotations

from tfmarl.rl.algorithms.base import Algorithm, register
from tfmarl.rl.bandits import BANDITS


@register(*BANDITS)
class Bandit(Algorithm):
    """Options: ``arm_features`` ("crossed" [item, state ⊙ item] for the linear agents by default,
    "item" for the neural ones), ``encoder_train_steps`` (NeuralLinUCB's SGD steps before LinUCB),
    ``exploration_epsilon``, ``ope_log`` (a `BanditLogWriter`), and `build_bandit`'s ``alpha``,
    ``epsilon``, ``learning_rate``."""

    def _build(self, *, arm_features: str | None = None, encoder_train_steps: int = 100,
               exploration_epsilon: float = 0.0, ope_log=None, **agent_options):
        from tfmarl.envs.bandit import PerArmBanditEnvironment
        from tfmarl.rl.bandits import build_bandit

        self._single_replica()
        self.arm_features = arm_features or ("crossed" if self.name in ("linucb", "lints") else "item")
        self.env = PerArmBanditEnvironment(self.user_model, self.retriever, self.retriever.item_vectors,
                                           self.candidates, config=self.session_config, batch_size=self.batch_size,
                                           users="train", seed=self.seed, arm_features=self.arm_features)
        with self.strategy.scope():
            self.tf_agent = build_bandit(self.name, self.env, encoding_network_num_train_steps=encoder_train_steps,
                                              **agent_options)
        self.exploration_epsilon = float(exploration_epsilon)
        self.ope_log = ope_log

    @classmethod
    def options_from_config(cls, rl) -> dict:
        return {"encoder_train_steps": rl.steps // 3}

    def train(self, steps: int, *, progress: bool = False):
        from tfmarl.rl.loops import train_bandit

        with self.strategy.scope():
            return train_bandit(self.tf_agent, self.env, steps, exploration_epsilon=self.exploration_epsilon,
                                seed=self.seed, log_dir=self.log_dir, checkpoint_dir=self.checkpoint_dir,
                                log_every=max(steps // 20, 1), ope_log=self.ope_log, progress=progress)

    def slate_policy(self):
        from tfmarl.rl.policies import BanditSlatePolicy

        return BanditSlatePolicy(self.tf_agent.policy, self.retriever, self.slate_size, arm_features=self.arm_features)

    def scorer(self):
        from tfmarl.export.policy import bandit_scorer

        score = bandit_scorer(self.tf_agent.policy, self.model, arm_features=self.arm_features,
                              history_length=self.session_config.history_length)
        return score, self.tf_agent.policy.variables()
