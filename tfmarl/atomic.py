"""Atomic file writes: write beside the target, flush to disk, then rename over it.

A reader (or a crash) never sees half a file: the target holds either the old content or the new.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; on success it is fsynced and renamed to ``path``,
    on failure removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_savez(path, arrays: dict) -> None:
    """``np.savez`` of ``arrays`` to ``path`` (which keeps its name: no ``.npz`` is appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
