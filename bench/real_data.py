"""Real cells for the benchmarks: ../shared/data/pbc-sample (2,579 PBC JPEGs of 360x363 px, one folder per class).

    load_pbc(size, framing)   "full": the whole JPEG resized (what `cellnet`'s folder SOURCE does; the cell is ~1/5
                              of the frame) | "crop200": the centre 200x200 px, then resized (the MedMNIST framing;
                              the cell ~1.8x larger). Same ids in both framings, so a split applies to both.
    cleaned(size, framing)    the cells `cellnet.data.clean` keeps (once, on the full framing at 64 px) with their
                              near-duplicate groups
    report_part(ids, groups)  THE RULE: a near-duplicate group belongs to the report part when the sha256 of its
                              first id (sorted) falls in the lowest REPORT_FRACTION (30%) of the hash range. Fixed
                              for good, by content ids only (no seed), so no choice ever sees these cells and a group
                              never straddles the line.
    report_split(size)        (design part, report part): the ~70% where settings are chosen, the ~30% reported on.
                              Deployed models (bench_deployed, bench_new_lab) train on the whole design part (a seed
                              varies the search) and are scored once on the report part.
    design_split(size, seed)  a grouped stratified 80/20 holdout of the design part, drawn by `seed`: where recipes and
                              defaults are chosen (several seeds = several draws from the same design part).
    FIRST_TRIAL               round 2's first trial of spaces/cpu_small.yaml (resnet10t from scratch) as TrainConfig
                              fields (device: cpu): the base the recipes of bench_pretrained/bench_robustness modify.

Every split function asserts that what it returns for choosing holds no report cell. Never used by tests (tests must
not depend on ../shared); `report_part` is a pure function of ids, tested on made-up ones.
"""

from __future__ import annotations

import functools
import hashlib
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
OTHER_LABS = REPO.parent / "shared" / "data" / "other-labs"
FRAMINGS = ("full", "crop200")
CROP = 200
REPORT_FRACTION = 0.3
CLEAN_SIZE = 64  # the size the cells are cleaned (and grouped) at, whatever size they are read at


def report_part(ids: np.ndarray, groups: np.ndarray | None = None, fraction: float = REPORT_FRACTION) -> np.ndarray:
    """(N,) bool: the cells of the report part. A group (default: each cell its own) is in it when
    sha256(its first id, sorted) / 2**256 < `fraction`; every cell of a group lands on the same side."""
    ids = np.asarray(ids).astype(str)
    groups = np.arange(len(ids)) if groups is None else np.asarray(groups)
    if groups.shape != ids.shape:
        raise ValueError(f"groups {groups.shape} and ids {ids.shape} differ in shape")
    first: dict[Any, str] = {}
    for i, g in zip(ids.tolist(), groups.tolist()):
        first[g] = min(first.get(g, i), i)
    chosen = {g for g, i in first.items() if int(hashlib.sha256(i.encode()).hexdigest(), 16) < fraction * 2**256}
    return np.fromiter((g in chosen for g in groups.tolist()), dtype=bool, count=len(ids))


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
def cleaned_ids(root: Path = DEFAULT_DATA) -> tuple[np.ndarray, np.ndarray]:
    """(ids kept by cellnet.data.clean on the full framing at CLEAN_SIZE, their duplicate groups): one cleaning for
    every framing and size -- cleaned at each size, the kept cells and the groups (hence the report part) would
    differ between the 64 px a model reads and the 128 px --canonicalize reads."""
    from cellnet.data import clean

    kept, _ = clean(load_pbc(CLEAN_SIZE, "full", root))
    assert kept.groups is not None
    return kept.ids, kept.groups


def cleaned(size: int = 64, framing: str = "full", root: Path = DEFAULT_DATA) -> CellData:
    """The cleaned cells in `framing`, with their near-duplicate groups (ids in load order)."""
    data = load_pbc(size, framing, root)
    ids, groups = cleaned_ids(root)
    data = data.subset(np.flatnonzero(np.isin(data.ids, ids)))
    order = {i: k for k, i in enumerate(ids)}
    return replace(data, groups=groups[[order[i] for i in data.ids]])


def report_split(size: int = 64, framing: str = "full", root: Path = DEFAULT_DATA) -> tuple[CellData, CellData]:
    """(design part, report part) of the cleaned cells in `framing` (the rule: `report_part`)."""
    data = cleaned(size, framing, root)
    report = report_part(data.ids, data.groups)
    design, held = data.subset(np.flatnonzero(~report)), data.subset(np.flatnonzero(report))
    assert not set(design.ids) & set(held.ids)
    return design, held


def design_split(
    size: int = 64, root: Path = DEFAULT_DATA, *, seed: int = 0, framing: str = "full", val_fraction: float = 0.2
) -> tuple[CellData, CellData]:
    """(train, val): the grouped stratified holdout (`val_fraction`) of the design part drawn by `seed` (same ids in
    any framing). Where settings are chosen; the report part is never in it (asserted)."""
    from cellnet.data import holdout_split

    design, _ = report_split(size, framing, root)
    tr, va = holdout_split(design.labels, design.groups, val_fraction, seed, classes=design.classes)
    train, val = design.subset(tr), design.subset(va)
    assert not (report_part(train.ids, train.groups).any() or report_part(val.ids, val.groups).any())
    return train, val


def assert_design_only(ids: np.ndarray, groups: np.ndarray | None = None) -> None:
    """For a benchmark that builds its own split: none of `ids` may be a report cell."""
    held = report_part(ids, groups)
    assert not held.any(), f"{int(held.sum())} report cells used for a choice (e.g. {np.asarray(ids)[held][:3]})"
