"""Multi-agent training as an `Algorithm`: the User agent's interest head, one Content agent per
domain proposing candidates, the System agent's critic and adaptive reward (`tfmarl.rl.multiagent`).

By default the pretrained agents' layers stay frozen and only the heads learn
(``trainable_encoders=False``); with ``trainable_encoders=True`` RL fine-tunes them end to end at
``encoder_learning_rate``. Trains under the algorithm's ``strategy`` (any `tf.distribute` one).
"""

from __future__ import annotations

import numpy as np

from tfmarl.rl.algorithms.base import Algorithm, register


@register("multiagent")
class MultiAgent(Algorithm):
    """Options: ``facets``, ``domains`` (Content agents), ``use_critic``, ``num_content_agents``
    (1: the single-agent ablation), ``trainable_encoders``, ``encoder_learning_rate``, ``gamma``,
    ``learning_rate``, ``hidden_units``; the System agent's reward: ``floors`` ({signal: floor}; by
    default diversity ≥ ``diversity_floor`` × the greedy two-tower's slate diversity and satisfaction
    ≥ ``satisfaction_floor``), ``adaptive_reward`` (False freezes the weights), ``initial_weights``,
    ``reward_learning_rate``; ``epsilon`` (float or ``step -> float``; default linear 0.2 → 0.02
    over 500 steps), ``replay_batch_size``, ``warmup_steps``; ``new_item_slots`` (slots of each
    slate for the best new candidates, under catalog churn: `MultiAgentLearner`)."""

    def _build(self, *, facets: int = 8, domains: int = 2, use_critic: bool = True,
               num_content_agents: int | None = None, trainable_encoders: bool = False,
               encoder_learning_rate: float = 1e-4, gamma: float = 0.9, learning_rate: float = 1e-3,
               hidden_units=(64,), floors: dict | None = None, diversity_floor: float = 1.5,
               satisfaction_floor: float = 1.5, adaptive_reward: bool = True, initial_weights: dict | None = None,
               reward_learning_rate: float = 0.05, epsilon=None, replay_batch_size: int = 128,
               warmup_steps: int = 20, new_item_slots: int = 0):
        from tfmarl.envs.candidates import CandidateSessionEnvironment
        from tfmarl.rl.loops import linear_schedule
        from tfmarl.rl.multiagent import AdaptiveReward, MultiAgentLearner, MultiAgentTrainer, build_facets

        self.facets = build_facets(self.retriever.item_vectors, facets, domains, seed=self.seed)
        session = self.session_environment()
        self.env = CandidateSessionEnvironment(session, self.retriever, self.candidates,
                                               item_facets=self.facets.item_facet)
        self.floors = dict(floors) if floors is not None else {
            "diversity": diversity_floor * self.greedy_diversity(), "satisfaction": satisfaction_floor}
        self.learner = MultiAgentLearner(self.env, self.model, self.facets, use_critic=use_critic,
                                         num_content_agents=num_content_agents, trainable_encoders=trainable_encoders,
                                         encoder_learning_rate=encoder_learning_rate, gamma=gamma,
                                         learning_rate=learning_rate, hidden_units=hidden_units,
                                         new_item_slots=new_item_slots, strategy=self.strategy)
        initial = {k: v for k, v in (initial_weights or {}).items() if k in self.floors}
        self.reward = AdaptiveReward(self.floors, adapt=adaptive_reward, learning_rate=reward_learning_rate,
                                     initial=initial)
        counts = self.item_counts if self.item_counts is not None else np.ones(self.model.num_items)
        self.trainer = MultiAgentTrainer(
            self.learner, self.env, self.retriever.item_vectors, counts, reward=self.reward,
            batch_size=replay_batch_size, warmup_steps=warmup_steps,
            epsilon=epsilon if epsilon is not None else linear_schedule(0.2, 0.02, 500), seed=self.seed,
            checkpoint_dir=self.checkpoint_dir, log_dir=self.log_dir,
            # Frozen agents are the retriever's model's: its user states are the learner's.
            states_from_env=not trainable_encoders)

    @classmethod
    def options_from_config(cls, rl) -> dict:
        from tfmarl.rl.loops import linear_schedule

        ma = rl.multiagent
        return {"facets": ma.facets, "domains": ma.domains, "use_critic": ma.critic,
                "trainable_encoders": ma.trainable_encoders, "encoder_learning_rate": ma.encoder_learning_rate,
                "adaptive_reward": ma.adaptive_reward, "diversity_floor": ma.diversity_floor,
                "satisfaction_floor": ma.satisfaction_floor, "gamma": ma.gamma, "learning_rate": ma.learning_rate,
                "new_item_slots": ma.new_item_slots,
                "epsilon": linear_schedule(rl.epsilon_start, rl.epsilon_end, max(rl.steps // 3, 1))}

    def greedy_diversity(self, steps: int = 30) -> float:
        """Mean slate diversity of the greedy two-tower policy on train users (the floor's unit)."""
        from tfmarl.envs import SessionEnvironment
        from tfmarl.rl.multiagent import slate_diversity
        from tfmarl.rl.policies import GreedySlatePolicy

        policy = GreedySlatePolicy(self.retriever, self.slate_size)
        env = SessionEnvironment(self.user_model, self.session_config, batch_size=100, users="train", seed=5)
        time_step, values = env.reset(), []
        for _ in range(steps):
            slate = policy(time_step.observation)
            values.append(slate_diversity(self.retriever.item_vectors[slate]).mean())
            time_step = env.step(slate)
        return float(np.mean(values))

    def train(self, steps: int, *, progress: bool = False, **kwargs):
        """`MultiAgentTrainer.run` (``export_every``/``export_fn`` stream new SavedModel versions)."""
        kwargs.setdefault("log_every", max(steps // 30, 1))
        return self.trainer.run(steps, progress=progress, **kwargs)

    def learn_from(self, feedback, **kwargs):
        return self.trainer.learn_from(feedback, **kwargs)

    def slate_policy(self, *, sample: bool = False):
        from tfmarl.rl.multiagent import MultiAgentSlatePolicy

        return MultiAgentSlatePolicy(self.learner, self.retriever, sample=sample,
                                     states_from_retriever=not self.learner.trainable_encoders)

    def scorer(self):
        from tfmarl.export.policy import multiagent_scorer

        score = multiagent_scorer(self.learner, history_length=self.session_config.history_length)
        return score, self.learner.variables
