"""Every read of a TF-Agents private attribute, in one place, checked against the tested version.

tfmarl needs a few facts TF-Agents keeps private (a bandit policy's exploration settings, to log
exact propensities for off-policy evaluation). They are read only through `private` here, which
names the missing attribute and the tested TF-Agents version when an upgrade moved one, instead of
failing somewhere deep in a training loop.

One private method is overridden rather than read: `DqnAgent._compute_q_values(time_steps,
actions, training)` (``tfmarl.rl.dqn._ActionQ``, which evaluates Q at the action's candidate
only); `check_overrides` verifies that its signature is still the tested one.
"""

from __future__ import annotations

import warnings

import tf_agents

TESTED_VERSION = "0.18.0"

if tf_agents.__version__ != TESTED_VERSION:  # pragma: no cover - depends on the installed version
    warnings.warn(f"tfmarl reads TF-Agents internals verified against tf-agents {TESTED_VERSION}; "
                  f"{tf_agents.__version__} is installed (see tfmarl/rl/tf_agents_compat.py)", stacklevel=2)


def private(obj, name: str):
    """``obj.<name>``, a TF-Agents private attribute, or an error that names it and the version."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise AttributeError(f"{type(obj).__name__} has no {name!r}: tfmarl reads this TF-Agents internal as of "
                             f"tf-agents {TESTED_VERSION}, and tf-agents {tf_agents.__version__} is installed") from None


def emitted_info(policy) -> tuple:
    """The policy-info fields a bandit policy emits."""
    return tuple(private(policy, "_emit_policy_info"))


def reward_layer_active(policy, distributed: bool):
    """NeuralLinUCB: whether the policy acts from its reward layer (its ε-greedy phase) now."""
    return private(policy, "_distributed_use_reward_layer" if distributed else "_actions_from_reward_layer")


def exploration_strategy(policy):
    """LinearBanditPolicy: optimistic (LinUCB) or sampling (Thompson)."""
    return private(policy, "_exploration_strategy")


def epsilon_greedy(policy) -> float:
    """NeuralLinUCBPolicy's ε."""
    return private(policy, "_epsilon_greedy")


def constraints(policy):
    """A reward-prediction policy's constraints."""
    return private(policy, "_constraints")


def epsilon_fn(policy):
    """EpsilonGreedyPolicy: ``() -> ε`` now."""
    return private(policy, "_get_epsilon")


def random_policy(policy):
    """EpsilonGreedyPolicy's exploring RandomTFPolicy."""
    return private(policy, "_random_policy")


def accepts_per_arm_features(policy) -> bool:
    return bool(private(policy, "_accepts_per_arm_features"))


def exploration_mask(policy):
    """EpsilonGreedyPolicy's exploration mask (or None)."""
    return private(policy, "_exploration_mask")


def check_overrides() -> None:
    """Raises if a TF-Agents method tfmarl overrides no longer has the tested signature."""
    import inspect

    from tf_agents.agents.dqn import dqn_agent

    method = getattr(dqn_agent.DqnAgent, "_compute_q_values", None)
    expected = ["self", "time_steps", "actions", "training"]
    if method is None or list(inspect.signature(method).parameters) != expected:
        raise AttributeError(f"DqnAgent._compute_q_values({', '.join(expected[1:])}) changed: tfmarl overrides it as of "
                             f"tf-agents {TESTED_VERSION}, and tf-agents {tf_agents.__version__} is installed")
