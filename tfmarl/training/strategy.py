"""`get_strategy`: one name for each way to place training on devices."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "parameter_server", "tpu")

_COMMUNICATION = {"auto": "AUTO", "ring": "RING", "nccl": "NCCL"}


def get_strategy(name: str = "auto", *, devices=None, tpu: str | None = None, communication: str = "auto",
                 variable_partitioner=None, min_shard_bytes: int = 256 << 10) -> tf.distribute.Strategy:
    """Returns a `tf.distribute.Strategy`.

    Args:
      name:
        "auto": TPU if one is configured (``TPU_NAME``/``tpu``), else ParameterServer when
          ``TF_CONFIG`` names "ps" tasks, else MultiWorkerMirrored when ``TF_CONFIG`` names more
          than one worker, else Mirrored over all GPUs when there are several, else the default
          strategy on the one device there is.
        "cpu": OneDeviceStrategy on /cpu:0.
        "gpu": OneDeviceStrategy on /gpu:0.
        "mirrored": MirroredStrategy over ``devices`` (default: every GPU, else the CPU).
        "multi_worker": MultiWorkerMirroredStrategy; the cluster comes from ``TF_CONFIG``
          (see `tf_config_for`). Every worker runs the same program.
        "parameter_server": ParameterServerStrategy, for embedding tables too large for one
          worker: variables live on the "ps" tasks, sharded by ``variable_partitioner``. The
          cluster comes from ``TF_CONFIG``, whose task must be the "chief" (the coordinator
          that runs the training program); "worker" and "ps" tasks run `start_server`. Train
          with a `tf.distribute.coordinator.ClusterCoordinator`, or Keras ``fit`` with
          ``steps_per_epoch``.
        "tpu": TPUStrategy on ``tpu`` (a name or grpc:// address; default from ``TPU_NAME``).
      devices: device names for "mirrored" (e.g. two logical CPUs: ["/cpu:0", "/cpu:1"]).
      communication: "multi_worker" collectives: "auto", "ring" (gRPC; CPUs) or "nccl" (GPUs).
      variable_partitioner: "parameter_server": a `tf.distribute.experimental.partitioners`
        partitioner, or an int (that many shards: `FixedShardsPartitioner`). Default:
        `MinSizePartitioner` with shards of at least ``min_shard_bytes`` and at most one per ps
        task, so small variables stay whole and large tables spread over every ps.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        name = auto_strategy_name(tpu)
        if name == "default":
            return tf.distribute.get_strategy()
        return get_strategy(name, tpu=tpu, communication=communication, variable_partitioner=variable_partitioner,
                            min_shard_bytes=min_shard_bytes)
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
        _check_tf_config("multi_worker", required=(("chief", "worker"),), task_types=("chief", "worker"))
        if communication not in _COMMUNICATION:
            raise ValueError(f"communication must be one of {', '.join(_COMMUNICATION)}, got {communication!r}")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                                   _COMMUNICATION[communication]))
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "parameter_server":
        return _parameter_server_strategy(variable_partitioner, min_shard_bytes)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _parameter_server_strategy(variable_partitioner, min_shard_bytes: int):
    if "TF_CONFIG" not in os.environ:
        raise RuntimeError("strategy 'parameter_server' needs TF_CONFIG describing the cluster (\"chief\", "
                           "\"worker\" and \"ps\" tasks) and this task (the chief); see tf_config_for")
    config = _check_tf_config("parameter_server", required=("chief", "worker", "ps"), task_types=("chief",))
    num_ps = len(config["cluster"]["ps"])
    if variable_partitioner is None:
        variable_partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=int(min_shard_bytes), max_shards=num_ps)
    elif isinstance(variable_partitioner, int) and not isinstance(variable_partitioner, bool):
        if variable_partitioner < 1:
            raise ValueError(f"variable_partitioner as a shard count must be positive, got {variable_partitioner}")
        variable_partitioner = tf.distribute.experimental.partitioners.FixedShardsPartitioner(variable_partitioner)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=variable_partitioner)


def start_server(*, join: bool = True, protocol: str = "grpc"):
    """Runs this process's task of the cluster in ``TF_CONFIG`` as a `tf.distribute.Server`.

    The "worker" and "ps" tasks of a parameter-server cluster run only this (``join=True`` blocks
    forever, serving the chief); the chief runs the training program under
    ``get_strategy("parameter_server")``. Returns the server when ``join`` is False.
    """
    config = _check_tf_config("start_server", required=("worker",), task_types=("worker", "ps"))
    task = config["task"]
    # As TensorFlow's parameter-server guide does: fail RPCs fast so the coordinator notices
    # lost tasks and reschedules their closures.
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=task["type"], task_index=int(task["index"]),
                                  protocol=protocol, start=True)
    if join:
        server.join()
    return server


def cluster_spec(workers=(), ps=(), chief=None) -> dict:
    """The ``"cluster"`` part of ``TF_CONFIG``: {"chief": [chief], "worker": workers, "ps": ps}.

    Args:
      workers: "host:port" of every worker, in task order (an int n: n workers on
        127.0.0.1 at free ports, for trying things on one machine).
      ps: "host:port" of every parameter server (or an int, as for ``workers``).
      chief: "host:port" of the chief (the parameter-server coordinator; with
        MultiWorkerMirrored an optional extra worker that also saves checkpoints). True: one
        on 127.0.0.1 at a free port.
    Jobs without tasks are left out.
    """
    def addresses(value, job):
        if isinstance(value, int) and not isinstance(value, bool):
            return [f"127.0.0.1:{port}" for port in _free_ports(value)]
        if isinstance(value, str):
            value = [value]
        value = [str(a) for a in value]
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{job} address must be 'host:port', got {address!r}")
        return value

    spec = {}
    if chief is not None and chief is not False:
        spec["chief"] = addresses(1 if chief is True else chief, "chief")
        if len(spec["chief"]) != 1:
            raise ValueError(f"a cluster has at most one chief, got {spec['chief']}")
    if (worker := addresses(workers, "worker")):
        spec["worker"] = worker
    if (servers := addresses(ps, "ps")):
        spec["ps"] = servers
    if not spec:
        raise ValueError("cluster_spec needs at least one task")
    return spec


def tf_config_for(task_type: str, index: int = 0, cluster: dict | None = None, **cluster_args) -> str:
    """``TF_CONFIG`` (JSON) for one task of ``cluster`` (a dict as `cluster_spec` returns, or
    its arguments as keywords: ``workers=``, ``ps=``, ``chief=``).

    Example (two MultiWorkerMirrored workers; run the same program on each host)::

        cluster = cluster_spec(workers=["host1:12345", "host2:12345"])
        os.environ["TF_CONFIG"] = tf_config_for("worker", 0, cluster)  # on host1
        os.environ["TF_CONFIG"] = tf_config_for("worker", 1, cluster)  # on host2
    """
    if cluster is None:
        cluster = cluster_spec(**cluster_args)
    elif cluster_args:
        raise ValueError("pass either cluster or cluster_spec's keywords, not both")
    tasks = cluster.get(task_type)
    if not tasks:
        raise ValueError(f"the cluster has no {task_type!r} tasks (jobs: {', '.join(sorted(cluster)) or 'none'})")
    if not 0 <= int(index) < len(tasks):
        raise ValueError(f"{task_type} index {index} out of range: the cluster has {len(tasks)} {task_type} task(s)")
    return json.dumps({"cluster": {job: list(addrs) for job, addrs in cluster.items()},
                       "task": {"type": task_type, "index": int(index)}})


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


def auto_strategy_name(tpu: str | None = None) -> str:
    """The strategy ``get_strategy("auto")`` picks, without creating it: "tpu",
    "parameter_server", "multi_worker", "mirrored" (several GPUs) or "default"."""
    if tpu or os.environ.get("TPU_NAME"):
        return "tpu"
    cluster = _tf_config().get("cluster")
    if isinstance(cluster, dict) and cluster.get("ps"):
        return "parameter_server"
    if _num_workers() > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def _num_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as e:
        raise RuntimeError(f"TF_CONFIG is not valid JSON: {e}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tf_config() -> dict:
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise RuntimeError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise RuntimeError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}")
    return config


def _check_tf_config(what: str, required, task_types) -> dict:
    """Parses TF_CONFIG and names what is missing for ``what``.

    ``required``: jobs the cluster must have tasks in (a tuple entry: at least one of them).
    """
    config = _tf_config()
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise RuntimeError(f"{what}: TF_CONFIG has no \"cluster\" (e.g. {{\"cluster\": {{\"worker\": "
                           f"[\"host1:port\", \"host2:port\"]}}, \"task\": {{\"type\": \"worker\", "
                           f"\"index\": 0}}}})")
    for jobs in required:
        jobs = (jobs,) if isinstance(jobs, str) else tuple(jobs)
        if not any(cluster.get(job) for job in jobs):
            raise RuntimeError(f"{what}: TF_CONFIG's cluster has no {' or '.join(repr(j) for j in jobs)} task "
                               f"(it has: {', '.join(sorted(cluster))})")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise RuntimeError(f"{what}: TF_CONFIG has no \"task\" with \"type\" and \"index\" saying which "
                           f"task this process is")
    if task["type"] not in task_types:
        hint = ""
        if what == "parameter_server" and task["type"] in ("worker", "ps"):
            hint = "; worker and ps tasks run tfmarl.training.strategy.start_server() instead"
        raise RuntimeError(f"{what}: this process's TF_CONFIG task is {task['type']!r}, expected "
                           f"{' or '.join(repr(t) for t in task_types)}{hint}")
    tasks = cluster.get(task["type"], [])
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(tasks):
        raise RuntimeError(f"{what}: TF_CONFIG task index {task['index']!r} out of range: the cluster has "
                           f"{len(tasks)} {task['type']!r} task(s)")
    return config


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    import socket

    sockets, ports = [], []
    try:
        for _ in range(int(count)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports
