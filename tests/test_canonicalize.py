"""`--canonicalize`: a group's framing and colour chosen from its own unlabelled images by the model's OOD score --
a batch zoomed out by a known factor gets it back, a recoloured one its colour, a same-lab one stays as it is; per
group (one INPUT each), written in the table and said in one line; refused in one line without an OOD score or with
too few images; zoom only (said) without the training cells' colour statistics; and predict's advice for a group
that is mostly out of distribution. A tiny model on synthetic cells at 32 px (read at 64 px, as predict reads a
group to canonicalize)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellnet.canonicalize import MIN_GROUP, READ_SCALE, choose, zoomed
from cellnet.checkpoint import Checkpoint, load_checkpoint
from cellnet.cli import main
from cellnet.colour import ColourStats, colour_stats, match_colour
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.predict import predict_batch
from tests.test_cli import TINY_SIZE, assert_one_line_error

READ = TINY_SIZE * READ_SCALE


def bluer(images: np.ndarray) -> np.ndarray:
    return np.clip(images.astype(np.float32) * np.array([0.7, 0.8, 1.1]) - 10, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet trained 6 epochs on 800 synthetic cells (95% right on fresh ones), calibrated on 600 others as a
    search does: temperature, sets, the OOD statistics with the framing check, the training cells' colour."""
    from cellnet.calibrate import fit_calibration
    from cellnet.checkpoint import save_checkpoint
    from cellnet.config import TrainConfig
    from cellnet.predict import infer
    from cellnet.shifts import zoomed_copies
    from cellnet.train import fit

    data = generate(n=800, image_size=TINY_SIZE, seed=0)
    config = TrainConfig(
        backbone="test_resnet", head_layers=0, dropout=0.0, epochs=6, batch_size=32, warmup_epochs=0,
        aug_strength=0.0, lr=3e-3, device="cpu",
    )  # fmt: skip
    result = fit(config, data, None, early_stopping=False)
    path = save_checkpoint(
        tmp_path_factory.mktemp("canon") / "ckpt",
        result.model,
        config=result.config,
        classes=data.classes,
        image_size=TINY_SIZE,
        mean=result.mean,
        std=result.std,
        metrics={},
    )
    ckpt = load_checkpoint(path)
    held = generate(n=600, image_size=TINY_SIZE, seed=11)
    out = infer(ckpt, held.images, features=True)
    zooms = (0.55, 0.7)
    framing = np.stack([infer(ckpt, c, features=True).features for c in zoomed_copies(held.images, zooms)])
    cal = fit_calibration(
        out.logits, held.labels, 8, out.features, feature_kind=out.feature_kind, framing_features=framing,
        framing_zooms=zooms,
    )  # fmt: skip
    return ckpt.save(path, calibration=dataclasses.replace(cal, colour=colour_stats(data.images)))


def fresh(n: int = 200, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """New cells read at READ_SCALE x the model's size, and their labels."""
    cells = generate(n=n, image_size=READ, seed=seed)
    return cells.images, cells.labels


def accuracy(ckpt: Checkpoint, images: np.ndarray, labels: np.ndarray, **how: object) -> float:
    return float((predict_batch(ckpt, images, **how).probs.argmax(axis=1) == labels).mean())  # type: ignore[arg-type]


def test_a_batch_zoomed_out_by_a_known_factor_gets_it_back(calibrated: Path) -> None:
    """Cells shown at 0.6x (a wider field: full-frame images of centre-crop training cells) are zoomed back by about
    1 / 0.6, and read again (measured: 34% -> 94% right)."""
    ckpt = load_checkpoint(calibrated)
    images, labels = fresh()
    small = zoomed(images, 0.6)
    out = predict_batch(ckpt, small, canonicalize=True)
    assert out.canonicalization is not None
    assert out.canonicalization.zoom == pytest.approx(1 / 0.6, abs=0.15)
    assert accuracy(ckpt, small, labels, canonicalize=out.canonicalization) >= accuracy(ckpt, small, labels) + 0.3
    assert out.calibrated is not None and out.calibrated.ood is not None and out.calibrated.ood.mean() < 0.3


def test_a_same_lab_batch_keeps_zoom_1_and_its_colour(calibrated: Path) -> None:
    ckpt = load_checkpoint(calibrated)
    images, labels = fresh(seed=6)
    out = predict_batch(ckpt, images, canonicalize=True)
    assert out.canonicalization is not None and out.canonicalization.identity
    assert out.canonicalization.zoom == 1.0 and not out.canonicalization.colour_matched
    plain = predict_batch(ckpt, zoomed(images, 1.0, TINY_SIZE))  # what it would read without --canonicalize
    np.testing.assert_allclose(out.probs, plain.probs, atol=1e-6)


def test_a_recoloured_batch_gets_its_colour_matched_to_the_training_cells(calibrated: Path) -> None:
    ckpt = load_checkpoint(calibrated)
    images, labels = fresh(seed=7)
    shifted = bluer(images)
    out = predict_batch(ckpt, shifted, canonicalize=True)
    assert out.canonicalization is not None and out.canonicalization.colour_matched
    assert out.canonicalization.zoom == pytest.approx(1.0, abs=0.25)
    assert accuracy(ckpt, shifted, labels, canonicalize=out.canonicalization) >= accuracy(ckpt, shifted, labels) + 0.3


def test_reinhards_match_moves_the_lab_statistics_to_the_target() -> None:
    images, _ = fresh(n=64)
    target = colour_stats(images)
    moved = match_colour(bluer(images), colour_stats(bluer(images)), target)
    got = colour_stats(moved)
    np.testing.assert_allclose(got.mean, target.mean, atol=2.0)  # 8-bit rounding and clipping
    np.testing.assert_allclose(got.std, target.std, rtol=0.1)
    assert ColourStats.from_meta(target.to_meta()) == target


def test_a_change_is_kept_only_where_the_median_score_falls_by_the_margin() -> None:
    """The walk from 1 finds the lowest point of a score that is unimodal in the zoom; a flat score changes nothing
    (no setting lowers the median by MARGIN), and without colour statistics the choice says it matched zoom only."""
    from cellnet.canonicalize import ZOOMS, _walk

    grid = sorted(ZOOMS)
    assert _walk(grid, lambda z: abs(np.log(z / 1.6))) == 1.6
    assert _walk(grid, lambda z: abs(np.log(z / 0.6))) == 0.6
    assert _walk(grid, lambda z: 1.0) == 1.0
    images, _ = fresh(n=40)
    flat = choose(images, lambda x: np.ones(len(x)), None, size=TINY_SIZE)
    assert flat.zoom == 1.0 and not flat.colour_matched and flat.note is not None and "zoom matched only" in flat.note
    assert flat.images_scored == MIN_GROUP  # the least a median is taken over
    assert flat.apply(images).shape == (40, TINY_SIZE, TINY_SIZE, 3)  # read larger, shown at the model's size


def test_per_group_choices_are_written_in_the_table_and_said_in_one_line_each(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two INPUTs, two groups: the zoomed-out one is zoomed back, the other left as it is; --adapt adapts each."""
    small = generate(n=96, image_size=READ, seed=8)
    small = dataclasses.replace(small, images=zoomed(small.images, 0.6))
    same = generate(n=192, image_size=READ, seed=9)  # 96: on one thread, the tiny model's median fell by 0.2 at 0.85
    a, b = save_npz(small, tmp_path / "small.npz"), save_npz(same, tmp_path / "same.npz")
    out = tmp_path / "pred.csv"
    argv = ["predict", "--checkpoint", str(calibrated), str(a), str(b), "--canonicalize", "--adapt", "--out", str(out)]
    assert main(argv) == 0
    table = pd.read_csv(out)
    assert list(table["group"].unique()) == [str(a), str(b)]
    zooms = table.groupby("group")["zoom"].first()
    assert zooms[str(a)] == pytest.approx(1 / 0.6, abs=0.15) and zooms[str(b)] == 1.0
    assert table["adapted"].all() and not table["colour_matched"].any()
    err = capsys.readouterr().err
    assert f"--canonicalize: {a} (96 images): zoom " in err and f"--canonicalize: {b} (192 images): zoom 1," in err
    assert err.count("--adapt: BatchNorm statistics") == 2 and "96 images" in err


def test_canonicalize_refusals_are_one_line(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few = save_npz(generate(n=MIN_GROUP - 1, image_size=READ, seed=3), tmp_path / "few.npz")
    assert main(["predict", "--checkpoint", str(calibrated), str(few), "--canonicalize"]) == 2
    assert_one_line_error(capsys.readouterr().err, f"needs at least {MIN_GROUP} images", f"got {MIN_GROUP - 1}")
    uncalibrated = load_checkpoint(calibrated).save(tmp_path / "plain", calibration=None)
    cells = save_npz(generate(n=40, image_size=READ, seed=4), tmp_path / "cells.npz")
    assert main(["predict", "--checkpoint", str(uncalibrated), str(cells), "--canonicalize"]) == 2
    assert_one_line_error(capsys.readouterr().err, "OOD score", "cellnet train")
    assert (
        main(
            ["evaluate", "--checkpoint", str(uncalibrated), str(cells), "--out", str(tmp_path / "r"), "--canonicalize"]
        )
        == 2
    )
    assert_one_line_error(capsys.readouterr().err, "OOD score")


def test_without_colour_statistics_the_zoom_alone_is_matched_and_said(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint calibrated before round 4 has no colour statistics: zoom only, and the line says how to add them."""
    ckpt = load_checkpoint(calibrated)
    assert ckpt.calibration is not None
    older = ckpt.save(tmp_path / "older", calibration=dataclasses.replace(ckpt.calibration, colour=None))
    assert load_checkpoint(older).calibration.colour is None  # type: ignore[union-attr]
    images, _ = fresh(n=64, seed=10)
    cells = save_npz(
        dataclasses.replace(generate(n=64, image_size=READ, seed=10), images=bluer(images)), tmp_path / "b.npz"
    )
    assert (
        main(["predict", "--checkpoint", str(older), str(cells), "--canonicalize", "--out", str(tmp_path / "p.csv")])
        == 0
    )
    err = capsys.readouterr().err
    assert "colour as it is" in err and "zoom matched only" in err and "--recalibrate" in err


def test_a_mostly_flagged_group_gets_advice_in_one_line(
    calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Full-frame-like cells: most are out of distribution, and predict says what to do -- try --canonicalize, and
    label ten cells per class for `cellnet finetune`; canonicalized, they are read and the advice is gone."""
    small = generate(n=96, image_size=READ, seed=12)
    cells = save_npz(dataclasses.replace(small, images=zoomed(small.images, 0.6)), tmp_path / "small.npz")
    assert main(["predict", "--checkpoint", str(calibrated), str(cells), "--out", str(tmp_path / "a.csv")]) == 0
    hints = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and "--canonicalize" in hints[0] and "cellnet finetune" in hints[0]
    assert str(calibrated) in hints[0]
    argv = ["predict", "--checkpoint", str(calibrated), str(cells), "--canonicalize", "--out", str(tmp_path / "b.csv")]
    assert main(argv) == 0
    assert "hint:" not in capsys.readouterr().err
