"""The loaded versions of one model: loading, warm-up, polling the base path, lookups.

A model base path holds numeric version directories (``<base>/<version>/``, see `tfmarl.export`).
`VersionTable` polls it: a new version is loaded (and warmed up with its
``assets.extra/tf_serving_warmup_requests``) before it replaces the old one; a version that fails to
load is logged while the previous ones keep serving; hidden temporary export directories are
ignored. The newest ``keep_versions`` loadable versions stay loaded so that version-specific
requests can reach them. REST and gRPC share one table, so they always see the same versions.
"""

from __future__ import annotations

import logging
import pathlib
import re
import threading
import time

import numpy as np

from tfmarl.contract import EXTRA_DIR, INPUT_NAME, MAX_WARMUP_RECORDS, PAD_ID, SIGNATURE_KEY, WARMUP_FILE
from tfmarl.serving.errors import Code, RequestError, clip

log = logging.getLogger("tfmarl.serving")

_VERSION_DIR = re.compile(r"[0-9]{1,18}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def _read_signature_def(version_dir: pathlib.Path):
    """The ``serving_default`` `SignatureDef` proto of the SavedModel's serving graph."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    graph = next((g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags), saved.meta_graphs[0])
    return graph.signature_def[SIGNATURE_KEY]


def _signature_def_json(signature_def) -> dict:
    """``{"serving_default": ...}`` as TF Serving prints a ``SignatureDefMap`` in JSON."""
    from google.protobuf import json_format

    kwargs = {"preserving_proto_field_name": True}
    try:
        text = json_format.MessageToDict(signature_def, always_print_fields_with_no_presence=True, **kwargs)
    except TypeError:  # protobuf < 5
        text = json_format.MessageToDict(signature_def, including_default_value_fields=True, **kwargs)
    return {SIGNATURE_KEY: text}


def read_warmup_records(path: pathlib.Path) -> list:
    """(signature name, {input: numpy array}) of each predict record of a TF Serving warm-up file.

    The format `tfmarl.export.warmup` writes; read here without importing `tfmarl.export` (which
    loads TensorFlow Recommenders) to keep the server light.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for raw in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        record = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        if record.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"unsupported warm-up record type {record.WhichOneof('log_type')!r}")
        request = record.predict_log.request
        records.append((request.model_spec.signature_name,
                        {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}))
    return records


class LoadedVersion:
    """One loaded version: its `serving_default` function and signature."""

    def __init__(self, version: int, path: pathlib.Path):
        import tensorflow as tf

        self.version = int(version)
        self.path = path
        self.module = tf.saved_model.load(str(path))
        if SIGNATURE_KEY not in self.module.signatures:
            raise ValueError(f"{path} has no '{SIGNATURE_KEY}' signature")
        self.function = self.module.signatures[SIGNATURE_KEY]
        _, inputs = self.function.structured_input_signature
        if set(inputs) != {INPUT_NAME} or inputs[INPUT_NAME].dtype != tf.string:
            raise ValueError(f"{path}: '{SIGNATURE_KEY}' must take one tf.string input '{INPUT_NAME}', "
                             f"takes {inputs}")
        self.signature_def = _read_signature_def(path)  # the proto (gRPC metadata)
        self.signature_def_json = _signature_def_json(self.signature_def)  # REST metadata
        self.output_names = sorted(self.signature_def.outputs)
        self.loaded_at = time.time()

    def predict(self, history: np.ndarray) -> dict:
        """history: object array [batch, length] of bytes -> {output name: numpy array}."""
        import tensorflow as tf

        outputs = self.function(**{INPUT_NAME: tf.constant(history, dtype=tf.string)})
        return {name: value.numpy() for name, value in outputs.items()}

    def serve(self, history: np.ndarray) -> dict:
        """`predict` for a request: failures become `RequestError` with TensorFlow's error code."""
        import tensorflow as tf

        try:
            return self.predict(history)
        except tf.errors.OpError as e:
            code = Code(e.error_code) if 0 < e.error_code <= Code.UNAUTHENTICATED else Code.UNKNOWN
            if code in (Code.UNKNOWN, Code.INTERNAL, Code.DATA_LOSS):  # the server's fault: worth a log line
                log.error("version %d: prediction failed: %s", self.version, clip(e.message, 500))
            raise RequestError(code, clip(e.message.strip(), 500)) from None
        except Exception as e:  # noqa: BLE001
            log.exception("version %d: prediction failed", self.version)
            raise RequestError(Code.INTERNAL, f"internal error: {type(e).__name__}") from None

    def warm_up(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` (a failure fails the load, as in TF
        Serving); without that file, one cold-start request (failures only logged). Returns the
        number of requests run."""
        path = self.path / EXTRA_DIR / WARMUP_FILE
        if not path.is_file():
            try:
                self.predict(np.array([[PAD_ID.encode()]], dtype=object))
            except Exception as e:  # noqa: BLE001 - a model may legitimately refuse this request
                log.warning("version %d: warm-up request failed: %s", self.version, clip(e, 300))
            return 0
        try:
            records = read_warmup_records(path)
        except ImportError:
            log.warning("tensorflow-serving-api is not installed: warm-up records of version %d skipped",
                        self.version)
            return 0
        for i, (signature, inputs) in enumerate(records):
            if (signature or SIGNATURE_KEY) != SIGNATURE_KEY:
                raise ValueError(f"warm-up record {i} asks for signature {signature!r}")
            if set(inputs) != {INPUT_NAME}:
                raise ValueError(f"warm-up record {i} has inputs {sorted(inputs)}, expected ['{INPUT_NAME}']")
            self.predict(inputs[INPUT_NAME])
        return len(records)


def _as_version(version) -> int | None:
    """A requested version (int, or a string from a URL) -> int; None when it names no version."""
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version
    if isinstance(version, str) and _VERSION_DIR.fullmatch(version):
        return int(version)
    return None


class VersionTable:
    """The loaded versions of the model under ``base_path`` (see the module docstring).

    Args:
      base_path: directory of numeric version directories.
      model_name: the name requests use (default: the base path's directory name).
      keep_versions: how many of the newest loadable versions stay loaded.
      max_load_attempts: loads tried per version before it is given up (one per poll).

    The constructor loads what is on disk; `poll` rescans; `start_polling` rescans every
    ``poll_seconds`` in a background thread until `stop_polling`.
    """

    def __init__(self, base_path, model_name: str | None = None, *, keep_versions: int = 2,
                 max_load_attempts: int = 3):
        self.base_path = pathlib.Path(base_path).resolve()
        if not self.base_path.is_dir():
            raise FileNotFoundError(f"model base path {base_path} is not a directory")
        self.model_name = model_name or self.base_path.name
        if not _MODEL_NAME.fullmatch(self.model_name):
            raise ValueError(f"model name {self.model_name!r} must be letters, digits, '_', '-' or '.' (not first)")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        if max_load_attempts < 1:
            raise ValueError(f"max_load_attempts must be >= 1, got {max_load_attempts}")
        self.keep_versions = int(keep_versions)
        self.max_load_attempts = int(max_load_attempts)
        self._versions: dict[int, LoadedVersion] = {}  # replaced, never mutated: readers take a snapshot
        self._failures: dict[int, int] = {}
        self._poll_lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self.poll()
        if not self._versions:
            log.warning("no loadable version under %s yet; waiting for one", self.base_path)

    @property
    def versions(self) -> list[int]:
        """Loaded versions, ascending."""
        return sorted(self._versions)

    # --- lookups (any thread) ---

    def servable(self, name: str, version=None) -> LoadedVersion:
        """The version a request names (None: the newest); NOT_FOUND in TF Serving's words otherwise."""
        versions = self._versions
        number = _as_version(version)
        if name == self.model_name:
            if version is None and versions:
                return versions[max(versions)]
            if number in versions:
                return versions[number]
        spec = f"Latest({clip(name)})" if version is None else f"Specific({clip(name)}, {clip(version)})"
        raise RequestError(Code.NOT_FOUND, f"Servable not found for request: {spec}")

    def status(self, name: str, version=None) -> list[int]:
        """The versions a status request covers (newest first; all loaded ones are AVAILABLE)."""
        versions = self._versions
        if name != self.model_name or not versions:
            raise RequestError(Code.NOT_FOUND, f"Could not find any versions of model {clip(name)}")
        if version is None:
            return sorted(versions, reverse=True)
        if _as_version(version) in versions:
            return [_as_version(version)]
        raise RequestError(Code.NOT_FOUND, f"Could not find version {clip(version)} of model {clip(name)}")

    # --- loading ---

    def _on_disk(self) -> list[int]:
        try:
            entries = list(self.base_path.iterdir())
        except OSError as e:
            log.warning("cannot list %s: %s", self.base_path, e)
            return []
        return sorted((int(p.name) for p in entries if _VERSION_DIR.fullmatch(p.name) and p.is_dir()), reverse=True)

    def poll(self) -> list[int]:
        """Scans the base path once: loads new versions (newest first, up to ``keep_versions``
        loadable ones), then swaps them in and unloads the older ones. Returns the loaded versions."""
        with self._poll_lock:
            current = self._versions
            on_disk = self._on_disk()
            chosen: dict[int, LoadedVersion] = {}
            for version in on_disk:
                if len(chosen) >= self.keep_versions:
                    break
                if version in current:
                    chosen[version] = current[version]
                    continue
                if self._failures.get(version, 0) >= self.max_load_attempts:
                    continue
                loaded = self._load(version)
                if loaded is not None:
                    chosen[version] = loaded
            if not chosen and current:
                if set(current) - set(on_disk):
                    log.warning("no loadable version left on disk under %s; still serving %s", self.base_path,
                                sorted(current))
                return sorted(current)
            if set(chosen) != set(current):
                self._versions = chosen  # the switch: a new request sees either set, both fully loaded
                added, removed = sorted(set(chosen) - set(current)), sorted(set(current) - set(chosen))
                log.info("model %s: serving versions %s (loaded %s, unloaded %s)", self.model_name, sorted(chosen),
                         added, removed)
            return sorted(chosen)

    def _load(self, version: int) -> LoadedVersion | None:
        path = self.base_path / str(version)
        started = time.perf_counter()
        try:
            loaded = LoadedVersion(version, path)
            warmed = loaded.warm_up()
        except Exception as e:  # noqa: BLE001 - any failure leaves the serving versions alone
            attempts = self._failures[version] = self._failures.get(version, 0) + 1
            log.error("model %s: loading version %d failed (attempt %d of %d): %s", self.model_name, version,
                      attempts, self.max_load_attempts, clip(f"{type(e).__name__}: {e}", 500))
            return None
        self._failures.pop(version, None)
        log.info("model %s: loaded version %d in %.1fs (%d warm-up requests)", self.model_name, version,
                 time.perf_counter() - started, warmed)
        return loaded

    # --- polling ---

    def start_polling(self, poll_seconds: float) -> None:
        """Rescans every ``poll_seconds`` in a daemon thread (<= 0: never)."""
        if poll_seconds <= 0 or self._poller is not None:
            return
        self._stopping.clear()
        self._poller = threading.Thread(target=self._poll_loop, args=(float(poll_seconds),),
                                        name="tfmarl-serving-poll", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None

    def _poll_loop(self, poll_seconds: float):
        while not self._stopping.wait(poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("polling %s failed", self.base_path)
