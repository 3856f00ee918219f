"""Colour statistics of cell images and Reinhard's colour transfer: what `--canonicalize` matches a new lab's colour
with, and what a deployed checkpoint stores of its training cells (`Calibration.colour`).

    images ─ colour_stats ─► ColourStats (per-channel CIELAB mean and std over all pixels)
    images, their ColourStats, the training cells' ─ match_colour ─► the images in the training cells' colour
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cellnet.errors import CellnetError, CheckpointError

COLOUR_SAMPLE = 2000  # images the colour statistics are measured on at most


@dataclass(frozen=True)
class ColourStats:
    """Per-channel mean and standard deviation of a set of images in CIELAB (OpenCV's 8-bit scaling: L, a, b in
    0-255), over all their pixels: what Reinhard et al. (2001) match to transfer colour."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        values = (*self.mean, *self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in values):
            raise CellnetError(f"colour statistics need 3 finite means and stds, got {self.mean}, {self.std}")
        if min(self.std) <= 0:
            raise CellnetError(f"colour statistics need stds > 0, got {self.std}")

    def to_meta(self) -> dict[str, Any]:
        return {"space": "CIELAB (OpenCV 8-bit)", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ColourStats:
        try:
            mean, std = (tuple(float(v) for v in meta[k]) for k in ("mean", "std"))
            return cls(mean, std)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"colour statistics in the calibration meta are unreadable: {e}") from None


def _lab(images: np.ndarray) -> np.ndarray:
    """uint8 RGB N×H×W×3 -> float32 LAB, same shape."""
    flat = np.ascontiguousarray(images).reshape(-1, images.shape[2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(images.shape).astype(np.float32)


def colour_stats(images: np.ndarray, *, limit: int = COLOUR_SAMPLE, seed: int = 0) -> ColourStats:
    """The LAB statistics of `images` (a seeded subsample of at most `limit` of them)."""
    if len(images) == 0:
        raise CellnetError("colour statistics need at least one image")
    if len(images) > limit:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))]
    lab = _lab(images).reshape(-1, 3).astype(np.float64)
    mean, std = lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-3)
    return ColourStats((float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2])))


def match_colour(images: np.ndarray, source: ColourStats, target: ColourStats) -> np.ndarray:
    """`images` (whose statistics are `source`) with every LAB channel moved to `target`'s mean and spread."""
    if len(images) == 0:
        return images.copy()
    lab = _lab(images)
    scale = np.asarray(target.std, dtype=np.float32) / np.asarray(source.std, dtype=np.float32)
    shift = np.asarray(target.mean, dtype=np.float32) - np.asarray(source.mean, dtype=np.float32) * scale
    out = np.clip(lab * scale + shift, 0, 255).round().astype(np.uint8)
    flat = out.reshape(-1, images.shape[2], 3)
    return cv2.cvtColor(flat, cv2.COLOR_LAB2RGB).reshape(images.shape)
