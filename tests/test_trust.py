"""Calibrated checkpoints end to end, without Ray: a tiny real model calibrated on held-out predictions (as the
search does on out-of-fold ones), stored in and read back from the checkpoint, used by `cellnet predict` (sets,
OOD flag) and `cellnet evaluate` (ECE before/after, coverage, flags); an uncalibrated checkpoint still predicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellnet.calibrate import OODDetector, fit_calibration, fit_ood_held_out, ood_threshold
from cellnet.checkpoint import load_checkpoint
from cellnet.cli import main
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.predict import infer
from tests.test_cli import TINY_SIZE, assert_one_line_error, train_tiny


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(uncalibrated checkpoint, calibrated copy, held-out npz). The calibration is fitted on 600 fresh cells the
    model never saw -- the role the out-of-fold predictions play after a search."""
    root = tmp_path_factory.mktemp("trust")
    plain, _ = train_tiny(root, n=400)
    ckpt = load_checkpoint(plain)
    held = generate(n=600, image_size=TINY_SIZE, seed=11)
    out = infer(ckpt, held.images, features=True)
    assert out.features is not None
    cal = fit_calibration(out.logits, held.labels, len(ckpt.classes), coverage=0.9)
    stats, scores = fit_ood_held_out(out.features, held.labels, len(ckpt.classes))
    cal = dataclasses.replace(cal, ood=OODDetector((stats,), (ood_threshold(scores, 0.05),), 0.05))
    calibrated = ckpt.save(root / "calibrated", calibration=cal)
    test = save_npz(generate(n=200, image_size=TINY_SIZE, seed=12), root / "test.npz")
    return plain, calibrated, test


def test_calibration_round_trips_through_the_checkpoint(checkpoints: tuple[Path, Path, Path]) -> None:
    _, calibrated, _ = checkpoints
    ck = load_checkpoint(calibrated)
    assert ck.calibration is not None and ck.calibration.coverage == 0.9 and ck.calibration.ood is not None
    assert (calibrated / "calibration.safetensors").is_file()
    assert ck.meta["calibration"]["temperature"] == pytest.approx(ck.calibration.temperature)
    blob = bytearray((calibrated / "calibration.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    broken = calibrated.parent / "broken"
    import shutil

    shutil.copytree(calibrated, broken)
    (broken / "calibration.safetensors").write_bytes(bytes(blob))
    from cellnet.errors import CheckpointError

    with pytest.raises(CheckpointError, match="calibration.safetensors: sha256"):
        load_checkpoint(broken)


def test_predict_adds_sets_and_flags_a_non_cell_image(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sets hold the true class at about the stated coverage; a blank field and a noise 'photo' are flagged OOD."""
    from PIL import Image

    _, calibrated, test = checkpoints
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((TINY_SIZE, TINY_SIZE, 3), 235, dtype=np.uint8)).save(blank)
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(calibrated), str(test), str(blank), str(photo), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sets at coverage 0.9" in err and "out of distribution" in err
    table = pd.read_csv(out)
    cells, others = table.iloc[:-2], table.iloc[-2:]
    assert others["ood"].all() and others["uncertain"].all()  # neither is a cell like the training cells
    assert cells["ood"].mean() < 0.25  # (stated false-alarm rate 5%; a few hundred cells)
    labels = np.load(test)["labels"]
    classes = load_checkpoint(calibrated).classes
    covered = [classes[y] in s.split("|") for y, s in zip(labels, cells["set"])]
    assert np.mean(covered) >= 0.8  # coverage 0.9 on exchangeable cells, with slack for 200 of them
    assert (cells["set_size"] == cells["set"].str.count(r"\|") + 1).all()
    assert (cells["uncertain"] == ((cells["set_size"] != 1) | cells["ood"])).all()
    assert main(["predict", "--checkpoint", str(calibrated), str(test), "--coverage", "0.5", "--out", str(out)]) == 0
    assert pd.read_csv(out)["set_size"].mean() < cells["set_size"].mean()  # a lower coverage, smaller sets


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1"])
def test_coverage_outside_0_1_is_a_clear_error(
    checkpoints: tuple[Path, Path, Path], bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, calibrated, test = checkpoints
    assert main(["predict", "--checkpoint", str(calibrated), str(test), f"--coverage={bad}"]) == 2
    assert_one_line_error(capsys.readouterr().err, f"--coverage must be in (0, 1), got {float(bad)}")


def test_uncalibrated_checkpoint_predicts_and_says_sets_are_unavailable(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, _, test = checkpoints
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(plain), str(test), "--coverage", "0.95", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "has no calibration" in err and "prediction sets and the OOD flag are unavailable" in err
    assert "--coverage ignored" in err and "Traceback" not in err
    table = pd.read_csv(out)
    assert table["set"].isna().all() and table["ood"].isna().all() and table["predicted"].notna().all()


def test_evaluate_reports_calibration_coverage_and_flags(checkpoints: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import json

    _, calibrated, test = checkpoints
    report = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(calibrated), str(test), "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    trust = metrics["trust"]
    assert trust["coverage_target"] == 0.9 and 0 <= trust["coverage"]["coverage"] <= 1
    assert set(trust["coverage"]["per_class"]) == set(metrics["classes"])
    assert {"ece_uncalibrated", "ece_calibrated", "flags", "set_flags", "ood_flagged"} <= set(trust)
    assert trust["flags"]["wrong"] + trust["flags"]["right"] == metrics["clean"]["n"]
    assert (report / "trust.png").stat().st_size > 1000
