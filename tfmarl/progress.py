"""Progress reporting that suits where the output goes.

On a terminal, a tqdm bar redrawn in place. Anywhere else (a log file, CI, a pipe, a notebook), a
carriage-return bar would leave thousands of fragments, so the same loop prints a plain line every
``every_fraction`` of the work or every ``every_seconds`` seconds, whichever comes first, and one at
the end. Output goes to standard output: that is tfmarl's console (the CLI sends third-party
chatter on standard error to a log file, see `tfmarl.cli.console`).
"""

from __future__ import annotations

import sys
import time


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class PlainProgress:
    """Iterates ``iterable`` and prints ``"   <description>: 300/1,000 steps (30%), 12.5 steps/s,
    56s left"`` lines: at each ``every_fraction`` of ``total`` (counting from ``initial``, the
    position a resumed loop starts at) or after ``every_seconds`` without a line, and when done.

    Args:
      iterable: what to iterate (its items are yielded unchanged).
      total: the position at the end (default ``initial + len(iterable)``).
      initial: the position before the first item.
      clock: returns seconds (for tests).
    """

    def __init__(self, iterable, *, total: int | None = None, initial: int = 0, description: str = "",
                 unit: str = "step", stream=None, every_fraction: float = 0.1, every_seconds: float = 30.0,
                 clock=time.monotonic):
        if not 0 < every_fraction <= 1:
            raise ValueError(f"every_fraction must be in (0, 1], got {every_fraction}")
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be positive, got {every_seconds}")
        if total is None:
            try:
                total = initial + len(iterable)
            except TypeError:
                total = None  # unknown length: time-based lines only
        self.iterable, self.total, self.initial = iterable, total, initial
        self.description, self.unit = description, unit
        self.stream = stream
        self.every_fraction, self.every_seconds, self.clock = every_fraction, every_seconds, clock

    def _line(self, position: int, elapsed: float, final: bool) -> str:
        done = position - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"   {self.description}: " if self.description else "   "
        count = f"{position:,}/{self.total:,}" if self.total else f"{position:,}"
        text = f"{head}{count} {self.unit}s"
        if self.total:
            text += f" ({100 * position / self.total:.0f}%)"
        if final:
            return f"{text} in {_duration(elapsed)}, {rate:,.1f} {self.unit}s/s"
        text += f", {rate:,.1f} {self.unit}s/s"
        if self.total and rate > 0:
            text += f", {_duration((self.total - position) / rate)} left"
        return text

    def __iter__(self):
        stream = self.stream or sys.stdout
        began = last_line = self.clock()
        span = (self.total - self.initial) if self.total else 0
        step = max(span * self.every_fraction, 1) if span > 0 else None
        next_mark = self.initial + step if step else None
        position = self.initial
        for item in self.iterable:
            yield item
            position += 1
            now = self.clock()
            if self.total and position >= self.total:
                continue  # the final line reports it
            if (next_mark is not None and position >= next_mark) or now - last_line >= self.every_seconds:
                print(self._line(position, now - began, final=False), file=stream, flush=True)
                last_line = now
                # Skip a mark less than half a step ahead: a time-based line just reported it.
                while next_mark is not None and next_mark < position + step / 2:
                    next_mark += step
        if position > self.initial:
            print(self._line(position, self.clock() - began, final=True), file=stream, flush=True)


def progress(iterable, *, total: int | None = None, initial: int = 0, description: str = "", unit: str = "step",
             enabled: bool = True, stream=None, **plain):
    """``iterable`` with progress shown on ``stream`` (default standard output): a tqdm bar when
    the stream is a terminal, `PlainProgress` lines otherwise, nothing when not ``enabled``.
    ``plain`` goes to `PlainProgress` (``every_fraction``, ``every_seconds``)."""
    if not enabled:
        return iterable
    stream = stream or sys.stdout
    if is_terminal(stream):
        from tqdm.std import tqdm  # not tqdm.auto: its notebook widget needs ipywidgets

        return tqdm(iterable, total=total, initial=initial, desc=description, unit=unit, file=stream,
                    dynamic_ncols=True)
    return PlainProgress(iterable, total=total, initial=initial, description=description, unit=unit, stream=stream,
                         **plain)


def epoch_lines(epochs: int, *, metrics=("loss", "val_ndcg@10"), stream=None, clock=time.monotonic):
    """A Keras callback printing one short line per epoch (``"   epoch 3/15: loss 5.6384,
    val_ndcg@10 0.1233 (6s)"``): for `fit` with ``verbose=0`` when the output is not a terminal,
    where Keras' own lines list every metric. Metrics missing from an epoch's logs are skipped."""
    import tensorflow as tf

    began = {}

    def on_epoch_begin(epoch, logs=None):
        began["t"] = clock()

    def on_epoch_end(epoch, logs=None):
        logs = logs or {}
        shown = ", ".join(f"{name} {float(logs[name]):.4f}" for name in metrics if name in logs)
        seconds = clock() - began.get("t", clock())
        print(f"   epoch {epoch + 1}/{epochs}: {shown} ({_duration(seconds)})", file=stream or sys.stdout, flush=True)

    return tf.keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)
