"""`--canonicalize`: show a group of images (one lab, one scan) to the model framed and coloured like its training
cells, with the transform chosen from the unlabelled images themselves by the model's own OOD score.

    a group (one INPUT: a folder or an npz), >= MIN_GROUP images, read at READ_SCALE x the model's image size
      ─ a seeded subsample (`choice_size`: the choice costs at most about 2 plain predicts of the group)
      ─ colour: Reinhard's match of the group's per-channel LAB mean/std to the training cells' (stored in the
        calibration, `ColourStats`) -- at zoom 1, on vs off
      ─ zoom: a grid both ways (ZOOMS; < 1 mirrors the field into the border, as training's RandomZoom does;
        > 1 crops the centre and enlarges it; then resized to the model's size), refined halfway (geometrically)
        to the best one's neighbours, with the colour choice so far
      ─ colour again, at the chosen zoom
      each step keeps a change only where the group's median OOD score (the model with its training BatchNorm
      statistics, the framing check included) drops by at least MARGIN of itself: a same-lab group keeps zoom 1 and
      its colour
      ─ Canonicalization(zoom, colour) ─ .apply(images): every image of the group, then predict as usual (--tta,
        --adapt and the flag see the canonicalized images)

Not the class-name canonicalization of folder SOURCEs (`cellnet.data.sources.canonical_class_name`): that maps folder
names to the PBC classes; this maps pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cellnet.colour import COLOUR_SAMPLE, ColourStats, colour_stats, match_colour
from cellnet.errors import CellnetError
from cellnet.shifts import zoom, zoom_out_mirrored

ZOOMS = (0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.3)  # magnifications tried; 1 = as the images are
MARGIN = 0.2  # a change is kept when it lowers the group's median OOD score by at least this share of it
MIN_GROUP = 32  # fewer images give a median too noisy to choose by
READ_SCALE = 2  # a group to canonicalize is read at this multiple of the model's image size (see `zoomed`)
EXPECTED_SETTINGS = 10  # zoom settings a choice scores, typically (1, its neighbours, a walk, two refinements)
MAX_CHOICE = 96  # images the choice scores at most per setting
NO_COLOUR = (
    "no colour statistics in this checkpoint: zoom matched only (`python -m search.retrain RUN --recalibrate` adds "
    "them to a search's deployed checkpoints)"
)


def zoomed(images: np.ndarray, factor: float, size: int | None = None) -> np.ndarray:
    """Every image magnified by `factor` about its centre -- > 1 crops and enlarges, < 1 shrinks and mirrors the
    field into the border (`zoom_out_mirrored`, what training's RandomZoom shows) -- then resized to `size` px
    (default: as they are). Zooming before resizing keeps the detail of images read larger than the model's input
    (`READ_SCALE`): a full-frame cell zoomed 1.8x from 128 px reads like a centre crop at 64 px, from 64 px it is
    blurred (on the validation holdout: 97% vs 92% right)."""
    size = size or images.shape[1]

    def one(image: np.ndarray) -> np.ndarray:
        if factor > 1:
            image = zoom(image, factor)
        elif factor < 1:
            image = zoom_out_mirrored(image, factor)
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return image

    if factor == 1.0 and images.shape[1] == size:
        return images
    return np.stack([one(im) for im in images]) if len(images) else np.zeros((0, size, size, 3), np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# The choice


@dataclass(frozen=True)
class Canonicalization:
    """What a group is shown as: magnified by `zoom`, and (with `source`) its colour moved from `source` (the
    group's own LAB statistics, after the zoom) to `target` (the training cells'). `medians`: the group's median OOD
    score per setting tried (the choice's evidence); `note`: what could not be done (no colour statistics)."""

    zoom: float = 1.0
    size: int | None = None  # the model's image size the images are resized to after the zoom (None: as they are)
    source: ColourStats | None = None
    target: ColourStats | None = None
    medians: dict[str, float] = field(default_factory=dict)
    images_scored: int = 0
    note: str | None = None

    @property
    def colour_matched(self) -> bool:
        return self.source is not None

    @property
    def identity(self) -> bool:
        """Nothing changed but the size."""
        return self.zoom == 1.0 and not self.colour_matched

    def apply(self, images: np.ndarray) -> np.ndarray:
        """The group's images as the model is to see them."""
        out = zoomed(images, self.zoom, self.size)
        if self.source is not None and self.target is not None:
            out = match_colour(out, self.source, self.target)
        return out

    def describe(self, group: str, n: int) -> str:
        """One line for the user: what the group became and why."""
        before, after = self.medians.get(_key(1.0, False)), self.medians.get(_key(self.zoom, self.colour_matched))
        evidence = (
            f" (median OOD score {before:.2f} -> {after:.2f} on {self.images_scored} of them)"
            if before is not None and after is not None
            else ""
        )
        colour = "colour matched to the training cells" if self.colour_matched else "colour as it is"
        note = f"; {self.note}" if self.note else ""
        return f"--canonicalize: {group} ({n} images): zoom {self.zoom:g}, {colour}{evidence}{note}"


def _key(factor: float, colour: bool) -> str:
    return f"zoom {factor:g}" + (" + colour" if colour else "")


def _walk(grid: list[float], cost: Callable[[float], float]) -> float:
    """The grid point of lowest cost found by stepping outwards from 1 in each direction until the cost rises."""
    start = grid.index(1.0)
    best = 1.0
    for step in (-1, 1):
        i = start + step
        while 0 <= i < len(grid) and cost(grid[i]) < cost(grid[i - step]):
            best = min(best, grid[i], key=cost)
            i += step
    return best


def choice_size(n: int, settings: int) -> int:
    """Images the choice scores per setting: 2n / settings (about two plain predicts in all), at least MIN_GROUP
    (a stable median) and at most MAX_CHOICE, never more than the group."""
    return min(n, max(MIN_GROUP, min(MAX_CHOICE, (2 * n) // max(settings, 1))))


def choose(
    images: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    target: ColourStats | None,
    *,
    size: int | None = None,
    zooms: Sequence[float] = ZOOMS,
    margin: float = MARGIN,
    seed: int = 0,
) -> Canonicalization:
    """The zoom and colour that bring the group `images` (uint8 N×S×S×3, all from one lab or scan; best read at
    READ_SCALE times the model's image size `size`) closest to the training cells (colour statistics `target`; None:
    zoom only) by the median of `score` (images at `size` -> the model's OOD score per image), as the module doc
    says. Fewer than MIN_GROUP images: a one-line CellnetError."""
    if len(images) < MIN_GROUP:
        raise CellnetError(
            f"--canonicalize needs at least {MIN_GROUP} images of a group (one lab or scan: one INPUT) to choose "
            f"its framing and colour from, got {len(images)}; predict them together with more of their group, or "
            "drop --canonicalize"
        )
    settings = EXPECTED_SETTINGS + (2 if target is not None else 0)
    pick = np.sort(np.random.default_rng(seed).choice(len(images), choice_size(len(images), settings), replace=False))
    sample = images[pick]
    rng = np.random.default_rng(seed + 1)
    colour_pick = images if len(images) <= COLOUR_SAMPLE else images[rng.choice(len(images), COLOUR_SAMPLE, False)]
    source_cache: dict[float, ColourStats] = {}
    medians: dict[str, float] = {}

    def median(factor: float, colour: bool) -> float:
        key = _key(factor, colour)
        if key not in medians:
            shown = zoomed(sample, factor, size)
            if colour:
                assert target is not None
                if factor not in source_cache:
                    source_cache[factor] = colour_stats(zoomed(colour_pick, factor, size))
                shown = match_colour(shown, source_cache[factor], target)
            medians[key] = float(np.nanmedian(score(shown)))
        return medians[key]

    def better(candidate: tuple[float, bool], current: tuple[float, bool]) -> bool:
        return median(*candidate) < (1.0 - margin) * median(*current)

    # colour at zoom 1 first (a foreign stain can hide every framing), then the zoom grid with that colour, walked
    # outwards from 1 each way while the median falls (it is unimodal in the zoom: measured on real cells) and
    # refined halfway (geometrically) to the best one's neighbours, then colour again at the chosen zoom
    colour = target is not None and better((1.0, True), (1.0, False))
    grid = sorted({*zooms, 1.0})
    best = _walk(grid, lambda z: median(z, colour))
    i = grid.index(best)
    halves = [round(math.sqrt(best * grid[j]), 2) for j in (i - 1, i + 1) if 0 <= j < len(grid) and best != 1.0]
    best = min([best, *halves], key=lambda z: median(z, colour))
    factor = best if best != 1.0 and better((best, colour), (1.0, colour)) else 1.0
    if target is not None:
        colour = better((factor, True), (factor, False))
    source = None
    if colour:
        source = source_cache.get(factor) or colour_stats(zoomed(colour_pick, factor, size))
    note = None if target is not None else NO_COLOUR
    return Canonicalization(factor, size, source, target if colour else None, medians, len(sample), note)
