"""Checkpoints: round trip to identical predictions, atomic replacement, tampered/partial directories refused."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("CELLNET_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cellnet.checkpoint import META, WEIGHTS, load_checkpoint, save_checkpoint
from cellnet.config import TrainConfig
from cellnet.data.synthetic import generate
from cellnet.errors import CheckpointError
from cellnet.model import FoldEnsemble
from cellnet.train import FitResult, fit, predict_proba

CFG = TrainConfig(backbone="test_efficientnet", epochs=1, batch_size=16, head_layers=1, head_width=32, input_size=40)


@pytest.fixture(scope="module")
def trained() -> tuple[FitResult, np.ndarray]:
    data = generate(96, image_size=32, seed=3)
    train, val = data.subset(np.arange(64)), data.subset(np.arange(64, 96))
    return fit(CFG, train, val), val.images


def _save(result: FitResult, out: Path, **kw: object) -> Path:
    classes = tuple(f"class{i}" for i in range(8))
    args = dict(
        config=result.config,
        classes=classes,
        image_size=32,
        mean=result.mean,
        std=result.std,
        metrics=result.best_metrics,
        provenance={"git_sha": "0123abc", "data_hash": "feed"},
    )
    args.update(kw)
    return save_checkpoint(out, result.model, **args)  # type: ignore[arg-type]


def test_round_trip_identical_predictions(trained: tuple[FitResult, np.ndarray], tmp_path: Path) -> None:
    result, images = trained
    path = _save(result, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == [META, WEIGHTS]
    ck = load_checkpoint(path)
    assert not ck.model.training
    assert ck.config == result.config and ck.input_size == 40 and ck.image_size == 32
    assert ck.classes == tuple(f"class{i}" for i in range(8))
    assert (ck.mean, ck.std) == (result.mean, result.std)
    assert ck.metrics["val_accuracy"] == result.best_metrics["val_accuracy"]
    meta = ck.meta
    assert meta["provenance"] == {"git_sha": "0123abc", "data_hash": "feed"}
    assert set(meta["versions"]) == {"cellnet", "torch", "timm", "python"}
    assert meta["backbone"] == "test_efficientnet" and meta["head"]["width"] == 32

    kw = {"mean": ck.mean, "std": ck.std, "input_size": ck.input_size}
    before = predict_proba(result.model, images, **kw)  # type: ignore[arg-type]
    after = predict_proba(ck.model, images, **kw)  # type: ignore[arg-type]
    assert before.shape == (len(images), 8)
    np.testing.assert_array_equal(before, after)
    assert load_checkpoint(path / META).classes == ck.classes  # the json file's path works too


def test_replaces_atomically_and_refuses_foreign_dirs(trained: tuple[FitResult, np.ndarray], tmp_path: Path) -> None:
    result, _ = trained
    path = _save(result, tmp_path / "ckpt", metrics={"run": 1})
    _save(result, tmp_path / "ckpt", metrics={"run": 2})
    assert load_checkpoint(path).metrics == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old dirs left behind
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a cellnet checkpoint directory"):
        _save(result, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"


def _rewrite_weights(path: Path, change: dict[str, torch.Tensor | None]) -> None:
    """Alter the weights and re-record their sha256, as a careless tool would."""
    import hashlib

    state = load_file(str(path / WEIGHTS))
    for k, v in change.items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    save_file(state, str(path / WEIGHTS))
    meta = json.loads((path / META).read_text())
    meta["weights_sha256"] = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    (path / META).write_text(json.dumps(meta))


def test_tampered_and_partial_checkpoints_raise(trained: tuple[FitResult, np.ndarray], tmp_path: Path) -> None:
    result, _ = trained
    fresh = iter(range(100))

    def ckpt() -> Path:
        return _save(result, tmp_path / f"c{next(fresh)}")

    p = ckpt()
    data = bytearray((p / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (p / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(p)

    last = "head.4.weight"
    p = ckpt()
    _rewrite_weights(p, {last: torch.zeros(3, 32)})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*head\.4\.weight"):
        load_checkpoint(p)
    p = ckpt()
    _rewrite_weights(p, {last: None})
    with pytest.raises(CheckpointError, match=r"missing keys.*head\.4\.weight"):
        load_checkpoint(p)
    p = ckpt()
    _rewrite_weights(p, {"head.9.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_checkpoint(p)

    p = ckpt()
    (p / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS} is missing"):
        load_checkpoint(p)
    p = ckpt()
    (p / META).write_text('{"format": "cellnet-checkpoint", ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(p)
    p = ckpt()
    meta = json.loads((p / META).read_text())
    meta["config"]["dropout"] = 7
    (p / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config is invalid.*dropout"):
        load_checkpoint(p)
    p = ckpt()
    meta = json.loads((p / META).read_text())
    meta["format_version"] = 99
    (p / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent")


def test_save_checks_classes_and_loads_without_pretrained_weights(
    trained: tuple[FitResult, np.ndarray], tmp_path: Path
) -> None:
    result, _ = trained
    with pytest.raises(CheckpointError, match="8 outputs but 3 classes"):
        _save(result, tmp_path / "bad", classes=("a", "b", "c"))
    assert not (tmp_path / "bad").exists()
    path = _save(result, tmp_path / "ok", config=replace(result.config, pretrained=True, weights_file="/nowhere"))
    assert load_checkpoint(path).config.pretrained  # rebuilt with pretrained=False: no weights needed to load


def _ensemble(result: FitResult, k: int = 3) -> FoldEnsemble:
    """k members that really differ (the trained model plus re-initialised copies)."""
    from cellnet.model import build_model

    members = [result.model]
    for seed in range(1, k):
        torch.manual_seed(seed)
        members.append(build_model(result.config, 8).eval())
    return FoldEnsemble(members).eval()


def test_ensemble_predicts_the_mean_of_its_members(trained: tuple[FitResult, np.ndarray], tmp_path: Path) -> None:
    from cellnet.predict import predict_images

    result, images = trained
    ens = _ensemble(result)
    path = save_checkpoint(
        tmp_path / "ens",
        ens,
        config=result.config,
        classes=tuple(f"class{i}" for i in range(8)),
        image_size=32,
        mean=result.mean,
        std=result.std,
        metrics={},
    )
    ck = load_checkpoint(path)
    assert isinstance(ck.model, FoldEnsemble) and ck.members == 3 and ck.meta["ensemble"]["members"] == 3
    got = predict_images(ck, images)
    kw = {"mean": ck.mean, "std": ck.std, "input_size": ck.input_size}
    members = [predict_proba(m, images, **kw) for m in ck.model.members]  # type: ignore[arg-type]
    assert not np.allclose(members[0], members[1], atol=1e-3)  # the members differ ...
    np.testing.assert_allclose(got, np.mean(members, axis=0), atol=1e-5)  # ... and the ensemble is their mean
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    tta = predict_images(ck, images, tta=True)  # TTA works on it unchanged
    assert tta.shape == got.shape and np.allclose(tta.sum(axis=1), 1.0, atol=1e-5)


def test_broken_or_partial_ensemble_checkpoints_raise(trained: tuple[FitResult, np.ndarray], tmp_path: Path) -> None:
    result, _ = trained
    classes = tuple(f"class{i}" for i in range(8))
    kw = dict(config=result.config, classes=classes, image_size=32, mean=result.mean, std=result.std, metrics={})
    p = save_checkpoint(tmp_path / "e1", _ensemble(result), **kw)  # type: ignore[arg-type]
    meta = json.loads((p / META).read_text())
    meta["ensemble"]["members"] = 5
    (p / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"declares 5 members .* holds 3 \(members 0-2\)"):
        load_checkpoint(p)
    p = save_checkpoint(tmp_path / "e2", _ensemble(result), **kw)  # type: ignore[arg-type]
    _rewrite_weights(p, {k: None for k in load_file(str(p / WEIGHTS)) if k.startswith("members.2.")})
    with pytest.raises(CheckpointError, match=r"declares 3 members .* holds 2"):
        load_checkpoint(p)
    p = save_checkpoint(tmp_path / "e3", _ensemble(result), **kw)  # type: ignore[arg-type]
    meta = json.loads((p / META).read_text())
    meta["ensemble"] = None
    (p / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="holds an ensemble of 3 members but"):
        load_checkpoint(p)
    meta["ensemble"] = {"members": "three"}
    (p / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="ensemble.members must be a positive integer"):
        load_checkpoint(p)


def test_replacement_never_leaves_the_destination_missing(
    trained: tuple[FitResult, np.ndarray], tmp_path: Path
) -> None:
    """A reader polling the checkpoint while it is replaced again and again always finds a complete one."""
    import threading

    from cellnet.files import replace_dir

    result, _ = trained
    path = _save(result, tmp_path / "ckpt", metrics={"run": 0})
    missing: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if not (path / META).is_file() or not (path / WEIGHTS).is_file():
                missing.append(1)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for run in range(1, 15):
            _save(result, path, metrics={"run": run})
    finally:
        done.set()
        reader.join()
    assert load_checkpoint(path).metrics == {"run": 14}
    assert missing == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "x").write_text("old")
    assert replace_dir(a, b) == "exchange"  # Linux: one atomic swap, not two renames
    assert (b / "x").read_text() == "new" and not a.exists()
