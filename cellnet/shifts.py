"""The shift suite: named, deterministic distribution shifts for measuring how robust a classifier is.

Why: a model trained on centre-cropped cells (the cell fills much of the frame) can collapse on full-frame images
where the cell is ~1.8x smaller, or on another lab's stain, focus or compression. One fixed, parameterised menu of
shifts makes "robust" a number that means the same thing everywhere it is measured::

    cellnet evaluate --shifted ──┐
    search fold validation ──────┼─> shift_suite(images, DEFAULT_SUITE, seed) ─> {name: shifted copy}
    OOD benchmark ───────────────┘        │
                                          └─ apply_shift(name, images, seed): each image x draws from
                                             default_rng([seed, crc32(name), crc32(x)]) (same alone or in a batch)

Every shift maps uint8 N×H×W×3 RGB to a new array of the same shape and dtype. Geometric shifts (`zoom`) pad with
the smear background estimated from the image border, never black or a reflection. Training-time zoom (`cellnet.
augment.RandomZoom`) mirrors the field into the border instead (`zoom_out_mirrored`, decision 0012), so the suite's
flat-padded zoom-outs stay a framing that training did not show. Example::

    shifted = shift_suite(val_images)        # {"zoom_out_0.55": ..., "stain_macenko": ..., ...}
    acc = {name: accuracy(model, x) for name, x in shifted.items()}
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from cellnet.errors import ConfigError

ImageFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------------------------------------------------------
# Geometry


def border_background(image: np.ndarray, width: int | None = None) -> np.ndarray:
    """The smear background colour (uint8 per channel), from the outer ring of `width` px (default min(H, W) // 16).

    Per-channel median of the brighter half (by channel sum) of the ring's pixels: the background is the light mode,
    and a plain median turns pink-grey when red cells cover much of the border (dense synthetic smears: ~30 levels
    too dark). Up to half the ring may be cells.
    """
    h, w = image.shape[:2]
    k = max(1, min(h, w) // 16) if width is None else int(width)
    if not 1 <= k <= min(h, w) // 2:
        raise ValueError(f"border width must be in [1, {min(h, w) // 2}] for a {h}×{w} image, got {width}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    ring = np.concatenate(
        [
            image[:k].reshape(-1, channels),
            image[-k:].reshape(-1, channels),
            image[k:-k, :k].reshape(-1, channels),
            image[k:-k, -k:].reshape(-1, channels),
        ]
    )
    brightness = ring.sum(axis=1, dtype=np.int64)
    light = ring[brightness >= np.median(brightness)]
    return np.median(light, axis=0).round().astype(np.uint8)


def zoom(image: np.ndarray, factor: float, background: np.ndarray | None = None) -> np.ndarray:
    """`image` magnified by `factor` about its centre, same size: lengths scale by factor, areas by factor**2.

    factor < 1 shrinks the content (INTER_AREA) and pads with `background` (default: `border_background(image)`);
    factor > 1 crops the centre and enlarges it (INTER_LINEAR), so no padding is needed.
    """
    f = float(factor)
    if not (np.isfinite(f) and f > 0):
        raise ValueError(f"zoom factor must be a finite number > 0, got {factor}")
    h, w = image.shape[:2]
    if f == 1.0:
        return image.copy()
    if f > 1.0:
        cx, cy = (w - 1) / 2, (h - 1) / 2
        m = np.array([[f, 0.0, (1 - f) * cx], [0.0, f, (1 - f) * cy]])
        out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(image.shape)
    if round(min(h, w) * f) < 1:
        raise ValueError(f"zoom factor {factor} shrinks a {h}×{w} image to nothing")
    bg = border_background(image) if background is None else np.asarray(background, dtype=image.dtype)
    small, top, left = _shrunk(image, f)
    sh, sw = small.shape[:2]
    out = np.empty_like(image)
    out[...] = bg
    out[top : top + sh, left : left + sw] = small
    return out


def _shrunk(image: np.ndarray, f: float) -> tuple[np.ndarray, int, int]:
    """`image` resized by `f` < 1 (INTER_AREA), and the (top, left) that centre it in the original frame. fx/fy (not
    a rounded dsize) keep the scale exactly `f`; the placement is on whole pixels (<= 0.5 px off-centre)."""
    small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    small = small.reshape(*small.shape[:2], *image.shape[2:])  # cv2 drops a trailing channel axis of 1
    h, w = image.shape[:2]
    return small, (h - small.shape[0]) // 2, (w - small.shape[1]) // 2


def zoom_out_mirrored(image: np.ndarray, factor: float) -> np.ndarray:
    """`image` shrunk by `factor` < 1 about its centre, the border filled by mirroring the shrunk image (OpenCV's
    BORDER_REFLECT_101): the surroundings keep the red cells' texture at the smaller scale, as a wider field of view
    shows them, where `zoom`'s flat background has none. For the OOD flag's framing check (decision 0011: its means
    from mirrored zoom-outs flagged 95-99% of real full-frame validation cells on their own, from flat ones 61-90%)
    and training's `RandomZoom` (decision 0012: full-frame validation cells 0.82 right against 0.66 with flat ones)."""
    f = float(factor)
    if not (np.isfinite(f) and 0 < f < 1):
        raise ValueError(f"a zoom-out factor must be in (0, 1), got {factor}")
    h, w = image.shape[:2]
    small, top, left = _shrunk(image, f)
    sh, sw = small.shape[:2]
    out = cv2.copyMakeBorder(small, top, h - sh - top, left, w - sw - left, cv2.BORDER_REFLECT_101)
    return out.reshape(image.shape)


def zoomed_copies(images: np.ndarray, zooms: Iterable[float]) -> np.ndarray:
    """(F, N, ...) every image zoomed out by each factor (`zoom_out_mirrored`): what the OOD flag's framing check
    (`cellnet.ood.fit_framing_discriminator`) tells from the cells as they are."""
    return np.stack([np.stack([zoom_out_mirrored(img, z) for img in images]) for z in zooms])


# ---------------------------------------------------------------------------------------------------------------
# Per-image operations, one per `Shift.kind`: a maker takes the entry's params and returns image, rng -> image


def _zoom_op(factor: float) -> ImageFn:
    return lambda image, rng: zoom(image, factor)


def _gamma_op(gamma: float) -> ImageFn:
    """albumentations' RandomGamma at one fixed gamma: out = 255 (in/255)^gamma."""
    return _albumentations_op(A.RandomGamma(gamma_limit=(100 * gamma, 100 * gamma), p=1.0))


def _jpeg_op(quality: int) -> ImageFn:
    """JPEG round trip through cv2 with the channels in the order cv2 expects. Not albumentations' ImageCompression:
    it encodes the RGB array as if it were BGR, so luma and the 4:2:0 chroma planes are computed from swapped red and
    blue (up to 50 levels apart from a real JPEG of the image at quality 20, measured)."""

    def op(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:
            raise RuntimeError(f"JPEG round trip failed for a {image.shape} image at quality {quality}")
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

    return op


def disk_kernel(radius: float) -> np.ndarray:
    """A normalised, anti-aliased disk (pixel weight = its overlap with the circle, approximated linearly)."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0).astype(np.float32)
    return kernel / kernel.sum()


def defocus_radius(size: int, fraction: float = 1 / 32, minimum: float = 1.5) -> float:
    """The defocus blur radius at image side `size`: size * fraction, at least `minimum` px (2 px at 64, 3 at 96)."""
    return max(minimum, size * fraction)


def _defocus_op(fraction: float, minimum: float) -> ImageFn:
    """Not albumentations' Defocus: its radius is a whole number of pixels plus a Gaussian alias blur; this radius is
    a fraction of the image side (the same defocus at 32, 64 and 96 px) with an anti-aliased edge."""

    def op(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        kernel = disk_kernel(defocus_radius(min(image.shape[:2]), fraction, minimum))
        return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)

    return op


def _albumentations_op(transform: Any) -> ImageFn:
    """Run an albumentations transform with its generators seeded from `rng` (as `cellnet.train.ImageDataset`)."""

    def op(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        transform.set_random_state(rng, random.Random(int(rng.integers(2**62))))
        return np.asarray(transform(image=image)["image"], dtype=np.uint8)

    return op


class MacenkoStain(A.HEStain):
    """A.HEStain(method="macenko") that leaves an image with no stained pixel (a blank field) unchanged.

    Plain HEStain raises ValueError there ("No tissue pixels found"), which would end a training run or a suite.
    """

    def __init__(
        self,
        intensity_scale_range: tuple[float, float] = (0.7, 1.3),
        intensity_shift_range: tuple[float, float] = (-0.2, 0.2),
        p: float = 0.5,
    ) -> None:
        super().__init__(
            method="macenko",
            intensity_scale_range=intensity_scale_range,
            intensity_shift_range=intensity_shift_range,
            p=p,
        )

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().get_params_dependent_on_data(params, data)
        except ValueError:
            return {"stain_matrix": None, "scale_factors": None, "shift_values": None}

    def apply(self, img: np.ndarray, stain_matrix: Any = None, **params: Any) -> np.ndarray:
        return img if stain_matrix is None else super().apply(img, stain_matrix=stain_matrix, **params)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("intensity_scale_range", "intensity_shift_range")


def _hestain_op(scale: tuple[float, float], shift: tuple[float, float]) -> ImageFn:
    return _albumentations_op(MacenkoStain(scale, shift, p=1.0))


def _planckian_op(temperature: tuple[int, int]) -> ImageFn:
    return _albumentations_op(A.PlanckianJitter(mode="blackbody", temperature_limit=temperature, p=1.0))


def _color_jitter_op(brightness: float, contrast: float, saturation: float, hue: float) -> ImageFn:
    return _albumentations_op(
        A.ColorJitter(
            brightness=(1 - brightness, 1 + brightness),
            contrast=(1 - contrast, 1 + contrast),
            saturation=(1 - saturation, 1 + saturation),
            hue=(-hue, hue),
            p=1.0,
        )
    )


def _rotate_op(angle: float) -> ImageFn:
    """A rotation by `angle` degrees about the centre, the corners filled black (RandAugment's fill)."""
    return _albumentations_op(A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0))


def _colour_op(op: str) -> ImageFn:
    """One of RandAugment's colour operations at a fixed strength, albumentations' implementation."""
    transforms = {
        "solarize": A.Solarize(threshold_range=(0.5, 0.5), p=1.0),  # invert every level above half
        "posterize": A.Posterize(num_bits=3, p=1.0),  # 8 levels per channel
        "equalize": A.Equalize(p=1.0),  # per-channel histogram equalisation
        "invert": A.InvertImg(p=1.0),
    }
    return _albumentations_op(transforms[op])


def _policy_ops(strength: float) -> list[A.BasicTransform]:
    """The op menu of the suite's RandAugment/AugMix-style mixes, albumentations' ops at `strength` in [0, 1]: other
    ops and parameters than the torchvision policies training can use (cellnet.augment), so a model trained with a
    policy is not scored on it."""
    t = float(strength)
    constant = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "p": 1.0}
    return [
        A.Affine(rotate=(-30 * t, 30 * t), **constant),
        A.Affine(shear={"x": (-17 * t, 17 * t), "y": (0, 0)}, **constant),
        A.Affine(translate_percent={"x": (-0.2 * t, 0.2 * t), "y": (-0.2 * t, 0.2 * t)}, **constant),
        A.Solarize(threshold_range=(1 - 0.5 * t, 1 - 0.5 * t), p=1.0),
        A.Posterize(num_bits=max(1, round(8 - 5 * t)), p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
        A.ColorJitter(
            brightness=(1 - 0.6 * t, 1 + 0.6 * t),
            contrast=(1 - 0.6 * t, 1 + 0.6 * t),
            saturation=(1 - 0.8 * t, 1 + 0.8 * t),
            hue=(0, 0),
            p=1.0,
        ),
        A.Sharpen(alpha=(0.6 * t, 0.9 * t), lightness=(1.0, 1.0), p=1.0),
    ]


def _randaugment_mix_op(ops: int, strength: float) -> ImageFn:
    """RandAugment-style: `ops` different operations of `_policy_ops`, drawn per image, applied in sequence."""
    return _albumentations_op(A.SomeOf(_policy_ops(strength), n=ops, replace=False, p=1.0))


def _augmix_mix_op(width: int, depth: int, strength: float) -> ImageFn:
    """AugMix-style (Hendrycks et al. 2020): `width` chains of 1..`depth` random operations of `_policy_ops`, mixed
    with Dirichlet(1) weights, then blended with the original image by a Beta(1, 1) share, per image."""
    menu = _policy_ops(strength)

    def op(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        weights = rng.dirichlet(np.ones(width))
        mixed = np.zeros(image.shape, dtype=np.float32)
        for w in weights:
            chain = image
            for k in rng.choice(len(menu), size=int(rng.integers(1, depth + 1))):
                chain = _albumentations_op(menu[int(k)])(chain, rng)
            mixed += w * chain.astype(np.float32)
        share = rng.beta(1.0, 1.0)
        return np.clip(np.rint(share * image + (1 - share) * mixed), 0, 255).astype(np.uint8)

    return op


KINDS: dict[str, Callable[..., ImageFn]] = {
    "zoom": _zoom_op,
    "rotate": _rotate_op,
    "gamma": _gamma_op,
    "jpeg": _jpeg_op,
    "defocus": _defocus_op,
    "hestain": _hestain_op,
    "planckian": _planckian_op,
    "color_jitter": _color_jitter_op,
    "colour_op": _colour_op,
    "randaugment_mix": _randaugment_mix_op,
    "augmix_mix": _augmix_mix_op,
}
RANDOM_KINDS = frozenset({"hestain", "planckian", "color_jitter", "randaugment_mix", "augmix_mix"})  # others: no seed


# ---------------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Shift:
    """One entry of the suite: `kind` (a key of KINDS) with its keyword `params`, and what it simulates."""

    name: str
    kind: str
    params: dict[str, Any]
    description: str
    family: str = "geometry"  # what robustness card rows the shift is grouped under (FAMILIES)

    @property
    def uses_seed(self) -> bool:
        """Whether the seed matters (per-image random parameters) or the shift is a fixed function of the pixels."""
        return self.kind in RANDOM_KINDS


_ENTRIES = (
    Shift(
        "zoom_out_0.55",
        "zoom",
        {"factor": 0.55},
        "magnification x0.55 about the centre (cell area x0.30), padded with the border background: a full-frame "
        "image where the cell is ~1.8x smaller than in a centre crop",
        family="geometry",
    ),
    Shift(
        "zoom_out_0.75",
        "zoom",
        {"factor": 0.75},
        "magnification x0.75 about the centre (cell area x0.56), padded with the border background",
        family="geometry",
    ),
    Shift(
        "zoom_in_1.35",
        "zoom",
        {"factor": 1.35},
        "magnification x1.35 about the centre (cell area x1.82): a tighter crop, the cell may touch the border",
        family="geometry",
    ),
    Shift(
        "stain_macenko",
        "hestain",
        {"scale": (0.55, 0.8), "shift": (0.05, 0.15)},
        "albumentations HEStain(method='macenko'): two stain vectors estimated per image, the stain concentrations "
        "of non-background pixels x U(0.55, 0.8) + U(0.05, 0.15) per stain: another lab's staining; the 2-stain "
        "reconstruction also drops colour outside the fitted plane (pink turns green-grey on synthetic smears)",
        family="stain",
    ),
    Shift(
        "color_planckian",
        "planckian",
        {"temperature": (3000, 15000)},
        "albumentations PlanckianJitter(blackbody, 3000-15000 K, 40% warm / 60% cool of 6000 K): another "
        "microscope's illumination colour temperature",
        family="stain",
    ),
    Shift(
        "color_jitter",
        "color_jitter",
        {"brightness": 0.25, "contrast": 0.25, "saturation": 0.4, "hue": 0.04},
        "albumentations ColorJitter(brightness x0.75-1.25, contrast x0.75-1.25, saturation x0.6-1.4, hue ±0.04 of "
        "the circle = ±14°): another camera's colour processing",
        family="stain",
    ),
    Shift(
        "defocus",
        "defocus",
        {"fraction": 1 / 32, "minimum": 1.5},
        "disk-kernel blur (cv2.filter2D, reflect border) of radius max(1.5, S/32) px at image side S (1.5 px at 32, "
        "2 px at 64, 3 px at 96): the focal plane off the cell",
        family="optics",
    ),
    Shift(
        "jpeg_q20",
        "jpeg",
        {"quality": 20},
        "JPEG re-encoding at quality 20 (cv2, 4:2:0 chroma): heavy compression by a scanner or an upload",
        family="optics",
    ),
    Shift(
        "gamma_0.6",
        "gamma",
        {"gamma": 0.6},
        "out = 255 (in/255)^0.6 (albumentations RandomGamma at 60): brighter, washed-out exposure",
        family="exposure",
    ),
    Shift(
        "gamma_1.6",
        "gamma",
        {"gamma": 1.6},
        "out = 255 (in/255)^1.6 (albumentations RandomGamma at 160): darker, higher-contrast exposure",
        family="exposure",
    ),
    Shift(
        "rotate_30",
        "rotate",
        {"angle": 30.0},
        "rotation by 30 degrees about the centre, corners filled black (albumentations Rotate; RandAugment's fill)",
        family="geometry",
    ),
    Shift(
        "solarize",
        "colour_op",
        {"op": "solarize"},
        "every channel level above 128 inverted (albumentations Solarize at threshold 0.5)",
        family="colour ops",
    ),
    Shift(
        "posterize_3bit",
        "colour_op",
        {"op": "posterize"},
        "3 bits per channel, 8 levels (albumentations Posterize)",
        family="colour ops",
    ),
    Shift(
        "equalize",
        "colour_op",
        {"op": "equalize"},
        "per-channel histogram equalisation (albumentations Equalize)",
        family="colour ops",
    ),
    Shift(
        "randaugment_mix",
        "randaugment_mix",
        {"ops": 4, "strength": 0.9},
        "RandAugment-style: 4 of 9 operations per image at 0.9 strength, in sequence -- rotate +-27 deg, shear +-15 "
        "deg, translate +-18%, solarize above 55%, posterize 4 bits, equalize, autocontrast, colour jitter +-54%, "
        "sharpen (albumentations' ops; not the torchvision policies training can use)",
        family="policy mixes",
    ),
    Shift(
        "augmix_mix",
        "augmix_mix",
        {"width": 4, "depth": 3, "strength": 0.9},
        "AugMix-style: 4 chains of 1-3 of the same 9 operations at 0.9 strength, mixed with Dirichlet(1) weights and "
        "blended with the original by a Beta(1, 1) share (albumentations' ops)",
        family="policy mixes",
    ),
    Shift(
        "invert",
        "colour_op",
        {"op": "invert"},
        "every channel inverted, 255 - x (albumentations InvertImg); not in the default suite: no smear looks like it",
        family="colour ops",
    ),
)

SHIFTS: dict[str, Shift] = {s.name: s for s in _ENTRIES}
DEFAULT_SUITE: tuple[str, ...] = tuple(name for name in SHIFTS if name != "invert")
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(s.family for s in _ENTRIES))


def resolve_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """`names` checked against SHIFTS, duplicates dropped, order kept; an unknown name lists the valid ones."""
    items = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in items if n not in SHIFTS]
    if unknown:
        raise ConfigError(f"unknown shift {unknown[0]!r}; valid shifts: {', '.join(SHIFTS)}")
    if not items:
        raise ConfigError(f"the shift suite needs at least one shift; valid shifts: {', '.join(SHIFTS)}")
    return tuple(dict.fromkeys(items))


def shift_id(name: str) -> int:
    """A stable number per shift name (crc32, unlike `hash`, is the same in every process)."""
    return zlib.crc32(name.encode())


def apply_shift(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """A shifted copy of uint8 N×H×W×3 `images`, each image drawing from its own generator.

    Image x draws from default_rng([seed, shift_id(name), crc32(x's bytes)]): a pure function of (name, pixels,
    seed), so an image gets the same result alone, in any batch, at any position (exact duplicates get the same
    draw, which is what a deterministic shift should do).
    """
    (name,) = resolve_names(name)
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise ConfigError(f"shift seed must be an int >= 0, got {seed!r}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"apply_shift expects uint8 N×H×W×3 images, got {images.dtype} {images.shape}")
    shift = SHIFTS[name]
    op = KINDS[shift.kind](**shift.params)
    key = shift_id(name)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = op(image, np.random.default_rng([seed, key, zlib.crc32(np.ascontiguousarray(image).data)]))
    return out


def shift_suite(images: np.ndarray, names: str | Iterable[str] = DEFAULT_SUITE, seed: int = 0) -> dict[str, np.ndarray]:
    """{name: apply_shift(name, images, seed)} for every shift in `names`, in order."""
    return {name: apply_shift(name, images, seed) for name in resolve_names(names)}
