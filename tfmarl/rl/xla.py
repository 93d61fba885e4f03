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
