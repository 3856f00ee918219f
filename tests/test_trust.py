"""Calibrated checkpoints end to end, without Ray: a tiny real model calibrated on held-out predictions (as the
search does on out-of-fold ones), stored in and read back from the checkpoint, used by `cellnet predict` (sets,
OOD flag) and `cellnet evaluate` (ECE before/after, coverage, flags); an uncalibrated checkpoint still predicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellnet.calibrate import fit_calibration
from cellnet.checkpoint import load_checkpoint
from cellnet.cli import main
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.ood import OODDetector, fit_ood_held_out, ood_threshold
from cellnet.predict import infer
from tests.test_cli import TINY_SIZE, assert_one_line_error, train_tiny


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(uncalibrated checkpoint, calibrated copy, held-out npz). The calibration is fitted on 600 fresh cells the
    model never saw -- the role the out-of-fold predictions play after a search -- on single views only."""
    root = tmp_path_factory.mktemp("trust")
    plain, _ = train_tiny(root, n=400)
    ckpt = load_checkpoint(plain)
    held = generate(n=600, image_size=TINY_SIZE, seed=11)
    out = infer(ckpt, held.images, features=True)
    assert out.features is not None
    cal = fit_calibration(out.logits, held.labels, len(ckpt.classes), coverage=0.9)
    stats, scores = fit_ood_held_out(out.features, held.labels, len(ckpt.classes))
    cal = dataclasses.replace(
        cal, ood=OODDetector((stats,), (ood_threshold(scores, 0.05),), 0.05, str(out.feature_kind))
    )
    calibrated = ckpt.save(root / "calibrated", calibration=cal)
    test = save_npz(generate(n=200, image_size=TINY_SIZE, seed=12), root / "test.npz")
    return plain, calibrated, test


@pytest.fixture(scope="module")
def tta_calibrated(checkpoints: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain checkpoint calibrated as a search does it: single views, the 8 TTA views, OOD features, from one
    pass over 600 cells it never saw."""
    plain, _, _ = checkpoints
    ckpt = load_checkpoint(plain)
    held = generate(n=600, image_size=TINY_SIZE, seed=13)
    out = infer(ckpt, held.images, features=True, tta=True)
    assert out.views is not None and out.views.shape[0] == 8
    cal = fit_calibration(
        out.logits,
        held.labels,
        len(ckpt.classes),
        out.features,
        feature_kind=out.feature_kind,
        view_logits=out.views,
        coverage=0.9,
    )
    return ckpt.save(tmp_path_factory.mktemp("tta") / "calibrated", calibration=cal)


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


def test_a_calibration_meta_cellnet_cannot_read_is_one_line_naming_the_checkpoint(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A framing check this cellnet does not know (a newer one, or an edit) is refused, not guessed (decision 0013)."""
    import json
    import shutil

    _, calibrated, test = checkpoints
    edited = tmp_path / "edited"
    shutil.copytree(calibrated, edited)
    meta = json.loads((edited / "cellnet.json").read_text())
    meta["calibration"]["ood"] |= {"framing_zooms": [0.55], "framing_check": "a guess"}
    (edited / "cellnet.json").write_text(json.dumps(meta))
    assert main(["predict", "--checkpoint", str(edited), str(test)]) == 2
    assert_one_line_error(
        capsys.readouterr().err, f"{edited / 'cellnet.json'} (calibration): unknown OOD framing_check 'a guess'"
    )


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


# ---------------------------------------------------------------------------------------------------------------
# TTA and calibration: calibrated for it, or refused


def test_tta_on_a_checkpoint_calibrated_on_single_views_is_refused_in_one_line(
    checkpoints: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, calibrated, test = checkpoints
    for command in ("predict", "evaluate"):
        extra = [str(test)] if command == "predict" else [str(test), "--out", "unused"]
        assert main([command, "--checkpoint", str(calibrated), *extra, "--tta"]) == 2
        assert_one_line_error(capsys.readouterr().err, "fitted on single views only", "without --tta")


def test_tta_uses_its_own_calibration_and_keeps_its_coverage(
    tta_calibrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --tta the probabilities are the mean over the 8 views of softmax(z / T_tta), the sets come from the TTA
    conformal scores and hold their coverage; the OOD score is the identity view's, the same as without --tta."""
    from cellnet.calibrate import softmax

    ckpt = load_checkpoint(tta_calibrated)
    assert ckpt.calibration is not None and ckpt.calibration.tta is not None
    fresh = generate(n=400, image_size=TINY_SIZE, seed=14)
    test = save_npz(fresh, tmp_path / "fresh.npz")
    single, tta = tmp_path / "single.csv", tmp_path / "tta.csv"
    assert main(["predict", "--checkpoint", str(tta_calibrated), str(test), "--out", str(single)]) == 0
    assert main(["predict", "--checkpoint", str(tta_calibrated), str(test), "--tta", "--out", str(tta)]) == 0
    a, b = pd.read_csv(single), pd.read_csv(tta)
    raw = infer(ckpt, fresh.images, tta=True)
    assert raw.views is not None
    p_cols = [f"p_{c}" for c in ckpt.classes]
    np.testing.assert_allclose(b[p_cols].to_numpy(), softmax(raw.views, ckpt.calibration.tta.temperature), atol=2e-6)
    np.testing.assert_allclose(a[p_cols].to_numpy(), softmax(raw.logits, ckpt.calibration.temperature), atol=2e-6)
    np.testing.assert_allclose(a["ood_score"], b["ood_score"], rtol=1e-5)  # identity view's features both times
    covered = [ckpt.classes[y] in s.split("|") for y, s in zip(fresh.labels, b["set"])]
    assert np.mean(covered) >= 0.85  # coverage 0.9 on exchangeable cells, with slack for 400 of them


def test_one_forward_pass_gives_logits_and_features(checkpoints: tuple[Path, Path, Path]) -> None:
    """A calibrated checkpoint costs one backbone pass per image and view, not one for logits and one for features."""
    _, calibrated, _ = checkpoints
    ckpt = load_checkpoint(calibrated)
    calls = []
    stem = next(m for m in ckpt.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))  # every pass runs it
    stem.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    images = generate(n=50, image_size=TINY_SIZE, seed=15).images
    out = infer(ckpt, images, features=True, batch_size=32)
    assert out.features is not None and sum(calls) == len(images)
    calls.clear()
    infer(ckpt, images, features=True, tta=True, batch_size=32)
    assert sum(calls) == 8 * len(images)


def test_a_class_always_in_the_set_is_warned_about(
    checkpoints: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decision 0005: a class with too few calibration images to ever leave a set is named when predicting."""
    plain, _, test = checkpoints
    ckpt = load_checkpoint(plain)
    held = generate(n=300, image_size=TINY_SIZE, seed=16)
    keep = np.flatnonzero((held.labels != 0) | (np.cumsum(held.labels == 0) <= 3))  # three images of class 0
    out = infer(ckpt, held.images[keep])
    cal = fit_calibration(out.logits, held.labels[keep], len(ckpt.classes), coverage=0.9)
    path = ckpt.save(tmp_path / "rare", calibration=cal)
    assert main(["predict", "--checkpoint", str(path), str(test), "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "in every prediction set" in err and f"{ckpt.classes[0]} (3 calibration images)" in err
