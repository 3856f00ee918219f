"""Folds are stratified, grouped (no duplicate cluster on both sides) and reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from cellnet.data import class_weights, folds, holdout_split
from cellnet.errors import DataError


def _labels_groups(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    groups = np.arange(n)
    clustered = rng.choice(n, size=n // 4, replace=False)  # a quarter of images join a small duplicate cluster
    groups[clustered] = clustered % 20 + n
    for g in np.unique(groups[clustered]):  # a duplicate cluster shares its label
        labels[groups == g] = labels[groups == g][0]
    return labels, groups


def test_folds_partition_and_keep_groups_together() -> None:
    labels, groups = _labels_groups()
    splits = folds(labels, groups, k=5, seed=0)
    assert len(splits) == 5
    seen = np.concatenate([val for _, val in splits])
    assert sorted(seen.tolist()) == list(range(len(labels)))  # every image validates exactly once
    for train, val in splits:
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
        assert not set(groups[train]) & set(groups[val])  # no cluster straddles train and validation
        share = np.bincount(labels[val], minlength=4) / len(val)
        assert np.allclose(share, np.bincount(labels, minlength=4) / len(labels), atol=0.08)  # stratified


def test_folds_deterministic_by_seed_and_without_groups() -> None:
    labels, groups = _labels_groups()
    a = folds(labels, groups, 5, seed=1)
    b = folds(labels, groups, 5, seed=1)
    c = folds(labels, groups, 5, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    plain = folds(labels, None, 4, seed=0)
    assert sorted(np.concatenate([v for _, v in plain]).tolist()) == list(range(len(labels)))


def test_small_class_error_names_the_class() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    with pytest.raises(DataError, match="class 'platelet' has 2 images, fewer than the 5 folds"):
        folds(labels, None, 5, seed=0, classes=("a", "b", "platelet"))
    with pytest.raises(DataError, match="class with label 2 has 2 images"):
        folds(labels, None, 3, seed=0)
    with pytest.raises(DataError, match="must be >= 2"):
        folds(labels, None, 1)


def test_holdout_split_grouped_and_stratified() -> None:
    labels, groups = _labels_groups()
    train, val = holdout_split(labels, groups, val_fraction=0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert 0.12 < len(val) / len(labels) < 0.28
    assert not set(groups[train]) & set(groups[val])
    assert set(labels[val]) == set(labels)
    again = holdout_split(labels, groups, 0.2, seed=0)
    assert np.array_equal(val, again[1])
    with pytest.raises(DataError, match="val_fraction"):
        holdout_split(labels, groups, 1.5)


def test_class_weights_inverse_frequency() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), num_classes=3)
    np.testing.assert_allclose(weights, [4 / 3, 4.0, 0.0])
    assert weights.dtype == np.float32
    with pytest.raises(DataError, match="num_classes is 2"):
        class_weights(np.array([0, 2]), num_classes=2)
