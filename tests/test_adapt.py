"""`--adapt`: BatchNorm statistics re-estimated on the images of the call -- the mean and variance of all the images
at once (not an average of per-chunk figures; class-sorted inputs read in a shuffled order; no chunk of one image),
blended with the training ones by the mixture formula, lifting accuracy on a shifted batch -- statistics only
(weights and the checkpoint on disk untouched), refused below the minimum, the OOD flag on the training statistics,
refit and ensemble checkpoints alike, a one-line note and `adapted` False for a backbone without BatchNorm, the
class-mix guard."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellnet import predict as predict_module
from cellnet.adapt import (
    GUARD_TV,
    MIN_IMAGES,
    adapt,
    batch_statistics,
    batchnorm_layers,
    blended,
    class_mix_tv,
)
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


def shift(images: np.ndarray) -> np.ndarray:
    return np.clip(images.astype(np.float32) * np.array([0.7, 0.8, 1.1]) - 10, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bn_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model good enough to lose accuracy to a colour shift (test_resnet, 6 epochs on 800 synthetic cells,
    91% on fresh ones), with a BatchNorm layer in its head (`head_layers: 1`), saved as a checkpoint."""
    from cellnet.checkpoint import save_checkpoint
    from cellnet.config import TrainConfig
    from cellnet.train import fit

    data = generate(n=800, image_size=TINY_SIZE, seed=0)
    config = TrainConfig(
        backbone="test_resnet",
        head_layers=1,
        head_width=32,
        dropout=0.0,
        epochs=6,
        batch_size=32,
        warmup_epochs=0,
        aug_strength=0.0,
        lr=3e-3,
        device="cpu",
    )
    result = fit(config, data, None, early_stopping=False)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in result.model.head.modules())
    path = tmp_path_factory.mktemp("bn-head") / "ckpt"
    return save_checkpoint(
        path,
        result.model,
        config=result.config,
        classes=data.classes,
        image_size=TINY_SIZE,
        mean=result.mean,
        std=result.std,
        metrics={},
    )


def at_once(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every BatchNorm layer's (mean, unbiased var) from one training-mode pass over all of `x` in one batch."""
    import copy

    ref = copy.deepcopy(model)
    for layer in batchnorm_layers(ref):
        layer.train()
        layer.momentum = 1.0  # the running statistics become this batch's
    with torch.inference_mode():
        ref(x)
    return [(layer.running_mean.clone(), layer.running_var.clone()) for layer in batchnorm_layers(ref)]


def largest_gap(
    stats: list[tuple[torch.Tensor, torch.Tensor]], ref: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """(largest |mean - ref mean| in ref standard deviations, largest |log var / ref var|) over layers and channels."""
    means = [float(((m - rm).abs() / rv.sqrt().clamp_min(1e-6)).max()) for (m, _), (rm, rv) in zip(stats, ref)]
    variances = [float((v / rv.clamp_min(1e-12)).log().abs().max()) for (_, v), (_, rv) in zip(stats, ref)]
    return max(means), max(variances)


def test_the_statistics_are_those_of_all_the_images_at_once(bn_head: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """257 class-sorted images (a folder of class subfolders): the statistics predict --adapt measures equal those of
    all 257 in one batch -- exactly for the first layer (its input depends on no BatchNorm), within 0.1 standard
    deviation and 20% of the variance for every deeper layer (chunk-normalised inputs; class-sorted chunks of 52
    were 0.18 and 2.8x off). The old per-chunk average (chunks of 256 and 1) failed here on the head's BatchNorm1d."""
    ckpt = load_checkpoint(bn_head)
    test = generate(n=257, image_size=TINY_SIZE, seed=5)
    images = shift(test.images)[np.argsort(test.labels, kind="stable")]
    ref = at_once(ckpt.model, next(preprocessed(ckpt, images, len(images))))
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def spy(model, n, batches, predict, prior):  # what predict --adapt measures, from its own batches
        seen["stats"] = batch_statistics(model, batches())
        return adapt(model, n, batches, predict, prior)

    monkeypatch.setattr(predict_module, "adapt", spy)
    predict_batch(ckpt, images, adapt=True)
    stats = seen["stats"]
    first_mean, first_var = stats[0]
    torch.testing.assert_close(first_mean, ref[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first_var, ref[0][1], rtol=1e-4, atol=1e-5)
    mean_gap, var_gap = largest_gap(stats, ref)
    assert mean_gap < 0.1 and var_gap < np.log(1.2), (mean_gap, var_gap)


def test_the_blend_follows_the_mixture_formula(bn_head: Path) -> None:
    """(1 - w) training + w batch: the mixture's mean, and its variance (both variances and the means' spread)."""
    model = load_checkpoint(bn_head).model
    layers = batchnorm_layers(model)
    rng = torch.Generator().manual_seed(0)
    stats = [
        (torch.randn(layer.num_features, generator=rng), torch.rand(layer.num_features, generator=rng) + 0.1)
        for layer in layers
    ]
    w = 0.3
    mixed = blended(model, stats, w)
    for before, after, (mean, var) in zip(layers, batchnorm_layers(mixed), stats, strict=True):
        m0, v0 = before.running_mean, before.running_var
        torch.testing.assert_close(after.running_mean, (1 - w) * m0 + w * mean)
        torch.testing.assert_close(after.running_var, (1 - w) * v0 + w * var + w * (1 - w) * (mean - m0) ** 2)
    assert batchnorm_layers(model)[0].running_mean is layers[0].running_mean  # the model itself is not changed


def test_adapt_lifts_accuracy_on_a_batch_whose_statistics_were_shifted(bn_head: Path) -> None:
    """Darker, bluer cells (what another microscope gives): the training statistics read them badly, re-estimated
    ones far better (measured 0.17 -> 0.70); on clean cells adapting changes little."""
    ckpt = load_checkpoint(bn_head)
    test = generate(n=257, image_size=TINY_SIZE, seed=5)

    def accuracy(images: np.ndarray, adapt: bool) -> float:
        return float((predict_batch(ckpt, images, adapt=adapt).probs.argmax(axis=1) == test.labels).mean())

    shifted = shift(test.images)
    assert accuracy(shifted, True) >= accuracy(shifted, False) + 0.3
    assert accuracy(test.images, True) >= accuracy(test.images, False) - 0.03


def test_predict_adapt_answers_257_images_with_a_batchnorm_head(
    bn_head: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """256 + 1: the last chunk of the statistics pass used to hold one image, which BatchNorm1d refuses."""
    data = dataclasses.replace(generate(n=257, image_size=TINY_SIZE, seed=7))
    cells = save_npz(data, tmp_path / "cells.npz")
    out = tmp_path / "adapted.csv"
    assert main(["predict", "--checkpoint", str(bn_head), str(cells), "--adapt", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 257 and table["predicted"].notna().all() and table["adapted"].all()
    assert "257 images" in capsys.readouterr().err


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
    cells = save_npz(dataclasses.replace(generate(n=80, image_size=32, seed=5), images=images), tmp_path / "c.npz")
    table = predict_module.predict_inputs(ckpt, [str(cells)], adapt=True, show_progress=False).table
    assert not table["adapted"].any()  # nothing was adapted: the column says so


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
