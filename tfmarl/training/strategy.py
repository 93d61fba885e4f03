"""`get_strategy`: one name for each way to place training on devices."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")


def get_strategy(name: str = "auto", *, devices=None, tpu: str | None = None) -> tf.distribute.Strategy:
    """Returns a `tf.distribute.Strategy`.

    Args:
      name:
        "auto": TPU if one is configured (``TPU_NAME``/``tpu``), else MultiWorkerMirrored when
          ``TF_CONFIG`` names more than one worker, else Mirrored over all GPUs when there are
          several, else the default strategy on the one device there is.
        "cpu": OneDeviceStrategy on /cpu:0.
        "gpu": OneDeviceStrategy on /gpu:0.
        "mirrored": MirroredStrategy over ``devices`` (default: every GPU, else the CPU).
        "multi_worker": MultiWorkerMirroredStrategy; the cluster comes from ``TF_CONFIG``.
        "tpu": TPUStrategy on ``tpu`` (a name or grpc:// address; default from ``TPU_NAME``).
      devices: device names for "mirrored" (e.g. two logical CPUs: ["/cpu:0", "/cpu:1"]).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if tpu or os.environ.get("TPU_NAME"):
            return get_strategy("tpu", tpu=tpu)
        if _num_workers() > 1:
            return get_strategy("multi_worker")
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not tf.config.list_logical_devices("GPU"):
            raise RuntimeError("strategy 'gpu' asked for, but TensorFlow sees no GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise RuntimeError("strategy 'multi_worker' needs TF_CONFIG describing the cluster and this task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def split_cpu(count: int = 2) -> list[str]:
    """Splits the physical CPU into ``count`` logical devices (call before TensorFlow initialises).

    Returns their names, e.g. for ``get_strategy("mirrored", devices=split_cpu(2))``.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        pass  # already initialised: use whatever logical devices exist
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise RuntimeError(f"only {len(logical)} logical CPU devices exist; call split_cpu before any op runs")
    return [d.name for d in logical[:count]]


def _num_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as e:
        raise RuntimeError(f"TF_CONFIG is not valid JSON: {e}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))
