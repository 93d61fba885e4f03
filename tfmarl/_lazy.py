"""Lazily resolved package attributes (PEP 562), so heavy modules load on first use only."""

import importlib


def lazy_getattr(namespace: dict, mapping: dict):
    """A module-level ``__getattr__`` resolving ``mapping`` (name -> defining module) on first
    access and caching the value in ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name):
        module = mapping.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
