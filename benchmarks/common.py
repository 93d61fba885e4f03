"""Shared helpers for the benchmark scripts (run from the repository root)."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(path, payload: dict) -> None:
    """Writes ``payload`` as indented JSON atomically (temp file + rename)."""
    from tfmarl.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)
