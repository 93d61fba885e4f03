"""Serving latency and throughput of tfmarl exports, in process and through `tfmarl serve`.

    python benchmarks/serving.py --out benchmarks/results/serving.json
    python benchmarks/serving.py --server_seconds 0 --out benchmarks/results/serving.json  # in process only

For catalogs of 10k, 100k and 1M items: a `SequentialRecommender` (transformer User agent, dim 64,
max_length 50, 2 layers, k=10, a category-aware Content agent) over a synthetic vocabulary ("1".."n",
the ids `generate_synthetic` uses) is pretrained on `generate_synthetic` with that many items
(`trained_model`: a few epochs, cached under ``$TFMARL_SERVING_CACHE``, default
/tmp/tfmarl-serving-bench-cache, never in the repository), so that its item vectors have real
structure (a partitioned index has nothing to find in random vectors). It is exported once per
`VARIANTS` entry: ``exact`` (the reference), ``brute_force`` (TFRS BruteForce in the graph),
``partitioned`` (`tfmarl.export.partitioned.PartitionedIndex`, ``--index`` JSON for its options) and
``partitioned_int8``. Each export is timed in its own TensorFlow-only process (its peak RSS is its
own): load time, p50/p99 latency of the SavedModel signature at batch 1 (histories of 1-50 random
ids), throughput at batch 32, and recall@10 of its answers against the exact export's answers to the
same 1,000 requests. The brute-force request is also broken down by stage. Results: ``in_process``
(brute force, the earlier figures' place), ``partitioned``, ``partitioned_int8`` and ``exact``, keyed
by the number of items. Then (unless ``--server_seconds 0``, which keeps the earlier ``server`` and
``grpc_vs_rest`` sections of ``--out``) a randomly initialised 100k export is served by
`python -m tfmarl.serving.server` in a subprocess and loaded by concurrent keep-alive HTTP clients
(threads of this process, standard library only).

``--only grpc_vs_rest`` measures `tfmarl serve`'s two protocols on the same server, model and
requests and merges the result into the existing JSON under ``grpc_vs_rest``: batch-1 latency of
one client (requests alternate between REST and gRPC so both see the same machine load), then
``--clients`` concurrent clients for ``--grpc_seconds`` per protocol with an error count (gRPC
clients use the stock `PredictionServiceStub`, one channel each, as REST clients hold one
keep-alive connection each).

    python benchmarks/serving.py --only grpc_vs_rest --out benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, write_json  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = dict(encoder="transformer", dim=64, max_length=50, num_layers=2, num_heads=2, k=10)
TARGET_P99_MS = 5.0


def percentiles(seconds) -> dict:
    import numpy as np

    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3)}


def dir_mb(path) -> float:
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file()) / 2**20


def random_histories(rng, n_items: int, count: int) -> list[list[str]]:
    return [[str(i) for i in rng.integers(1, n_items + 1, size=int(rng.integers(1, 51)))] for _ in range(count)]


def timed(fn, calls) -> list[float]:
    out = []
    for args in calls:
        t = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t)
    return out


# --- one catalog size (child processes) ---------------------------------------------------------

CACHE = pathlib.Path(os.environ.get("TFMARL_SERVING_CACHE", "/tmp/tfmarl-serving-bench-cache"))
# Exports timed per size: name -> (retrieval, extra index_options); exact is the reference for recall@10.
VARIANTS = {"exact": ("exact", None), "brute_force": ("brute_force", None), "partitioned": ("partitioned", {}),
            "partitioned_int8": ("partitioned", {"quantization": "int8"})}
PRETRAIN = dict(n_categories=24, interactions_per_user=30, epochs=5, batch_size=128, learning_rate=5e-3)


def pretrain_users(n_items: int) -> int:
    """Synthetic users to pretrain on: generating a user costs O(n_items), so fewer at 1M items."""
    return 2000 if n_items <= 100_000 else 600


def trained_model(n_items: int, cache: pathlib.Path = CACHE):
    """The benchmark's `SequentialRecommender` (``MODEL``, a category-aware `ContentAgent`) pretrained
    on `generate_synthetic` with ``n_items`` items, so that its item vectors have the structure real
    ones have (random weights have none; items the log never shows are placed by their categories).
    The weights are cached under ``cache/<n_items>`` (outside the repository) and reused."""
    import numpy as np
    import tensorflow as tf

    from tfmarl.agents import ContentAgent
    from tfmarl.data import Vocabulary, build_item_features, build_sequences, generate_synthetic
    from tfmarl.training import SequentialRecommender, pretrain

    here = cache / str(n_items)
    meta_file = here / "meta.json"
    vocab = Vocabulary([str(i) for i in range(1, n_items + 1)])  # the ids generate_synthetic uses
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        tf.keras.utils.set_random_seed(0)
        content = ContentAgent(vocab.size, dim=MODEL["dim"], name="content_agent", **meta["content"])
        model = SequentialRecommender(item_vocabulary=vocab, dropout=0.0, content_agent=content, **MODEL)
        model.build_all()
        model.load_weights(str(here / "weights" / "model")).expect_partial()
        return model, {**meta, "cached": True}
    started = time.perf_counter()
    users = pretrain_users(n_items)
    data = generate_synthetic(n_users=users, n_items=n_items, n_categories=PRETRAIN["n_categories"],
                              interactions_per_user=PRETRAIN["interactions_per_user"], seed=0)
    features = build_item_features(data, vocab, titles=False, max_categories=3)
    sequences, _ = build_sequences(data, vocab)
    tf.keras.utils.set_random_seed(0)
    kwargs = features.content_agent_kwargs()
    content = ContentAgent(vocab.size, dim=MODEL["dim"], name="content_agent", **kwargs)
    content.set_item_features(features)
    model = SequentialRecommender(item_vocabulary=vocab, dropout=0.0, content_agent=content,
                                  item_frequencies=np.bincount(sequences.items, minlength=vocab.size), **MODEL)
    result = pretrain(model, sequences, epochs=PRETRAIN["epochs"], batch_size=PRETRAIN["batch_size"],
                      learning_rate=PRETRAIN["learning_rate"], patience=None, verbose=0)
    meta = {"content": kwargs, "users": users, "interactions": int(sequences.num_interactions),
            "items_in_log": int(len(np.unique(sequences.items))), "loss": model.loss_type, **PRETRAIN,
            "final_loss": round(float(result.history["loss"][-1]), 4),
            "pretrain_seconds": round(time.perf_counter() - started, 1)}
    model.save_weights(str(here / "weights" / "model"))
    meta_file.write_text(json.dumps(meta))
    return model, {**meta, "cached": False}


def prepare_size(n_items: int, workdir: pathlib.Path, index_options: dict, try_scann: bool = False) -> dict:
    """Child: pretrains (or loads) the model for ``n_items``, exports it once per retrieval to
    ``workdir/<n_items>/<retrieval>`` and profiles the brute-force request's stages."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tfmarl  # noqa: F401  (selects tf_keras)

    from tfmarl.export import export_recommender

    row = {"n_items": n_items, "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    t = time.perf_counter()
    model, row["pretrain"] = trained_model(n_items)
    row["build_seconds"] = round(time.perf_counter() - t, 2)
    row["rss_after_build_mb"] = round(peak_rss_mb(), 1)
    exports = {}
    for variant, (retrieval, extra) in VARIANTS.items():
        t = time.perf_counter()
        path = export_recommender(model, workdir / str(n_items) / variant, retrieval=retrieval,
                                  index_options=None if extra is None else {**index_options, **extra})
        info = json.loads((path / "assets.extra" / "tfmarl.json").read_text())
        exports[variant] = {"export_path": str(path), "export_seconds": round(time.perf_counter() - t, 2),
                              "saved_model_mb": round(dir_mb(path), 1),
                              "saved_model_pb_mb": round((path / "saved_model.pb").stat().st_size / 2**20, 2),
                              "variables_mb": round(dir_mb(path / "variables"), 1),
                              **({"index": info["index"]} if "index" in info else {})}
    row["exports"] = exports
    row["rss_after_export_mb"] = round(peak_rss_mb(), 1)
    if try_scann:
        try:
            export_recommender(model, workdir / "scann", retrieval="scann")
            row["scann"] = "exported"
        except ImportError as e:
            row["scann"] = f"not installed ({e})"
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(exports["brute_force"]["export_path"]).signatures["serving_default"]
    rng = np.random.default_rng(0)
    warm = random_histories(rng, n_items, 50)
    histories = random_histories(rng, n_items, 300)
    row["profile_batch1"] = profile_stages(module_for_profile(model, model.item_vocabulary), serve, histories, warm)
    row["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return row


def measure_export(path: pathlib.Path, n_items: int, requests: int, batch_seconds: float, answers_out,
                   threads: tuple = (0, 0)) -> dict:
    """Child, TensorFlow only (as a server loads it): load time, batch-1 latency over ``requests``
    histories of 1-50 random ids, batch-32 throughput for ``batch_seconds``, peak RSS; writes the
    item ids answered to the first ``RECALL_QUERIES`` batch-1 histories to ``answers_out``.
    ``threads`` = (intra-op, inter-op) pool sizes, 0 for TensorFlow's default: what TF Serving's
    ``--tensorflow_intra_op_parallelism`` / ``--tensorflow_inter_op_parallelism`` set."""
    import numpy as np
    import tensorflow as tf

    intra, inter = threads
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    row = {"load_average_start": [round(x, 2) for x in os.getloadavg()],
           "threads": {"intra_op": intra or "default", "inter_op": inter or "default"}}
    t = time.perf_counter()
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    row["load_seconds"] = round(time.perf_counter() - t, 2)

    def call(history):
        out = serve(history=tf.constant(history))
        return out["item_ids"].numpy(), out["scores"].numpy()

    rng = np.random.default_rng(0)  # the same histories for every export of a size
    warm = random_histories(rng, n_items, 50)
    for h in warm:
        call([h])
    histories = random_histories(rng, n_items, requests)
    answers = []

    def timed_call(history):
        ids, _ = call(history)
        if len(answers) < RECALL_QUERIES:
            answers.append(ids[0].astype(str).tolist())

    row["batch1"] = {"requests": requests, **percentiles(timed(timed_call, [([h],) for h in histories]))}

    def pad(rows):
        width = max(len(r) for r in rows)
        return [r + [""] * (width - len(r)) for r in rows]

    batches = [pad(random_histories(rng, n_items, 32)) for _ in range(20)]
    call(batches[0])
    lat, started = [], time.perf_counter()
    while time.perf_counter() - started < batch_seconds or len(lat) < 10:
        t = time.perf_counter()
        call(batches[len(lat) % len(batches)])
        lat.append(time.perf_counter() - t)
    row["batch32"] = {"batches": len(lat), "qps": round(32 * len(lat) / sum(lat), 1), **percentiles(lat)}
    row["p50_ms"], row["p99_ms"], row["qps_batch32"] = row["batch1"]["p50_ms"], row["batch1"]["p99_ms"], \
        row["batch32"]["qps"]
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)  # load + the timed calls
    row["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    pathlib.Path(answers_out).write_text(json.dumps(answers))
    return row


RECALL_QUERIES = 1000  # batch-1 requests whose answers are compared with exact search


def recall_at_10(answers, reference) -> float:
    """Mean over queries of |answer & exact answer| / 10 (both top-10 after history exclusion)."""
    return round(sum(len(set(a) & set(b)) / len(b) for a, b in zip(answers, reference)) / len(reference), 4)


def module_for_profile(model, vocab):
    from tfmarl.export import savedmodel as sm

    return sm.RecommenderServing(model, vocab, MODEL["k"], MODEL["max_length"], "brute_force")


def profile_stages(module, serve, histories, warm) -> dict:
    """Where a batch-1 request spends its time (p50 and p99 in ms per stage).

    The serving graph's stages are rebuilt as separate tf.functions from the same module code
    (`tfmarl.export.savedmodel.RecommenderServing`); each sample runs every stage once, in turn, so
    all stages see the same machine load.
    """
    import tensorflow as tf

    from tfmarl.data.vocab import NUM_RESERVED
    from tfmarl.export import savedmodel as sm

    k, dim = module.k, MODEL["dim"]
    history_window = getattr(sm, "history_window", None) or sm.last_known  # the serving graph's own helper
    catalog = module.item_vectors  # the BruteForce index's [N, dim] variable (also the item table)
    dense = tf.convert_to_tensor(catalog)  # a plain tensor with the same values

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)])
    def encode(history):
        indices = sm.history_indices(module.table, history)
        window = history_window(indices, module.max_length)
        return module._fn.user_agent(tf.gather(dense, window), mask=window > 0, training=False), indices

    def finish(values, items, indices):
        excluded = (items < NUM_RESERVED) | tf.reduce_any(items[:, :, None] == indices[:, None, :], axis=-1)
        top = tf.math.top_k(tf.where(excluded, sm.NEG_INF, values), k=k)
        return tf.gather(module.item_strings, tf.gather(items, top.indices, batch_dims=1)), top.values

    spec = [tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=spec)
    def retrieve_index(state, indices):  # as exported: TFRS BruteForce over the catalog variable
        values, items = module.index(state, k=k + tf.shape(indices)[1] + NUM_RESERVED)
        return finish(values, items, indices)

    @tf.function(input_signature=spec)
    def retrieve_dense(state, indices):  # the same computation on a plain tensor (no variable read)
        values, items = tf.math.top_k(tf.matmul(state, dense, transpose_b=True), k=k + tf.shape(indices)[1] + NUM_RESERVED)
        return finish(values, items, indices)

    @tf.function(input_signature=spec[:1])
    def scores_only(state):
        return tf.matmul(state, dense, transpose_b=True)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([], tf.int32)])
    def top_k_only(scores, kk):
        return tf.math.top_k(scores, k=kk)

    @tf.function
    def read_catalog():  # one read of the variable: a full copy once it is in copy-on-read mode
        return tf.convert_to_tensor(catalog)[0, 0]

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)])
    def trivial(history):
        return {"item_ids": history[:, :1], "scores": tf.zeros([tf.shape(history)[0], 1])}

    for h in warm[:5]:
        module.serve(tf.constant([h]))  # also puts the catalog variable in copy-on-read mode, as serving does
        state, indices = encode(tf.constant([h]))
        retrieve_index(state, indices)
        retrieve_dense(state, indices)
        top_k_only(scores_only(state), tf.constant(k + len(h) + NUM_RESERVED))
        read_catalog()
        trivial(tf.constant([h]))

    def fetch(out):
        return [t.numpy() for t in (out.values() if isinstance(out, dict) else out)]

    stages = {
        "signature_call: SavedModel serving_default (total)":
            lambda h, s, i, sc, kk: fetch(serve(history=tf.constant(h))),
        "trivial_graph_call: python + tf.constant + fetch overhead":
            lambda h, s, i, sc, kk: fetch(trivial(tf.constant(h))),
        "encode: string lookup + window + transformer User agent":
            lambda h, s, i, sc, kk: encode(tf.constant(h))[0].numpy(),
        "retrieve_as_exported: BruteForce(variable) top-(k+L+2) + exclusion + top-k + ids":
            lambda h, s, i, sc, kk: fetch(retrieve_index(s, i)),
        "retrieve_dense: same on a plain tensor (no variable read)":
            lambda h, s, i, sc, kk: fetch(retrieve_dense(s, i)),
        "catalog_variable_read: copy of [N, dim] (copy-on-read mode, set by tf.gather on it)":
            lambda h, s, i, sc, kk: read_catalog().numpy(),
        "scores_matmul: [1, dim] x [dim, N]":
            lambda h, s, i, sc, kk: scores_only(s).numpy(),
        "top_k over N scores (k + L + 2)":
            lambda h, s, i, sc, kk: top_k_only(sc, kk)[0].numpy(),
    }
    samples = []
    for h in histories:
        state, indices = encode(tf.constant([h]))
        samples.append(([h], state, indices, scores_only(state), tf.constant(k + len(h) + NUM_RESERVED)))
    times = {name: [] for name in stages}
    names = list(stages)
    for j, sample in enumerate(samples):
        for name in names[j % len(names):] + names[:j % len(names)]:  # rotate the order
            t = time.perf_counter()
            stages[name](*sample)
            times[name].append(time.perf_counter() - t)
    return {name: {key: v for key, v in percentiles(t).items() if key in ("p50_ms", "p99_ms")}
            for name, t in times.items()}


# --- HTTP load (parent process, standard library only) ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clients(client, clients: int) -> float:
    """Runs ``client(c)`` in ``clients`` threads at once; returns the wall time they took."""
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def http_load(port: int, name: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    path = f"/v1/models/{name}:predict"
    lock = threading.Lock()
    latencies, errors, samples = [], [], []
    deadline = time.monotonic() + seconds

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, i = [], c
        while time.monotonic() < deadline:
            body = bodies[i % len(bodies)]
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200 and len(json.loads(data)["predictions"][0]["item_ids"]) == MODEL["k"]
                if not ok:
                    raise ValueError(f"HTTP {response.status}: {data[:200]!r}")
                mine.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    errors.append(repr(e)[:300])
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()
        with lock:
            latencies.extend(mine)

    elapsed = run_clients(client, clients)
    samples = sorted(set(errors))[:5]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies) + len(errors),
            "errors": len(errors), "qps": round(len(latencies) / elapsed, 1),
            **(percentiles(latencies) if latencies else {}), "error_samples": samples}


def serve_and_load(base: pathlib.Path, clients: int, seconds: float) -> dict:
    proc, ready_seconds = start_server(base, free_port())
    port = int(proc.args[proc.args.index("--port") + 1])
    name = base.name
    try:
        rng = random.Random(0)
        n_items = int(name)
        bodies = [json.dumps({"instances": [{"history": [str(rng.randint(1, n_items))
                                                         for _ in range(rng.randint(1, 50))]}]}).encode()
                  for _ in range(4000)]
        http_load(port, name, bodies, clients, 5.0)  # warm the connections and the server's threads
        load_start = [round(x, 2) for x in os.getloadavg()]
        result = http_load(port, name, bodies, clients, seconds)
        result.update(model=f"{n_items} items", server_start_to_ready_seconds=round(ready_seconds, 1),
                      load_average_start=load_start, load_average_end=[round(x, 2) for x in os.getloadavg()])
    finally:
        peak = stop_server(proc)
    if peak is not None:
        result["server_peak_rss_mb"] = peak
    return result


# --- gRPC vs REST (parent process) ---------------------------------------------------------------


def export_only(n_items: int, workdir: pathlib.Path) -> None:
    """Child: exports the benchmark model for ``n_items`` to ``workdir/<n_items>``."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tfmarl  # noqa: F401  (selects tf_keras)
    import tensorflow as tf

    from tfmarl.data import Vocabulary
    from tfmarl.export import export_recommender
    from tfmarl.training import SequentialRecommender

    tf.keras.utils.set_random_seed(0)
    model = SequentialRecommender(item_vocabulary=Vocabulary([str(i) for i in range(1, n_items + 1)]), dropout=0.0,
                                  **MODEL)
    model.build_all()
    export_recommender(model, workdir / str(n_items), retrieval="brute_force")


def start_server(base: pathlib.Path, port: int, grpc_port: int = 0):
    """`python -m tfmarl.serving.server` in a subprocess (gRPC port 0: REST only), once its REST
    status route answers 200; returns (process, seconds to ready)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = base.parent / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tfmarl.serving.server", "--model_base_path", str(base),
                                 "--port", str(port), "--grpc_port", str(grpc_port), "--poll_seconds", "0"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", f"/v1/models/{base.name}")
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            if response.status == 200:
                return proc, time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > 300:
            proc.kill()
            raise RuntimeError(f"the server did not serve a version in 300 s: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


def stop_server(proc) -> float | None:
    """Terminates the server; returns its peak RSS in MB (None when unreadable)."""
    peak = None
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            peak = round(int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        pass
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return peak


def grpc_request(name: str, history: list[str]):
    """A stock PredictRequest for one history ([1, L] DT_STRING, filled as TF Serving clients do)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    tensor = request.inputs["history"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=len(history))
    tensor.string_val.extend(h.encode() for h in history)
    return request


def grpc_load(port: int, requests: list, clients: int, seconds: float) -> dict:
    """``clients`` threads, one channel and stub each, calling Predict until ``seconds`` have passed."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    lock = threading.Lock()
    latencies, errors = [], []
    deadline = time.monotonic() + seconds

    def client(c):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        mine, i = [], c
        while time.monotonic() < deadline:
            request = requests[i % len(requests)]
            i += clients
            t = time.perf_counter()
            try:
                response = stub.Predict(request, timeout=30)
                if len(response.outputs["item_ids"].string_val) != MODEL["k"]:
                    raise ValueError(f"{len(response.outputs['item_ids'].string_val)} items")
                mine.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    errors.append(repr(e)[:300])
        channel.close()
        with lock:
            latencies.extend(mine)

    elapsed = run_clients(client, clients)
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies) + len(errors),
            "errors": len(errors), "qps": round(len(latencies) / elapsed, 1),
            **(percentiles(latencies) if latencies else {}), "error_samples": sorted(set(errors))[:5]}


def grpc_vs_rest(workdir: pathlib.Path, n_items: int, requests: int, clients: int, seconds: float) -> dict:
    """Batch-1 latency (alternating protocols, one client) and concurrent load, REST vs gRPC."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tfmarl  # noqa: F401  (before TensorFlow, which the serving-API protos import)
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    base = workdir / str(n_items)
    if not base.is_dir():  # the full run has exported it already
        subprocess.run([sys.executable, __file__, "--export_only", str(n_items), "--workdir", str(workdir)],
                       check=True, cwd=REPO)
    rest_port, grpc_port = free_port(), free_port()
    proc, ready = start_server(base, rest_port, grpc_port)
    try:
        rng = random.Random(0)
        histories = [[str(rng.randint(1, n_items)) for _ in range(rng.randint(1, 50))] for _ in range(4000)]
        bodies = [json.dumps({"instances": [{"history": h}]}).encode() for h in histories]
        protos = [grpc_request(base.name, h) for h in histories]
        path = f"/v1/models/{base.name}:predict"

        conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=30)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def rest_call(i):
            conn.request("POST", path, body=bodies[i], headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")

        def grpc_call(i):
            stub.Predict(protos[i], timeout=30)

        for i in range(200):  # warm both paths (connections, server threads, graph)
            rest_call(i)
            grpc_call(i)
        load_start = [round(x, 2) for x in os.getloadavg()]
        times = {"rest": [], "grpc": []}
        for i in range(requests):  # alternate, the first protocol alternating too
            order = [("rest", rest_call), ("grpc", grpc_call)]
            for name, call in (order if i % 2 else order[::-1]):
                t = time.perf_counter()
                call(i % len(histories))
                times[name].append(time.perf_counter() - t)
        conn.close()
        channel.close()
        batch1 = {name: {"requests": requests, **percentiles(v)} for name, v in times.items()}

        print(f"== {clients} clients x {seconds:.0f}s per protocol", file=sys.stderr, flush=True)
        http_load(rest_port, base.name, bodies, clients, 3.0)  # warm the connections
        concurrent = {"rest": http_load(rest_port, base.name, bodies, clients, seconds)}
        grpc_load(grpc_port, protos, clients, 3.0)
        concurrent["grpc"] = grpc_load(grpc_port, protos, clients, seconds)
    finally:
        peak = stop_server(proc)
    return {"machine": machine(), "model": f"{n_items} items", "server_start_to_ready_seconds": round(ready, 1), "server_peak_rss_mb": peak,
            "batch1_one_client": batch1, "concurrent": concurrent,
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "note": ("one `tfmarl serve` process answers both protocols from one version table; histories of "
                     "1-50 random ids, the same requests for both; clients are threads of the benchmark "
                     "process on the same 2 CPUs as the server (their cost is in the figures)")}


# --- main --------------------------------------------------------------------------------------


def check_targets(payload: dict, server_size: int = 100000) -> None:
    """Fills ``payload["target"]`` from the measured sections: brute force's p99 in process at
    ``server_size`` items (and no errors under load), and at 1M items each partitioned variant's
    p99 and recall@10 (met when one of them reaches both)."""
    at = payload["in_process"].get(str(server_size), {})
    payload["target"].update(p99_ms_in_process_at_100k_measured=at.get("p99_ms"),
                             met=bool(at) and at["p99_ms"] <= TARGET_P99_MS
                             and payload.get("server", {}).get("errors", 1) == 0)
    goal = payload["target"]["partitioned_at_1m"]
    for key in [k for k in goal if k not in ("p99_ms", "recall@10")]:
        del goal[key]  # an earlier run's verdict
    for variant in ("partitioned", "partitioned_int8"):
        big = payload.get(variant, {}).get("1000000")
        if big:
            goal[variant] = {"p99_ms_measured": big["p99_ms"], "recall_measured": big["recall@10"],
                             "met": big["p99_ms"] <= goal["p99_ms"] and big["recall@10"] >= goal["recall@10"]}
    measured = [goal[v]["met"] for v in ("partitioned", "partitioned_int8") if v in goal]
    if measured:
        goal["met"] = any(measured)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/serving.json")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=1000, help="batch-1 requests timed per size")
    parser.add_argument("--batch_seconds", type=float, default=10.0, help="seconds of batch-32 calls per size")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--server_seconds", type=float, default=60.0)
    parser.add_argument("--server_size", type=int, default=100000)
    parser.add_argument("--workdir", default=None, help="where exports go (default: a temporary directory)")
    parser.add_argument("--note", default=None, help="free text stored in the JSON (run conditions)")
    parser.add_argument("--only", choices=["server", "grpc_vs_rest"], default=None,
                        help="run only this part (on --server_size / --grpc_size items) and merge it into the "
                             "existing --out JSON")
    parser.add_argument("--grpc_size", type=int, default=100000,
                        help="catalog size for --only grpc_vs_rest (the full run uses --server_size)")
    parser.add_argument("--grpc_requests", type=int, default=2000, help="batch-1 requests per protocol")
    parser.add_argument("--grpc_seconds", type=float, default=25.0, help="seconds of concurrent load per protocol")
    parser.add_argument("--index", default="{}",
                        help="index_options of the partitioned export, as JSON (default: its defaults)")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="TensorFlow intra-op threads of the timed processes (0: default; TF Serving: "
                             "--tensorflow_intra_op_parallelism)")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="TensorFlow inter-op threads of the timed processes (0: default; TF Serving: "
                             "--tensorflow_inter_op_parallelism)")
    parser.add_argument("--prepare", type=int, default=None, help=argparse.SUPPRESS)  # child: pretrain + export
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child: time one export
    parser.add_argument("--n_items", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--answers_out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--export_only", type=int, default=None, help=argparse.SUPPRESS)  # child: export
    parser.add_argument("--one_out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--try_scann", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.prepare is not None:
        row = prepare_size(args.prepare, pathlib.Path(args.workdir), json.loads(args.index), args.try_scann)
        pathlib.Path(args.one_out).write_text(json.dumps(row))
        return 0
    if args.measure is not None:
        row = measure_export(pathlib.Path(args.measure), args.n_items, args.requests, args.batch_seconds,
                             args.answers_out, (args.intra_op_threads, args.inter_op_threads))
        pathlib.Path(args.one_out).write_text(json.dumps(row))
        return 0
    if args.export_only is not None:
        export_only(args.export_only, pathlib.Path(args.workdir))
        return 0
    out = pathlib.Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {"benchmark": "serving"}
    if args.only is not None:
        payload = previous
        workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="tfmarl-serving-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if args.only == "server":
                if not (workdir / str(args.server_size)).is_dir():
                    subprocess.run([sys.executable, __file__, "--export_only", str(args.server_size), "--workdir",
                                    str(workdir)], check=True, cwd=REPO)
                part = serve_and_load(workdir / str(args.server_size), args.clients, args.server_seconds)
                part["machine"] = machine()
            else:
                part = grpc_vs_rest(workdir, args.grpc_size, args.grpc_requests, args.clients, args.grpc_seconds)
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        if args.note:
            part["run_note"] = args.note
        payload[args.only] = part
        print(json.dumps(part, indent=1), file=sys.stderr, flush=True)
        write_json(out, payload)
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    index_options = json.loads(args.index)
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="tfmarl-serving-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "serving", "machine": machine(), "load_average_start": [round(x, 2) for x in os.getloadavg()],
               "model": {**MODEL, "user_agent": "transformer",
                         "retrieval": "brute_force (TFRS BruteForce in the graph) and partitioned "
                                      "(tfmarl.export.partitioned.PartitionedIndex, stock TF ops) side by side",
                         "training": (f"pretrained on generate_synthetic with that many items "
                                      f"({PRETRAIN['n_categories']} categories, {PRETRAIN['interactions_per_user']} "
                                      f"interactions per user, 2000 users up to 100k items and 600 at 1M, "
                                      f"{PRETRAIN['epochs']} epochs; category-aware ContentAgent, so items the log "
                                      "never shows get vectors from their categories); weights cached under "
                                      f"{CACHE}")},
               "index_options": index_options,
               "target": {"p99_ms_in_process_at_100k": TARGET_P99_MS, "errors_under_load": 0,
                          "partitioned_at_1m": {"p99_ms": TARGET_P99_MS, "recall@10": 0.95}},
               "in_process": {}, "partitioned": {}, "partitioned_int8": {}, "exact": {}}
    try:
        for i, n in enumerate(sizes):
            prep_out = workdir / f"prepare-{n}.json"
            cmd = [sys.executable, __file__, "--prepare", str(n), "--workdir", str(workdir), "--one_out", str(prep_out),
                   "--index", json.dumps(index_options)]
            if i == 0:
                cmd.append("--try_scann")
            print(f"== {n} items: pretrain (or cached weights) + exports", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
            prep = json.loads(prep_out.read_text())
            if "scann" in prep:
                payload["scann"] = prep.pop("scann")
            exports = prep.pop("exports")
            measured, answers = {}, {}
            for retrieval in VARIANTS:  # each in a fresh TensorFlow-only process: its own peak RSS
                print(f"== {n} items: {retrieval}", file=sys.stderr, flush=True)
                row_out, answers_out = workdir / f"{retrieval}-{n}.json", workdir / f"answers-{retrieval}-{n}.json"
                subprocess.run([sys.executable, __file__, "--measure", exports[retrieval]["export_path"], "--n_items",
                                str(n), "--requests", str(args.requests), "--batch_seconds", str(args.batch_seconds),
                                "--one_out", str(row_out), "--answers_out", str(answers_out),
                                "--intra_op_threads", str(args.intra_op_threads),
                                "--inter_op_threads", str(args.inter_op_threads)], check=True, cwd=REPO)
                measured[retrieval] = json.loads(row_out.read_text())
                answers[retrieval] = json.loads(answers_out.read_text())
                exports[retrieval].pop("export_path")
            for retrieval in VARIANTS:
                measured[retrieval]["recall@10"] = recall_at_10(answers[retrieval], answers["exact"])
            payload["in_process"][str(n)] = {**prep, **exports["brute_force"], **measured["brute_force"]}
            for variant in ("partitioned", "partitioned_int8"):
                payload[variant][str(n)] = {"n_items": n, **exports[variant], **measured[variant]}
            payload["exact"][str(n)] = {key: value for key, value in {**exports["exact"], **measured["exact"]}.items()
                                        if key in ("p50_ms", "p99_ms", "qps_batch32", "saved_model_mb", "peak_rss_mb")}
            print(json.dumps({name: payload[name][str(n)] for name in ("in_process", *VARIANTS.keys() - {"brute_force"})},
                             indent=1), file=sys.stderr, flush=True)
        if args.server_size in sizes and args.server_seconds > 0:
            servers = workdir / "server_models"  # randomly initialised brute-force exports, as before
            subprocess.run([sys.executable, __file__, "--export_only", str(args.server_size), "--workdir", str(servers)],
                           check=True, cwd=REPO)
            print(f"== server: {args.clients} clients x {args.server_seconds:.0f}s on {args.server_size} items",
                  file=sys.stderr, flush=True)
            payload["server"] = serve_and_load(servers / str(args.server_size), args.clients, args.server_seconds)
            print(json.dumps(payload["server"], indent=1), file=sys.stderr, flush=True)
            payload["grpc_vs_rest"] = grpc_vs_rest(servers, args.server_size, args.grpc_requests, args.clients,
                                                   args.grpc_seconds)
        else:  # not re-measured: keep the earlier figures
            for key in ("server", "grpc_vs_rest"):
                if key in previous:
                    payload[key] = previous[key]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    check_targets(payload, args.server_size)
    payload["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    payload["note"] = ("2 logical CPUs shared with other jobs (see the load averages); latencies include "
                       "building the input tensor and fetching both outputs. Each export is timed in its own "
                       "TensorFlow-only process (peak_rss_mb: loading it plus the timed calls); recall@10 compares "
                       "the first 1,000 batch-1 answers (histories of 1-50 random ids, history excluded) with the "
                       "exact export's answers to the same requests. HTTP clients run as threads of the "
                       "benchmark process on the same 2 CPUs as the server.")
    if args.note:
        payload["run_note"] = args.note
    write_json(out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
