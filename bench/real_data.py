"""Real cells for the benchmarks: ../shared/data/pbc-sample (2,579 PBC JPEGs of 360x363 px, one folder per class).

    load_pbc(size, framing)  "full": the whole JPEG resized (what `cellnet`'s folder SOURCE does; the cell is ~1/5
                             of the frame) | "crop200": the centre 200x200 px, then resized (the MedMNIST framing;
                             the cell ~1.8x larger). Same ids in both framings, so a split applies to both.
    split(data, seed)        cleaned (duplicates, conflicts, outliers: computed on the full framing), then a
                             grouped stratified 80/20 split; nothing of the 20% is seen by anything that trains.
    design_split(size)       the inner 80/20 holdout of split 0's training part: where settings are chosen (other
                             seeds and framings: the same inner holdout of that split, for choices over seeds).
    FIRST_TRIAL              round 2's first trial of spaces/cpu_small.yaml (resnet10t from scratch) as TrainConfig
                             fields (device: cpu): the base the recipes of bench_pretrained/bench_robustness modify.

Never used by tests (tests must not depend on ../shared).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cellnet.constants import IMAGE_SUFFIXES
from cellnet.data.dataset import CellData

FIRST_TRIAL: dict[str, Any] = {
    "backbone": "resnet10t",
    "head_layers": 0,
    "dropout": 0.1,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "label_smoothing": 0.1,
    "aug_strength": 0.25,
    "batch_size": 64,
    "warmup_epochs": 1,
    "device": "cpu",
}

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pbc-sample"
FRAMINGS = ("full", "crop200")
CROP = 200


def _read(path: Path, size: int, framing: str) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if framing == "crop200":
            w, h = im.size
            left, top = (w - CROP) // 2, (h - CROP) // 2
            im = im.crop((left, top, left + CROP, top + CROP))
        return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def load_pbc(size: int = 64, framing: str = "full", root: Path = DEFAULT_DATA) -> CellData:
    """Every image of `root` (one subfolder per class) at `size` px in the given framing; ids = 'class/file'.
    Cached per process (a benchmark asks for the same framing many times; treat the result as read-only)."""
    from cellnet.data.sources import folder_classes

    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    folders, classes = folder_classes(sorted(p.name for p in root.iterdir() if p.is_dir()))
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    with ThreadPoolExecutor(8) as pool:
        images = np.stack(list(pool.map(lambda p: _read(p, size, framing), paths)))
    ids = np.array([f"{p.parent.name}/{p.name}" for p in paths])
    return CellData(images, np.array(labels, dtype=np.int64), classes, ids)


@functools.lru_cache(maxsize=2)
def cleaned_ids(size: int = 64, root: Path = DEFAULT_DATA) -> tuple[np.ndarray, np.ndarray]:
    """(ids kept by cellnet.data.clean on the full framing, their duplicate groups): one cleaning for both framings."""
    from cellnet.data import clean

    kept, _ = clean(load_pbc(size, "full", root))
    assert kept.groups is not None
    return kept.ids, kept.groups


def split(
    size: int = 64, seed: int = 0, framing: str = "full", root: Path = DEFAULT_DATA, test_fraction: float = 0.2
) -> tuple[CellData, CellData]:
    """(train, test): the cleaned cells in `framing`, grouped stratified split by `seed` (same ids in any framing)."""
    from cellnet.data import holdout_split

    data = load_pbc(size, framing, root)
    ids, groups = cleaned_ids(size, root)
    keep = np.flatnonzero(np.isin(data.ids, ids))
    data = data.subset(keep)
    order = {i: k for k, i in enumerate(ids)}
    data = replace(data, groups=groups[[order[i] for i in data.ids]])
    train_idx, test_idx = holdout_split(data.labels, data.groups, test_fraction, seed, classes=data.classes)
    return data.subset(train_idx), data.subset(test_idx)


def design_split(
    size: int = 64, root: Path = DEFAULT_DATA, *, seed: int = 0, framing: str = "full"
) -> tuple[CellData, CellData]:
    """(train, val): the grouped stratified 80/20 holdout of split `seed`'s training part (same ids in any framing);
    split `seed`'s test 20% stays unseen. Seed 0 is where settings are chosen."""
    from cellnet.data import holdout_split

    outer_train, _ = split(size, seed=seed, framing=framing, root=root)
    tr, va = holdout_split(outer_train.labels, outer_train.groups, 0.2, seed, classes=outer_train.classes)
    return outer_train.subset(tr), outer_train.subset(va)
