"""Errors and warnings raised while reading interaction data."""

from __future__ import annotations


class DataError(ValueError):
    """Malformed input data. The message names the file, line or column and the problem.

    Attributes:
      path: file the problem was found in (or None for in-memory data).
      line: 1-based line number in that file, when one line is to blame.
      column: column name, when one column is to blame.
      problem: the problem alone, without the location.
    """

    def __init__(self, problem: str, *, path=None, line: int | None = None, column: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.problem = problem
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}" if where else problem)


class DataWarning(UserWarning):
    """Suspicious but usable input data, e.g. duplicate interactions that were kept."""
