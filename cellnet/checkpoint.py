"""A checkpoint is one self-describing directory: `model.safetensors` (weights) + `cellnet.json` (everything else).

cellnet.json holds what is needed to rebuild and use the model without the training code's state: backbone and head
(inside the full TrainConfig), class names, image and input size, normalisation, metrics, library versions,
provenance (git SHA, data hash, ...) and the sha256 of the weights file. Loading never unpickles: safetensors + JSON,
the model is rebuilt from the config with pretrained=False and filled strictly; anything missing, extra, mis-shaped
or altered is a CheckpointError.

An ensemble checkpoint (a search winner's k fold models, `cellnet.model.FoldEnsemble`) is the same directory with
`"ensemble": {"members": k, ...}` in cellnet.json and the members' weights under `members.<i>.` in the one
safetensors file; all members share the config, classes and preprocessing, so predict/evaluate/export need nothing
else.

A calibrated checkpoint (a search's deployed model, fitted on out-of-fold predictions: cellnet/calibrate.py) adds
`"calibration": {...}` (temperature, default coverage, OOD thresholds, ...) to cellnet.json and its arrays (conformal
scores, OOD statistics) as `calibration.safetensors`, whose sha256 cellnet.json records like the weights'.

`save_checkpoint` writes a model; `Checkpoint.save` writes a loaded checkpoint again, e.g. with a calibration added
(how the search calibrates its refit); both replace the directory atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cellnet import __version__
from cellnet.calibrate import Calibration
from cellnet.config import TRAIN_FIELDS, TrainConfig
from cellnet.errors import CheckpointError
from cellnet.files import jsonable, replace_dir, sha256_file, write_json
from cellnet.model import CellNet, FoldEnsemble, build_model, model_normalisation
from cellnet.weights import check_state_dict

WEIGHTS = "model.safetensors"
META = "cellnet.json"
CALIBRATION = "calibration.safetensors"
FORMAT = "cellnet-checkpoint"
FORMAT_VERSION = 1


class _Keep:
    """The default of `Checkpoint.save(calibration=...)`: keep the checkpoint's own."""


KEEP = _Keep()


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on the requested device) and its description."""

    model: CellNet | FoldEnsemble
    config: TrainConfig
    classes: tuple[str, ...]
    image_size: int
    input_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    calibration: Calibration | None = None  # fitted on out-of-fold data (cellnet/calibrate.py), or None

    @property
    def temperature(self) -> float:
        """The temperature its calibration divides single-view logits by (1.0 without a calibration)."""
        return float(self.calibration.temperature) if self.calibration is not None else 1.0

    @property
    def members(self) -> int:
        """Models averaged by this checkpoint: k for a fold ensemble, 1 for a single model."""
        return len(self.model.members) if isinstance(self.model, FoldEnsemble) else 1

    def save(self, out_dir: str | Path, *, calibration: Calibration | None | _Keep = KEEP) -> Path:
        """Write this checkpoint (e.g. a loaded one, now with a calibration) to `out_dir` with `save_checkpoint`;
        `calibration` replaces its own when given (None removes it)."""
        return save_checkpoint(
            out_dir,
            self.model,
            config=self.config,
            classes=self.classes,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            metrics=self.metrics,
            provenance=self.meta.get("provenance"),
            calibration=self.calibration if isinstance(calibration, _Keep) else calibration,
        )


def in_memory(model: nn.Module, config: TrainConfig, classes: Sequence[str], image_size: int) -> Checkpoint:
    """A Checkpoint around a model in memory (what `load_checkpoint` would give for it saved), for `predict`/`infer`
    on fold models or a fresh `fit` result without writing anything."""
    mean, std = model_normalisation(model)
    return Checkpoint(
        model=model,  # type: ignore[arg-type]
        config=config,
        classes=tuple(classes),
        image_size=int(image_size),
        input_size=config.input_size,
        mean=mean,
        std=std,
    )


def save_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    *,
    config: TrainConfig,
    classes: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    metrics: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write `out_dir` atomically (a temp dir beside it, then swapped in; an existing checkpoint is replaced only
    once the new one is complete). `model` is a CellNet or a FoldEnsemble; `calibration` a
    `cellnet.calibrate.Calibration` or None. Returns the directory."""
    out = Path(out_dir)
    outputs = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if outputs != [len(classes)]:
        raise CheckpointError(
            f"the model has {outputs[0] if outputs else '?'} outputs but {len(classes)} classes were given"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    replaceable = out.is_dir() and ((out / META).is_file() or not any(out.iterdir()))
    if out.exists() and not replaceable:
        raise CheckpointError(f"{out} exists and is not a cellnet checkpoint directory; refusing to replace it")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": config.backbone,
            "head": {
                "layers": config.head_layers,
                "width": config.head_width,
                "batchnorm": config.head_batchnorm,
                "dropout": config.dropout,
            },
            "num_classes": len(classes),
            "classes": list(classes),
            "image_size": int(image_size),
            "input_size": config.input_size,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "config": dataclasses.asdict(config),
            "metrics": jsonable(metrics),
            "versions": _versions(),
            "provenance": jsonable(provenance or {}),
            "weights_sha256": sha256_file(tmp / WEIGHTS),
            "ensemble": (
                {"members": len(model.members), "combine": "mean_softmax"} if isinstance(model, FoldEnsemble) else None
            ),
            "calibration": None,
        }
        if calibration is not None:
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in calibration.to_tensors().items()}
            save_file(tensors, str(tmp / CALIBRATION), metadata={"format": FORMAT})
            meta["calibration"] = {**calibration.to_meta(), "tensors_sha256": sha256_file(tmp / CALIBRATION)}
        write_json(tmp / META, meta, fsync=True)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory (or its cellnet.json / model.safetensors) and rebuild the model in eval mode."""
    path = Path(path)
    if path.is_file() and path.name in (META, WEIGHTS):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory (expected {META} + {WEIGHTS})")
    meta_path, weights_path = path / META, path / WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint, {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a cellnet checkpoint (format {_get(meta, 'format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: checkpoint format_version {meta.get('format_version')!r} is not supported "
            f"(this cellnet reads {FORMAT_VERSION})"
        )
    for key in ("classes", "image_size", "mean", "std", "config", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: key {key!r} is missing")
    digest = sha256_file(weights_path)
    if digest != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: sha256 {digest[:12]}… does not match the {meta['weights_sha256'][:12]}… recorded in "
            f"{META}; the weights were changed or truncated after saving"
        )
    config = _config_from(meta["config"], meta_path)
    classes = tuple(str(c) for c in meta["classes"])
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from None
    empty = dataclasses.replace(config, pretrained=False, weights_file=None, init_checkpoint=None)  # weights: below
    model = _build(meta, empty, len(classes), meta_path)
    _check_members(meta, state, weights_path)
    check_state_dict(model, state, where=str(weights_path))
    model.load_state_dict(state, strict=True)
    model.to(device).to(memory_format=torch.channels_last).eval()  # the layout infer and the trainer use
    return Checkpoint(
        calibration=_calibration_from(meta.get("calibration"), path / CALIBRATION),
        model=model,
        config=config,
        classes=classes,
        image_size=int(meta["image_size"]),
        input_size=config.input_size,
        mean=_triple(meta["mean"], "mean", meta_path),
        std=_triple(meta["std"], "std", meta_path),
        metrics=dict(meta.get("metrics") or {}),
        meta=meta,
        path=path,
    )


# ---------------------------------------------------------------------------------------------------------------


def _calibration_from(meta: Any, tensors_path: Path) -> Calibration | None:
    """The checkpoint's Calibration, or None for an uncalibrated one (`cellnet train`, older checkpoints)."""
    if meta is None:
        return None
    if not isinstance(meta, dict) or not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path.parent}: incomplete checkpoint, {tensors_path.name} is missing")
    digest = sha256_file(tensors_path)
    if digest != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensors_path}: sha256 does not match the one recorded in {META}; changed or truncated")
    try:
        tensors = {k: v.numpy() for k, v in load_file(str(tensors_path)).items()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{tensors_path}: not a readable safetensors file ({e})") from None
    try:
        return Calibration.from_parts(meta, tensors)
    except CheckpointError as e:  # the calibration's own checks do not know which checkpoint they read
        raise CheckpointError(f"{tensors_path.parent / META} (calibration): {e}") from None


def _build(meta: dict[str, Any], config: TrainConfig, num_classes: int, where: Path) -> CellNet | FoldEnsemble:
    """The empty model cellnet.json describes: one CellNet, or `ensemble.members` of them."""
    ensemble = meta.get("ensemble")
    if ensemble is None:
        return build_model(config, num_classes)
    k = ensemble.get("members") if isinstance(ensemble, dict) else None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CheckpointError(f"{where}: ensemble.members must be a positive integer, got {k!r}")
    return FoldEnsemble([build_model(config, num_classes) for _ in range(k)])


def _check_members(meta: dict[str, Any], state: dict[str, Any], weights_path: Path) -> None:
    """An ensemble whose weights file holds a different number of members than cellnet.json declares (a partial
    copy, or files from two checkpoints) gets an error that says exactly that, not a list of missing keys."""
    found = sorted({int(m.group(1)) for k in state if (m := re.match(r"members\.(\d+)\.", k))})
    declared = (meta.get("ensemble") or {}).get("members")
    if declared is None:
        if found:
            raise CheckpointError(
                f"{weights_path} holds an ensemble of {len(found)} members but {META} describes a single model"
            )
        return
    if found != list(range(declared)):
        shown = f"members {found[0]}-{found[-1]}" if found else "no members"
        raise CheckpointError(
            f"{weights_path}: the ensemble checkpoint declares {declared} members in {META} but the weights file "
            f"holds {len(found)} ({shown}); the checkpoint is partial or mixed, re-create it"
        )


def _config_from(raw: Any, where: Path) -> TrainConfig:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: 'config' must be a mapping of TrainConfig fields")
    unknown = sorted(set(raw) - set(TRAIN_FIELDS))
    if unknown:
        raise CheckpointError(f"{where}: config has unknown keys {unknown} (written by a newer cellnet?)")
    try:
        return TrainConfig(**raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: config is invalid ({e})") from None


def _triple(v: Any, key: str, where: Path) -> tuple[float, float, float]:
    if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, int | float) for x in v)):
        raise CheckpointError(f"{where}: {key} must be a list of 3 numbers, got {v!r}")
    return float(v[0]), float(v[1]), float(v[2])


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None


def _versions() -> dict[str, str]:
    import timm  # timm (~2 s): loaded by whoever built the model being saved; this module does not need it

    return {
        "cellnet": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
