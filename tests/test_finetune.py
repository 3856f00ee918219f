"""A deployed model meets a new lab: `cellnet finetune` on a few labelled cells (all layers from the parent's weights,
a cross-fitted calibration with sets pooled over the classes, the lab's own OOD statistics, the parent's hash in the
provenance, classes without cells named) and `train.init_checkpoint` (backbone and input size fixed to the parent's,
its head kept when the classes match, an ensemble refused). Tiny: test_resnet at 32 px on synthetic cells whose
"new lab" is a colour shift the parent reads badly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellnet.checkpoint import load_checkpoint, save_checkpoint
from cellnet.cli import main
from cellnet.config import TrainConfig
from cellnet.data.clean import save_npz
from cellnet.data.dataset import CellData
from cellnet.data.synthetic import generate
from cellnet.predict import predict_batch
from cellnet.train import fit
from tests.test_cli import TINY_SIZE, assert_one_line_error

LAB_CLASSES = 5  # the new lab labels five of the eight classes


def new_lab(images: np.ndarray) -> np.ndarray:
    """Another microscope: bluer and darker (the parent reads ~30% of these right)."""
    return np.clip(images.astype(np.float32) * np.array([0.6, 0.7, 1.2]) - 20, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployed model: test_resnet trained 6 epochs on 800 synthetic cells of the first lab."""
    data = generate(n=800, image_size=TINY_SIZE, seed=0)
    config = TrainConfig(
        backbone="test_resnet", head_layers=0, dropout=0.0, epochs=6, batch_size=32, warmup_epochs=0,
        aug_strength=0.0, lr=3e-3, device="cpu",
    )  # fmt: skip
    result = fit(config, data, None, early_stopping=False)
    return save_checkpoint(
        tmp_path_factory.mktemp("parent") / "best",
        result.model,
        config=result.config,
        classes=data.classes,
        image_size=TINY_SIZE,
        mean=result.mean,
        std=result.std,
        metrics={},
    )


def labelled(per_class: int, seed: int) -> CellData:
    """`per_class` labelled cells of each of the new lab's five classes."""
    cells = generate(n=60 * LAB_CLASSES, image_size=TINY_SIZE, seed=seed)
    keep = np.concatenate([np.flatnonzero(cells.labels == c)[:per_class] for c in range(LAB_CLASSES)])
    picked = cells.subset(keep)
    return dataclasses.replace(picked, images=new_lab(picked.images))


@pytest.fixture(scope="module")
def finetuned(parent: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`cellnet finetune` on ten labelled cells per class of the new lab; returns (checkpoint, stdout)."""
    root = tmp_path_factory.mktemp("finetune")
    cells = save_npz(labelled(10, seed=3), root / "labelled.npz")
    out = root / "lab-b"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["finetune", "--checkpoint", str(parent), str(cells), "--out", str(out)]) == 0
    return out, stdout.getvalue()


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """Fresh cells of the new lab's five classes, new-lab colours."""
    cells = generate(n=400, image_size=TINY_SIZE, seed=9)
    mine = cells.labels < LAB_CLASSES
    return new_lab(cells.images[mine]), cells.labels[mine]


def test_finetune_reads_the_new_lab_and_says_what_it_promises(parent: Path, finetuned: tuple[Path, str]) -> None:
    path, stdout = finetuned
    images, labels = held_out()
    before = predict_batch(load_checkpoint(parent), images).probs.argmax(axis=1) == labels
    ckpt = load_checkpoint(path)
    out = predict_batch(ckpt, images)
    after = out.probs.argmax(axis=1) == labels
    assert after.mean() >= before.mean() + 0.3 and after.mean() >= 0.8, (before.mean(), after.mean())
    # a normal calibrated checkpoint: every class kept, sets and flag, answers mostly right
    assert ckpt.classes == load_checkpoint(parent).classes and ckpt.calibration is not None
    assert out.calibrated is not None and out.calibrated.ood is not None
    covered = out.calibrated.sets[np.arange(len(labels)), labels].mean()
    answered = ~out.uncertain()
    assert covered >= 0.85 and answered.mean() >= 0.4 and after[answered].mean() >= 0.9
    meta = json.loads((path / "cellnet.json").read_text())
    assert meta["calibration"]["conformal"]["mondrian"] is False  # pooled: ten cells a class cannot do better
    assert meta["provenance"]["parent_weights_sha256"] == load_checkpoint(parent).meta["weights_sha256"]
    notes = " ".join(ckpt.calibration.notes)
    assert "pooled over the classes" in notes and "monocyte" in notes and "platelet" in notes
    assert "out-of-fold accuracy" in stdout and "no labelled cells of monocyte, neutrophil, platelet" in stdout


def test_the_finetuned_checkpoint_predicts_through_the_command_and_exports(
    finetuned: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = finetuned
    images, labels = held_out()
    classes = load_checkpoint(path).classes
    cells = save_npz(CellData(images, labels, classes, np.arange(len(labels)).astype(str)), tmp_path / "b.npz")
    assert main(["predict", "--checkpoint", str(path), str(cells), "--out", str(tmp_path / "p.csv")]) == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == len(labels) and table["set"].notna().all()
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]) == 0


def test_finetune_refusals_are_one_line(parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cellnet.model import FoldEnsemble

    one_each = save_npz(labelled(1, seed=4), tmp_path / "one.npz")
    assert main(["finetune", "--checkpoint", str(parent), str(one_each), "--out", str(tmp_path / "a")]) == 2
    assert_one_line_error(capsys.readouterr().err, "at least 2 classes with at least 2 cells")
    ckpt = load_checkpoint(parent)
    two = FoldEnsemble([ckpt.model, ckpt.model])
    ensemble = save_checkpoint(
        tmp_path / "ens", two, config=ckpt.config, classes=ckpt.classes, image_size=TINY_SIZE, mean=ckpt.mean,
        std=ckpt.std, metrics={},
    )  # fmt: skip
    cells = save_npz(labelled(4, seed=5), tmp_path / "cells.npz")
    assert main(["finetune", "--checkpoint", str(ensemble), str(cells), "--out", str(tmp_path / "b")]) == 2
    assert_one_line_error(capsys.readouterr().err, "fold ensemble", "single model")
    other = generate(n=40, image_size=TINY_SIZE, seed=6)
    strange = save_npz(dataclasses.replace(other, classes=tuple(f"x{c}" for c in other.classes)), tmp_path / "x.npz")
    assert main(["finetune", "--checkpoint", str(parent), str(strange), "--out", str(tmp_path / "c")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not among the checkpoint's classes")


def test_init_checkpoint_starts_a_fit_from_the_parents_weights(parent: Path, tmp_path: Path) -> None:
    """Same classes: backbone and head copied (the first step's model is the parent); other classes: backbone only.
    Another backbone or input size, or an ensemble: refused in one line."""
    from cellnet.errors import ConfigError
    from cellnet.train import Trainer

    ckpt = load_checkpoint(parent)
    cells = generate(n=64, image_size=TINY_SIZE, seed=7)
    config = dataclasses.replace(ckpt.config, init_checkpoint=str(parent), epochs=1)
    trainer = Trainer(config, cells, None)
    for key, value in ckpt.model.state_dict().items():
        assert torch.equal(trainer.core.state_dict()[key].cpu(), value.cpu()), key
    assert trainer.init_note is not None and "backbone and head" in trainer.init_note
    assert trainer.core.weights_source is not None and trainer.core.weights_source.startswith("checkpoint: ")
    three = CellData(cells.images, cells.labels % 3, ("a", "b", "c"), cells.ids)
    rebuilt = Trainer(config, three, None)
    assert rebuilt.init_note is not None and "head rebuilt" in rebuilt.init_note
    stem = "conv1.0.weight"
    assert torch.equal(rebuilt.core.backbone.state_dict()[stem].cpu(), ckpt.model.backbone.state_dict()[stem].cpu())
    with pytest.raises(ConfigError, match="test_resnet model"):
        Trainer(dataclasses.replace(config, backbone="test_efficientnet"), cells, None)
    with pytest.raises(ConfigError, match="input_size"):
        Trainer(dataclasses.replace(config, input_size=48), cells, None)


def test_a_space_with_init_checkpoint_is_checked_before_it_runs(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cellnet train` and `search.run` refuse a space that searches backbones from a checkpoint, in one line."""
    import yaml

    from search.run import main as search_main

    raw = {
        "name": "lab-b",
        "data": {"source": "synthetic:100", "image_size": TINY_SIZE, "clean": False},
        "train": {"init_checkpoint": str(parent), "device": "cpu", "epochs": 1},
        "space": {"backbone": {"choice": ["test_resnet", "test_efficientnet"]}},
    }
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    assert search_main([str(space), "--dry-run", "--storage", str(tmp_path / "run")]) == 2
    assert_one_line_error(capsys.readouterr().err, "init_checkpoint", "test_resnet model", "test_efficientnet")
    raw["space"] = {"backbone": "test_resnet"}
    space.write_text(yaml.safe_dump(raw))
    assert search_main([str(space), "--dry-run", "--storage", str(tmp_path / "run")]) == 0
    assert "the weights of init_checkpoint" in capsys.readouterr().out
    assert main(["train", str(space), "--out", str(tmp_path / "m")]) == 0
    trained = load_checkpoint(tmp_path / "m")
    assert trained.config.init_checkpoint == str(parent)
