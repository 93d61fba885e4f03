"""Serving: a local server for tfmarl SavedModels speaking TF Serving's REST API.

The names load lazily, so ``import tfmarl.serving`` (e.g. for the CLI's options) stays cheap.
"""

import importlib

_LAZY = {name: "tfmarl.serving.server" for name in
         ("ModelServer", "RequestError", "serve", "add_arguments", "run", "parse_predict_request")}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfmarl.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
