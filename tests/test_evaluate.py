"""`cellnet evaluate` with a real tiny model: every report file, consistent numbers, the shift suite, class names."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellnet.cli import main
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.evaluate import evaluate, expected_calibration_error, summary_table
from cellnet.shifts import DEFAULT_SUITE, SHIFTS, apply_shift
from tests.test_cli import TINY_SIZE, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def test_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_npz(generate(n=120, image_size=TINY_SIZE, seed=11), tmp_path_factory.mktemp("eval-data") / "t.npz")


def test_evaluate_writes_every_report_file(trained, test_npz: Path, tmp_path: Path, capsys) -> None:
    ckpt_dir, _ = trained
    out = tmp_path / "report"
    assert main(["evaluate", str(test_npz), "--checkpoint", str(ckpt_dir), "--out", str(out), "--shifted"]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "shifted (seed 0)" in printed and "ece" in printed
    assert "worst: " in printed and all(name in printed for name in DEFAULT_SUITE)

    for name in ("classification_report.csv", "confusion_matrix.csv", "predictions.csv"):
        assert (out / name).is_file(), out / name
    for name in ("confusion_matrix.png", "reliability.png", "shifted_accuracy.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "shifted").exists() and not list(out.glob(".*.tmp"))

    metrics = json.loads((out / "metrics.json").read_text())
    clean, shifted = metrics["clean"], metrics["shifted"]
    cm = np.array(clean["confusion_matrix"])
    assert cm.sum() == clean["n"] == 120
    assert clean["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert 0.0 <= clean["ece"] <= 1.0
    assert shifted["suite"] == list(DEFAULT_SUITE) and shifted["seed"] == 0
    per_shift = shifted["per_shift"]
    assert list(per_shift) == list(DEFAULT_SUITE)
    for name, m in per_shift.items():
        assert set(m) == {"accuracy", "macro_f1", "ece", "description"} and m["description"] == SHIFTS[name].description
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["ece"] <= 1.0
    accuracy = {name: m["accuracy"] for name, m in per_shift.items()}
    assert shifted["mean_accuracy"] == pytest.approx(np.mean(list(accuracy.values())))
    assert shifted["worst_accuracy"] == min(accuracy.values()) == accuracy[shifted["worst_shift"]]
    assert len(set(accuracy.values()) | {clean["accuracy"]}) > 1  # the shifts change predictions

    per_class = pd.read_csv(out / "classification_report.csv")
    assert per_class["class"].tolist()[-2:] == ["macro avg", "weighted avg"]
    assert per_class["support"].iloc[:-2].sum() == 120
    assert per_class.set_index("class").loc["macro avg", "f1"] == pytest.approx(clean["macro_f1"], abs=1e-6)
    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().tolist() == clean["confusion_matrix"]
    assert list(confusion.columns) == metrics["classes"]


def test_classes_are_matched_by_name(trained, tmp_path: Path, capsys) -> None:
    ckpt_dir, _ = trained
    data = generate(n=60, image_size=TINY_SIZE, seed=12)
    # the same images with the class list reversed (labels follow): same content, different order
    order = np.arange(len(data.classes))[::-1]
    flipped = replace(data, classes=tuple(data.classes[i] for i in order), labels=order[data.labels].astype(np.int64))
    a, b = tmp_path / "a", tmp_path / "b"
    for source, out in ((data, a), (flipped, b)):
        npz = save_npz(source, tmp_path / f"{out.name}.npz")
        assert main(["evaluate", str(npz), "--checkpoint", str(ckpt_dir), "--out", str(out)]) == 0
    assert (
        json.loads((a / "metrics.json").read_text())["clean"] == json.loads((b / "metrics.json").read_text())["clean"]
    )

    wrong = replace(data, classes=("cat", *data.classes[1:]))
    npz = save_npz(wrong, tmp_path / "wrong.npz")
    capsys.readouterr()
    assert main(["evaluate", str(npz), "--checkpoint", str(ckpt_dir), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'cat'" in err and err.startswith("error: ")


def test_ece_is_well_defined() -> None:
    confidence = np.array([0.9] * 10 + [0.6] * 10)
    correct = np.array([1] * 9 + [0] + [1] * 6 + [0] * 4, dtype=bool)  # 90% and 60% accurate: calibrated
    assert expected_calibration_error(confidence, correct)["ece"] == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(4, 1.0), np.zeros(4, bool))["ece"] == pytest.approx(1.0)


def test_shifted_metrics_are_the_accuracy_on_each_shifted_copy(trained, tmp_path: Path) -> None:
    from cellnet.checkpoint import load_checkpoint
    from cellnet.predict import predict_images

    ckpt = load_checkpoint(trained[0])
    data = generate(n=40, image_size=TINY_SIZE, seed=13)
    suite = ("zoom_out_0.55", "jpeg_q20")
    metrics = evaluate(ckpt, data, tmp_path / "r", shifted=True, seed=3, shifts=suite)
    assert metrics["shifted"]["suite"] == list(suite) and metrics["shifted"]["seed"] == 3
    labels = np.array([list(ckpt.classes).index(data.classes[y]) for y in data.labels])
    for name in suite:
        probs = predict_images(ckpt, apply_shift(name, data.images, seed=3))
        expected = float((probs.argmax(axis=1) == labels).mean())
        assert metrics["shifted"]["per_shift"][name]["accuracy"] == pytest.approx(expected)
    again = evaluate(ckpt, data, tmp_path / "r2", shifted=True, seed=3, shifts=suite)
    assert again["shifted"] == metrics["shifted"]  # deterministic
    assert "shifted" not in evaluate(ckpt, data, tmp_path / "r3")
    assert "zoom_out_0.55" in summary_table(metrics) and "shifted" not in summary_table(again | {"shifted": None})
