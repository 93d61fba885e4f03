"""Where a multi-agent train step's time goes, and how much of it the arithmetic needs.

Run by ``speed.py --parts profile`` in this tree only (in a child process whose ``XLA_FLAGS``
dump every compiled module as optimised HLO text to ``dump_dir``), with the throughput parts'
settings. It reports, per environment step:

- the time of each call the loop makes (median over the timed steps): retrieval of the next
  candidates, acting, the replay add + sample + joint train step, the simulator, the joint
  transition and exploration (numpy), and the rest (Python and tensor conversion). Retrieval
  runs in the environment's worker thread while the step trains (``overlapped``: not part of
  the step's sum); ``retrieval_wait`` is how long the loop then still waits for it;
- the floating-point work of each compiled call: the ``dot`` instructions of its optimised XLA
  module (2 x output elements x contracted size; elementwise work is not counted);
- ``dots_alone_ms``: the same dots, shapes and dimension numbers, run alone in one XLA-compiled
  function on this machine; the arithmetic's own time at the rate these shapes reach here, which
  no removal of overhead can go below;
- ``matmul_peak_gflops``: a 1024 x 1024 x 1024 matmul's rate, the machine's ceiling.

``flop_floor_ms`` (the sum of ``dots_alone_ms``) against the measured step says how much of the
step is arithmetic and how much is overhead.
"""

from __future__ import annotations

import collections
import glob
import math
import os
import re
import time

DUMP_ENV = "TFMARL_PROFILE_XLA_DUMP"
# The compiled calls of a multi-agent step, by the Python function XLA's module is named after.
CALLS = {"scored": "retrieval", "act": "act", "gradient_step": "add_and_train"}

_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_DOT = re.compile(r"=\s*\w+\[([\d,]*)\]\S*\s+dot\(%([\w.\-]+),\s*%([\w.\-]+)\)(.*)$")


def _dims(text: str) -> list:
    return [int(d) for d in text.split(",") if d]


def hlo_dots(text: str) -> list:
    """The ``dot`` instructions of an HLO module's text: dicts of lhs/rhs/output shapes and the
    batch and contracting dimensions."""
    shapes, dots = {}, []
    for line in text.splitlines():
        definition = _DEFINITION.match(line)
        if definition:
            shapes[definition.group(1)] = _dims(definition.group(2))
        dot = _DOT.search(line)
        if dot:
            attrs = dict(re.findall(r"(\w+_dims)=\{([\d,]*)\}", dot.group(4)))
            dots.append({"out": _dims(dot.group(1)), "lhs": shapes[dot.group(2)], "rhs": shapes[dot.group(3)],
                         **{k: _dims(attrs.get(k, "")) for k in ("lhs_batch_dims", "lhs_contracting_dims",
                                                                  "rhs_batch_dims", "rhs_contracting_dims")}})
    return dots


def dot_flops(dot: dict) -> int:
    return 2 * math.prod(dot["out"]) * math.prod(dot["lhs"][i] for i in dot["lhs_contracting_dims"])


def _einsum(dot: dict) -> str:
    """The einsum equation of an XLA dot (its output: batch, lhs free, rhs free dimensions)."""
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs, rhs = [None] * len(dot["lhs"]), [None] * len(dot["rhs"])
    batch = []
    for i, j in zip(dot["lhs_batch_dims"], dot["rhs_batch_dims"]):
        lhs[i] = rhs[j] = next(letters)
        batch.append(lhs[i])
    for i, j in zip(dot["lhs_contracting_dims"], dot["rhs_contracting_dims"]):
        lhs[i] = rhs[j] = next(letters)
    free = []  # what is left of lhs, then of rhs: the output's order after the batch
    for labels in (lhs, rhs):
        for i, label in enumerate(labels):
            if label is None:
                labels[i] = next(letters)
                free.append(labels[i])
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(batch + free)}"


def time_dots(dots: list, repeats: int = 50) -> float:
    """Milliseconds per call of one XLA-compiled function that computes just ``dots``."""
    import tensorflow as tf

    if not dots:
        return 0.0
    inputs = [(tf.random.normal(d["lhs"]), tf.random.normal(d["rhs"])) for d in dots]
    equations = [_einsum(d) for d in dots]

    @tf.function(jit_compile=True)
    def run(pairs):
        return [tf.einsum(eq, a, b) for eq, (a, b) in zip(equations, pairs)]

    for _ in range(3):
        [t.numpy() for t in run(inputs)]
    began = time.perf_counter()
    for _ in range(repeats):
        [t.numpy() for t in run(inputs)]
    return 1000 * (time.perf_counter() - began) / repeats


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))

    @tf.function(jit_compile=True)
    def peak_matmul(x, y):
        return tf.matmul(x, y)

    peak_matmul(a, b).numpy()
    began = time.perf_counter()
    for _ in range(repeats):
        peak_matmul(a, b).numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - began) / 1e9


def compiled_modules(dump_dir: str) -> dict:
    """{call: dots of the last module XLA compiled for it} from the dumped optimised HLO."""
    latest = {}
    for path in sorted(glob.glob(os.path.join(dump_dir, "module_*.cpu_after_optimizations.txt"))):
        name = re.search(r"a_inference_(.+?)_\d+__", os.path.basename(path))
        if name and name.group(1) in CALLS:
            latest[CALLS[name.group(1)]] = path  # sorted by module number: the last one wins
    return {call: hlo_dots(open(path).read()) for call, path in latest.items()}


class CallTimer:
    """Wall time of every call of the loop (each synchronised on its outputs), with the moment it
    ended, so that calls can be kept from a given time stamp on."""

    def __init__(self):
        self.calls = collections.defaultdict(list)  # key -> [(ended, seconds)]

    def wrap(self, owner, attribute: str, key: str, sync: bool = False):
        import tensorflow as tf

        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            out = original(*args, **kwargs)
            if sync:  # eager results may still be running: wait for them
                [t.numpy() for t in tf.nest.flatten(out) if hasattr(t, "numpy")]
            ended = time.perf_counter()
            self.calls[key].append((ended, ended - began))
            return out

        setattr(owner, attribute, timed)

    def since(self, stamp: float) -> dict:
        """key -> the durations of the calls that ended after ``stamp``."""
        return {key: [seconds for ended, seconds in calls if ended > stamp] for key, calls in self.calls.items()}


def measure(args, *, rl_setup, train_rl, step_clock) -> dict:
    """Profiles the multi-agent loop of ``speed.train_rl`` (``args``: its settings), timed
    between the ``args.skip``-th environment step and the last by ``step_clock``
    (`speed.StepClock`), as the throughput parts are."""
    import numpy as np
    from tfmarl.envs.candidates import CandidateSessionEnvironment, PendingStep
    from tfmarl.envs.session import SessionEnvironment
    from tfmarl.rl import retrieval
    from tfmarl.rl.multiagent import trainer

    dump_dir = os.environ.get(DUMP_ENV)
    if not dump_dir:
        raise RuntimeError(f"{DUMP_ENV} names no XLA dump directory (speed.py sets it with XLA_FLAGS)")
    model, user_model, counts = rl_setup(args)
    timer = CallTimer()
    timer.wrap(retrieval.CandidateRetriever, "__call__", "retrieval")
    timer.wrap(SessionEnvironment, "_step", "simulator")
    timer.wrap(CandidateSessionEnvironment, "_session_step", "environment_step")
    timer.wrap(PendingStep, "result", "retrieval_wait")
    timer.wrap(trainer.MultiAgentTrainer, "_joint_transition", "joint_transition")
    timer.wrap(trainer, "explore_positions", "exploration")
    original_init = trainer.MultiAgentTrainer.__init__

    def init(self, *a, **k):  # the compiled calls are attributes made in __init__
        original_init(self, *a, **k)
        timer.wrap(self, "_act", "act", sync=True)
        timer.wrap(self, "_add_and_train", "add_and_train", sync=True)

    trainer.MultiAgentTrainer.__init__ = init
    step_clock.install()  # stamps every environment step (outside the step's own timer)
    try:
        train_rl("multiagent", args, model, user_model, counts, args.steps, args.seed)
    finally:
        trainer.MultiAgentTrainer.__init__ = original_init
    rates = step_clock.rates(args.skip)
    steps, step_ms = rates["timed_steps"], 1000 / rates["train_steps_per_second"]
    # The calls of the timed steps: those that ended after the skip-th step's stamp.
    times = timer.since(step_clock.stamps[args.skip])
    calls = {key: {"median_ms": 1000 * float(np.median(v)), "mean_ms_per_step": 1000 * float(np.sum(v)) / steps,
                   "calls": len(v)} for key, v in times.items()}
    # The session step holds the simulator: its own share is the rest. The retrieval of the next
    # candidates runs in the environment's worker thread while the step trains; the loop waits
    # for what is left of it (retrieval_wait), so only that wait is on the step's path.
    env_step = calls.pop("environment_step")
    calls["environment_step_other"] = {"mean_ms_per_step": env_step["mean_ms_per_step"]
                                       - calls["simulator"]["mean_ms_per_step"]}
    calls["retrieval"]["overlapped"] = True
    accounted = sum(c["mean_ms_per_step"] for c in calls.values() if not c.get("overlapped"))
    calls["rest"] = {"mean_ms_per_step": step_ms - accounted, "what": "the loop's Python: tensor conversion, "
                     "reward bookkeeping, logging"}
    modules = compiled_modules(dump_dir)
    floor = 0.0
    for call, dots in modules.items():
        flops = sum(dot_flops(d) for d in dots)
        alone = time_dots(dots)
        floor += alone
        calls[call].update(dots=len(dots), mflop=flops / 1e6, dots_alone_ms=alone,
                           achieved_gflops=flops / 1e6 / calls[call]["median_ms"],
                           dots_alone_gflops=flops / 1e6 / alone if alone else None)
    return {"step_ms": step_ms, "steps_per_second": 1000 / step_ms, "timed_steps": steps, "calls": calls,
            "mflop_per_step": sum(calls[c].get("mflop", 0.0) for c in CALLS.values()),
            "flop_floor_ms": floor, "flop_floor_steps_per_second": 1000 / floor if floor else None,
            "matmul_peak_gflops": matmul_peak_gflops(), "load_average": list(os.getloadavg())}
