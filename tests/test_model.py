"""Model building, pretrained-weight sources, normalisation, augmentation and metrics."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("CELLNET_NUM_THREADS", "1")

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

from cellnet.augment import eval_transform, train_transform
from cellnet.config import TrainConfig
from cellnet.constants import (
    DEFAULT_FEATURES,
    FEATURE_KINDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    POOLED,
    POOLED_AND_STAGE_STATS,
    STAGE_STATS,
)
from cellnet.errors import CheckpointError, ConfigError
from cellnet.metrics import classification_metrics
from cellnet.model import build_model, model_normalisation

CFG = TrainConfig(backbone="test_resnet")


@pytest.mark.parametrize(("layers", "batchnorm"), [(0, False), (1, True), (2, False)])
def test_head_shapes(layers: int, batchnorm: bool) -> None:
    model = build_model(replace(CFG, head_layers=layers, head_width=16, head_batchnorm=batchnorm), 5).eval()
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    bns = [m for m in model.head if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(linears) == layers + 1 and len(bns) == (layers if batchnorm else 0)
    assert linears[0].in_features == model.backbone.num_features
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "test_vit"])
def test_head_fits_the_pooled_features(backbone: str) -> None:
    """mobilenetv3 returns head_hidden_size (1024) features, not num_features (288), once num_classes=0."""
    model = build_model(replace(CFG, backbone=backbone, head_layers=0), 4).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_vit"])
def test_every_feature_kind_comes_from_the_pass_that_gives_the_logits(backbone: str) -> None:
    """The OOD features (`FEATURE_KINDS`) cost no second pass and leave the logits exactly as `model(x)` gives them;
    the stage statistics are the penultimate stage's per-channel mean and (population) std."""
    model = build_model(replace(CFG, backbone=backbone, head_layers=0), 3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        logits = model(x)
        pooled = model.backbone(x)
        _, stages = model.backbone.forward_intermediates(x, indices=2)
        stage = stages[0]
        stats = torch.cat([stage.mean(dim=(2, 3)), stage.std(dim=(2, 3), correction=0)], dim=1)
        out = {kind: model.forward_with_features(x, kind) for kind in FEATURE_KINDS}
    expected = {POOLED: pooled, STAGE_STATS: stats, POOLED_AND_STAGE_STATS: torch.cat([pooled, stats], dim=1)}
    for kind, (z, features) in out.items():
        torch.testing.assert_close(z, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features, expected[kind], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(features).all(), kind
    assert model.feature_kind == DEFAULT_FEATURES
    with pytest.raises(ValueError, match="feature kind must be one of"):
        model.forward_with_features(x, "logits")


def test_unknown_backbone_names_alternatives() -> None:
    with pytest.raises(ConfigError, match="resnet_tiny_nope.*not a timm model"):
        build_model(replace(CFG, backbone="resnet_tiny_nope"), 3)


def test_pretrained_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="pretrained ImageNet weights .*test_resnet.* not available.*weights_file"):
        build_model(replace(CFG, pretrained=True), 3)
    assert time.monotonic() - start < 30


def test_weights_file_safetensors_and_torch(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", num_classes=1000)  # a full ImageNet-style model, classifier included
    state = source.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model = build_model(replace(CFG, pretrained=True, weights_file=str(tmp_path / name)), 3)
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, state[k]), k

    other = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys"):
        build_model(replace(CFG, pretrained=True, weights_file=str(tmp_path / "other.safetensors")), 3)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not be read"):
        build_model(replace(CFG, pretrained=True, weights_file=str(tmp_path / "junk.pth")), 3)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(replace(CFG, pretrained=True, weights_file=str(tmp_path / "absent.pth")), 3)


def test_normalisation_follows_the_backbone() -> None:
    assert model_normalisation(build_model(CFG, 2)) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # test_resnet's cfg
    assert model_normalisation(build_model(replace(CFG, backbone="test_efficientnet"), 2)) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert model_normalisation(torch.nn.Linear(2, 2)) == (IMAGENET_MEAN, IMAGENET_STD)  # no timm cfg: fallback


def test_augmentation_strength() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    identity = train_transform(0.0, 32)
    assert all(np.array_equal(identity(image=im)["image"], im) for im in images)
    strong = train_transform(1.0, 32)
    strong.set_random_seed(0)
    changed = [not np.array_equal(strong(image=im)["image"], im) for im in images]
    assert sum(changed) >= 6
    again = train_transform(1.0, 32)
    again.set_random_seed(0)
    strong.set_random_seed(0)
    assert all(np.array_equal(strong(image=im)["image"], again(image=im)["image"]) for im in images)
    with pytest.raises(ValueError, match="aug_strength"):
        train_transform(1.5, 32)


def test_input_size_resizes_train_and_eval() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    assert train_transform(0.5, 32, 48)(image=image)["image"].shape == (48, 48, 3)
    assert eval_transform(32, 48)(image=image)["image"].shape == (48, 48, 3)
    image[3, 5] = (10, 20, 30)
    same = eval_transform(32)(image=image)["image"]  # no input_size: the pixels pass through unchanged
    assert same.shape == (32, 32, 3) and np.array_equal(same, image)
    assert len(eval_transform(32).transforms) == 0
    model = build_model(replace(CFG, input_size=48), 3).eval()
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_true[y_true == 4] = 3  # class 4 absent from the truth
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, 200))
    m = classification_metrics(y_true, y_pred, 6)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((p, r, f))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
