"""Validation of the arrays OPE inputs are made of: dtype, rank, rows, finiteness, distributions."""

from __future__ import annotations

import numpy as np

# Probability rows may come from float32 softmaxes over many arms: allow that much rounding.
SUM_ATOL = 1e-4
PROPENSITY_ATOL = 1e-6


def as_array(value, dtype, ndim: int, name: str) -> np.ndarray:
    try:
        value = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be convertible to {np.dtype(dtype).name}: {err}") from None
    if value.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {value.shape}")
    return value


def as_int_array(value, ndim: int, name: str) -> np.ndarray:
    raw = np.asarray(value)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        # Accept integral floats (e.g. read from a CSV), refuse 1.5 or NaN.
        if not np.issubdtype(raw.dtype, np.number) or not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise ValueError(f"{name} must hold integers, got dtype {raw.dtype}")
    return as_array(raw, np.int64, ndim, name)


def check_rows(value: np.ndarray, n: int, name: str) -> None:
    if value.shape[0] != n:
        raise ValueError(f"{name} has {value.shape[0]} rows but rewards has {n} (shape {value.shape})")


def check_finite(value: np.ndarray, name: str) -> None:
    finite = np.isfinite(value)
    if not finite.all():
        bad = ~finite.reshape(len(value), -1).all(axis=1)
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite: row {i} holds NaN or inf ({int(bad.sum())} bad rows)")


def check_distribution(probs: np.ndarray, name: str) -> None:
    """Rows of ``probs`` [n, A] must be probability distributions."""
    bad = ~np.all((probs >= 0) & (probs <= 1), axis=1)  # also catches NaN
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must lie in [0, 1]: row {i} holds {probs[i].tolist()}")
    sums = probs.sum(axis=1)
    bad = np.abs(sums - 1) > SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} rows must sum to 1: row {i} sums to {sums[i]!r}")
