"""Built-in, license-free synthetic blood-smear data set with the 8 PBC classes, fast enough to generate on the fly.

Why: tests, the demo and the search need a data set that needs no download, is exactly reproducible, is
learnable but not trivial (the classes differ by the morphology haematologists use: cell size, nucleus-to-cytoplasm
ratio, nucleus lobes and shape, granules, cytoplasm colour), and that contains the dirt the cleaner must find.

Each image is a white blood cell (or a platelet) on a field of pale pink red blood cells with a lighter centre,
drawn with vectorised numpy on precomputed grids and texture banks (no per-pixel Python; about 2,000-4,000 images/s
per core at 96 px, see bench/bench_synthetic.py), with random stain shift (per-image colour gain), magnification,
rotation, placement (sometimes cut off at the border), focus (half of the images are soft) and sensor noise.

Provenance of injected rows is in the id (scored by the cleaner's tests):

- ``synthetic/000123``: clean image number 123.
- ``synthetic/002001~exact-of-000123``: pixel-identical copy of 123, same label.
- ``synthetic/002002~near-of-000123``: resized down/up, JPEG re-encoded and/or shifted copy of 123, same label.
- ``synthetic/002003~conflict-of-000123``: exact or near copy of 123 with a different label.
- ``synthetic/002004~outlier``: not a cell (blank field, text, stripes, noise, odd palette, out of focus).

Example::

    data = generate(1000, image_size=64, seed=1, duplicate_fraction=0.02)
    len(data)  # 1020: n clean images + the injected ones
"""

from __future__ import annotations

import io
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from cellnet.constants import PBC_CLASSES, PBC_COUNTS
from cellnet.data.dataset import CellData

__all__ = ["SYNTHETIC_DEFAULTS", "generate", "render"]

# What the bare source string `synthetic` means: enough images for a quick demo, and a little dirt for the cleaner.
SYNTHETIC_DEFAULTS: dict[str, float | int] = {
    "n": 2000,
    "duplicate_fraction": 0.02,
    "conflict_fraction": 0.005,
    "outlier_fraction": 0.005,
}

MIN_IMAGE_SIZE = 16
_BLOCK = 256  # images per RNG stream: the output does not depend on any caller-side chunking
_CHUNK = 12  # images rendered together (float arrays stay in cache)
_EDGE = 0.9  # soft edge width of every shape, in pixels (anti-aliasing)
_PAPER = (0.965, 0.895, 0.815)  # the slide's cream background (RGB in [0, 1])
_OUTLIER_KINDS = ("blank", "text", "stripes", "noise", "palette", "defocus")

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class _Spec:
    """How one class looks. Lengths are fractions of the image size at magnification 1."""

    radius: tuple[float, float]  # cell radius
    wobble: float  # irregularity of the cell outline
    cytoplasm: tuple[RGB, RGB]  # each image's cytoplasm colour lies between these two
    nucleus: str  # round | kidney | lobes | none
    nc_ratio: tuple[float, float] = (0.0, 0.0)  # nucleus radius / cell radius (lobes: lobe radius / cell radius)
    nucleus_rgb: RGB = (0.35, 0.16, 0.48)
    chromatin: tuple[str, float, float] = ("chromatin", 0.9, 0.3)  # texture, mean opacity, texture amplitude
    eccentric: float = 0.0  # max nucleus offset from the cell centre / cell radius
    lobes: tuple[int, int] = (1, 1)
    arc_deg: tuple[float, float] = (0.0, 0.0)  # lobed nuclei: angle between neighbouring lobes
    granules: str = "fine"  # texture name (monocytes: light vacuoles instead of granules)
    granule_rgb: RGB = (0.0, 0.0, 0.0)
    granule_density: tuple[float, float] = (0.0, 0.0)
    granules_over_nucleus: bool = False


# Keyed by class name so the table reads like a haematology atlas; order follows PBC_CLASSES.
_SPECS: dict[str, _Spec] = {
    # Dark purple-black granules so dense they hide the nucleus; bumpy outline.
    "basophil": _Spec(
        radius=(0.125, 0.15),
        wobble=0.05,
        cytoplasm=((0.72, 0.58, 0.78), (0.78, 0.66, 0.82)),
        nucleus="round",
        nc_ratio=(0.55, 0.7),
        nucleus_rgb=(0.36, 0.16, 0.48),
        eccentric=0.2,
        granules="coarse",
        granule_rgb=(0.20, 0.07, 0.30),
        granule_density=(0.8, 1.0),
        granules_over_nucleus=True,
    ),
    # Two round lobes ("spectacles") in a cytoplasm packed with large orange-red granules.
    "eosinophil": _Spec(
        radius=(0.16, 0.185),
        wobble=0.025,
        cytoplasm=((0.93, 0.72, 0.62), (0.90, 0.66, 0.60)),
        nucleus="lobes",
        nc_ratio=(0.33, 0.42),
        nucleus_rgb=(0.38, 0.18, 0.50),
        lobes=(2, 2),
        arc_deg=(95.0, 150.0),
        granules="coarse",
        granule_rgb=(0.90, 0.42, 0.28),
        granule_density=(0.75, 1.0),
    ),
    # Small, very round, dense almost black nucleus; reddish to blue-grey cytoplasm.
    "erythroblast": _Spec(
        radius=(0.09, 0.115),
        wobble=0.012,
        cytoplasm=((0.86, 0.62, 0.66), (0.66, 0.64, 0.82)),
        nucleus="round",
        nc_ratio=(0.6, 0.78),
        nucleus_rgb=(0.17, 0.07, 0.26),
        chromatin=("chromatin", 1.0, 0.1),
        eccentric=0.25,
    ),
    # Immature granulocyte: large, round/oval less condensed nucleus, bluish cytoplasm with some purple granules.
    "ig": _Spec(
        radius=(0.16, 0.2),
        wobble=0.03,
        cytoplasm=((0.64, 0.58, 0.82), (0.74, 0.64, 0.84)),
        nucleus="round",
        nc_ratio=(0.6, 0.75),
        nucleus_rgb=(0.46, 0.27, 0.62),
        chromatin=("lacy", 0.8, 0.45),
        eccentric=0.25,
        granules="fine",
        granule_rgb=(0.50, 0.30, 0.62),
        granule_density=(0.25, 0.6),
    ),
    # Small, round dark nucleus filling the cell, thin sky-blue rim.
    "lymphocyte": _Spec(
        radius=(0.1, 0.125),
        wobble=0.02,
        cytoplasm=((0.60, 0.66, 0.88), (0.68, 0.72, 0.90)),
        nucleus="round",
        nc_ratio=(0.78, 0.9),
        nucleus_rgb=(0.28, 0.13, 0.44),
        chromatin=("chromatin", 0.95, 0.25),
        eccentric=0.12,
    ),
    # Largest: irregular outline, grey-blue cytoplasm (sometimes vacuoles), kidney-shaped folded lacy nucleus.
    "monocyte": _Spec(
        radius=(0.18, 0.22),
        wobble=0.07,
        cytoplasm=((0.72, 0.70, 0.84), (0.78, 0.74, 0.84)),
        nucleus="kidney",
        nc_ratio=(0.55, 0.7),
        nucleus_rgb=(0.48, 0.30, 0.64),
        chromatin=("lacy", 0.85, 0.4),
        eccentric=0.2,
        granules="vacuoles",
        granule_rgb=(0.93, 0.90, 0.93),
        granule_density=(0.0, 0.8),
    ),
    # 3-5 segmented lobes joined by thin strands, pale pink-lilac cytoplasm with fine granules.
    "neutrophil": _Spec(
        radius=(0.155, 0.18),
        wobble=0.025,
        cytoplasm=((0.86, 0.74, 0.82), (0.82, 0.72, 0.84)),
        nucleus="lobes",
        nc_ratio=(0.26, 0.33),
        nucleus_rgb=(0.34, 0.15, 0.48),
        lobes=(3, 5),
        arc_deg=(48.0, 68.0),
        granules="fine",
        granule_rgb=(0.70, 0.52, 0.70),
        granule_density=(0.3, 0.6),
    ),
    # Tiny purple granular fragments (alone or in a small cluster), no nucleus, smaller than a red cell.
    "platelet": _Spec(
        radius=(0.035, 0.055),
        wobble=0.08,
        cytoplasm=((0.72, 0.58, 0.80), (0.78, 0.64, 0.84)),
        nucleus="none",
        lobes=(1, 3),
        granules="fine",
        granule_rgb=(0.40, 0.20, 0.55),
        granule_density=(0.6, 1.0),
    ),
}
assert tuple(_SPECS) == PBC_CLASSES


# --------------------------------------------------------------------------------------------------- public API


def generate(
    n: int = 2000,
    image_size: int = 96,
    seed: int = 0,
    *,
    class_counts: Sequence[int] | None = None,
    duplicate_fraction: float = 0.0,
    conflict_fraction: float = 0.0,
    outlier_fraction: float = 0.0,
) -> CellData:
    """`n` clean synthetic cells plus injected dirt; same arguments → identical arrays.

    `class_counts` are relative class frequencies in PBC_CLASSES order (default PBC_COUNTS), scaled to `n` by
    largest remainder, so `class_counts=[1] * 8` gives a balanced set. Each fraction is relative to `n` and adds
    rows: the result has n + round(duplicate_fraction·n) + round(conflict_fraction·n) + round(outlier_fraction·n)
    images. Half of the duplicates (rounded down) are exact copies, the rest near copies. Clean rows keep their id
    order; injected rows are inserted at random positions, and their ids say what they are (see module docstring).
    """
    size = _check_args(n, image_size, seed, class_counts, duplicate_fraction, conflict_fraction, outlier_fraction)
    weights = np.asarray(PBC_COUNTS if class_counts is None else class_counts, dtype=np.float64)
    labels = _quota_labels(n, weights, np.random.default_rng([seed, 1]))
    images = render(labels, size, seed)

    rng = np.random.default_rng([seed, 2])
    n_dup = round(duplicate_fraction * n)
    n_exact, n_conflict, n_outlier = n_dup // 2, round(conflict_fraction * n), round(outlier_fraction * n)
    kinds = ["exact"] * n_exact + ["near"] * (n_dup - n_exact) + ["conflict"] * n_conflict
    sources = rng.choice(n, size=len(kinds), replace=len(kinds) > n) if kinds else np.zeros(0, dtype=np.int64)
    width = max(6, len(str(n + len(kinds) + n_outlier - 1)))

    extra_images: list[np.ndarray] = []
    extra_labels: list[int] = []
    extra_ids: list[str] = []
    for kind, src in zip(kinds, sources, strict=True):
        src = int(src)
        label = int(labels[src])
        if kind == "conflict":
            label = (label + int(rng.integers(1, len(PBC_CLASSES)))) % len(PBC_CLASSES)
            image = images[src].copy() if rng.random() < 0.5 else _near_copy(images[src], rng)
        else:
            image = images[src].copy() if kind == "exact" else _near_copy(images[src], rng)
        extra_images.append(image)
        extra_labels.append(label)
        extra_ids.append(f"synthetic/{n + len(extra_ids):0{width}d}~{kind}-of-{src:0{width}d}")
    if n_outlier:
        outlier_labels = rng.choice(len(PBC_CLASSES), size=n_outlier, p=weights / weights.sum())
        rendered = render(rng.integers(0, len(PBC_CLASSES), n_outlier), size, seed, stream=1)
        for i in range(n_outlier):
            extra_images.append(_outlier(_OUTLIER_KINDS[int(rng.integers(len(_OUTLIER_KINDS)))], rendered[i], rng))
            extra_labels.append(int(outlier_labels[i]))
            extra_ids.append(f"synthetic/{n + len(extra_ids):0{width}d}~outlier")

    all_images = np.concatenate([images, np.stack(extra_images)]) if extra_images else images
    all_labels = np.concatenate([labels, np.asarray(extra_labels, dtype=np.int64)])
    all_ids = np.asarray([f"synthetic/{i:0{width}d}" for i in range(n)] + extra_ids, dtype=str)
    order = _insert_order(n, len(extra_ids), rng)
    return CellData(images=all_images[order], labels=all_labels[order], classes=PBC_CLASSES, ids=all_ids[order])


def render(labels: np.ndarray, image_size: int = 96, seed: int = 0, stream: int = 0) -> np.ndarray:
    """Clean images (uint8 N×S×S×3) of the given class indices (no dirt, ids or shuffling: see `generate`).

    Image i is a function of (labels[i], i, image_size, seed, stream) only: each block of 256 indices has its own
    RNG stream and every image draws a fixed number of values, so neither the other labels nor any chunking matter.
    """
    _check_size(image_size, seed)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(PBC_CLASSES)):
        raise ValueError(f"labels must be class indices in [0, {len(PBC_CLASSES)}), got {labels.min()}..{labels.max()}")
    assets = _assets(int(image_size), int(seed))
    out = np.empty((len(labels), image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, len(labels), _BLOCK):
        rng = np.random.default_rng([seed, stream, start // _BLOCK])
        out[start : start + _BLOCK] = _render_block(labels[start : start + _BLOCK], rng, assets)
    return out


# --------------------------------------------------------------------------------------------------- validation


def _check_args(
    n: int,
    image_size: int,
    seed: int,
    class_counts: Sequence[int] | None,
    duplicate_fraction: float,
    conflict_fraction: float,
    outlier_fraction: float,
) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n (number of clean synthetic images) must be a positive integer, got {n!r}")
    _check_size(image_size, seed)
    for name, value in (
        ("duplicate_fraction", duplicate_fraction),
        ("conflict_fraction", conflict_fraction),
        ("outlier_fraction", outlier_fraction),
    ):
        if not isinstance(value, int | float | np.number) or not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    if class_counts is not None:
        counts = np.asarray(class_counts, dtype=np.float64)
        if (
            counts.shape != (len(PBC_CLASSES),)
            or not np.all(np.isfinite(counts))
            or counts.min() < 0
            or counts.sum() <= 0
        ):
            raise ValueError(
                f"class_counts must be {len(PBC_CLASSES)} non-negative numbers (relative frequencies of "
                f"{', '.join(PBC_CLASSES)}) with a positive sum, got {list(class_counts)!r}"
            )
    return int(image_size)


def _check_size(image_size: int, seed: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE} pixels, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _quota_labels(n: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exactly proportional class counts (largest remainder), in random order."""
    share = weights / weights.sum() * n
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(weights), dtype=np.int64), counts))


def _insert_order(n_clean: int, n_extra: int, rng: np.random.Generator) -> np.ndarray:
    """Row order: clean rows in id order, injected rows (indices ≥ n_clean) at random positions."""
    total = n_clean + n_extra
    is_extra = np.zeros(total, dtype=bool)
    is_extra[rng.choice(total, size=n_extra, replace=False)] = True
    order = np.empty(total, dtype=np.int64)
    order[~is_extra] = np.arange(n_clean)
    order[is_extra] = rng.permutation(np.arange(n_clean, total))
    return order


# --------------------------------------------------------------------------------------------------- assets

_TEXTURES = ("fine", "coarse", "vacuoles", "chromatin", "lacy")
_TEXTURE_TILES = 4  # random tiles per texture
_KIND = {"none": 0, "round": 1, "kidney": 2, "lobes": 3}
_MAX_LOBES = 5
_MAX_FRAGMENTS = 3


@dataclass(frozen=True)
class _Assets:
    """Everything precomputed once per (image size, seed): per-image work is then crops and elementwise math.

    Every bank is 2S×2S per tile and kept as a sliding-window view, so a batch of random crops is one fancy index.
    """

    size: int
    polar: np.ndarray  # (9, S+1, S+1, S, S): dx, dy, r, cos θ, sin θ, cos 2θ, sin 2θ, cos 3θ, sin 3θ
    background: np.ndarray  # (2K, 3, S+1, S+1, S, S): red-cell fields, RGB channels first; second half defocused
    textures: np.ndarray  # (2 · len(_TEXTURES) · 4, S+1, S+1, S, S): granules, vacuoles, chromatin, in [0, 1]; ditto
    noise: np.ndarray  # (4, S+1, S+1, S, S): standard normal


def _windows(bank: np.ndarray, size: int) -> np.ndarray:
    return sliding_window_view(bank, (size, size), axis=(-2, -1))


@lru_cache(maxsize=2)  # ~20 MB at 96 px, ~60 MB at 224 px
def _assets(size: int, seed: int) -> _Assets:
    rng = np.random.default_rng([seed, 3, size])
    tile = 2 * size
    d = ((np.arange(tile) + 0.5 - size) / size).astype(np.float32)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    r = np.hypot(dx, dy)
    c1, s1 = dx / r, dy / r
    c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    polar = np.stack([dx, dy, r, c1, s1, c2, s2, c3, s3]).astype(np.float32)
    background = np.stack([_background_tile(rng, size, tile) for _ in range(12 if size <= 128 else 4)])
    textures = np.concatenate(
        [
            _dots(rng, size, tile, sigma=0.006, coverage=0.45),  # fine
            _dots(rng, size, tile, sigma=0.011, coverage=0.7),  # coarse
            _dots(rng, size, tile, sigma=0.02, coverage=0.15),  # vacuoles
            _smooth_noise(rng, size, tile, sigma=0.014),  # chromatin
            _smooth_noise(rng, size, tile, sigma=0.007),  # lacy
        ]
    )
    # Out-of-focus copies: optics blur the slide (not the sensor noise); cell edges soften per image in _paint.
    defocus = max(0.5, 1.1 * size / 96)
    background = np.concatenate(
        [background, ndimage.gaussian_filter(background, (0, 0, defocus, defocus), mode="wrap")]
    )
    textures = np.concatenate([textures, ndimage.gaussian_filter(textures, (0, defocus, defocus), mode="wrap")])
    noise = rng.standard_normal((4, tile, tile)).astype(np.float32)
    return _Assets(
        size, _windows(polar, size), _windows(background, size), _windows(textures, size), _windows(noise, size)
    )


def _dots(rng: np.random.Generator, size: int, tile: int, *, sigma: float, coverage: float) -> np.ndarray:
    """Granule-like textures: random Gaussian dots of radius ~sigma (fraction of image size)."""
    sig = max(0.45, sigma * size)
    p = coverage / (np.pi * (1.6 * sig) ** 2)
    points = (rng.random((_TEXTURE_TILES, tile, tile)) < p).astype(np.float32)
    blurred = ndimage.gaussian_filter(points, sigma=(0, sig, sig), mode="wrap")
    return np.clip(blurred * (2.2 * np.pi * sig**2), 0, 1).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, tile: int, *, sigma: float) -> np.ndarray:
    sig = max(0.5, sigma * size)
    field = ndimage.gaussian_filter(rng.standard_normal((_TEXTURE_TILES, tile, tile)), sigma=(0, sig, sig), mode="wrap")
    field /= field.std(axis=(1, 2), keepdims=True)
    return np.clip(0.5 + 0.25 * field, 0, 1).astype(np.float32)


def _background_tile(rng: np.random.Generator, size: int, tile: int) -> np.ndarray:
    """A (3, T, T) field of pale pink biconcave red cells (lighter centre) and a few stray platelets."""
    paper = np.asarray(_PAPER, dtype=np.float32)[:, None, None] * rng.uniform(0.98, 1.02, (3, 1, 1))
    trans = np.ones((3, tile, tile), dtype=np.float32)
    rbc_rgb = np.asarray([0.90, 0.77, 0.82], dtype=np.float32) + rng.normal(0, 0.015, 3).astype(np.float32)
    radius = rng.uniform(0.075, 0.095) * size
    crowding = rng.uniform(0.35, 1.0)
    centres: list[tuple[float, float]] = []
    for _ in range(int(crowding * 2.2 * (tile / (2 * radius)) ** 2)):
        y, x = rng.uniform(-radius, tile + radius, 2)
        if all((y - cy) ** 2 + (x - cx) ** 2 > (1.75 * radius) ** 2 for cy, cx in centres):
            centres.append((y, x))
    for cy, cx in centres:
        rad = radius * rng.uniform(0.88, 1.12)
        y0, y1 = max(0, int(cy - rad - 2)), min(tile, int(cy + rad + 3))
        x0, x1 = max(0, int(cx - rad - 2)), min(tile, int(cx + rad + 3))
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        stretch = rng.uniform(0.9, 1.1)
        rho = np.hypot((yy - cy) * stretch, (xx - cx) / stretch) / rad
        edge = np.clip((1 - rho) * rad / _EDGE + 0.5, 0, 1)
        pale = rng.uniform(0.35, 0.6)
        thick = 1 - pale * np.exp(-((rho / 0.5) ** 2)) + 0.08 * np.exp(-(((rho - 0.88) / 0.1) ** 2))
        density = edge * thick * rng.uniform(0.8, 1.0)
        trans[:, y0:y1, x0:x1] *= 1 - density[None] * (1 - rbc_rgb[:, None, None])
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32) + 0.5
    for _ in range(rng.poisson(0.5 * (tile / size) ** 2)):
        cy, cx = rng.uniform(0, tile, 2)
        rad = rng.uniform(0.012, 0.022) * size
        density = np.clip((rad - np.hypot(yy - cy, xx - cx)) / _EDGE + 0.5, 0, 1) * 0.8
        trans *= 1 - density[None] * (1 - np.asarray([0.55, 0.35, 0.65], dtype=np.float32)[:, None, None])
    return (paper * trans).astype(np.float32)


# --------------------------------------------------------------------------------------------------- rendering


@lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray]:
    """_SPECS as per-class arrays: index with a label vector to get every image's parameter ranges at once."""
    specs = [_SPECS[name] for name in PBC_CLASSES]

    def column(get: Callable[[_Spec], object], dtype: type = np.float64) -> np.ndarray:
        return np.asarray([get(s) for s in specs], dtype=dtype)

    return {
        "radius": column(lambda s: s.radius),
        "wobble": column(lambda s: s.wobble),
        "cytoplasm": column(lambda s: s.cytoplasm),
        "kind": column(lambda s: _KIND[s.nucleus], np.int64),
        "nc_ratio": column(lambda s: s.nc_ratio),
        "nucleus_rgb": column(lambda s: s.nucleus_rgb),
        "chromatin": column(lambda s: _TEXTURES.index(s.chromatin[0]), np.int64),
        "opacity": column(lambda s: s.chromatin[1]),
        "amplitude": column(lambda s: s.chromatin[2]),
        "eccentric": column(lambda s: s.eccentric),
        "lobes": column(lambda s: s.lobes, np.int64),
        "arc": np.deg2rad(column(lambda s: s.arc_deg)),
        "granules": column(lambda s: _TEXTURES.index(s.granules), np.int64),
        "granule_rgb": column(lambda s: s.granule_rgb),
        "granule_density": column(lambda s: s.granule_density),
        "over_nucleus": column(lambda s: s.granules_over_nucleus, np.float64),
    }


def _draw(labels: np.ndarray, rng: np.random.Generator, size: int, n_backgrounds: int) -> dict[str, np.ndarray]:
    """Every random choice for a block of images, drawn with fixed shapes so image i's draws depend only on i."""
    t = {k: v[labels] for k, v in _table().items()}
    n = len(labels)

    def between(bounds: np.ndarray, shape: tuple[int, ...] = ()) -> np.ndarray:
        u = rng.random((n, *shape))
        lo, hi = bounds[:, 0], bounds[:, 1]
        return lo.reshape(-1, *[1] * len(shape)) + (hi - lo).reshape(-1, *[1] * len(shape)) * u

    def crop(first: np.ndarray) -> np.ndarray:
        """(tile, y, x) of a random crop from a window view; `first` picks the tile."""
        return np.column_stack([first, rng.integers(0, size + 1, (n, 2))])

    p: dict[str, np.ndarray] = {}
    # Placement: mostly near the centre, sometimes far off so that the cell is cut by the border.
    shift = rng.normal(0, 0.035, (n, 2))
    far = rng.random(n) < 0.12
    angle, reach = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.18, 0.32, n)
    shift[far] = (np.column_stack([np.sin(angle), np.cos(angle)]) * reach[:, None])[far]
    p["start"] = np.clip(size - (size // 2 + np.round(shift * size).astype(np.int64)), 0, size)
    # Focus: half of the images are out of focus (defocused background and textures, softer cell edges).
    soft = rng.random(n) < 0.5
    edge = np.where(soft, rng.uniform(1.6, 2.8, n) * max(0.5, size / 96), _EDGE)
    p["sharp"] = size / np.maximum(edge, _EDGE)  # turns a signed distance (fraction of image) into an edge ramp
    p["background"] = crop(rng.integers(0, n_backgrounds // 2, n) + soft * (n_backgrounds // 2))

    radius = between(t["radius"]) * rng.uniform(0.88, 1.12, n)  # class size × magnification
    turn = rng.uniform(0, 2 * np.pi, n)
    p["radius"] = radius
    p["outline"] = rng.normal(0, 1, (n, 4)) * t["wobble"][:, None] * [1, 1, 0.6, 0.6]
    p["kind"] = t["kind"]

    # Round / kidney nucleus: eccentric disc with a mild deformation, kidney = disc with a bite taken out.
    offset = rng.random(n) * t["eccentric"] * radius
    at = np.column_stack([offset * np.sin(turn), offset * np.cos(turn)])
    n_rad = between(t["nc_ratio"]) * radius
    bite = turn + np.pi + rng.normal(0, 0.6, n)
    depth = rng.uniform(0.75, 1.05, n) * n_rad
    p["nucleus_at"], p["nucleus_r"], p["nucleus_shape"] = at, n_rad, rng.normal(0, 0.04, (n, 2))
    p["notch_at"] = at + np.column_stack([np.sin(bite), np.cos(bite)]) * depth[:, None]
    p["notch_r"] = rng.uniform(0.4, 0.65, n) * n_rad * (t["kind"] == _KIND["kidney"])

    # Lobed nucleus: lobes along an arc, joined by thin strands; platelets reuse the count for fragments.
    count = t["lobes"][:, 0] + np.floor(rng.random(n) * (t["lobes"][:, 1] - t["lobes"][:, 0] + 1)).astype(np.int64)
    step = between(t["arc"])
    arc_r = rng.uniform(0.38, 0.52, n) * radius
    j = np.arange(_MAX_LOBES)
    k = np.where(j < count[:, None], j, 0) - (count[:, None] - 1) / 2
    phi = turn[:, None] + k * step[:, None] + rng.normal(0, 0.12, (n, _MAX_LOBES))
    rho = arc_r[:, None] * rng.uniform(0.85, 1.15, (n, _MAX_LOBES))
    lobed = t["kind"] == _KIND["lobes"]
    p["lobe_at"] = np.stack([rho * np.sin(phi), rho * np.cos(phi)], axis=-1)
    p["lobe_r"] = between(t["nc_ratio"], (_MAX_LOBES,)) * radius[:, None] * lobed[:, None]
    p["strand"] = np.column_stack([arc_r, np.cos(turn), np.sin(turn), np.cos((count - 1) * step / 2)])
    fragments = (t["kind"] == _KIND["none"])[:, None] & (np.arange(1, _MAX_FRAGMENTS) < count[:, None])
    p["fragment_at"] = rng.normal(0, 0.035, (n, _MAX_FRAGMENTS - 1, 2))
    p["fragment_r"] = rng.uniform(0.5, 0.75, (n, _MAX_FRAGMENTS - 1)) * radius[:, None] * fragments

    # Colours and textures.
    mix = rng.random((n, 1))
    cyto = t["cytoplasm"][:, 0] * (1 - mix) + t["cytoplasm"][:, 1] * mix + rng.normal(0, 0.03, (n, 3))
    p["cytoplasm"] = np.clip(cyto, 0, 1)
    p["nucleus_rgb"] = np.clip(t["nucleus_rgb"] + rng.normal(0, 0.04, (n, 3)), 0, 1)
    p["granule_rgb"] = np.clip(t["granule_rgb"] + rng.normal(0, 0.04, (n, 3)), 0, 1)
    p["granule_density"] = between(t["granule_density"])
    p["over_nucleus"] = t["over_nucleus"]
    blurred_textures = soft * (len(_TEXTURES) * _TEXTURE_TILES)
    p["granules"] = crop(t["granules"] * _TEXTURE_TILES + rng.integers(0, _TEXTURE_TILES, n) + blurred_textures)
    p["chromatin"] = crop(t["chromatin"] * _TEXTURE_TILES + rng.integers(0, _TEXTURE_TILES, n) + blurred_textures)
    p["opacity"], p["amplitude"] = t["opacity"], t["amplitude"]

    # Imaging: sensor noise, stain shift (per-image colour gain, mostly along warm ↔ cool).
    p["noise"] = crop(rng.integers(0, 4, n))
    p["noise_sigma"] = rng.uniform(0.004, 0.02, n)
    warm = rng.normal(0, 0.035, (n, 1)) * [-1.0, -0.3, 1.0]
    p["gain"] = 255 * np.exp(warm + rng.normal(0, 0.02, (n, 3)) + rng.normal(0, 0.04, (n, 1)))
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in p.items()}


def _render_block(labels: np.ndarray, rng: np.random.Generator, assets: _Assets) -> np.ndarray:
    # Draw for a full block even when it is the last, short one: image i's draws then depend only on i.
    padded = np.zeros(_BLOCK, dtype=np.int64)
    padded[: len(labels)] = labels
    params = _draw(padded, rng, assets.size, assets.background.shape[0])
    out = np.empty((len(labels), assets.size, assets.size, 3), dtype=np.uint8)
    for start in range(0, len(labels), _CHUNK):  # small chunks keep the float arrays in cache
        part = slice(start, min(start + _CHUNK, len(labels)))
        out[part] = _paint({k: v[part] for k, v in params.items()}, assets)
    return out


def _c(v: np.ndarray) -> np.ndarray:
    """(n,) → (n, 1, 1) to broadcast per-image values against (n, S, S) fields."""
    return v[:, None, None]


def _soft(q: np.ndarray) -> np.ndarray:
    return np.clip(q, 0, 1, out=q)


def _over(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """Paint per-image colour `rgb` (n, 3) over `img` (n, 3, S, S) with per-pixel opacity `alpha` (in place)."""
    layer = rgb[:, :, None, None] - img
    layer *= alpha[:, None]
    img += layer


def _disc(dx: np.ndarray, dy: np.ndarray, at: np.ndarray, rad: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """Unclipped edge ramp of discs centred at `at` (n, 2: y, x); no sqrt: (R² - d²) / 2R ≈ R - d at the edge."""
    q = np.square(dx - _c(at[:, 1]))
    q += np.square(dy - _c(at[:, 0]))
    np.subtract(_c(rad * rad), q, out=q)
    q *= _c(sharp / (2 * rad + 1e-6))  # sharp: per image, see _draw
    q += 0.5
    return q


class _Field(NamedTuple):
    """Per-pixel geometry of a chunk's crops, each (n, S, S): offsets from the cell centre, radius, and the angle's
    harmonics the outlines use (cos θ, sin θ are read separately: only lobed nuclei need them)."""

    dx: np.ndarray
    dy: np.ndarray
    r: np.ndarray
    c2: np.ndarray
    s2: np.ndarray
    c3: np.ndarray
    s3: np.ndarray


def _paint(p: dict[str, np.ndarray], assets: _Assets) -> np.ndarray:
    """Render one chunk of images from their drawn parameters: uint8 (n, S, S, 3).

    Masks first (cell body, nucleus inside it), then the stain painted over the red-cell background, then imaging."""
    start = p["start"]
    channels = np.asarray([0, 1, 2, 5, 6, 7, 8])[:, None]  # all but cos θ, sin θ (only lobed nuclei need those)
    field = _Field(*assets.polar[channels, start[None, :, 0], start[None, :, 1]])
    cell = _cell_body(p, field)
    nucleus = _nucleus(p, field, assets, cell)
    return _imaged(p, assets, _stained(p, assets, cell, nucleus))


def _cell_body(p: dict[str, np.ndarray], f: _Field) -> np.ndarray:
    """(n, S, S) in [0, 1]: a disc whose radius varies smoothly with the angle (ellipse + irregularity), plus the
    extra fragments of platelet clusters."""
    sharp = p["sharp"]
    o = p["outline"]
    q = _c(o[:, 0]) * f.c2
    q += _c(o[:, 1]) * f.s2
    q += _c(o[:, 2]) * f.c3
    q += _c(o[:, 3]) * f.s3
    q += 1
    q *= _c(p["radius"])
    q -= f.r
    q *= _c(sharp)
    q += 0.5
    cell = _soft(q)
    for i in np.flatnonzero(p["fragment_r"].max(axis=1) > 0):  # platelet clusters: a few extra fragments
        for j in range(_MAX_FRAGMENTS - 1):
            if p["fragment_r"][i, j] > 0:
                frag = _disc(
                    f.dx[i : i + 1],
                    f.dy[i : i + 1],
                    p["fragment_at"][i, j][None],
                    p["fragment_r"][i, j][None],
                    sharp[i : i + 1],
                )
                np.maximum(cell[i], _soft(frag)[0], out=cell[i])
    return cell


def _nucleus(p: dict[str, np.ndarray], f: _Field, assets: _Assets, cell: np.ndarray) -> np.ndarray:
    """(n, S, S) in [0, 1], inside the cell: round or kidney-shaped nuclei, or lobes joined by a strand; none for
    the kinds without one."""
    kind = p["kind"]
    nucleus = np.zeros_like(cell)
    rounded = np.flatnonzero((kind == _KIND["round"]) | (kind == _KIND["kidney"]))
    if rounded.size:
        nucleus[rounded] = _round_nuclei(p, f, rounded)
    lobed = np.flatnonzero(kind == _KIND["lobes"])
    if lobed.size:
        nucleus[lobed] = _lobed_nuclei(p, f, assets, lobed)
    nucleus *= cell
    return nucleus


def _round_nuclei(p: dict[str, np.ndarray], f: _Field, rounded: np.ndarray) -> np.ndarray:
    """The nuclei of images `rounded`: an off-centre oval, with a notch cut out for the kidney-shaped ones."""
    sharp = p["sharp"]
    at, shape = p["nucleus_at"][rounded], p["nucleus_shape"][rounded]
    d = np.square(f.dx[rounded] - _c(at[:, 1]))
    d += np.square(f.dy[rounded] - _c(at[:, 0]))
    np.sqrt(d, out=d)
    q = _c(shape[:, 0]) * f.c2[rounded]
    q += _c(shape[:, 1]) * f.s2[rounded]
    q += 1
    q *= _c(p["nucleus_r"][rounded])
    q -= d
    q *= _c(sharp[rounded])
    q += 0.5
    ring = _soft(q)
    kidney = np.flatnonzero(p["notch_r"][rounded] > 0)
    if kidney.size:
        idx = rounded[kidney]
        notch = _soft(_disc(f.dx[idx], f.dy[idx], p["notch_at"][idx], p["notch_r"][idx], sharp[idx]))
        ring[kidney] *= 1 - notch
    return ring


def _lobed_nuclei(p: dict[str, np.ndarray], f: _Field, assets: _Assets, lobed: np.ndarray) -> np.ndarray:
    """The nuclei of images `lobed`: up to _MAX_LOBES discs and a thin strand along an arc joining them."""
    sharp, start = p["sharp"], p["start"]
    ldx, ldy, lr = f.dx[lobed], f.dy[lobed], f.r[lobed]
    q = np.full_like(lr, -1.0)
    for j in range(_MAX_LOBES):
        rad = p["lobe_r"][lobed, j]
        if rad.max() > 0:
            np.maximum(q, _disc(ldx, ldy, p["lobe_at"][lobed, j], rad, sharp[lobed]), out=q)
    arc_r, cos_t, sin_t, cos_half = p["strand"][lobed].T
    strand = np.abs(lr - _c(arc_r))
    np.subtract(_c(0.07 * p["radius"][lobed]), strand, out=strand)
    strand *= _c(sharp[lobed])
    strand += 0.5
    c1, s1 = assets.polar[3:5][:, start[lobed, 0], start[lobed, 1]]
    along = c1 * _c(cos_t)  # cos(θ - turn): where along the arc the strand may run
    along += s1 * _c(sin_t)
    along -= _c(cos_half)
    along *= _c(sharp[lobed] * 0.2)
    along += 0.5
    np.maximum(q, np.minimum(strand, along), out=q)
    return _soft(q)


def _stained(p: dict[str, np.ndarray], assets: _Assets, cell: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """(n, 3, S, S) float: cytoplasm (hiding the red cells below), nucleus with chromatin texture, granules /
    vacuoles on top. Uses `nucleus` as scratch space."""
    g = p["background"]
    img = np.ascontiguousarray(assets.background[g[:, 0], :, g[:, 1], g[:, 2]])
    _over(img, cell, p["cytoplasm"])
    g = p["chromatin"]
    chromatin = assets.textures[g[:, 0], g[:, 1], g[:, 2]]
    chromatin -= 0.5
    chromatin *= _c(p["amplitude"])
    chromatin += _c(p["opacity"])
    chromatin = _soft(chromatin)
    chromatin *= nucleus
    _over(img, chromatin, p["nucleus_rgb"])
    if p["granule_density"].max() > 0:
        g = p["granules"]
        granules = assets.textures[g[:, 0], g[:, 1], g[:, 2]]
        nucleus *= _c(1 - p["over_nucleus"])
        np.subtract(cell, nucleus, out=nucleus)  # where granules may lie
        granules *= nucleus
        granules *= _c(p["granule_density"])
        _over(img, granules, p["granule_rgb"])
    return img


def _imaged(p: dict[str, np.ndarray], assets: _Assets, img: np.ndarray) -> np.ndarray:
    """Imaging: sensor noise, stain gain, 8-bit; uint8 (n, S, S, 3)."""
    g = p["noise"]
    noise = assets.noise[g[:, 0], g[:, 1], g[:, 2]]
    noise *= _c(p["noise_sigma"])
    img += noise[:, None]
    img *= p["gain"][:, :, None, None]
    np.clip(img, 0, 255, out=img)
    return img.transpose(0, 2, 3, 1).astype(np.uint8, order="C")


# --------------------------------------------------------------------------------------------------- injected dirt


def _near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy a duplicate finder should still catch: resized down/up, JPEG re-encoded and/or shifted a few pixels."""
    size = image.shape[0]
    ops = rng.choice(["resize", "jpeg", "shift"], size=int(rng.integers(1, 3)), replace=False)
    out = image
    for op in ops:
        if op == "resize":
            small = max(8, round(size * rng.uniform(0.5, 0.8)))
            pil = Image.fromarray(out).resize((small, small), Image.Resampling.BILINEAR)
            out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
        elif op == "jpeg":
            buffer = io.BytesIO()
            Image.fromarray(out).save(buffer, format="JPEG", quality=int(rng.integers(35, 86)))
            out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        else:
            out = _shift(out, rng)
    if np.array_equal(out, image):
        out = _shift(out, rng)
    return np.ascontiguousarray(out, dtype=np.uint8)


def _shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[0]
    most = max(1, round(3 * size / 96))  # "a few pixels" at 96 px, relative to the size elsewhere
    dy, dx = 0, 0
    while dy == 0 and dx == 0:
        dy, dx = (int(v) for v in rng.integers(-most, most + 1, 2))
    padded = np.pad(image, ((most, most), (most, most), (0, 0)), mode="edge")
    return padded[most + dy : most + dy + size, most + dx : most + dx + size]


def _outlier(kind: str, cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image that is not a blood cell; `cell` is a fresh render used by the palette/defocus kinds."""
    size = cell.shape[0]
    if kind == "blank":
        base = rng.uniform(60, 255, 3)
        out = base + rng.normal(0, rng.uniform(1, 4), (size, size, 3))
    elif kind == "text":
        pil = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
        draw = ImageDraw.Draw(pil)
        letters = np.asarray(list(string.ascii_letters + string.digits))
        for y in range(1, size - 8, 11):
            line = "".join(rng.choice(letters, size // 5))
            draw.text((int(rng.integers(0, 6)) - 2, y), line, fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        out = np.asarray(pil, dtype=np.float64)
    elif kind == "stripes":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, size / 3)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        out = np.where(wave[..., None], a, b)
    elif kind == "noise":
        out = rng.uniform(0, 256, (size, size, 3))
    elif kind == "palette":  # a cell in colours no stain produces: inverted and/or channels permuted
        out = cell[..., rng.permutation(3) if rng.random() < 0.5 else [1, 2, 0]].astype(np.float64)
        if rng.random() < 0.5:
            out = 255 - out
    else:  # defocus: far more blur than any clean image
        radius = size * rng.uniform(0.06, 0.1)
        out = np.asarray(Image.fromarray(cell).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
    return np.clip(out, 0, 255).astype(np.uint8)
