"""TF Serving's REST API over the standard library's HTTP server.

* ``POST /v1/models/<name>[/versions/<n>]:predict``: see `tfmarl.serving.protocol` for the bodies.
* ``GET /v1/models/<name>[/versions/<n>]``: version status (``model_version_status``).
* ``GET /v1/models/<name>[/versions/<n>]/metadata``: the signature (``GetModelMetadataResponse``).

Errors are ``{"error": "<message>"}`` with TF Serving's status codes (400 bad request, 404 unknown
model/version/path, 405 wrong method, 408 slow body, 411/413 missing or oversized body, 503 too many
connections, 500 internal). Only these routes exist and no request data ever reaches the
filesystem: the model name must equal the served one and the version must be a loaded one.
"""

from __future__ import annotations

import http
import http.server
import json
import logging
import re
import sys
import threading
import time

from tfmarl.contract import SIGNATURE_KEY
from tfmarl.serving.errors import Code, RequestError, clip
from tfmarl.serving.limits import Limits
from tfmarl.serving.protocol import format_response, pad_histories, parse_predict_request
from tfmarl.serving.versions import VersionTable

log = logging.getLogger("tfmarl.serving")

# The routes; nothing is decoded (percent-escapes never form a valid name or version).
_ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                    r"(?P<tail>:predict|:classify|:regress|/metadata)?")


class RestApi:
    """Answers routed REST requests from a `VersionTable` within `Limits`."""

    def __init__(self, table: VersionTable, limits: Limits, read_timeout: float = 30.0):
        self.table = table
        self.limits = limits
        self.read_timeout = float(read_timeout)

    def dispatch(self, name: str, version: str | None, tail: str, body: bytes | None):
        """One routed request -> (HTTP status, JSON payload). Raises `RequestError`."""
        if tail == "":
            chosen = self.table.status(name, version)
            return 200, {"model_version_status": [{"version": str(v), "state": "AVAILABLE",
                                                   "status": {"error_code": "OK", "error_message": ""}}
                                                  for v in chosen]}
        loaded = self.table.servable(name, version)
        if tail == "/metadata":
            return 200, {"model_spec": {"name": self.table.model_name, "signature_name": "",
                                        "version": str(loaded.version)},
                         "metadata": {"signature_def": {"signature_def": loaded.signature_def_json}}}
        if tail != ":predict":
            raise RequestError(Code.INVALID_ARGUMENT, f"{tail[1:]} is not supported: signature '{SIGNATURE_KEY}' "
                                                      f"is a predict signature; use :predict")
        rows, kind = parse_predict_request(body, self.limits)
        return 200, format_response(loaded.serve(pad_histories(rows)), kind)


class RestServer(http.server.ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once (more get 503)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, api: RestApi, max_connections: int = 256):
        self.api = api
        self._slots = threading.BoundedSemaphore(max_connections)
        handler = type("Handler", (_Handler,), {"timeout": api.read_timeout})
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
    # Headers and body leave in two writes: with Nagle on, the body waits for the client's delayed
    # ACK of the headers (~40 ms per response on Linux).
    disable_nagle_algorithm = True

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
            raise RequestError(Code.INVALID_ARGUMENT, "Transfer-Encoding is not supported: send a Content-Length",
                               http_status=411)
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(Code.INVALID_ARGUMENT, "Length Required: a POST needs a Content-Length",
                               http_status=411)
        if not length.strip().isdigit():
            raise RequestError(Code.INVALID_ARGUMENT, "invalid Content-Length")
        length = int(length)
        if length > limit:
            raise RequestError(Code.RESOURCE_EXHAUSTED, f"request body of {length} bytes exceeds the limit of "
                                                        f"{limit} bytes", http_status=413)
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
        api: RestApi = self.server.api
        started = time.monotonic()
        body_read = False
        try:
            path = self.path.split("?", 1)[0]
            route = _ROUTE.fullmatch(path)
            if route is None:
                raise RequestError(Code.NOT_FOUND, f"Malformed request: {self.command} {clip(path)}")
            tail = route["tail"] or ""
            allowed = "POST" if tail.startswith(":") else "GET"
            if self.command != allowed:
                self.close_connection = self.close_connection or self._has_body()
                self._send_json(405, {"error": f"Method {self.command} not allowed on {clip(path)}: use "
                                               f"{allowed}"}, allow=allowed)
                return
            body = None
            if allowed == "POST":
                body = self._read_body(api.limits.max_message_bytes, started + api.read_timeout)
                body_read = True
            elif self._has_body():
                self.close_connection = True  # a GET body is never read
            status, payload = api.dispatch(route["name"], route["version"], tail, body)
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
