"""TF Serving warm-up records for tfmarl exports.

TF Serving replays ``<version>/assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
`PredictionLog` protos, at most 1000) right after loading a version and before serving it, so
the first real requests do not pay for graph initialisation. `tfmarl.serving.ModelServer` replays
the same file.

The ``tensorflow_serving`` protos are imported only inside the functions that write or read the
records (the rest of tfmarl does not need ``tensorflow-serving-api``).
"""

from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np

from tfmarl.atomic import atomic_path
from tfmarl.contract import EXTRA_DIR, INPUT_NAME, MAX_WARMUP_RECORDS, PAD_ID, SIGNATURE_KEY, WARMUP_FILE


def warmup_path(version_dir) -> pathlib.Path:
    return pathlib.Path(version_dir) / EXTRA_DIR / WARMUP_FILE


def default_warmup_histories(vocabulary, n: int = 8, lengths: Sequence[int] | None = None, *,
                             max_length: int = 50, seed: int = 0) -> list[list[str]]:
    """``n`` representative histories over ``vocabulary`` (a `Vocabulary` or a list of ids).

    Lengths cycle through ``lengths`` (default ``(0, 1, 5, max_length)``: an empty history, a
    short one, a long one filling the model's window); the items of each history are distinct,
    drawn with a fixed ``seed``. Lengths are capped at the catalog size.
    """
    tokens = list(vocabulary.tokens if hasattr(vocabulary, "tokens") else vocabulary)
    if not tokens:
        raise ValueError("the vocabulary is empty")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lengths = tuple(lengths) if lengths is not None else (0, 1, 5, int(max_length))
    if not lengths or any(int(length) < 0 for length in lengths):
        raise ValueError(f"lengths must be non-negative, got {lengths}")
    rng = np.random.default_rng(seed)
    histories = []
    for i in range(n):
        length = min(int(lengths[i % len(lengths)]), len(tokens))
        picks = rng.choice(len(tokens), size=length, replace=False) if length else []
        histories.append([tokens[j] for j in picks])
    return histories


def _history_tensor_proto(rows: list[list[str]]):
    """Right-pads ``rows`` with "" into a DT_STRING TensorProto [batch, max(1, longest)].

    At least one column: the empty history is sent as ``[""]`` (all padding).
    """
    import tensorflow as tf

    width = max(1, max(len(r) for r in rows))
    array = np.full((len(rows), width), PAD_ID.encode(), dtype=object)
    for i, row in enumerate(rows):
        for j, item in enumerate(row):
            array[i, j] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return tf.make_tensor_proto(array, dtype=tf.string, shape=array.shape)


def _as_batch(history) -> list[list[str]]:
    """A history (sequence of ids) -> [[ids]]; a batch (sequence of sequences) -> itself."""
    if isinstance(history, (str, bytes)):
        raise TypeError(f"a history is a list of item ids, got the string {history!r}")
    history = list(history)
    if history and all(not isinstance(h, (str, bytes)) for h in history):
        return [list(h) for h in history]  # a batch of histories
    if any(not isinstance(h, (str, bytes)) for h in history):
        raise TypeError("a history must hold only string ids (or be a batch of such histories)")
    return [history]


def write_warmup_requests(version_dir, histories: Iterable, *, model_name: str = "default",
                          signature: str = SIGNATURE_KEY) -> pathlib.Path:
    """Writes ``<version_dir>/assets.extra/tf_serving_warmup_requests`` atomically; returns its path.

    Each element of ``histories`` becomes one `PredictRequest` (wrapped in a `PredictionLog`):
    a list of ids gives input ``history`` of shape [1, L]; a list of such lists gives a batch
    [B, L], right-padded with "". ``model_name`` is informational (TF Serving ignores it).
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    requests = []
    for history in histories:
        rows = _as_batch(history)
        if not rows:
            raise ValueError("a warm-up batch needs at least one history")
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
        request.inputs[INPUT_NAME].CopyFrom(_history_tensor_proto(rows))
        requests.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    if not requests:
        raise ValueError("no warm-up histories given")
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"TF Serving reads at most {MAX_WARMUP_RECORDS} warm-up records, got {len(requests)}")

    path = warmup_path(version_dir)
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for log in requests:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_dir) -> list:
    """The `PredictionLog` records of ``version_dir``'s warm-up file ([] when there is none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(version_dir)
    if not path.is_file():
        return []
    logs = []
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def warmup_inputs(log) -> dict:
    """The inputs of a warm-up `PredictionLog`'s predict request as {name: numpy array}."""
    import tensorflow as tf

    if log.WhichOneof("log_type") != "predict_log":
        raise ValueError(f"only predict warm-up records are supported, got {log.WhichOneof('log_type')}")
    return {name: tf.make_ndarray(proto) for name, proto in log.predict_log.request.inputs.items()}
