"""The classifier: a timm backbone (features only) + a small dense head, and where its weights come from.

`pretrained=True` means ImageNet weights or an error, `pretrained="auto"` weights where an offline source exists;
where they come from (weights_file, timm's cache, a weights package, the hub) is `cellnet.weights`. There is never a
silent random initialisation when the user asked for pretrained weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cellnet.config import TrainConfig
from cellnet.constants import DEFAULT_FEATURES, FEATURE_KINDS, IMAGENET_MEAN, IMAGENET_STD, POOLED, STAGE_STATS
from cellnet.errors import CheckpointError, ConfigError
from cellnet.weights import create_backbone


class CellNet(nn.Module):
    """`backbone` (timm, num_classes=0: pooled features) -> `head` (hidden layers, then the k-way linear output)."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential, weights_source: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.weights_source = weights_source  # where the backbone's initial weights came from; None: random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def feature_kind(self) -> str:
        """The features a new OOD calibration of this model measures by default (`supported_features`)."""
        return self.supported_features(DEFAULT_FEATURES)

    def supported_features(self, kind: str) -> str:
        """`kind` where this backbone can give it, else "pooled": stage statistics need its intermediate stages
        (every timm model with `forward_intermediates`)."""
        return kind if kind == POOLED or hasattr(self.backbone, "forward_intermediates") else POOLED

    def forward_with_features(self, x: torch.Tensor, kind: str = POOLED) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits N×C, features N×D) from one pass; the features are what the out-of-distribution score measures
        distances in, `kind` one of `FEATURE_KINDS`:

        - "pooled": the backbone's globally pooled last-stage features (the head's input). Pooling makes them
          nearly blind to scale: a cell framed 1.8x smaller gives much the same vector.
        - "stage_stats": the per-channel mean and standard deviation of the penultimate stage's feature map, which
          move when the cell's size, texture or staining does.
        - "pooled+stage_stats": both, concatenated.
        """
        if kind == POOLED:
            pooled = self.backbone(x)
            return self.head(pooled), pooled.float()
        if kind not in FEATURE_KINDS:
            raise ValueError(f"feature kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
        backbone: Any = self.backbone  # a timm model: its stage API is not typed on nn.Module
        if not hasattr(backbone, "forward_intermediates"):
            raise CheckpointError(f"{type(backbone).__name__} gives no intermediate stages for {kind!r} features")
        final, stages = backbone.forward_intermediates(x, indices=2, intermediates_only=False)
        pooled = backbone.forward_head(final, pre_logits=True)
        stage = stages[0].float()
        stats = torch.cat([stage.mean(dim=(2, 3)), stage.std(dim=(2, 3), correction=0)], dim=1)
        features = stats if kind == STAGE_STATS else torch.cat([pooled.float(), stats], dim=1)
        return self.head(pooled), features


class FoldEnsemble(nn.Module):
    """The k fold models of one search trial as one model: its prediction is the mean of the members' softmax.

    `forward` returns the log of that mean, so `softmax(forward(x))` is exactly the ensemble's probability and every
    consumer of logits (predict, TTA, evaluate, the ONNX export, temperature scaling) works on it unchanged.
    """

    def __init__(self, members: Sequence[CellNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine([m(x) for m in self.members])

    @property
    def feature_kind(self) -> str:
        first = self.members[0]
        assert isinstance(first, CellNet)
        return first.feature_kind

    def forward_with_features(self, x: torch.Tensor, kind: str = POOLED) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ensemble's log mean softmax N×C, each member's features k×N×D in its own feature space), one pass
        per member."""
        outs = [m.forward_with_features(x, kind) for m in self.members]  # type: ignore[operator]
        return self._combine([logits for logits, _ in outs]), torch.stack([f for _, f in outs])

    def _combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        logp = torch.stack([F.log_softmax(z.float(), dim=1) for z in logits])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))

    @property
    def backbone(self) -> nn.Module:
        """The first member's backbone: what normalisation and feature-width questions are answered from (all
        members share one config)."""
        first = self.members[0]
        assert isinstance(first, CellNet)
        return first.backbone


def build_head(
    in_features: int,
    num_classes: int,
    *,
    layers: int = 1,
    width: int = 256,
    batchnorm: bool = True,
    dropout: float = 0.0,
) -> nn.Sequential:
    """`layers` × (Linear → BatchNorm1d? → ReLU → Dropout), then Dropout (only when layers == 0) → Linear."""
    mods: list[nn.Module] = []
    n = in_features
    for _ in range(layers):
        mods.append(nn.Linear(n, width, bias=not batchnorm))
        if batchnorm:
            mods.append(nn.BatchNorm1d(width))
        mods += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        n = width
    if layers == 0 and dropout > 0:
        mods.append(nn.Dropout(dropout))
    mods.append(nn.Linear(n, num_classes))
    return nn.Sequential(*mods)


def build_model(config: TrainConfig, num_classes: int) -> CellNet:
    """The model `config` describes, with ImageNet weights in the backbone when `config.pretrained` (true: or an
    error; "auto": where an offline source has them). `weights_source` on the result says where they came from."""
    backbone, source = create_backbone(config.backbone, pretrained=config.pretrained, weights_file=config.weights_file)
    head = build_head(
        feature_dim(backbone),
        num_classes,
        layers=config.head_layers,
        width=config.head_width,
        batchnorm=config.head_batchnorm,
        dropout=config.dropout,
    )
    return CellNet(backbone, head, source.describe() if source is not None else None)


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled features a `num_classes=0` timm model returns: `head_hidden_size` where the model has a
    pre-logits stage (MobileNetV3/V4's conv_head: 1024 or 1280), else `num_features`."""
    width = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not isinstance(width, int):
        raise ConfigError(f"{type(backbone).__name__} does not report its feature width (head_hidden_size)")
    return width


def model_normalisation(model: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The (mean, std) the backbone's pretrained weights expect (timm pretrained_cfg), else ImageNet's."""
    backbone = getattr(model, "backbone", model)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if not (mean and std and len(mean) == 3 and len(std) == 3):
        return IMAGENET_MEAN, IMAGENET_STD
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))
