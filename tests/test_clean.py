"""The cleaner on synthetic cells with injected problems, scored through the provenance in the ids."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellnet.data import clean, find_duplicates_between, load, run_clean
from cellnet.data.clean import DuplicateSettings, hash_pairs, save_npz, signatures
from cellnet.data.dataset import CellData
from cellnet.data.synthetic import generate


@pytest.fixture(scope="module")
def cells() -> CellData:
    """300 clean synthetic cells at 96 px (no injected problems)."""
    return generate(300, 96, seed=5)


def _jpeg(image: np.ndarray, quality: int = 60) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _with(data: CellData, images: list[np.ndarray], labels: list[int], ids: list[str]) -> CellData:
    return CellData(
        images=np.concatenate([data.images, np.stack(images)]),
        labels=np.concatenate([data.labels, np.asarray(labels, dtype=np.int64)]),
        classes=data.classes,
        ids=np.concatenate([data.ids, np.asarray(ids)]),
    )


def test_finds_injected_problems_with_few_false_drops() -> None:
    data = generate(2000, 96, seed=1, duplicate_fraction=0.05, conflict_fraction=0.01, outlier_fraction=0.02)
    cleaned, report = clean(data)
    ids, kept = [str(i) for i in data.ids], set(cleaned.ids.tolist())
    by_number = {i.split("/")[1]: i for i in ids if "~" not in i}
    found = {"exact": [], "near": [], "conflict": [], "outlier": []}
    sources = set()
    for i in ids:
        match = re.search(r"~(exact|near|conflict)-of-(\d+)", i)
        if match:
            kind, source = match.group(1), by_number[match.group(2)]
            sources.add(source)
            if kind == "conflict":  # both sides of a label conflict go
                found[kind].append(i not in kept and source not in kept)
            else:  # one of the pair goes (which one is the cleaner's choice)
                found[kind].append(not (i in kept and source in kept))
        elif i.endswith("~outlier"):
            found["outlier"].append(i not in kept)
    duplicates = found["exact"] + found["near"]
    assert len(duplicates) == 100 and np.mean(duplicates) >= 0.95
    assert len(found["outlier"]) == 40 and np.mean(found["outlier"]) >= 0.95
    assert np.mean(found["conflict"]) >= 0.95
    clean_ids = [i for i in ids if "~" not in i]
    false_drops = [i for i in clean_ids if i not in kept and i not in sources]
    assert len(false_drops) <= 0.01 * len(clean_ids), false_drops
    # the report agrees with what was removed
    assert len(report.dropped) == len(data) - len(cleaned) == report.n_in - report.n_kept
    assert sum(report.counts().values()) == len(report.dropped)
    assert report.per_class()["kept"].tolist() == np.bincount(cleaned.labels, minlength=8).tolist()
    assert cleaned.groups is not None and len(np.unique(cleaned.groups)) == len(cleaned)  # one image per cluster left


def test_different_cells_with_close_hashes_are_not_merged(cells: CellData) -> None:
    sig = signatures(cells.images)
    i, j = hash_pairs(sig.phash, threshold=DuplicateSettings().hash_threshold)
    same_class = cells.labels[i] == cells.labels[j]
    assert same_class.sum() >= 3  # centred cells of one class do look alike to a 64-bit hash...
    cleaned, report = clean(cells)
    assert len(report.rows[report.rows["reason"] != "outlier"]) == 0  # ...but the pixels tell them apart
    assert len(cleaned) >= len(cells) - 3  # at most 1% of real cells dropped as outliers


def test_copies_conflicts_and_switches(cells: CellData) -> None:
    base = cells.subset(np.arange(60))
    shifted = np.pad(base.images[3], ((3, 0), (0, 3), (0, 0)), mode="edge")[:96, 3:]
    resized = np.asarray(Image.fromarray(base.images[4]).resize((60, 60)).resize((96, 96), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    other = (int(base.labels[6]) + 1) % 8
    data = _with(
        base,
        [base.images[2].copy(), _jpeg(shifted), resized, _jpeg(base.images[6], 80), noise],
        [base.labels[2], base.labels[3], base.labels[4], other, 0],
        ["exact", "near-shift", "near-resize", "conflict", "noise"],
    )
    cleaned, report = clean(data)
    reasons = dict(zip(report.rows["id"], report.rows["reason"]))
    assert reasons["exact"] == "exact_duplicate" and reasons["near-shift"] == "near_duplicate"
    assert reasons["near-resize"] == "near_duplicate" and reasons["noise"] == "outlier"
    assert reasons["conflict"] == reasons[base.ids[6]] == "label_conflict"
    expected = {"exact", "near-shift", "near-resize", "conflict", base.ids[6], "noise"}
    assert expected <= set(report.dropped["id"]), report.rows
    assert len(report.dropped) <= len(expected) + 1  # at most one real cell taken for an outlier in a tiny set
    partner = dict(zip(report.rows["id"], report.rows["partner_id"]))
    assert partner["near-shift"] == base.ids[3]

    kept, report = clean(data, drop_conflicts=False, drop_outliers=False)
    ids = kept.ids.tolist()
    assert base.ids[6] in ids and "conflict" in ids and "noise" in ids and "exact" not in ids
    assert kept.groups[ids.index("conflict")] == kept.groups[ids.index(base.ids[6])]  # folds keep them together
    noise = report.rows[report.rows["id"] == "noise"].iloc[0]
    assert noise["reason"] == "outlier" and not noise["dropped"]  # flagged, kept
    assert report.counts()["outlier"] == 0 and report.counts(dropped_only=False)["outlier"] >= 1


def test_run_clean_writes_a_loadable_source_and_report(tmp_path: Path, cells: CellData) -> None:
    base = cells.subset(np.arange(80))
    data = _with(base, [base.images[0].copy()], [base.labels[0]], ["copy"])
    source = save_npz(data, tmp_path / "in.npz")
    report = run_clean(str(source), tmp_path / "out", image_size=96)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["clean.npz", "examples.png", "report.csv", "report.json"]
    reloaded = load(str(out / "clean.npz"), image_size=96)
    assert len(reloaded) == report.n_kept == len(data) - len(report.dropped)
    assert reloaded.groups is not None and reloaded.classes == data.classes
    assert "copy" not in reloaded.ids.tolist() or base.ids[0] not in reloaded.ids.tolist()
    rows = pd.read_csv(out / "report.csv")
    assert {"id", "label", "reason", "cluster", "dropped"} <= set(rows.columns)
    assert "exact_duplicate" in rows["reason"].tolist()
    summary = json.loads((out / "report.json").read_text())
    assert summary["dropped"]["exact_duplicate"] == 1 and summary["images_in"] == len(data)
    assert Image.open(out / "examples.png").size[0] > 100
    assert "exact duplicate: 1" in report.summary()


def test_find_duplicates_between(cells: CellData) -> None:
    train, test = cells.subset(np.arange(0, 150)), cells.subset(np.arange(150, 200))
    leaked = test.images.copy()
    leaked[[5, 17]] = [_jpeg(train.images[10]), train.images[20]]
    found = find_duplicates_between(train, replace(test, images=leaked))
    assert found.tolist() == [5, 17]
    assert find_duplicates_between(train, test).tolist() == []


def test_batched_phash_is_imagehash(cells: CellData) -> None:
    import imagehash

    sig = signatures(cells.images[:20])
    expected = [int(str(imagehash.phash(Image.fromarray(p))), 16) for p in cells.images[:20]]
    assert sig.phash.tolist() == expected
