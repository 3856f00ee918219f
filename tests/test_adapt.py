"""`--adapt`: BatchNorm statistics re-estimated on the images of the call -- statistics only (weights and the
checkpoint on disk untouched), refused below the minimum, the OOD flag on the training statistics, refit and
ensemble checkpoints alike, a one-line note for a backbone without BatchNorm, the class-mix guard."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellnet.adapt import GUARD_TV, MIN_IMAGES, adapt, batchnorm_layers, class_mix_tv
from cellnet.checkpoint import load_checkpoint
from cellnet.cli import main
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.predict import predict_batch, preprocessed
from tests.test_cli import TINY_SIZE, assert_one_line_error
from tests.test_trust import checkpoints  # noqa: F401  (the module fixture, reused)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def shifted_cells(n: int, seed: int) -> np.ndarray:
    """Cells another microscope might give: darker and bluer (a shift BatchNorm statistics notice)."""
    images = generate(n=n, image_size=TINY_SIZE, seed=seed).images.astype(np.float32)
    return np.clip(images * np.array([0.7, 0.8, 1.1]) - 10, 0, 255).astype(np.uint8)


def test_adapt_changes_batchnorm_statistics_only(checkpoints) -> None:  # noqa: F811
    _, calibrated, _ = checkpoints
    ckpt = load_checkpoint(calibrated)
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    images = shifted_cells(200, 1)
    model, info = adapt(
        ckpt.model, len(images), lambda: preprocessed(ckpt, images, 64), lambda m: np.zeros((1, 8)), None
    )
    assert info.layers == len(batchnorm_layers(ckpt.model)) > 0 and 0 < info.weight < 1
    after = model.state_dict()
    stats = {k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    for key, value in after.items():
        if key in stats and not key.endswith("num_batches_tracked"):
            assert not torch.equal(value, before[key]), key  # re-estimated
        elif key not in stats:
            assert torch.equal(value, before[key]), key  # weights untouched
    for key, value in ckpt.model.state_dict().items():  # and the checkpoint's own model is not modified
        assert torch.equal(value, before[key]), key


def test_predict_adapt_keeps_the_ood_flag_and_the_checkpoint(
    checkpoints,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, calibrated, _ = checkpoints
    on_disk = digest(calibrated)
    data = dataclasses.replace(generate(n=160, image_size=TINY_SIZE, seed=2), images=shifted_cells(160, 2))
    cells = save_npz(data, tmp_path / "shifted.npz")
    plain, adapted = tmp_path / "plain.csv", tmp_path / "adapted.csv"
    assert main(["predict", "--checkpoint", str(calibrated), str(cells), "--out", str(plain)]) == 0
    assert main(["predict", "--checkpoint", str(calibrated), str(cells), "--adapt", "--out", str(adapted)]) == 0
    err = capsys.readouterr().err
    assert "--adapt: BatchNorm statistics of" in err and "160 images" in err and "not promised" in err
    a, b = pd.read_csv(plain), pd.read_csv(adapted)
    np.testing.assert_allclose(a["ood_score"], b["ood_score"], rtol=1e-5)  # the training statistics judge OOD
    assert b["adapted"].all() and "adapted" not in a
    p_cols = [c for c in a if c.startswith("p_")]
    assert not np.allclose(a[p_cols].to_numpy(), b[p_cols].to_numpy())  # the probabilities did change
    assert digest(calibrated) == on_disk


def test_too_few_images_are_refused_in_one_line(
    checkpoints,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, calibrated, _ = checkpoints
    few = save_npz(generate(n=MIN_IMAGES - 1, image_size=TINY_SIZE, seed=3), tmp_path / "few.npz")
    assert main(["predict", "--checkpoint", str(calibrated), str(few), "--adapt"]) == 2
    assert_one_line_error(capsys.readouterr().err, f"--adapt needs at least {MIN_IMAGES} images", "got 63")


def test_adapt_works_for_a_fold_ensemble(checkpoints, tmp_path: Path) -> None:  # noqa: F811
    """Each member's BatchNorm is re-estimated in its own feature space; the OOD scores are the training ones."""
    from cellnet.model import FoldEnsemble

    plain, calibrated, _ = checkpoints
    a, b = load_checkpoint(plain), load_checkpoint(calibrated)
    ensemble = dataclasses.replace(a, model=FoldEnsemble([a.model, b.model]).eval(), calibration=None)
    images = shifted_cells(120, 4)
    out = predict_batch(ensemble, images, adapt=True)
    assert out.adaptation is not None and out.adaptation.layers == 2 * len(batchnorm_layers(a.model))
    assert not np.allclose(out.probs, predict_batch(ensemble, images).probs)


def test_a_backbone_without_batchnorm_gets_a_note_and_no_change(tmp_path: Path) -> None:
    from cellnet.checkpoint import save_checkpoint
    from cellnet.config import TrainConfig
    from cellnet.model import build_model, model_normalisation

    config = TrainConfig(backbone="test_vit", head_layers=0)
    model = build_model(config, 8).eval()
    assert not batchnorm_layers(model)
    mean, std = model_normalisation(model)
    path = save_checkpoint(
        tmp_path / "ln",
        model,
        config=config,
        classes=[str(i) for i in range(8)],
        image_size=32,
        mean=mean,
        std=std,
        metrics={},
    )
    ckpt = load_checkpoint(path)
    images = shifted_cells(80, 5)
    out = predict_batch(ckpt, images, adapt=True)
    assert out.adaptation is not None and out.adaptation.layers == 0 and "no BatchNorm" in out.adaptation.describe()
    np.testing.assert_array_equal(out.probs, predict_batch(ckpt, images).probs)


def test_the_class_mix_guard_blends_harder_for_a_one_class_batch(checkpoints) -> None:  # noqa: F811
    prior = np.full(8, 100)
    assert class_mix_tv(np.eye(8)[np.arange(80) % 8], prior) == pytest.approx(0.0)
    assert class_mix_tv(np.eye(8)[np.zeros(80, dtype=int)], prior) == pytest.approx(7 / 8)
    _, calibrated, _ = checkpoints
    ckpt = load_checkpoint(calibrated)
    images = shifted_cells(100, 6)

    def one_class(model: torch.nn.Module) -> np.ndarray:
        return np.eye(8)[np.zeros(len(images), dtype=int)]

    _, info = adapt(ckpt.model, len(images), lambda: preprocessed(ckpt, images, 64), one_class, prior)
    assert info.guarded and info.class_mix_tv > GUARD_TV
    assert info.weight == pytest.approx(len(images) / (len(images) + 256) * (1 - info.class_mix_tv))
