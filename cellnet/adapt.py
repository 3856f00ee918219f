"""Test-time BatchNorm adaptation (`cellnet predict/evaluate --adapt`): the model's normalisation re-estimated on the
images being predicted, its weights untouched.

    images of the call (all of them) ─ batch_statistics: a copy of the model, every BatchNorm's mean and variance
                                       measured over all the images (cumulative, not per chunk)
      ─ blend with the training statistics, weight w = n / (n + PRIOR_IMAGES): few images move them little
      ─ guard: the adapted predictions' class histogram against the training class mix; far from it (total
        variation above GUARD_TV: a batch of mostly one or two classes, whose statistics describe the class mix,
        not the microscope) -> w shrinks by (1 - TV) and the statistics are blended again
      ─ the adapted copy (the checkpoint in memory and on disk unchanged)

Why it can help: another microscope, stain or framing shifts the activations' mean and scale layer by layer;
re-estimating them on the new images undoes part of that (Schneider et al. 2020, "Improving robustness against
common corruptions by covariate shift adaptation"). Why it is guarded: BatchNorm statistics of a class-sorted batch
describe its classes. A backbone without BatchNorm (LayerNorm ConvNeXt, GroupNorm ResNets) has nothing to adapt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from cellnet.errors import CellnetError

MIN_IMAGES = 64  # fewer images give statistics too noisy to trust: refused
PRIOR_IMAGES = 256  # the training statistics count as this many images in the blend
M = TypeVar("M", bound=nn.Module)
GUARD_TV = 0.35  # total variation between the adapted predictions' class mix and training's above which w shrinks


@dataclass(frozen=True)
class Adaptation:
    """What `adapt` did: how many images, the blend weight used (after the guard), the class-mix distance that set
    it, and how many BatchNorm layers changed (0: the backbone has none)."""

    images: int
    weight: float
    class_mix_tv: float
    layers: int
    guarded: bool

    def describe(self) -> str:
        if not self.layers:
            return (
                "--adapt: the model has no BatchNorm layers (e.g. LayerNorm); nothing to adapt, predictions unchanged"
            )
        guard = (
            f"; the adapted predictions' class mix is far from training's (total variation {self.class_mix_tv:.2f}), "
            "so the statistics were blended harder"
            if self.guarded
            else ""
        )
        return (
            f"--adapt: BatchNorm statistics of {self.layers} layers re-estimated on these {self.images} images, "
            f"blended with the training ones at weight {self.weight:.2f}{guard}. The OOD flag uses the training "
            "statistics; the sets' coverage was measured without adaptation and is not promised for adapted predictions"
        )


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.inference_mode()
def batch_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, var) of every BatchNorm layer's input over all `batches`, from a copy of `model` (cumulative average of
    the per-batch statistics, as BatchNorm's momentum=None gives)."""
    probe = copy.deepcopy(model).eval()
    layers = batchnorm_layers(probe)
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    for x in batches:
        probe(x)
    return [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]  # type: ignore[union-attr]


def blended(model: M, stats: list[tuple[torch.Tensor, torch.Tensor]], weight: float) -> M:
    """A copy of `model` whose BatchNorm statistics are the mixture (1 - weight) training + weight batch: mean
    blended, variance the mixture's (both variances plus the spread of the means)."""
    out = copy.deepcopy(model).eval()
    for layer, (mean, var) in zip(batchnorm_layers(out), stats, strict=True):
        m0, v0 = layer.running_mean, layer.running_var
        assert m0 is not None and v0 is not None
        mixed_mean = (1 - weight) * m0 + weight * mean
        mixed_var = (1 - weight) * v0 + weight * var + weight * (1 - weight) * (mean - m0) ** 2
        m0.copy_(mixed_mean)
        v0.copy_(mixed_var)
    return out


def class_mix_tv(probs: np.ndarray, prior: np.ndarray) -> float:
    """Total variation distance between the predicted class histogram of `probs` (argmax) and the class shares
    `prior`: 0 = the same mix, 1 = disjoint."""
    counts = np.bincount(np.asarray(probs).argmax(axis=1), minlength=len(prior)).astype(np.float64)
    q = counts / max(counts.sum(), 1.0)
    p = np.asarray(prior, dtype=np.float64) / max(float(np.sum(prior)), 1.0)
    return float(0.5 * np.abs(q - p).sum())


def adapt(
    model: M,
    n: int,
    batches: Callable[[], Iterable[torch.Tensor]],
    predict: Callable[[M], np.ndarray],
    prior: np.ndarray | None,
) -> tuple[M, Adaptation]:
    """A copy of `model` with BatchNorm statistics adapted to the `n` images that `batches()` yields (preprocessed,
    all the images of the call), and what was done. `predict(model)` scores those images with a model (for the
    guard); `prior`: the training class counts (None: no guard). Fewer than MIN_IMAGES images: a CellnetError."""
    if n < MIN_IMAGES:
        raise CellnetError(
            f"--adapt needs at least {MIN_IMAGES} images to re-estimate BatchNorm statistics, got {n}; predict more "
            "images in one call, or drop --adapt"
        )
    layers = len(batchnorm_layers(model))
    if not layers:
        return model, Adaptation(n, 0.0, 0.0, 0, False)
    stats = batch_statistics(model, batches())
    weight = n / (n + PRIOR_IMAGES)
    adapted = blended(model, stats, weight)
    tv, guarded = 0.0, False
    if prior is not None:
        tv = class_mix_tv(predict(adapted), prior)
        if tv > GUARD_TV:
            weight, guarded = weight * (1.0 - tv), True
            adapted = blended(model, stats, weight)
    return adapted, Adaptation(n, weight, tv, layers, guarded)
