"""The synthetic generator: deterministic, shaped like the contract says, dirt labelled in the ids, and learnable
by a CNN but not by colour statistics alone."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

import cellnet.data.synthetic as synthetic
from cellnet.constants import PBC_CLASSES, PBC_COUNTS
from cellnet.data.synthetic import SYNTHETIC_DEFAULTS, generate, render

ID = re.compile(r"^synthetic/(\d{6})(?:~(exact|near|conflict)-of-(\d{6})|~(outlier))?$")


def test_same_seed_same_arrays_and_contract_shapes() -> None:
    a = generate(300, 32, seed=3)
    b = generate(300, 32, seed=3)
    for field in ("images", "labels", "ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.images.shape == (300, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.labels.shape == (300,) and a.labels.dtype == np.int64
    assert a.classes == PBC_CLASSES and a.groups is None
    assert list(a.ids[:3]) == ["synthetic/000000", "synthetic/000001", "synthetic/000002"]
    assert len(set(a.ids)) == 300
    # Every image is different from every other, and another seed gives other images.
    flat = a.images.reshape(300, -1)
    assert len(np.unique(flat, axis=0)) == 300
    assert not np.array_equal(a.images, generate(300, 32, seed=4).images)


def test_image_i_depends_only_on_its_own_label_and_index(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.arange(300) % len(PBC_CLASSES)
    whole = render(labels, 24, seed=9)
    np.testing.assert_array_equal(render(labels[:270], 24, seed=9), whole[:270])  # any prefix, across blocks
    other = labels.copy()
    other[::2] = (other[::2] + 3) % len(PBC_CLASSES)  # change every other label: the rest must not move
    np.testing.assert_array_equal(render(other, 24, seed=9)[1::2], whole[1::2])
    monkeypatch.setattr(synthetic, "_CHUNK", 5)  # how many images are painted together must not matter
    np.testing.assert_array_equal(render(labels, 24, seed=9), whole)


def test_class_frequencies_follow_pbc_or_the_given_counts() -> None:
    data = generate(2000, 16, seed=0)
    expected = np.asarray(PBC_COUNTS) / sum(PBC_COUNTS) * 2000
    assert np.all(np.abs(data.class_counts() - expected) <= 1)
    balanced = generate(800, 16, seed=0, class_counts=[1] * 8)
    assert balanced.class_counts().tolist() == [100] * 8
    only_two = generate(50, 16, seed=0, class_counts=[0, 1, 0, 0, 0, 0, 0, 1])
    assert only_two.class_counts().tolist() == [0, 25, 0, 0, 0, 0, 0, 25]


@pytest.mark.parametrize("size", [16, 48, 128])
def test_any_image_size_renders_a_smear(size: int) -> None:
    data = generate(40, size, seed=1)
    assert data.images.shape == (40, size, size, 3) and data.image_size == size
    # A pale pink/cream slide: bright, with more red than blue in the median pixel; dark purple nuclei somewhere.
    median = np.median(data.images.reshape(-1, 3), axis=0)
    assert median.min() > 150 and median[0] > median[2]
    assert data.images.min() < 100


def test_injected_rows_carry_their_provenance() -> None:
    n = 400
    data = generate(n, 32, seed=5, duplicate_fraction=0.05, conflict_fraction=0.02, outlier_fraction=0.02)
    assert len(data) == n + 20 + 8 + 8
    assert len(set(data.ids)) == len(data)
    by_index = {}
    parsed = []
    for row, id_ in enumerate(data.ids):
        m = ID.match(id_)
        assert m, id_
        by_index[int(m.group(1))] = row
        parsed.append((row, m.group(2) or m.group(4), None if m.group(3) is None else int(m.group(3))))
    assert sorted(by_index) == list(range(len(data)))
    clean_rows = [by_index[i] for i in range(n)]
    assert clean_rows == sorted(clean_rows)  # clean rows keep their id order; dirt is inserted in between
    assert max(clean_rows) > n  # ... and not only appended at the end

    kinds = [kind for _, kind, _ in parsed if kind]
    assert {k: kinds.count(k) for k in set(kinds)} == {"exact": 10, "near": 10, "conflict": 8, "outlier": 8}

    def coarse(row: int) -> np.ndarray:  # 4×4-pixel block means: what a perceptual hash looks at
        return data.images[row].reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))

    typical = np.median([np.abs(coarse(a) - coarse(b)).mean() for a, b in zip(clean_rows[:50], clean_rows[50:100])])
    for row, kind, src in parsed:
        if src is None:
            continue
        assert src < n
        source = by_index[src]
        distance = np.abs(coarse(row) - coarse(source)).mean()
        if kind == "exact":
            assert np.array_equal(data.images[row], data.images[source]) and data.labels[row] == data.labels[source]
        elif kind == "near":
            assert not np.array_equal(data.images[row], data.images[source])
            assert distance < 0.6 * typical and data.labels[row] == data.labels[source]
        else:
            assert distance < 0.6 * typical and data.labels[row] != data.labels[source]
    clean = data.images[clean_rows].reshape(n, -1)
    for row, kind, _ in parsed:
        if kind == "outlier":
            assert not (clean == data.images[row].reshape(1, -1)).all(axis=1).any()


def test_defaults_are_valid_arguments() -> None:
    assert SYNTHETIC_DEFAULTS["n"] == 2000
    data = generate(image_size=16, **SYNTHETIC_DEFAULTS)  # type: ignore[arg-type]
    assert len(data) == 2000 + 40 + 10 + 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -5}, "n .* positive integer, got -5"),
        ({"n": 0}, "n .* positive integer, got 0"),
        ({"n": 2.5}, "positive integer, got 2.5"),
        ({"image_size": 15}, "image_size must be an integer >= 16 pixels, got 15"),
        ({"duplicate_fraction": 1.0}, r"duplicate_fraction must be in \[0, 1\), got 1.0"),
        ({"conflict_fraction": -0.1}, r"conflict_fraction must be in \[0, 1\), got -0.1"),
        ({"outlier_fraction": 2}, r"outlier_fraction must be in \[0, 1\), got 2"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"class_counts": [1, 2, 3]}, "class_counts must be 8 non-negative numbers"),
        ({"class_counts": [1, 1, 1, 1, 1, 1, 1, -1]}, "class_counts must be 8 non-negative"),
        ({"class_counts": [0] * 8}, "positive sum"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(**{"n": 10, "image_size": 16, **kwargs})


def _colour_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    q = images.astype(np.int64) // (256 // bins)
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.stack([np.bincount(i.ravel(), minlength=bins**3) for i in index]).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def test_morphology_is_learnable_beyond_colour_statistics() -> None:
    """A tiny CNN must clearly beat a linear model on colour histograms: the classes differ in shape, not just hue."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train, test = generate(1200, 32, seed=11), generate(600, 32, seed=12)
        logreg = LogisticRegression(max_iter=2000, C=10.0).fit(_colour_histograms(train.images), train.labels)
        colour_accuracy = float(np.mean(logreg.predict(_colour_histograms(test.images)) == test.labels))

        def tensors(images: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5

        x, y, x_test = tensors(train.images), torch.from_numpy(train.labels), tensors(test.images)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(64, len(PBC_CLASSES)),
        )  # fmt: skip
        epochs, batch = 6, 64
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * -(-len(y) // batch))
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(y))
            for start in range(0, len(y), batch):
                idx = order[start : start + batch]
                xb = torch.rot90(x[idx], int(torch.randint(4, ())), (2, 3))  # cells have no preferred orientation
                loss = nn.functional.cross_entropy(net(xb), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        net.eval()
        with torch.no_grad():
            cnn_accuracy = float((net(x_test).argmax(1).numpy() == test.labels).mean())
    finally:
        torch.set_num_threads(threads)
    print(f"CNN accuracy {cnn_accuracy:.3f}, colour-histogram logistic regression {colour_accuracy:.3f}")
    assert cnn_accuracy > 0.6  # chance is 1/8 (about 0.2 for the majority class)
    assert cnn_accuracy >= colour_accuracy + 0.1
