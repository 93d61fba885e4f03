"""XLA for the RL loop's per-step compiled calls (candidate retrieval, acting and the train steps of
DQN and the multi-agent learner).

Each runs once per environment step on tensors whose shapes stay the same from step to step (the
environment's batch and history length, N candidates, the replay batch), so XLA compiles it once
per shape and fuses its hundreds of small ops: per-op dispatch, not arithmetic, is what those calls
cost on a CPU (benchmarks/README.md, Speed). ``TFMARL_XLA=0`` turns it off (the test suite does:
its runs are too short to repay a compilation each); calls under a non-default `tf.distribute`
strategy are never compiled with XLA.
"""

from __future__ import annotations

import os

import tensorflow as tf

ENV = "TFMARL_XLA"


def xla_enabled() -> bool:
    """Whether the RL loop compiles its per-step calls with XLA (``TFMARL_XLA``, default on)."""
    return os.environ.get(ENV, "1") != "0"


def step_function(fn, *, distributed: bool = False, **kwargs):
    """``tf.function(fn)``, compiled with XLA when `xla_enabled` and not ``distributed``."""
    return tf.function(fn, jit_compile=xla_enabled() and not distributed, **kwargs)


class FixedShapeCall:
    """Calls a `tf.function` through the concrete function traced for its arguments' shapes.

    A `tf.function` call canonicalises its arguments and hashes a signature that includes every
    captured variable to find its trace: ~0.25 ms a call for a network's worth of variables,
    as much as some of a step's arithmetic. The loop's calls keep their shapes from step to step,
    so each distinct list of (shape, dtype) of the flattened arguments (tensors, or None) gets
    its concrete function once and later calls go to it directly. Every argument is passed
    (a concrete function keeps no defaults).
    """

    def __init__(self, function):
        self.function = function
        self._concrete = {}

    def __call__(self, *args):
        key = tuple((tuple(t.shape), t.dtype) if hasattr(t, "dtype") else t for t in tf.nest.flatten(args))
        concrete = self._concrete.get(key)
        if concrete is None:
            concrete = self._concrete[key] = self.function.get_concrete_function(*args)
        return concrete(*args)
