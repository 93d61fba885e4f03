"""Export: versioned SavedModels with the `serving_default` contract TF Serving loads."""

import importlib

from tfmarl.export.savedmodel import SIGNATURE_KEY, existing_versions, export_recommender, write_version

# RL exports load TF-Agents: resolved on first use.
_LAZY = {name: "tfmarl.export.policy" for name in
         ("save_policy", "export_candidate_recommender", "q_network_scorer", "bandit_scorer", "multiagent_scorer")}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfmarl.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["SIGNATURE_KEY", "existing_versions", "export_recommender", "write_version", *sorted(_LAZY)]
