"""The TF-Serving-compatible REST API (`tfmarl.serving.rest`) against a real export."""

import base64
import http.client
import json
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tfmarl.serving import ModelServer

NAME = "cycle"


@pytest.fixture(scope="module")
def exported_v1(exported_cycle):
    assert exported_cycle.parent.name == NAME
    return exported_cycle  # conftest.py: one export, shared by the serving tests and never written to


@pytest.fixture(scope="module")
def saved_model(exported_v1):
    return tf.saved_model.load(str(exported_v1)).signatures["serving_default"]


@pytest.fixture(scope="module")
def server(exported_v1):
    srv = ModelServer(exported_v1.parent, poll_seconds=0, max_body_bytes=64 * 1024, read_timeout=1.0)
    srv.start(port=0)
    yield srv
    srv.stop()


def call(port, method, path, body=None, headers=None, conn=None):
    """One request with the exact ``path`` given; returns (status, parsed JSON, response headers)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None), dict(response.getheaders())
    finally:
        if own:
            conn.close()


def direct(saved_model, histories):
    """The SavedModel's answer for ``histories`` right-padded with "" (what the server must equal)."""
    width = max(1, max(len(h) for h in histories))
    out = saved_model(history=tf.constant([list(h) + [""] * (width - len(h)) for h in histories]))
    return out["item_ids"].numpy().astype(str).tolist(), out["scores"].numpy()


HISTORIES = [["m3", "m4", "m5"], ["m9"], ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"], ["m20", "bogus", "m21"]]


# --- good requests -----------------------------------------------------------------------------


def test_row_format_equals_the_saved_model(server, saved_model):
    instances = [{"history": HISTORIES[0]}, HISTORIES[1], {"history": HISTORIES[2]}, HISTORIES[3]]
    status, out, headers = call(server.port, "POST", f"/v1/models/{NAME}:predict", {"instances": instances})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert list(out) == ["predictions"] and len(out["predictions"]) == 4
    ids, scores = direct(saved_model, HISTORIES)
    for i, prediction in enumerate(out["predictions"]):
        assert sorted(prediction) == ["item_ids", "scores"]
        assert prediction["item_ids"] == ids[i]
        np.testing.assert_array_equal(np.float32(prediction["scores"]), scores[i])
    assert out["predictions"][0]["item_ids"][0] == "m6"  # the cycle continues


def test_columnar_formats_equal_the_saved_model(server, saved_model):
    ids, scores = direct(saved_model, HISTORIES)
    for body in ({"inputs": {"history": HISTORIES}}, {"inputs": HISTORIES},
                 {"signature_name": "serving_default", "inputs": {"history": HISTORIES}}):
        status, out, _ = call(server.port, "POST", f"/v1/models/{NAME}:predict", body)
        assert status == 200, out
        assert list(out) == ["outputs"] and sorted(out["outputs"]) == ["item_ids", "scores"]
        assert out["outputs"]["item_ids"] == ids
        np.testing.assert_array_equal(np.float32(out["outputs"]["scores"]), scores)


def test_padding_b64_and_long_histories(server, saved_model):
    padded = {"instances": [["m3", "m4", "m5", "", "", ""], [{"b64": base64.b64encode(b"m9").decode()}]]}
    _, out, _ = call(server.port, "POST", f"/v1/models/{NAME}:predict", padded)
    ids, _ = direct(saved_model, [["m3", "m4", "m5"], ["m9"]])
    assert [p["item_ids"] for p in out["predictions"]] == ids
    long = [f"m{i}" for i in range(25)]  # longer than the model's window
    _, out, _ = call(server.port, "POST", f"/v1/models/{NAME}:predict", {"instances": [long]})
    assert out["predictions"][0]["item_ids"] == direct(saved_model, [long])[0][0]
    # Nearly the whole catalog (30 items) and an unknown id, padded: the K items left are found.
    nearly_all = [f"m{i}" for i in range(25)] + ["bogus"] + [""] * 20
    status, out, _ = call(server.port, "POST", f"/v1/models/{NAME}:predict", {"instances": [nearly_all]})
    assert status == 200, out
    assert sorted(out["predictions"][0]["item_ids"]) == sorted(f"m{i}" for i in range(25, 30))


def test_cold_start_only_request(server, saved_model):
    """Histories with no known id (empty, padding only, unknown ids) get the cold-start slate."""
    status, out, _ = call(server.port, "POST", f"/v1/models/{NAME}:predict", {"instances": [[], [""], ["nope"]]})
    assert status == 200, out
    slates = [p["item_ids"] for p in out["predictions"]]
    assert slates[0] == slates[1] == slates[2] and len(slates[0]) == 5


def test_version_specific_requests_and_status(server):
    status, out, _ = call(server.port, "POST", f"/v1/models/{NAME}/versions/1:predict", {"instances": [["m1"]]})
    assert status == 200 and out["predictions"][0]["item_ids"][0] == "m2"
    ok = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert call(server.port, "GET", f"/v1/models/{NAME}")[:2] == (200, {"model_version_status": [ok]})
    assert call(server.port, "GET", f"/v1/models/{NAME}/versions/1")[:2] == (200, {"model_version_status": [ok]})


def test_metadata(server):
    for path in (f"/v1/models/{NAME}/metadata", f"/v1/models/{NAME}/versions/1/metadata"):
        status, out, _ = call(server.port, "GET", path)
        assert status == 200
        assert out["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
        signature = out["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        history = signature["inputs"]["history"]
        assert history["dtype"] == "DT_STRING" and history["name"].endswith(":0")
        assert history["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}] * 2, "unknown_rank": False}
        assert signature["outputs"]["item_ids"]["dtype"] == "DT_STRING"
        assert signature["outputs"]["scores"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in signature["outputs"]["scores"]["tensor_shape"]["dim"]] == ["-1", "5"]


# --- errors ------------------------------------------------------------------------------------

PREDICT = f"/v1/models/{NAME}:predict"
MALFORMED = [
    (b"{not json", "JSON Parse error"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "not an object"),
    ({}, "Missing 'inputs' or 'instances' key"),
    ({"instance": [["m1"]]}, "Missing 'inputs' or 'instances' key"),
    ({"instances": [["m1"]], "inputs": [["m1"]]}, "only one of 'inputs' or 'instances'"),
    ({"instances": {"history": ["m1"]}}, "Expecting 'instances' to be an list"),
    ({"instances": []}, "'instances' is empty"),
    ({"instances": [{"histories": ["m1"]}]}, "missing named input 'history'"),
    ({"instances": [{"history": ["m1"], "user": "u1"}]}, "input tensor alias not found in signature: user"),
    ({"instances": [{"history": "m1"}]}, "must be a list of item ids"),
    ({"instances": ["m1", "m2"]}, "must be a list of item ids"),
    ({"instances": [[1, 2]]}, "item ids must be JSON strings"),
    ({"instances": [["m1", None]]}, "item ids must be JSON strings"),
    ({"instances": [["m1", ["m2"]]]}, "item ids must be JSON strings"),
    ({"instances": [[{"b64": "!!"}]]}, "invalid base64"),
    ({"instances": [["m1"] * 2000]}, "at most 1024 per history"),
    ({"instances": [["m1"]] * 1025}, "at most 1024 per request"),
    ({"inputs": {"hist": [["m1"]]}}, "input tensor alias not found in signature: hist"),
    ({"inputs": {}}, "Missing input 'history'"),
    ({"inputs": ["m1", "m2"]}, "list of lists"),
    ({"inputs": {"history": "m1"}}, "list of lists"),
    ({"inputs": []}, "list of lists"),
    ({"inputs": [[3.5]]}, "item ids must be JSON strings"),
    ({"instances": [["m1"]], "signature_name": "predict"}, 'Serving signature name: "predict" not found'),
    ({"instances": [["m1"]], "signature_name": 3}, "'signature_name' must be a string"),
]


@pytest.mark.parametrize("body, message", MALFORMED)
def test_malformed_predict_requests_are_400(server, body, message):
    status, out, headers = call(server.port, "POST", PREDICT, body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert list(out) == ["error"] and isinstance(out["error"], str)
    assert message in out["error"]


@pytest.mark.parametrize("method, path, status, message", [
    ("POST", f"/v1/models/other:predict", 404, "Servable not found for request: Latest(other)"),
    ("POST", f"/v1/models/{NAME}/versions/9:predict", 404, f"Servable not found for request: Specific({NAME}, 9)"),
    ("GET", "/v1/models/other", 404, "Could not find any versions of model other"),
    ("GET", f"/v1/models/{NAME}/versions/9", 404, f"Could not find version 9 of model {NAME}"),
    ("GET", "/v1/models/other/metadata", 404, "Servable not found"),
    ("GET", f"/v1/models/{NAME}/versions/9/metadata", 404, "Servable not found"),
    ("POST", f"/v1/models/{NAME}:classify", 400, "use :predict"),
    ("GET", "/", 404, "Malformed request"),
    ("GET", "/v1/models", 404, "Malformed request"),
    ("GET", f"/v1/models/{NAME}/labels/stable", 404, "Malformed request"),
    ("POST", f"/v1/models/{NAME}:explain", 404, "Malformed request"),
    ("GET", f"/v1/models/{NAME}:predict", 405, "use POST"),
    ("POST", f"/v1/models/{NAME}", 405, "use GET"),
    ("PUT", f"/v1/models/{NAME}/metadata", 405, "use GET"),
    ("DELETE", f"/v1/models/{NAME}", 405, "use GET"),
])
def test_unknown_models_versions_paths_and_methods(server, method, path, status, message):
    body = {"instances": [["m1"]]} if method in ("POST", "PUT") else None
    got, out, headers = call(server.port, method, path, body)
    assert (got, list(out)) == (status, ["error"]) and message in out["error"], out
    if status == 405:
        assert headers["Allow"] in ("GET", "POST")


def test_keep_alive_survives_errors(server):
    """One connection: errors before or after reading a body never desynchronise the next request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for method, path, body, status in [
                ("POST", "/v1/models/other:predict", {"instances": [["m1"]]}, 404),
                ("PUT", "/nowhere", {"x": 1}, 404),
                ("GET", f"/v1/models/{NAME}:predict", None, 405),
                ("POST", PREDICT, b"{bad", 400),
                ("POST", PREDICT, {"instances": [["m1"]]}, 200),
                ("GET", f"/v1/models/{NAME}", None, 200)] * 2:
            assert call(server.port, method, path, body, conn=conn)[0] == status, (method, path)
    finally:
        conn.close()


def raw_request(port, data: bytes) -> tuple[int, dict]:
    """Sends ``data`` as is on a fresh connection; returns (status, JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.connect()
        conn.sock.sendall(data)
        response = http.client.HTTPResponse(conn.sock, method="POST")
        response.begin()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_body_limits_and_timeouts(server):
    # Over the limit: refused from the header alone (the body is never read).
    status, out = raw_request(server.port, b"POST /v1/models/cycle:predict HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 99999999\r\n\r\n")
    assert status == 413 and "exceeds the limit" in out["error"]
    status, out = raw_request(server.port, b"POST /v1/models/cycle:predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and list(out) == ["error"]
    status, out = raw_request(server.port, b"POST /v1/models/cycle:predict HTTP/1.1\r\nHost: x\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}{}{\r\n0\r\n\r\n")
    assert status == 411
    status, out = raw_request(server.port, b"POST /v1/models/cycle:predict HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: -5\r\n\r\n")
    assert status == 400 and "Content-Length" in out["error"]
    started = time.monotonic()  # a body that never completes: 408 after the read timeout (1 s here)
    status, out = raw_request(server.port, b"POST /v1/models/cycle:predict HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 100\r\n\r\n{\"instances\"")
    assert status == 408 and time.monotonic() - started < 5
    status, out = raw_request(server.port, b"GET / x y HTTP/1.1\r\n\r\n")  # http.server's own errors are JSON too
    assert status == 400 and list(out) == ["error"]


TRAVERSALS = [
    ("GET", "/v1/models/../../etc/passwd"),
    ("GET", "/../../../../etc/passwd"),
    ("GET", "/etc/passwd"),
    ("GET", "//etc/passwd"),
    ("GET", "http://localhost/etc/passwd"),
    ("GET", f"/v1/models/{NAME}/../../../../etc/passwd"),
    ("GET", f"/v1/models/{NAME}/versions/1/../../../../../etc/passwd"),
    ("GET", "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
    ("GET", "/v1/models/%2Fetc%2Fpasswd/metadata"),
    ("GET", "/v1/models/..%2F..%2Fetc/versions/1/metadata"),
    ("GET", f"/v1/models/{NAME}/versions/..%2f1"),
    ("GET", f"/v1/models/{NAME}/versions/%2e%2e/metadata"),
    ("GET", f"/v1/models/{NAME}/versions/1%2f..%2f..%2fsaved_model.pb"),
    ("GET", f"/v1/models/{NAME}/versions/1/saved_model.pb"),
    ("GET", f"/v1/models/{NAME}/versions/-1"),
    ("GET", f"/v1/models/{NAME}/versions/1e3/metadata"),
    ("GET", f"/v1/models/{NAME}/versions/%31"),
    ("GET", f"/v1/models/{NAME}%00/metadata"),
    ("POST", f"/v1/models/{NAME}/versions/..%2f1:predict"),
    ("POST", f"/v1/models/{NAME}/versions/../1:predict"),
    ("POST", f"/v1/models/%2e%2e:predict"),
    ("POST", "/v1/models/..:predict"),
    ("POST", f"/v1/models/{NAME}/versions/1/..:predict"),
]

_AUDIT = {"on": False, "events": []}


def _audit(event, args):
    # The hook stays installed for the whole process: it must be cheap and never fail, even at
    # interpreter shutdown when the module globals may already be gone.
    if _AUDIT is None or threading is None or not _AUDIT["on"]:
        return
    if event in ("open", "os.listdir", "os.scandir") and "process_request_thread" in threading.current_thread().name:
        _AUDIT["events"].append((event, args[0] if args else None))


sys.addaudithook(_audit)


def test_path_safety_no_file_is_touched(server, tmp_path):
    _AUDIT["events"].clear()
    _AUDIT["on"] = True
    try:
        # The probe sees file access from request-handler threads (checked on a stand-in thread).
        probe = threading.Thread(target=(tmp_path / "probe").write_text, args=("x",),
                                 name="Thread-0 (process_request_thread)")
        probe.start()
        probe.join()
        assert [e for e, _ in _AUDIT["events"]] == ["open"]
        _AUDIT["events"].clear()
        for method, path in TRAVERSALS:
            body = {"instances": [["m1"]]} if method == "POST" else None
            status, out, _ = call(server.port, method, path, body)
            assert status in (400, 404), (path, status, out)
            assert list(out) == ["error"], path
            assert "root:" not in json.dumps(out) and str(server.base_path) not in out["error"]
    finally:
        _AUDIT["on"] = False
    assert _AUDIT["events"] == []  # request handling opened or listed no file at all


def test_server_starts_without_versions_and_validates_its_config(tmp_path):
    with pytest.raises(FileNotFoundError):
        ModelServer(tmp_path / "missing")
    (tmp_path / "bad name").mkdir()
    with pytest.raises(ValueError, match="model name"):
        ModelServer(tmp_path / "bad name")
    empty = tmp_path / "empty"
    empty.mkdir()
    with ModelServer(empty, poll_seconds=0) as server:
        status, out, _ = call(server.port, "GET", "/v1/models/empty")
        assert status == 404 and "Could not find any versions" in out["error"]
        assert call(server.port, "POST", "/v1/models/empty:predict", {"instances": [[]]})[0] == 404


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_clients(server, saved_model):
    expected = {i: direct(saved_model, [h])[0][0] for i, h in enumerate(HISTORIES)}
    errors, done = [], []

    def client(t):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # kept alive
        try:
            for r in range(10):
                i = (t + r) % len(HISTORIES)
                body = {"instances": [HISTORIES[i]]} if r % 2 else {"inputs": {"history": [HISTORIES[i]]}}
                status, out, _ = call(server.port, "POST", PREDICT, body, conn=conn)
                got = out["predictions"][0]["item_ids"] if r % 2 else out["outputs"]["item_ids"][0]
                if status != 200 or got != expected[i]:
                    errors.append((status, out))
                done.append(1)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(done) == 160

