"""`cellnet predict` on files, folders and npz with a real tiny model: CSV contents, bad files, confidence, TTA."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellnet.checkpoint import load_checkpoint
from cellnet.cli import main
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.predict import DIHEDRAL, predict_images
from tests.test_cli import TINY_SIZE, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One loose PNG, a nested folder with JPEGs at another size plus a corrupt file, and an npz of 10 images."""
    root = tmp_path_factory.mktemp("inputs")
    data = generate(n=40, image_size=64, seed=5)
    Image.fromarray(data.images[0]).save(root / "single.png")
    (root / "folder" / "sub").mkdir(parents=True)
    for i in range(1, 6):
        Image.fromarray(data.images[i]).save(root / "folder" / ("sub" if i % 2 else ".") / f"cell{i}.jpg")
    (root / "folder" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "folder" / "notes.txt").write_text("not an image suffix: ignored")
    small = generate(n=40, image_size=TINY_SIZE, seed=6).subset(np.arange(10))
    return {"file": root / "single.png", "folder": root / "folder", "npz": save_npz(small, root / "few.npz")}


def test_predict_files_folder_npz_with_a_corrupt_file(
    trained: tuple[Path, Path], inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt_dir, _ = trained
    out = tmp_path / "pred.csv"
    argv = ["predict", "--checkpoint", str(ckpt_dir), str(inputs["file"]), str(inputs["folder"]), str(inputs["npz"])]
    assert main([*argv, "--out", str(out), "--batch-size", "4"]) == 1  # one input failed
    assert "broken.png" in capsys.readouterr().err
    table = pd.read_csv(out, keep_default_na=False)
    classes = load_checkpoint(ckpt_dir).classes
    head = ["id", "predicted", "confidence", "uncertain", "set", "set_size", "ood_score", "ood", "error"]
    assert list(table.columns) == head + [f"p_{c}" for c in classes]
    assert len(table) == 1 + 6 + 10

    bad = table[table["id"].str.endswith("broken.png")]
    assert len(bad) == 1 and bad["error"].iloc[0] and bad["predicted"].iloc[0] == ""
    assert bad[[f"p_{c}" for c in classes]].eq("").all(axis=None)

    good = table[table["error"] == ""]
    assert len(good) == 16
    probs = good[[f"p_{c}" for c in classes]].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert set(good["predicted"]) <= set(classes)
    np.testing.assert_allclose(good["confidence"].astype(float), probs.max(axis=1), atol=1e-6)
    assert good["predicted"].tolist() == [classes[i] for i in probs.argmax(axis=1)]
    assert table["id"].iloc[0] == str(inputs["file"])  # input order is kept
    assert not good["uncertain"].map({"True": True, "False": False}).any()


def test_stdout_and_min_confidence(trained: tuple[Path, Path], inputs: dict[str, Path], capsys) -> None:
    ckpt_dir, _ = trained
    assert main(["predict", "--checkpoint", str(ckpt_dir), str(inputs["npz"]), "--min-confidence", "0.999"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(table) == 10
    expected = table["confidence"] < 0.999
    assert (table["uncertain"] == expected).all() and expected.any()


def test_csv_matches_library_and_tta_is_rotation_invariant(trained: tuple[Path, Path], inputs, tmp_path) -> None:
    from cellnet.data import load

    ckpt_dir, _ = trained
    ckpt = load_checkpoint(ckpt_dir)
    images = load(str(inputs["npz"]), image_size=TINY_SIZE).images
    plain = predict_images(ckpt, images, batch_size=3)
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(ckpt_dir), str(inputs["npz"]), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    np.testing.assert_allclose(table[[f"p_{c}" for c in ckpt.classes]].to_numpy(), plain, atol=2e-6)

    tta = predict_images(ckpt, images, tta=True)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(tta, plain, atol=1e-4)  # the views really differ for a model that is not invariant
    turned = np.ascontiguousarray(np.rot90(np.flip(images, axis=2), k=1, axes=(1, 2)))
    np.testing.assert_allclose(predict_images(ckpt, turned, tta=True), tta, atol=1e-5)  # D4 averaging
    assert len(DIHEDRAL) == 8

    assert main(["predict", "--checkpoint", str(ckpt_dir), str(inputs["npz"]), "--tta", "--out", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)[[f"p_{c}" for c in ckpt.classes]].to_numpy(), tta, atol=2e-6)


def test_missing_input_is_an_error_row(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    ckpt_dir, _ = trained
    assert main(["predict", "--checkpoint", str(ckpt_dir), str(tmp_path / "gone.png")]) == 1
    captured = capsys.readouterr()
    table = pd.read_csv(io.StringIO(captured.out), keep_default_na=False)
    assert len(table) == 1 and "no such file" in table["error"].iloc[0]
    assert "Traceback" not in captured.err
