"""`cellnet export` to ONNX with a real tiny model: same probabilities as PyTorch, metadata, no file on failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cellnet.export
from cellnet.checkpoint import load_checkpoint
from cellnet.cli import main
from cellnet.data.synthetic import generate
from cellnet.predict import predict_images
from tests.test_cli import TINY_SIZE, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("export"))


def test_export_matches_pytorch_and_carries_metadata(trained, tmp_path: Path, capsys) -> None:
    ckpt_dir, _ = trained
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(ckpt_dir), "--format", "onnx", "--out", str(out), "--tolerance", "1e-5"]
    assert main(argv) == 0
    assert "max |p_onnx - p_torch|" in capsys.readouterr().out
    ckpt = load_checkpoint(ckpt_dir)

    model = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["classes"] == list(ckpt.classes)
    assert meta["image_size"] == TINY_SIZE
    assert meta["mean"] == pytest.approx(list(ckpt.mean)) and meta["std"] == pytest.approx(list(ckpt.std))
    assert "NHWC" in meta["input_format"]

    images = generate(n=40, image_size=TINY_SIZE, seed=21).images[:5]  # real cells, a batch size never exported
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {meta["input_name"]: images.astype(np.float32)})[0]
    np.testing.assert_allclose(got, predict_images(ckpt, images), atol=1e-5)
    one = session.run(None, {meta["input_name"]: images[:1].astype(np.float32)})[0]
    np.testing.assert_allclose(one, got[:1], atol=1e-5)


def test_parity_failure_leaves_no_file(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    ckpt_dir, _ = trained
    real = cellnet.export._run_onnx
    monkeypatch.setattr(cellnet.export, "_run_onnx", lambda path, images: real(path, images) + 1e-3)
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "parity" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_resize_to_input_size_is_inside_the_graph(trained, tmp_path: Path) -> None:
    """A checkpoint with input_size (upscaling for the backbone): ONNX takes image_size pixels and agrees."""
    from dataclasses import replace

    from cellnet.checkpoint import save_checkpoint
    from cellnet.export import export_onnx

    ckpt_dir, _ = trained
    ckpt = load_checkpoint(ckpt_dir)
    upscaled = save_checkpoint(
        tmp_path / "up",
        ckpt.model,
        config=replace(ckpt.config, input_size=48),
        classes=ckpt.classes,
        image_size=ckpt.image_size,
        mean=ckpt.mean,
        std=ckpt.std,
        metrics={},
    )
    up = load_checkpoint(upscaled)
    path, diff = export_onnx(up, tmp_path / "up.onnx")
    assert diff <= 1e-4
    images = generate(n=40, image_size=TINY_SIZE, seed=22).images[:3]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": images.astype(np.float32)}
    )
    np.testing.assert_allclose(got[0], predict_images(up, images), atol=1e-5)
    assert not np.allclose(got[0], predict_images(ckpt, images), atol=1e-3)  # the resize really happened


def test_ensemble_exports_as_one_graph_averaging_its_members(trained, tmp_path: Path) -> None:
    """A fold-ensemble checkpoint exports to one ONNX graph whose output is the mean of the members' softmax."""
    import torch

    from cellnet.checkpoint import save_checkpoint
    from cellnet.model import FoldEnsemble, build_model

    ckpt_dir, _ = trained
    single = load_checkpoint(ckpt_dir)
    torch.manual_seed(5)
    other = build_model(single.config, len(single.classes)).eval()
    ens_dir = save_checkpoint(
        tmp_path / "ens",
        FoldEnsemble([single.model, other]),
        config=single.config,
        classes=single.classes,
        image_size=single.image_size,
        mean=single.mean,
        std=single.std,
        metrics={},
    )
    ens = load_checkpoint(ens_dir)
    out = tmp_path / "ens.onnx"
    assert main(["export", "--checkpoint", str(ens_dir), "--out", str(out), "--tolerance", "1e-5"]) == 0
    images = generate(n=40, image_size=TINY_SIZE, seed=22).images[:6]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.astype(np.float32)})[0]
    members = [predict_images(load_checkpoint(ckpt_dir), images)]
    single.model = other
    members.append(predict_images(single, images))
    np.testing.assert_allclose(got, np.mean(members, axis=0), atol=1e-5)
    np.testing.assert_allclose(got, predict_images(ens, images), atol=1e-5)
