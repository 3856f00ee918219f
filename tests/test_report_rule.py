"""The benchmarks' report part (bench/real_data.py): a fixed rule on ids that no choice may cross. Made-up ids and a
made-up folder of cells here; the real cells (../shared) are never read by a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import real_data
from bench.real_data import REPORT_FRACTION, assert_design_only, report_part


def made_up_ids(n: int) -> np.ndarray:
    return np.array([f"class{k % 8}/cell_{k:05d}.jpg" for k in range(n)])


def test_about_the_stated_share_of_groups_is_reported_and_the_rule_is_fixed() -> None:
    """One cell per group: ~30% reported; the same ids give the same answer in any order (no seed, no position)."""
    ids = made_up_ids(20_000)
    held = report_part(ids)
    assert abs(held.mean() - REPORT_FRACTION) < 0.015
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(report_part(ids[order]), held[order])
    assert not report_part(ids, fraction=0.0).any() and report_part(ids, fraction=1.0).all()


def test_a_group_never_straddles_the_line_and_is_decided_by_its_first_id() -> None:
    """Groups of 1-4 near-duplicates: every member on its group's side, the side that of its smallest id alone."""
    ids = made_up_ids(4_000)
    groups = np.random.default_rng(1).integers(0, 1_500, len(ids))
    held = report_part(ids, groups)
    for g in np.unique(groups):
        members = groups == g
        assert len(set(held[members].tolist())) == 1
        assert held[members][0] == report_part(np.array([min(ids[members])]))[0]
    assert 0.2 < held.mean() < 0.4
    with pytest.raises(ValueError, match="shape"):
        report_part(ids, groups[:-1])


def test_a_choice_that_touches_a_report_cell_is_refused() -> None:
    ids = made_up_ids(200)
    held = report_part(ids)
    assert_design_only(ids[~held])
    with pytest.raises(AssertionError, match="report cells used for a choice"):
        assert_design_only(ids)


def test_the_split_functions_keep_the_report_part_out_of_every_design_split(tmp_path: Path) -> None:
    """A made-up pbc-sample folder (8 classes x 30 random images): the design part and the report part partition the
    cleaned cells, every design split (any seed, any framing, any size) draws from the design part only, and the
    same cells are in it whatever size they are read at."""
    rng = np.random.default_rng(2)
    for c in ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"):
        (tmp_path / c).mkdir()
        for k in range(30):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / c / f"{c}_{k:03d}.png")
    try:
        design, report = real_data.report_split(32, "full", tmp_path)
        assert not set(design.ids) & set(report.ids) and len(design) + len(report) == len(
            real_data.cleaned_ids(tmp_path)[0]
        )
        assert report_part(report.ids, report.groups).all() and not report_part(design.ids, design.groups).any()
        assert list(real_data.report_split(64, "crop200", tmp_path)[1].ids) == list(report.ids)
        for seed in (0, 1, 2):
            train, val = real_data.design_split(32, tmp_path, seed=seed, framing="crop200")
            assert set(train.ids) | set(val.ids) == set(design.ids) and not set(train.ids) & set(val.ids)
    finally:  # the lru caches hold this folder's images
        real_data.load_pbc.cache_clear()
        real_data.cleaned_ids.cache_clear()
