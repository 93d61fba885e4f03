"""TF Serving's REST predict format: parsing request bodies and formatting answers (numpy only).

Requests are ``{"instances": [...]}`` (row format: each instance ``{"history": [ids]}`` or, as the
signature has one input, just ``[ids]``) or ``{"inputs": {"history": [[ids], ...]}}`` /
``{"inputs": [[ids], ...]}`` (columnar), with an optional ``"signature_name"`` (only
``"serving_default"``). Ids are JSON strings; ``{"b64": "..."}`` is accepted too, as TF Serving does
for string tensors. Unlike TF Serving, histories of different lengths may share a request: they are
right-padded with "" (the contract's padding id), after dropping their trailing "".

Answers are TF Serving's: ``{"predictions": [{"item_ids": [...], "scores": [...]}, ...]}`` for rows,
``{"outputs": {"item_ids": [[...]], "scores": [[...]]}}`` for columns. No TensorFlow here.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from tfmarl.contract import INPUT_NAME, PAD_ID, SIGNATURE_KEY
from tfmarl.serving.errors import Code, RequestError, clip
from tfmarl.serving.limits import Limits

_PAD = PAD_ID.encode("utf-8")


def _bad(message: str) -> RequestError:
    return RequestError(Code.INVALID_ARGUMENT, message)


def _item_id(value, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}: invalid base64 in {{\"b64\": ...}}") from None
    raise _bad(f"{where}: item ids must be JSON strings, got {clip(json.dumps(value))}")


def _history(value, where: str, limits: Limits) -> list[bytes]:
    if not isinstance(value, list):
        raise _bad(f"{where}: '{INPUT_NAME}' must be a list of item ids (strings), got {clip(json.dumps(value))}")
    limits.check_history(len(value), where)
    return [_item_id(v, f"{where}, position {j}") for j, v in enumerate(value)]


def _rows(instances, limits: Limits) -> list[list[bytes]]:
    if not isinstance(instances, list):
        raise _bad("Expecting 'instances' to be an list/array")
    if not instances:
        raise _bad("'instances' is empty: expecting at least one instance")
    limits.check_batch(len(instances), "instances")
    rows = []
    for i, instance in enumerate(instances):
        where = f"instance {i}"
        if isinstance(instance, dict):
            if INPUT_NAME not in instance:
                raise _bad(f"{where}: missing named input '{INPUT_NAME}' (the signature's only input)")
            extra = sorted(set(instance) - {INPUT_NAME})
            if extra:
                raise _bad(f"{where}: input tensor alias not found in signature: {clip(', '.join(extra))}. "
                           f"Inputs expected to be in the set {{{INPUT_NAME}}}.")
            instance = instance[INPUT_NAME]
        rows.append(_history(instance, where, limits))
    return rows


def _columns(inputs, limits: Limits) -> list[list[bytes]]:
    if isinstance(inputs, dict):
        extra = sorted(set(inputs) - {INPUT_NAME})
        if extra:
            raise _bad(f"input tensor alias not found in signature: {clip(', '.join(extra))}. "
                       f"Inputs expected to be in the set {{{INPUT_NAME}}}.")
        if INPUT_NAME not in inputs:
            raise _bad(f"Missing input '{INPUT_NAME}' in 'inputs'")
        inputs = inputs[INPUT_NAME]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(r, list) for r in inputs):
        raise _bad(f"'inputs' must hold '{INPUT_NAME}' as a non-empty list of histories (a list of lists of "
                   f"item ids) of shape [batch, length]")
    limits.check_batch(len(inputs), "histories")
    return [_history(r, f"history {i}", limits) for i, r in enumerate(inputs)]


def parse_predict_request(body: bytes, limits: Limits | None = None):
    """Parses a predict request body; returns (histories as lists of bytes, "row" or "columnar").

    Raises `RequestError` (INVALID_ARGUMENT, HTTP 400) on anything TF Serving would refuse, in its
    words where it has them, and on requests beyond ``limits`` (default: `Limits()`).
    """
    limits = limits or Limits()
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _bad(f"JSON Parse error: the body is not UTF-8 ({e.reason})") from None
    except (ValueError, RecursionError) as e:
        raise _bad(f"JSON Parse error: {clip(e, 200)}") from None
    if not isinstance(payload, dict):
        raise _bad("JSON Value is not an object: expecting {\"instances\": [...]} or {\"inputs\": ...}")
    signature = payload.get("signature_name", SIGNATURE_KEY)
    if not isinstance(signature, str):
        raise _bad("'signature_name' must be a string")
    if signature not in (SIGNATURE_KEY, ""):
        raise _bad(f"Serving signature name: \"{clip(signature)}\" not found in signature def")
    if "instances" in payload and "inputs" in payload:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys exist")
    if "instances" in payload:
        return _rows(payload["instances"], limits), "row"
    if "inputs" in payload:
        return _columns(payload["inputs"], limits), "columnar"
    raise _bad("Missing 'inputs' or 'instances' key")


def pad_histories(rows: list[list[bytes]]) -> np.ndarray:
    """Drops trailing "" then right-pads with "" to [batch, max(1, longest)] (object array of bytes)."""
    trimmed = []
    for row in rows:
        end = len(row)
        while end and row[end - 1] == _PAD:
            end -= 1
        trimmed.append(row[:end])
    width = max(1, max(len(r) for r in trimmed))
    array = np.full((len(trimmed), width), _PAD, dtype=object)
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
    if kind not in ("row", "columnar"):
        raise ValueError(f"kind must be 'row' or 'columnar', got {kind!r}")
    names = sorted(outputs)
    values = {name: _json_value(outputs[name]) for name in names}
    if kind == "columnar":
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    batch = len(values[names[0]])
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{name: values[name][i] for name in names} for i in range(batch)]}
