"""Export: versioned SavedModels with the `serving_default` contract TF Serving loads."""

from tfmarl._lazy import lazy_getattr
from tfmarl.export.partitioned import PartitionedIndex
from tfmarl.export.savedmodel import SIGNATURE_KEY, existing_versions, export_recommender, write_version

# RL exports load TF-Agents: resolved on first use.
_LAZY = {name: "tfmarl.export.policy" for name in
         ("save_policy", "export_candidate_recommender", "q_network_scorer", "bandit_scorer", "multiagent_scorer")}

_LAZY.update(add_items="tfmarl.export.catalog", load_item_encoder="tfmarl.export.catalog")

__getattr__ = lazy_getattr(globals(), _LAZY)

__all__ = ["PartitionedIndex", "SIGNATURE_KEY", "existing_versions", "export_recommender", "write_version", *sorted(_LAZY)]
