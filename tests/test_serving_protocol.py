"""REST request parsing and answers (`tfmarl.serving.protocol`), limits and error codes, without a server."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tfmarl.serving.errors import HTTP_STATUS, Code, RequestError
from tfmarl.serving.limits import Limits
from tfmarl.serving.protocol import format_response, pad_histories, parse_predict_request


def parse(payload, **limits):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_predict_request(body, Limits(**limits) if limits else None)


def test_row_and_columnar_bodies():
    assert parse({"instances": [{"history": ["a", "b"]}, ["c"], []]}) == ([[b"a", b"b"], [b"c"], []], "row")
    assert parse({"inputs": {"history": [["a"], ["b", "c"]]}}) == ([[b"a"], [b"b", b"c"]], "columnar")
    assert parse({"inputs": [["a"]], "signature_name": ""}) == ([[b"a"]], "columnar")
    assert parse({"instances": [[{"b64": "bTk="}, "é"]]})[0] == [[b"m9", "é".encode()]]


def test_limits_apply_to_batch_and_history():
    assert parse({"instances": [["a"]] * 3}, max_batch_size=3)[0] == [[b"a"]] * 3
    with pytest.raises(RequestError, match="4 instances; at most 3 per request") as e:
        parse({"instances": [["a"]] * 4}, max_batch_size=3)
    assert (e.value.code, e.value.status) == (Code.INVALID_ARGUMENT, 400)
    with pytest.raises(RequestError, match="4 histories; at most 3 per request"):
        parse({"inputs": [["a"]] * 4}, max_batch_size=3)
    with pytest.raises(RequestError, match="instance 1: history of 3 ids; at most 2 per history"):
        parse({"instances": [["a"], ["a", "b", "c"]]}, max_history_length=2)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="max_batch_size must be a positive integer"):
            Limits(max_batch_size=bad)


def test_pad_histories_drops_trailing_padding_then_pads():
    array = pad_histories([[b"a", b"", b"b", b"", b""], [], [b""]])
    assert array.dtype == object and array.tolist() == [[b"a", b"", b"b"], [b"", b"", b""], [b"", b"", b""]]
    assert pad_histories([[], [b""]]).shape == (2, 1)  # the model always gets one column


def test_format_response_rows_and_columns():
    outputs = {"scores": np.array([[0.5, 0.25]], np.float32), "item_ids": np.array([[b"x", b"\xff"]], object)}
    assert format_response(outputs, "row") == {"predictions": [{"item_ids": ["x", "\ufffd"], "scores": [0.5, 0.25]}]}
    assert format_response(outputs, "columnar") == {"outputs": {"item_ids": [["x", "\ufffd"]], "scores": [[0.5, 0.25]]}}
    assert format_response({"scores": outputs["scores"]}, "row") == {"predictions": [[0.5, 0.25]]}
    with pytest.raises(ValueError, match="kind"):
        format_response(outputs, "rows")


def test_request_error_codes_map_to_tf_servings_http_statuses():
    assert [RequestError(c, "m").status for c in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION,
                                                  Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE, Code.INTERNAL)] \
        == [400, 404, 400, 429, 503, 500]
    assert RequestError(Code.RESOURCE_EXHAUSTED, "big", http_status=413).status == 413
    assert set(HTTP_STATUS) == set(Code) - {Code.OK}
    with pytest.raises(ValueError):
        RequestError(Code.OK, "not an error")
    with pytest.raises(ValueError):
        RequestError(42, "no such code")


def test_contract_and_protocol_import_without_tensorflow():
    code = ("import sys; import tfmarl.contract, tfmarl.serving.protocol, tfmarl.serving.limits; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
