"""Leak-free splits: stratified by class, grouped by near-duplicate cluster, reproducible by seed."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from cellnet.errors import DataError


def folds(
    labels: np.ndarray,
    groups: np.ndarray | None,
    k: int,
    seed: int = 0,
    *,
    classes: tuple[str, ...] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, val_idx) pairs; no group straddles train and validation. groups=None: one group per image.

    `classes` only makes error messages name the class.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise DataError(f"number of folds must be >= 2, got {k}")
    _check_class_sizes(labels, k, "folds", classes)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise DataError(f"groups has shape {groups.shape} but labels has {labels.shape}")
    if len(np.unique(groups)) < k:
        raise DataError(f"only {len(np.unique(groups))} duplicate groups, cannot make {k} folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        (np.sort(train).astype(np.int64), np.sort(val).astype(np.int64))
        for train, val in splitter.split(np.zeros(len(labels)), labels, groups)
    ]


def holdout_split(
    labels: np.ndarray,
    groups: np.ndarray | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    classes: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One grouped, stratified (train_idx, val_idx): the first of round(1/val_fraction) folds."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    k = max(2, round(1.0 / val_fraction))
    return folds(labels, groups, k, seed, classes=classes)[0]


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """w_j = N / C_j (float32); a class with no images gets weight 0 (it never appears in a loss)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if len(counts) > num_classes:
        raise DataError(f"labels go up to {len(counts) - 1} but num_classes is {num_classes}")
    weights = np.divide(len(labels), counts, out=np.zeros_like(counts), where=counts > 0)
    return weights.astype(np.float32)


def _check_class_sizes(labels: np.ndarray, k: int, what: str, classes: tuple[str, ...] | None = None) -> None:
    values, counts = np.unique(labels, return_counts=True)
    small = [(int(v), int(c)) for v, c in zip(values, counts) if c < k]
    if small:
        v, c = small[0]
        name = repr(classes[v]) if classes is not None and v < len(classes) else f"with label {v}"
        raise DataError(f"class {name} has {c} images, fewer than the {k} {what} it must be split into")
