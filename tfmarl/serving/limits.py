"""Request bounds, the same for REST and gRPC: message size, batch size, history length."""

from __future__ import annotations

import dataclasses

from tfmarl.serving.errors import Code, RequestError

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a REST body or a gRPC message (gRPC's own default)
MAX_BATCH_SIZE = 1024
MAX_HISTORY_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds of one request. Beyond ``max_message_bytes``: REST 413, gRPC RESOURCE_EXHAUSTED (by
    gRPC itself); beyond the batch or history bound: REST 400, gRPC INVALID_ARGUMENT."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_batch_size: int = MAX_BATCH_SIZE
    max_history_length: int = MAX_HISTORY_LENGTH

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serving limit {field.name} must be a positive integer, got {value!r}")

    def check_batch(self, size: int, what: str = "histories") -> None:
        if size > self.max_batch_size:
            raise RequestError(Code.INVALID_ARGUMENT, f"{size} {what}; at most {self.max_batch_size} per request")

    def check_history(self, length: int, where: str) -> None:
        if length > self.max_history_length:
            raise RequestError(Code.INVALID_ARGUMENT, f"{where}: history of {length} ids; at most "
                                                      f"{self.max_history_length} per history")
