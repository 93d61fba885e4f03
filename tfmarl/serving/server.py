"""A local model server speaking the part of TF Serving's REST API that clients use.

    tfmarl serve --model_base_path savedmodels/movies [--model_name movies] [--port 8501]

serves the tfmarl SavedModels under a model base path (``<base>/<version>/``, see
`tfmarl.export`) with the standard library's `ThreadingHTTPServer` and TensorFlow:

* ``POST /v1/models/<name>[/versions/<n>]:predict`` with ``{"instances": [...]}`` (row format:
  each instance ``{"history": [ids]}`` or, as the signature has one input, just ``[ids]``) or
  ``{"inputs": {"history": [[ids], ...]}}`` / ``{"inputs": [[ids], ...]}`` (columnar), and an
  optional ``"signature_name"`` (only ``"serving_default"``). Answers as TF Serving does:
  ``{"predictions": [{"item_ids": [...], "scores": [...]}, ...]}`` for rows,
  ``{"outputs": {"item_ids": [[...]], "scores": [[...]]}}`` for columns. Ids are JSON strings
  (``{"b64": "..."}`` is accepted too, as TF Serving does for string tensors).
  Unlike TF Serving, histories of different lengths may share a request: they are right-padded
  with "" (the padding id of the contract), and trailing "" are dropped first.
* ``GET /v1/models/<name>[/versions/<n>]``: version status (``model_version_status``).
* ``GET /v1/models/<name>[/versions/<n>]/metadata``: the signature (``GetModelMetadataResponse``).

Errors are ``{"error": "<message>"}`` with TF Serving's status codes (400 bad request, 404 unknown
model/version/path, 405 wrong method, 411/413 missing or oversized body, 500 internal).

Only these routes exist: the model name must equal the configured one and the version must be one
of the loaded versions; no request data ever reaches the filesystem. The base path is polled for
new numeric version directories (hidden temporary export directories are ignored); a new version
is loaded (and warmed up with its ``assets.extra/tf_serving_warmup_requests``) before it replaces
the old one, and a version that fails to load is logged while the previous ones keep serving. The
newest ``keep_versions`` versions stay loaded so that version-specific requests can reach them.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import logging
import pathlib
import re
import signal
import threading
import time

import numpy as np

log = logging.getLogger("tfmarl.serving")

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "history"
DEFAULT_PORT = 8501
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BATCH_SIZE = 1024
MAX_HISTORY_LENGTH = 1024
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # as TF Serving

_VERSION_DIR = re.compile(r"[0-9]{1,18}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
# The REST routes; nothing is decoded (percent-escapes never form a valid name or version).
_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                    r"(?P<tail>:predict|:classify|:regress|/metadata)?")

# TensorFlow error codes -> HTTP status, as TF Serving maps them.
_HTTP_STATUS = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


class RequestError(Exception):
    """An error answered as ``{"error": message}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _clip(text, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


# --- request parsing ---------------------------------------------------------------------------


def _item_id(value, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{where}: invalid base64 in {{\"b64\": ...}}") from None
    raise RequestError(400, f"{where}: item ids must be JSON strings, got {_clip(json.dumps(value))}")


def _history(value, where: str, max_length: int) -> list[bytes]:
    if not isinstance(value, list):
        raise RequestError(400, f"{where}: '{INPUT_NAME}' must be a list of item ids (strings), got "
                                f"{_clip(json.dumps(value))}")
    if len(value) > max_length:
        raise RequestError(400, f"{where}: history of {len(value)} ids; at most {max_length} per history")
    return [_item_id(v, f"{where}, position {j}") for j, v in enumerate(value)]


def parse_predict_request(body: bytes, *, max_batch_size: int = MAX_BATCH_SIZE,
                          max_history_length: int = MAX_HISTORY_LENGTH):
    """Parses a predict request body; returns (histories as lists of bytes, "row" or "columnar").

    Raises `RequestError` (status 400) on anything TF Serving would refuse, in its words where it
    has them.
    """
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"JSON Parse error: the body is not UTF-8 ({e.reason})") from None
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"JSON Parse error: {_clip(e, 200)}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "JSON Value is not an object: expecting {\"instances\": [...]} or "
                                "{\"inputs\": ...}")
    signature = payload.get("signature_name", SIGNATURE_KEY)
    if not isinstance(signature, str):
        raise RequestError(400, "'signature_name' must be a string")
    if signature not in (SIGNATURE_KEY, ""):
        raise RequestError(400, f"Serving signature name: \"{_clip(signature)}\" not found in signature def")
    if "instances" in payload and "inputs" in payload:
        raise RequestError(400, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exist")
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise RequestError(400, "Expecting 'instances' to be an list/array")
        if not instances:
            raise RequestError(400, "'instances' is empty: expecting at least one instance")
        if len(instances) > max_batch_size:
            raise RequestError(400, f"{len(instances)} instances; at most {max_batch_size} per request")
        rows = []
        for i, instance in enumerate(instances):
            where = f"instance {i}"
            if isinstance(instance, dict):
                if INPUT_NAME not in instance:
                    raise RequestError(400, f"{where}: missing named input '{INPUT_NAME}' (the signature's only "
                                            f"input)")
                extra = sorted(set(instance) - {INPUT_NAME})
                if extra:
                    raise RequestError(400, f"{where}: input tensor alias not found in signature: "
                                            f"{_clip(', '.join(extra))}. Inputs expected to be in the set "
                                            f"{{{INPUT_NAME}}}.")
                instance = instance[INPUT_NAME]
            rows.append(_history(instance, where, max_history_length))
        return rows, "row"
    if "inputs" in payload:
        inputs = payload["inputs"]
        if isinstance(inputs, dict):
            extra = sorted(set(inputs) - {INPUT_NAME})
            if extra:
                raise RequestError(400, f"input tensor alias not found in signature: {_clip(', '.join(extra))}. "
                                        f"Inputs expected to be in the set {{{INPUT_NAME}}}.")
            if INPUT_NAME not in inputs:
                raise RequestError(400, f"Missing input '{INPUT_NAME}' in 'inputs'")
            inputs = inputs[INPUT_NAME]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(r, list) for r in inputs):
            raise RequestError(400, f"'inputs' must hold '{INPUT_NAME}' as a non-empty list of histories "
                                    f"(a list of lists of item ids) of shape [batch, length]")
        if len(inputs) > max_batch_size:
            raise RequestError(400, f"{len(inputs)} histories; at most {max_batch_size} per request")
        return [_history(r, f"history {i}", max_history_length) for i, r in enumerate(inputs)], "columnar"
    raise RequestError(400, "Missing 'inputs' or 'instances' key")


def pad_histories(rows: list[list[bytes]]) -> np.ndarray:
    """Drops trailing "" then right-pads with "" to [batch, max(1, longest)] (object array of bytes)."""
    trimmed = []
    for row in rows:
        end = len(row)
        while end and row[end - 1] == b"":
            end -= 1
        trimmed.append(row[:end])
    width = max(1, max(len(r) for r in trimmed))
    array = np.full((len(trimmed), width), b"", dtype=object)
    for i, row in enumerate(trimmed):
        array[i, :len(row)] = row
    return array


def _json_value(array: np.ndarray):
    if array.dtype == object:  # tf.string
        flat = [v.decode("utf-8", "replace") for v in array.ravel()]
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def format_response(outputs: dict, kind: str) -> dict:
    """TF Serving's response: rows -> {"predictions": [...]}, columns -> {"outputs": ...}."""
    names = sorted(outputs)
    values = {name: _json_value(outputs[name]) for name in names}
    if kind == "columnar":
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    batch = len(values[names[0]])
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{name: values[name][i] for name in names} for i in range(batch)]}


# --- loaded versions ---------------------------------------------------------------------------


def _signature_def_json(version_dir: pathlib.Path) -> dict:
    """The SavedModel's signature defs as TF Serving prints them (``SignatureDefMap`` JSON)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    graph = next((g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags), saved.meta_graphs[0])
    kwargs = {"preserving_proto_field_name": True}
    try:
        text = json_format.MessageToDict(graph.signature_def[SIGNATURE_KEY], always_print_fields_with_no_presence=True,
                                         **kwargs)
    except TypeError:  # protobuf < 5
        text = json_format.MessageToDict(graph.signature_def[SIGNATURE_KEY], including_default_value_fields=True,
                                         **kwargs)
    return {SIGNATURE_KEY: text}


class LoadedVersion:
    """One loaded version: its `serving_default` function and metadata."""

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
        self.signature_def = _signature_def_json(path)
        self.loaded_at = time.time()

    def predict(self, history: np.ndarray) -> dict:
        """history: object array [batch, length] of bytes -> {output name: numpy array}."""
        import tensorflow as tf

        outputs = self.function(**{INPUT_NAME: tf.constant(history, dtype=tf.string)})
        return {name: value.numpy() for name, value in outputs.items()}

    def warm_up(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` (a failure fails the load, as in TF
        Serving); without that file, one cold-start request (failures only logged). Returns the
        number of requests run."""
        path = self.path / "assets.extra" / WARMUP_FILE
        if not path.is_file():
            try:
                self.predict(np.array([[b""]], dtype=object))
            except Exception as e:  # noqa: BLE001 - a model may legitimately refuse this request
                log.warning("version %d: warm-up request failed: %s", self.version, _clip(e, 300))
            return 0
        try:
            records = _read_warmup_records(path)
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


def _read_warmup_records(path: pathlib.Path) -> list:
    """(signature name, {input: numpy array}) of each predict record of a TF Serving warm-up file.

    Same format as `tfmarl.export.warmup` writes; read here without importing `tfmarl.export` (which
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


# --- the server --------------------------------------------------------------------------------


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, model_server: "ModelServer", max_connections: int):
        self.model_server = model_server
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                body = b'{"error":"too many connections"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        """Clients that reset or time out are routine: a debug line, not a traceback on stderr."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %r", client_address, error)
        else:
            log.exception("error while serving %s", client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfmarl-serving"
    sys_version = ""
    timeout = 30.0  # per socket read; replaced per server
    error_content_type = "application/json"

    # Every method goes through one router: wrong methods on a route get 405, not 501.
    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("%s - %s", self.address_string(), format % args)

    def send_error(self, code, message=None, explain=None):
        """Errors raised by http.server itself (bad request line, oversized headers...) as JSON."""
        self.close_connection = True
        try:
            self._send_json(code, {"error": message or explain or http.HTTPStatus(code).phrase})
        except OSError:
            pass

    def _send_json(self, status: int, payload: dict, allow: str | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self, limit: int, deadline: float) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise RequestError(411, "Transfer-Encoding is not supported: send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "Length Required: a POST needs a Content-Length")
        if not length.strip().isdigit():
            raise RequestError(400, "invalid Content-Length")
        length = int(length)
        if length > limit:
            raise RequestError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
        chunks, remaining = [], length
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(remaining, 65536))
            if not chunk:
                raise ConnectionError("client closed the connection")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _has_body(self) -> bool:
        return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def _handle(self):
        server: ModelServer = self.server.model_server
        started = time.monotonic()
        body_read = False
        try:
            path = self.path.split("?", 1)[0]
            route = _ROUTE.fullmatch(path)
            if route is None:
                raise RequestError(404, f"Malformed request: {self.command} {_clip(path)}")
            tail = route["tail"] or ""
            allowed = "POST" if tail.startswith(":") else "GET"
            if self.command != allowed:
                self.close_connection = self.close_connection or self._has_body()
                self._send_json(405, {"error": f"Method {self.command} not allowed on {_clip(path)}: use "
                                               f"{allowed}"}, allow=allowed)
                return
            if allowed == "POST":
                body = self._read_body(server.max_body_bytes, started + server.read_timeout)
                body_read = True
            elif self._has_body():
                self.close_connection = True  # a GET body is never read
            status, payload = server.dispatch(route["name"], route["version"], tail,
                                              body if allowed == "POST" else None)
            self._send_json(status, payload)
        except RequestError as e:
            if e.status in (411, 413) or (not body_read and self._has_body()):
                self.close_connection = True  # the unread body would be taken for the next request
            self._send_json(e.status, {"error": e.message})
        except TimeoutError:
            self.close_connection = True
            self._send_json(408, {"error": "timed out reading the request body"})
        except ConnectionError:
            self.close_connection = True


class ModelServer:
    """Serves the SavedModel versions under ``model_base_path`` over TF Serving's REST API.

    Args:
      model_base_path: directory of numeric version directories (``savedmodels/<name>``).
      model_name: the name in URLs (default: the base path's directory name).
      poll_seconds: how often the base path is scanned for new versions (<= 0: never).
      keep_versions: how many of the newest loadable versions stay loaded.
      max_body_bytes, max_batch_size, max_history_length: request bounds (413 / 400 beyond).
      read_timeout: seconds to receive a request (and idle time of a kept-alive connection).
      max_connections: open connections served at once (more get 503).
      max_load_attempts: loads tried per version before it is given up (one per poll).
      host, port: where `start` binds by default (port 0: any free port).

    `start` binds the port and serves in background threads (returns the port); `stop` ends that.
    The versions are loaded by the constructor (and then by the poller).
    """

    def __init__(self, model_base_path, model_name: str | None = None, *, poll_seconds: float = 2.0,
                 keep_versions: int = 2, host: str = "127.0.0.1", port: int = 0, max_body_bytes: int = MAX_BODY_BYTES, max_batch_size: int = MAX_BATCH_SIZE,
                 max_history_length: int = MAX_HISTORY_LENGTH, read_timeout: float = 30.0,
                 max_connections: int = 256, max_load_attempts: int = 3):
        self.base_path = pathlib.Path(model_base_path).resolve()
        if not self.base_path.is_dir():
            raise FileNotFoundError(f"model base path {model_base_path} is not a directory")
        self.model_name = model_name or self.base_path.name
        if not _MODEL_NAME.fullmatch(self.model_name):
            raise ValueError(f"model name {self.model_name!r} must be letters, digits, '_', '-' or '.' (not first)")
        if keep_versions < 1:
            raise ValueError("keep_versions must be >= 1")
        self.poll_seconds = float(poll_seconds)
        self.keep_versions = int(keep_versions)
        self.max_body_bytes = int(max_body_bytes)
        self.max_batch_size = int(max_batch_size)
        self.max_history_length = int(max_history_length)
        self.read_timeout = float(read_timeout)
        self.max_connections = int(max_connections)
        self.max_load_attempts = int(max_load_attempts)
        self.host, self.port = host, int(port)
        self._versions: dict[int, LoadedVersion] = {}  # replaced, never mutated: readers take a snapshot
        self._failures: dict[int, int] = {}
        self._poll_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.poll()
        if not self._versions:
            log.warning("no loadable version under %s yet; waiting for one", self.base_path)

    # --- versions ---

    @property
    def versions(self) -> list[int]:
        """Loaded versions, ascending."""
        return sorted(self._versions)

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
                      attempts, self.max_load_attempts, _clip(f"{type(e).__name__}: {e}", 500))
            return None
        self._failures.pop(version, None)
        log.info("model %s: loaded version %d in %.1fs (%d warm-up requests)", self.model_name, version,
                 time.perf_counter() - started, warmed)
        return loaded

    def _poll_loop(self):
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("polling %s failed", self.base_path)

    # --- requests ---

    def _version_for(self, name: str, version: str | None, missing) -> LoadedVersion:
        versions = self._versions
        if name != self.model_name:
            raise RequestError(404, missing(name, version))
        if version is None:
            if not versions:
                raise RequestError(404, missing(name, version))
            return versions[max(versions)]
        if not _VERSION_DIR.fullmatch(version) or int(version) not in versions:
            raise RequestError(404, missing(name, version))
        return versions[int(version)]

    @staticmethod
    def _servable_not_found(name, version):
        spec = f"Latest({_clip(name)})" if version is None else f"Specific({_clip(name)}, {_clip(version)})"
        return f"Servable not found for request: {spec}"

    def dispatch(self, name: str, version: str | None, tail: str, body: bytes | None):
        """Answers one routed request: (HTTP status, JSON payload). Raises `RequestError`."""
        if tail == "":
            return 200, self.status(name, version)
        if tail == "/metadata":
            loaded = self._version_for(name, version, self._servable_not_found)
            return 200, {"model_spec": {"name": self.model_name, "signature_name": "", "version": str(loaded.version)},
                         "metadata": {"signature_def": {"signature_def": loaded.signature_def}}}
        loaded = self._version_for(name, version, self._servable_not_found)
        if tail != ":predict":
            raise RequestError(400, f"{tail[1:]} is not supported: signature '{SIGNATURE_KEY}' is a predict "
                                    f"signature; use :predict")
        rows, kind = parse_predict_request(body, max_batch_size=self.max_batch_size,
                                           max_history_length=self.max_history_length)
        return 200, format_response(self._run(loaded, pad_histories(rows)), kind)

    @staticmethod
    def _run(loaded: LoadedVersion, history: np.ndarray) -> dict:
        import tensorflow as tf

        try:
            return loaded.predict(history)
        except tf.errors.OpError as e:
            status = _HTTP_STATUS.get(e.error_code, 500)
            if status >= 500:
                log.error("version %d: prediction failed: %s", loaded.version, _clip(e.message, 500))
            raise RequestError(status, _clip(e.message.strip(), 500)) from None
        except Exception as e:  # noqa: BLE001
            log.exception("version %d: prediction failed", loaded.version)
            raise RequestError(500, f"internal error: {type(e).__name__}") from None

    def status(self, name: str, version: str | None = None) -> dict:
        """``GetModelStatusResponse`` JSON: the loaded versions (newest first), all AVAILABLE."""
        versions = self._versions
        if name != self.model_name or not versions:
            raise RequestError(404, f"Could not find any versions of model {_clip(name)}")
        if version is None:
            chosen = sorted(versions, reverse=True)
        elif _VERSION_DIR.fullmatch(version) and int(version) in versions:
            chosen = [int(version)]
        else:
            raise RequestError(404, f"Could not find version {_clip(version)} of model {_clip(name)}")
        return {"model_version_status": [{"version": str(v), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}} for v in chosen]}

    # --- lifecycle ---

    def start(self, host: str | None = None, port: int | None = None) -> int:
        """Binds ``host:port`` (default: the constructor's; port 0: any free port), serves in
        background threads; returns the bound port."""
        host = self.host if host is None else host
        port = self.port if port is None else int(port)
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        handler = type("Handler", (_Handler,), {"timeout": self.read_timeout})
        self._stopping.clear()
        self._httpd = _HTTPServer((host, port), handler, self, self.max_connections)
        self._threads = [threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                          name="tfmarl-serving-http", daemon=True)]
        if self.poll_seconds > 0:
            self._threads.append(threading.Thread(target=self._poll_loop, name="tfmarl-serving-poll", daemon=True))
        for thread in self._threads:
            thread.start()
        self.host, self.port = host, self._httpd.server_address[1]
        log.info("serving model %s (versions %s) at http://%s:%d/v1/models/%s", self.model_name, self.versions,
                 host, self.port, self.model_name)
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/models/{self.model_name}"

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def __enter__(self):
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(model_base_path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, model_name: str | None = None,
          *, poll_seconds: float = 2.0, keep_versions: int = 2, **kwargs) -> None:
    """Serves until SIGINT or SIGTERM (blocking)."""
    server = ModelServer(model_base_path, model_name, poll_seconds=poll_seconds, keep_versions=keep_versions,
                         host=host, port=port, **kwargs)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    bound = server.start()
    print(f"serving model {server.model_name} versions {server.versions} from {server.base_path} at "
          f"http://{host}:{bound}/v1/models/{server.model_name}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def add_arguments(parser) -> None:
    """Adds the `tfmarl serve` options to an argparse parser."""
    parser.add_argument("--model_base_path", required=True,
                        help="directory of numbered SavedModel versions, e.g. savedmodels/movies")
    parser.add_argument("--model_name", default=None, help="name in the URLs (default: the base path's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="REST port (default 8501, as TF Serving)")
    parser.add_argument("--poll_seconds", type=float, default=2.0,
                        help="seconds between scans for new versions (<= 0: never)")
    parser.add_argument("--keep_versions", type=int, default=2, help="newest versions kept loaded (default 2)")
    parser.add_argument("--max_body_bytes", type=int, default=MAX_BODY_BYTES, help="largest request body")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.model_base_path, host=getattr(args, "host", "127.0.0.1"), port=getattr(args, "port", DEFAULT_PORT),
              model_name=getattr(args, "model_name", None), poll_seconds=getattr(args, "poll_seconds", 2.0),
              keep_versions=getattr(args, "keep_versions", 2),
              max_body_bytes=getattr(args, "max_body_bytes", MAX_BODY_BYTES))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", flush=True)
        return 2
    except OSError as e:  # port in use, ...
        print(f"error: cannot serve on {args.host}:{args.port}: {e}", flush=True)
        return 1
    return 0


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tfmarl.serving.server", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
