"""A quiet console for the `tfmarl` command: tfmarl's own lines on the terminal, the rest in a log.

TensorFlow's C++ runtime writes straight to file descriptor 2 (CUDA probes on a CPU machine, oneDNN
notices; some at import time, before ``TF_CPP_MIN_LOG_LEVEL`` could be read from Python), and the
Python side of TensorFlow, TF-Agents, gym and the ``warnings`` module write to ``sys.stderr``, which
is the same descriptor. So `QuietConsole` points descriptor 2 at a log file for the duration of the
command (from its very start: reading a configuration can import TensorFlow), and restores it
afterwards; tfmarl's own lines go to standard output, which it leaves alone. The caller prints
errors after the descriptor is restored. `quiet_startup` does the same for notebooks and scripts.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time
import traceback


class QuietConsole:
    """Context manager: standard error (descriptor 2 and ``sys.stderr``) goes to a log file for the
    duration of the block, unless ``verbose``, in which case nothing changes.

    The folder of the log is often known only after the configuration is read, and reading it can
    already import TensorFlow, so the block starts with a temporary file; `keep_in` moves what it
    holds to ``<log_dir>/<name>-<YYYYmmdd-HHMMSS>.log`` and carries on there. A temporary log that
    was never moved is deleted at the end of a block that succeeded, and kept when it failed.

    Args:
      name: the log file's prefix (the command's name).
      verbose: leave standard error on the terminal.
    """

    def __init__(self, name: str, *, verbose: bool = False):
        self.name, self.verbose = name, verbose
        self.path = None  # the log file now written, once the block has begun
        self._saved_fd = None
        self._file = None
        self._settled = False

    def __enter__(self):
        if self.verbose:
            return self
        _flush(sys.stderr)
        handle, path = tempfile.mkstemp(prefix=f"tfmarl-{self.name}-", suffix=".log")
        self.path, self._file = pathlib.Path(path), os.fdopen(handle, "ab", buffering=0)
        self._saved_fd = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def keep_in(self, log_dir) -> pathlib.Path | None:
        """Moves the log into ``log_dir`` (created) and writes there from now on; returns its path."""
        if self.verbose or self._saved_fd is None:
            return self.path
        log_dir = pathlib.Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = log_dir / f"{self.name}-{stamp}.log"
        if path.exists():  # a second command in the same second
            path = log_dir / f"{self.name}-{stamp}-{os.getpid()}.log"
        _flush(sys.stderr)
        final = open(path, "ab", buffering=0)
        final.write(self.path.read_bytes())
        os.dup2(final.fileno(), 2)
        self._file.close()
        self.path.unlink()
        self.path, self._file, self._settled = path, final, True
        return path

    def __exit__(self, exc_type, exc, tb):
        self.restore()
        if not self._settled and exc_type is None and self.path is not None:
            self.path.unlink(missing_ok=True)  # nothing went wrong and nobody asked for it
            self.path = None
        return False

    def discard(self) -> None:
        """Deletes a temporary log that was never moved (an expected error, e.g. a bad config)."""
        if not self._settled and self.path is not None and self._saved_fd is None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def restore(self) -> None:
        """Points descriptor 2 back at the terminal (idempotent)."""
        if self._saved_fd is None:
            return
        _flush(sys.stderr)
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None
        self._file.close()

    def notice(self) -> str:
        """The one line that says where the rest goes ("" when verbose)."""
        if self.verbose or self.path is None:
            return ""
        return f"third-party warnings and TensorFlow logs: {self.path} (--verbose shows them here)"

    def record(self, text: str) -> None:
        """Appends ``text`` to the log file (e.g. a traceback, after the descriptor is restored)."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text if text.endswith("\n") else text + "\n")


def _flush(stream) -> None:
    try:
        stream.flush()
    except (AttributeError, ValueError, OSError):
        pass  # a closed or replaced stream has nothing to flush


def describe_failure(error: BaseException, log_path=None, *, frames: int = 3) -> str:
    """What the terminal shows for an unexpected exception: its type and message, the chain of
    causes, the last ``frames`` frames of its traceback, and where the full one is."""
    lines = [f"tfmarl: error: {type(error).__name__}: {error}"]
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    while cause is not None:
        lines.append(f"  caused by {type(cause).__name__}: {cause}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    stack = traceback.extract_tb(error.__traceback__)[-frames:]
    if stack:
        lines.append("  last frames (most recent call last):")
        lines.extend("  " + line.rstrip("\n") for line in traceback.format_list(stack))
    if log_path is not None:
        lines.append(f"  full traceback and third-party logs: {log_path}")
    return "\n".join(lines)


def quiet_startup(log_dir) -> pathlib.Path:
    """Loads TensorFlow and TF-Agents and starts TensorFlow's devices with standard error in
    ``<log_dir>/startup-<time>.log``; returns its path. For notebooks and scripts, where no
    `QuietConsole` runs: TensorFlow's one-time C++ notices (the CUDA probe on a CPU machine, oneDNN's)
    and gym's banner are printed then, once per process, and not again. Later warnings still show.
    """
    import contextlib

    console = QuietConsole("startup")
    # A Jupyter kernel's sys.stderr is not descriptor 2: point Python's writes at it for the block.
    python_stderr = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    with console, contextlib.redirect_stderr(python_stderr):
        import tfmarl  # noqa: F401  (selects tf_keras before TensorFlow loads)
        import tensorflow as tf
        import tf_agents  # noqa: F401  (imports gym, which prints its banner)

        tf.zeros(1)  # device set-up: the CUDA probe
        tf.transpose(tf.zeros([1, 1], tf.int32))  # the first int32 transpose: oneDNN's int32 notice
        console.keep_in(log_dir)
    return console.path
