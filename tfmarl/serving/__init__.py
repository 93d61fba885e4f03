"""Serving: a local server for tfmarl SavedModels speaking TF Serving's REST and gRPC APIs.

Modules: `protocol` (REST JSON bodies, no TensorFlow), `limits`, `errors` (status codes),
`versions` (loading, warm-up, polling), `rest` (HTTP), `grpc_api` (gRPC), `server` (`ModelServer`,
`tfmarl serve`). The names load lazily, so ``import tfmarl.serving`` (e.g. for the CLI's options)
stays cheap.
"""

from tfmarl._lazy import lazy_getattr

_LAZY = {
    "ModelServer": "tfmarl.serving.server",
    "serve": "tfmarl.serving.server",
    "add_arguments": "tfmarl.serving.server",
    "run": "tfmarl.serving.server",
    "RequestError": "tfmarl.serving.errors",
    "Code": "tfmarl.serving.errors",
    "Limits": "tfmarl.serving.limits",
    "parse_predict_request": "tfmarl.serving.protocol",
    "VersionTable": "tfmarl.serving.versions",
}

__getattr__ = lazy_getattr(globals(), _LAZY)

__all__ = sorted(_LAZY)
