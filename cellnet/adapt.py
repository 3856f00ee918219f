"""Test-time BatchNorm adaptation (`cellnet predict/evaluate --adapt`): the model's normalisation re-estimated on the
images being predicted, its weights untouched.

    images of the call (all of them, in a seeded random order: a folder's class subfolders must not make one-class
    chunks) ─ batch_statistics: a copy of the model, every BatchNorm's input summed channel by channel over all the
              images (the mean and variance all of them give at once: chunks weighted by their size, the spread
              between chunks included; chunks of near-equal size, never one image, which BatchNorm1d refuses)
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
import math
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


MIN_CHUNK = 32  # smallest chunk the statistics pass normalises with its own statistics


def chunk_size(n: int, batch_size: int) -> int:
    """The chunk size that splits `n` images into ceil(n / max(batch_size, MIN_CHUNK)) chunks of near-equal size:
    no small last chunk (a chunk of one image is an error for BatchNorm1d in training mode, a few images a noisy
    normalisation of the layers after it)."""
    chunks = math.ceil(n / max(batch_size, MIN_CHUNK))
    return math.ceil(n / max(chunks, 1))


def shuffled(n: int, seed: int = 0) -> np.ndarray:
    """The seeded order the statistics pass reads the images in: inputs sorted by path (class subfolders) would
    otherwise give one-class chunks, which normalise the deeper layers with one class's statistics."""
    return np.random.default_rng(seed).permutation(n)


class _Moments:
    """Per-channel sums of a BatchNorm layer's input (float64), accumulated over chunks."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.ndim) if d != 1]  # every axis but the channels
        x = x.detach().double()
        total, squares = x.sum(dim=dims), (x * x).sum(dim=dims)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.numel() // x.shape[1]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, unbiased variance): what BatchNorm stores as running statistics from one batch of everything."""
        assert self.total is not None and self.squares is not None and self.count > 1
        mean = self.total / self.count
        var = (self.squares / self.count - mean * mean).clamp_min(0.0) * self.count / (self.count - 1)
        return mean, var


@torch.inference_mode()
def batch_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, unbiased var) of every BatchNorm layer's input over all the images of `batches`, from a copy of `model`
    whose BatchNorm layers normalise each chunk with its own statistics, as in training. The moments are summed
    over the chunks, so a layer's statistics are those of all the images at once (exactly so for a layer whose input
    does not depend on an earlier BatchNorm; deeper layers see chunk-normalised inputs, hence near-equal chunks of
    shuffled images)."""
    probe = copy.deepcopy(model).eval()
    layers = batchnorm_layers(probe)
    moments = [_Moments() for _ in layers]
    handles = []
    for layer, m in zip(layers, moments, strict=True):
        layer.train()
        handles.append(layer.register_forward_pre_hook(lambda _, inputs, m=m: m.add(inputs[0])))
    for x in batches:
        probe(x)
    for h in handles:
        h.remove()
    out = []
    for layer, m in zip(layers, moments, strict=True):
        mean, var = m.mean_var()
        assert layer.running_mean is not None
        out.append((mean.to(layer.running_mean.dtype), var.to(layer.running_mean.dtype)))
    return out


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
