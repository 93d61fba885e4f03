"""Serving: a local server for tfmarl SavedModels speaking TF Serving's REST API.

The names load lazily, so ``import tfmarl.serving`` (e.g. for the CLI's options) stays cheap.
"""

from tfmarl._lazy import lazy_getattr

_LAZY = {name: "tfmarl.serving.server" for name in
         ("ModelServer", "RequestError", "serve", "add_arguments", "run", "parse_predict_request")}

__getattr__ = lazy_getattr(globals(), _LAZY)

__all__ = sorted(_LAZY)
