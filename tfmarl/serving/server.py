"""`tfmarl serve`: a local model server speaking the parts of TF Serving's REST and gRPC APIs that
clients use, over one table of loaded versions.

    tfmarl serve --model_base_path savedmodels/movies [--model_name movies] [--port 8501] [--grpc_port 8500]

REST (`tfmarl.serving.rest`) on ``--port`` (default 8501, TF Serving's REST port) and gRPC
(`tfmarl.serving.grpc_api`: PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus)
on ``--grpc_port`` (default 8500, TF Serving's gRPC port; 0 turns gRPC off). Both see the same
versions (`tfmarl.serving.versions`: the base path is polled, new versions are warmed up before they
serve) and the same limits (`tfmarl.serving.limits`).
"""

from __future__ import annotations

import logging
import signal
import threading

from tfmarl.serving.limits import MAX_BATCH_SIZE, MAX_HISTORY_LENGTH, MAX_MESSAGE_BYTES, Limits
from tfmarl.serving.versions import VersionTable

log = logging.getLogger("tfmarl.serving")

DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_GRPC_PORT = 8500  # TF Serving's gRPC port


class ModelServer:
    """Serves the SavedModel versions under ``model_base_path`` over TF Serving's REST and gRPC APIs.

    Args:
      model_base_path: directory of numeric version directories (``savedmodels/<name>``).
      model_name: the name in requests (default: the base path's directory name).
      poll_seconds: how often the base path is scanned for new versions (<= 0: never).
      keep_versions: how many of the newest loadable versions stay loaded.
      host, port: where `start` binds REST by default (port 0: any free port).
      grpc_port: where `start` binds gRPC (None: no gRPC; 0: any free port).
      max_body_bytes: largest REST body and gRPC message (413 / RESOURCE_EXHAUSTED beyond).
      max_batch_size, max_history_length: request bounds (400 / INVALID_ARGUMENT beyond).
      read_timeout: seconds to receive a REST request (and idle time of a kept-alive connection).
      max_connections: REST connections served at once (more get 503); also the most gRPC calls at
        once (more get RESOURCE_EXHAUSTED).
      grpc_workers: threads answering gRPC calls.
      max_load_attempts: loads tried per version before it is given up (one per poll).

    The versions are loaded by the constructor (and then by the poller, once started). `start` binds
    the ports and serves in background threads (returns the REST port); `stop` ends that.
    """

    def __init__(self, model_base_path, model_name: str | None = None, *, poll_seconds: float = 2.0,
                 keep_versions: int = 2, host: str = "127.0.0.1", port: int = 0, grpc_port: int | None = None,
                 max_body_bytes: int = MAX_MESSAGE_BYTES, max_batch_size: int = MAX_BATCH_SIZE,
                 max_history_length: int = MAX_HISTORY_LENGTH, read_timeout: float = 30.0,
                 max_connections: int = 256, grpc_workers: int = 16, max_load_attempts: int = 3):
        self.limits = Limits(int(max_body_bytes), int(max_batch_size), int(max_history_length))
        if read_timeout <= 0 or max_connections < 1 or grpc_workers < 1:
            raise ValueError(f"read_timeout, max_connections and grpc_workers must be positive, got {read_timeout}, "
                             f"{max_connections}, {grpc_workers}")
        self.poll_seconds = float(poll_seconds)
        self.read_timeout = float(read_timeout)
        self.max_connections = int(max_connections)
        self.grpc_workers = int(grpc_workers)
        self.host, self.port = host, int(port)
        self.grpc_port = None if grpc_port is None else int(grpc_port)
        self.table = VersionTable(model_base_path, model_name, keep_versions=keep_versions,
                                  max_load_attempts=max_load_attempts)
        self._rest = None
        self._rest_thread: threading.Thread | None = None
        self._grpc = None

    @property
    def base_path(self):
        return self.table.base_path

    @property
    def model_name(self) -> str:
        return self.table.model_name

    @property
    def versions(self) -> list[int]:
        """Loaded versions, ascending."""
        return self.table.versions

    def poll(self) -> list[int]:
        """Scans the base path once (see `VersionTable.poll`); returns the loaded versions."""
        return self.table.poll()

    # --- lifecycle ---

    def start(self, host: str | None = None, port: int | None = None, grpc_port: int | None = None) -> int:
        """Binds REST on ``host:port`` and, when a gRPC port is set (here or in the constructor), gRPC
        on ``host:grpc_port`` (0: any free port); serves in background threads. Returns the REST
        port; ``grpc_port`` holds the bound gRPC port."""
        from tfmarl.serving.rest import RestApi, RestServer

        if self._rest is not None:
            raise RuntimeError("the server is already started")
        host = self.host if host is None else host
        port = self.port if port is None else int(port)
        grpc_port = self.grpc_port if grpc_port is None else int(grpc_port)
        rest = RestServer((host, port), RestApi(self.table, self.limits, self.read_timeout), self.max_connections)
        try:
            if grpc_port is not None:
                from tfmarl.serving.grpc_api import GrpcServer

                self._grpc = GrpcServer(self.table, self.limits, host, grpc_port, workers=self.grpc_workers,
                                        max_concurrent_rpcs=self.max_connections)
                self.grpc_port = self._grpc.start()
        except BaseException:
            rest.server_close()
            self._grpc = None
            raise
        self._rest = rest
        self._rest_thread = threading.Thread(target=rest.serve_forever, kwargs={"poll_interval": 0.2},
                                             name="tfmarl-serving-http", daemon=True)
        self._rest_thread.start()
        self.table.start_polling(self.poll_seconds)
        self.host, self.port = host, rest.server_address[1]
        log.info("serving model %s (versions %s) at %s%s", self.model_name, self.versions, self.url,
                 f" and gRPC {host}:{self.grpc_port}" if self._grpc else "")
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/models/{self.model_name}"

    def stop(self) -> None:
        self.table.stop_polling()
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
            self._rest = None
        if self._rest_thread is not None:
            self._rest_thread.join(timeout=10)
            self._rest_thread = None

    def __enter__(self):
        if self._rest is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def serve(model_base_path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, model_name: str | None = None,
          *, grpc_port: int | None = DEFAULT_GRPC_PORT, poll_seconds: float = 2.0, keep_versions: int = 2,
          **kwargs) -> None:
    """Serves REST on ``port`` and gRPC on ``grpc_port`` (None: no gRPC) until SIGINT or SIGTERM."""
    server = ModelServer(model_base_path, model_name, poll_seconds=poll_seconds, keep_versions=keep_versions,
                         host=host, port=port, grpc_port=grpc_port, **kwargs)
    server.start()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # After start: importing TensorFlow (gRPC's protos) installs absl's handler for SIGTERM.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    grpc_text = f" and gRPC {host}:{server.grpc_port}" if grpc_port is not None else ""
    print(f"serving model {server.model_name} versions {server.versions} from {server.base_path} at "
          f"{server.url}{grpc_text}", flush=True)
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
    parser.add_argument("--model_name", default=None, help="name in requests (default: the base path's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="REST port (default 8501, as TF Serving)")
    parser.add_argument("--grpc_port", type=int, default=DEFAULT_GRPC_PORT,
                        help="gRPC port (default 8500, as TF Serving; 0: no gRPC)")
    parser.add_argument("--poll_seconds", type=float, default=2.0,
                        help="seconds between scans for new versions (<= 0: never)")
    parser.add_argument("--keep_versions", type=int, default=2, help="newest versions kept loaded (default 2)")
    parser.add_argument("--max_body_bytes", type=int, default=MAX_MESSAGE_BYTES,
                        help="largest REST body or gRPC message (default 4 MiB)")


def run(args) -> int:
    """`tfmarl serve` with parsed ``args`` (see `add_arguments`); returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = getattr(args, "host", "127.0.0.1"), getattr(args, "port", DEFAULT_PORT)
    grpc_port = getattr(args, "grpc_port", DEFAULT_GRPC_PORT)
    if grpc_port is not None and grpc_port < 0:
        print(f"error: --grpc_port must be a port number or 0 (no gRPC), got {grpc_port}", flush=True)
        return 2
    try:
        serve(args.model_base_path, host=host, port=port, model_name=getattr(args, "model_name", None),
              grpc_port=grpc_port or None, poll_seconds=getattr(args, "poll_seconds", 2.0),
              keep_versions=getattr(args, "keep_versions", 2),
              max_body_bytes=getattr(args, "max_body_bytes", MAX_MESSAGE_BYTES))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", flush=True)
        return 2
    except OSError as e:  # port in use, ...
        print(f"error: cannot serve on {host}:{port} (gRPC {grpc_port or 'off'}): {e}", flush=True)
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
