"""Simulated environments: an interest-evolution session simulator fitted from interaction logs.

`fit_user_model` fits a `UserModel` (numpy only); `SessionEnvironment` runs it as a batched
TF-Agents `PyEnvironment` with its dynamics set by `SessionConfig`; `CandidateSessionEnvironment`
restricts its slates to N retrieved candidates and `PerArmBanditEnvironment` turns it into a
per-arm contextual bandit. `run_episodes` rolls a slate policy out and reports session metrics
(`slate_diversity` among them); the oracle policies are evaluation baselines that read the
hidden state.

Modules: `fit` (UserModel), `config` (SessionConfig, SIGNALS), `session` (SessionEnvironment,
random_slates, first_repeat), `candidates`, `bandit`, `metrics` (run_episodes, slate_diversity),
`oracles`. Names resolve on first use, so `import tfmarl.envs` loads neither TF-Agents nor
TensorFlow; the environments load them.
"""

from tfmarl._lazy import lazy_getattr
from tfmarl.envs.fit import UserModel, fit_user_model

_LAZY = {
    "SIGNALS": "tfmarl.envs.config",
    "SessionConfig": "tfmarl.envs.config",
    "SessionEnvironment": "tfmarl.envs.session",
    "random_slates": "tfmarl.envs.session",
    "first_repeat": "tfmarl.envs.session",
    "CandidateSessionEnvironment": "tfmarl.envs.candidates",
    "PerArmBanditEnvironment": "tfmarl.envs.bandit",
    "run_episodes": "tfmarl.envs.metrics",
    "slate_diversity": "tfmarl.envs.metrics",
    "myopic_oracle_policy": "tfmarl.envs.oracles",
    "quality_variety_oracle_policy": "tfmarl.envs.oracles",
}

__getattr__ = lazy_getattr(globals(), _LAZY)

__all__ = ["UserModel", "fit_user_model", *sorted(_LAZY)]
