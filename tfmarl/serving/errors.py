"""Serving errors: one exception for both protocols, with TF Serving's status codes.

A `RequestError` carries a canonical `Code` (TensorFlow's error codes, which are gRPC's status codes
by number) and the HTTP status TF Serving's REST API answers for it. gRPC answers the code; REST the
HTTP status, except where HTTP has its own (405, 408, 411, 413), given explicitly.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical error codes (``tensorflow/core/protobuf/error_codes.proto`` = ``grpc.StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# Code -> HTTP status, as TF Serving's REST API maps them.
HTTP_STATUS = {Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400, Code.DEADLINE_EXCEEDED: 504,
               Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403,
               Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409,
               Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500, Code.UNAVAILABLE: 503,
               Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401}


class RequestError(Exception):
    """A refused request: ``code`` (a `Code`), ``message``, and ``status`` (its HTTP status)."""

    def __init__(self, code: Code | int, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.code = Code(code)
        if self.code is Code.OK:
            raise ValueError("a RequestError cannot have code OK")
        self.message = message
        self.status = int(http_status) if http_status is not None else HTTP_STATUS[self.code]


def clip(text, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters: request data echoed in errors and logs stays short."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
