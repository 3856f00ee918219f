"""Argument checks that calibrate, ood and metrics share: rates in (0, 1), label vectors, finite matrices.

A leaf (numpy and cellnet.errors only), so the calibration modules can all use them without importing each other.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from cellnet.errors import CalibrationError, ConfigError


def check_coverage(coverage: float) -> float:
    """`coverage` as a float in (0, 1); the message names the CLI flag because that is where users set it."""
    if isinstance(coverage, bool) or not isinstance(coverage, numbers.Real) or not 0.0 < coverage < 1.0:
        raise ConfigError(f"--coverage must be in (0, 1), got {coverage}")
    return float(coverage)


def check_false_alarm(false_alarm: float) -> float:
    """`false_alarm` (the OOD flag's rate on in-distribution images) as a float in (0, 1)."""
    if isinstance(false_alarm, bool) or not isinstance(false_alarm, numbers.Real) or not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    return float(false_alarm)


def check_labels(labels: Any, num_classes: int, n: int) -> np.ndarray:
    """`labels` as int64 (n,), every one in [0, num_classes)."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise CalibrationError(f"labels must be 1-D with one label per row ({n}), got shape {y.shape}")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise CalibrationError(f"labels must be in [0, {num_classes}), got {bad[:5].tolist()}")
    return y


def check_matrix(x: Any, name: str, columns: int | None = None) -> np.ndarray:
    """`x` as a finite float64 (N, columns) array."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or (columns is not None and a.shape[1] != columns):
        want = f"(N, {columns})" if columns is not None else "2-D"
        raise CalibrationError(f"{name} must be {want}, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise CalibrationError(f"{name} must be finite; {int((~np.isfinite(a)).any(axis=1).sum())} rows are not")
    return a
