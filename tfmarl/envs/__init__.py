"""Simulated environments: an interest-evolution session simulator fitted from interaction logs.

`fit_user_model` fits a `UserModel` (numpy only); `SessionEnvironment` runs it as a batched
TF-Agents `PyEnvironment` (importing it loads TF-Agents, hence TensorFlow, on first use).
"""

from tfmarl._lazy import lazy_getattr
from tfmarl.envs.fit import UserModel, fit_user_model

_LAZY = {
    "SessionConfig": "tfmarl.envs.session",
    "SessionEnvironment": "tfmarl.envs.session",
    "run_episodes": "tfmarl.envs.session",
    "random_slates": "tfmarl.envs.session",
    "myopic_oracle_policy": "tfmarl.envs.session",
    "quality_variety_oracle_policy": "tfmarl.envs.session",
}

__getattr__ = lazy_getattr(globals(), _LAZY)

__all__ = ["UserModel", "fit_user_model", *sorted(_LAZY)]
