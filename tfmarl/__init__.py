"""tfmarl: reinforcement-learning recommender systems made of cooperating agents.

Importing tfmarl selects legacy Keras 2 (``tf_keras``) for ``tf.keras``: TF-Agents and
TensorFlow Recommenders work only with it. That choice must happen before TensorFlow
first resolves ``tf.keras``, so import tfmarl before anything touches ``tf.keras``.

The public API is loaded lazily, so ``import tfmarl.data`` stays cheap (no TensorFlow).
"""

import os
import sys

from tfmarl._lazy import lazy_getattr

__version__ = "0.1.0"


def _select_legacy_keras():
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return  # TensorFlow will read the variable when it first resolves tf.keras.
    # TensorFlow decides at import time where `tensorflow.keras.*` submodules come from: imported
    # without the variable, parts of tf.keras are Keras 3 whatever we set now.
    legacy_at_import = vars(tf).get("_tf_uses_legacy_keras")
    bound = "keras (Keras 3)" if legacy_at_import is False else _bound_keras(vars(tf).get("keras"))
    if bound is not None and not bound.startswith("tf_keras"):
        raise ImportError(
            "tfmarl needs legacy Keras 2 (tf_keras), but tf.keras is already bound to "
            f"{bound!r} in this process (TensorFlow was imported, or tf.keras used, without "
            "TF_USE_LEGACY_KERAS=1). Set the environment variable TF_USE_LEGACY_KERAS=1 before "
            "starting Python, or import tfmarl before TensorFlow."
        )


def _bound_keras(keras_module):
    """Which Keras ``tf.keras`` resolved to, or None if not yet resolved (no attribute access:
    touching the lazy loader would resolve it)."""
    if keras_module is None:
        return None
    state = vars(keras_module)
    if type(keras_module).__name__ == "KerasLazyLoader":
        return state.get("_tfll_keras_version") if state.get("_tfll_initialized") else None
    return state.get("__name__", "")


_select_legacy_keras()

# Public names -> defining module; resolved on first access (PEP 562).
_LAZY = {
    "DataError": "tfmarl.data",
    "Interactions": "tfmarl.data",
    "load_movielens": "tfmarl.data",
    "load_interactions": "tfmarl.data",
    "generate_synthetic": "tfmarl.data",
    "UserAgent": "tfmarl.agents",
    "ContentAgent": "tfmarl.agents",
    "SystemAgent": "tfmarl.agents",
    "SequentialRecommender": "tfmarl.training",
    "pretrain": "tfmarl.training",
    "get_strategy": "tfmarl.training",
    "evaluate_ranking": "tfmarl.evaluation",
    "export_recommender": "tfmarl.export",
}

__all__ = sorted(_LAZY) + ["__version__"]

__getattr__ = lazy_getattr(globals(), _LAZY)


def __dir__():
    return __all__
