"""Find exact/near duplicates, label conflicts and outliers; drop them and say why (docs/decisions/0002).

Near duplicates: candidate pairs are images whose 64-bit pHash (imagehash's definition, batched) differ in at most
`hash_threshold` bits (vectorised XOR + popcount) or that are among each other's nearest 8×8 layouts (shifted copies
the hash misses). Centred cells look alike to both, so every candidate is CONFIRMED on pixels: grayscale thumbnails
must correlate (best over small shifts) and, aligned, no block of the image may change its mean colour. Confirmed
pairs and byte-identical images form clusters (connected components). A cluster keeps one image per label; a
cluster whose members disagree on the label is a label conflict (dropped whole by default). Outliers: images far
from every class in a small colour/texture feature space (robust Mahalanobis distance per class, smallest counts).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cellnet.constants import DEFAULT_IMAGE_SIZE
from cellnet.data.clean_report import REASONS, CleanReport
from cellnet.data.dataset import CellData
from cellnet.data.sources import load
from cellnet.errors import DataError
from cellnet.files import atomic_path
from cellnet.progress import progress_bar

__all__ = ["CleanReport", "REASONS", "clean", "find_duplicates_between", "run_clean", "signatures"]

THUMB = 32  # side of the grayscale thumbnails used to confirm near duplicates and compute outlier features
PHASH_SIDE = 32  # imagehash.phash: hash_size 8 × highfreq_factor 4
_LANCZOS = Image.Resampling.LANCZOS
_BILINEAR = Image.Resampling.BILINEAR
DEFAULT_HASH_THRESHOLD = 10
DEFAULT_OUTLIER_THRESHOLD = 10.0


@dataclass(frozen=True)
class DuplicateSettings:
    """How near is a near duplicate (measured choices: docs/decisions/0002-near-duplicate-detection.md)."""

    hash_threshold: int = DEFAULT_HASH_THRESHOLD  # pHash bits that may differ for a candidate pair
    neighbours: int = 4  # also candidates: this many nearest 8×8 layouts per image (finds shifted copies)
    min_correlation: float = 0.9  # grayscale 32 px thumbnails, best over shifts, must correlate at least this much
    max_shift: int = 2  # thumbnail pixels searched each way (2 = 6 px at 96 px)
    max_block_diff: float = 20.0  # largest allowed difference of aligned block-mean colours (0-255)


@dataclass(frozen=True)
class Signatures:
    """Per-image fingerprints: pHash (uint64), blake2b of the pixel bytes, grayscale thumbnail, outlier features."""

    phash: np.ndarray
    digest: np.ndarray
    thumbs: np.ndarray
    features: np.ndarray


# ---------------------------------------------------------------------------------------------------------------
# fingerprints


def _signature_chunk(images: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fingerprints of one chunk: the per-image PIL resizes, then everything else batched in numpy."""
    n = len(images)
    digest = np.empty(n, dtype="S16")
    small_gray = np.empty((n, PHASH_SIDE, PHASH_SIDE), dtype=np.float32)
    colour = np.empty((n, THUMB, THUMB, 3), dtype=np.float32)
    for i, pixels in enumerate(images):
        digest[i] = hashlib.blake2b(pixels.tobytes(), digest_size=16).digest()
        image = Image.fromarray(pixels)
        # exactly imagehash.phash's input: 8-bit luma, Lanczos-resized to 32×32
        small_gray[i] = np.asarray(image.convert("L").resize((PHASH_SIDE, PHASH_SIDE), _LANCZOS))
        colour[i] = np.asarray(image.resize((THUMB, THUMB), _BILINEAR))
    colour /= 255.0
    luma = images.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    grain = np.abs(np.diff(luma, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(luma, axis=2)).mean(axis=(1, 2))
    return phash_batch(small_gray), digest, small_gray, _features(colour, grain)


def phash_batch(small_gray: np.ndarray) -> np.ndarray:
    """imagehash.phash (hash_size 8) of N 32×32 luma images at once, as uint64 (bit order of imagehash's hex)."""
    dct = scipy.fft.dct(scipy.fft.dct(small_gray.astype(np.float64), axis=1), axis=2)
    low = dct[:, :8, :8].reshape(len(small_gray), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


PROGRESS_FROM = 5000  # images: cleaning fewer takes a few seconds and shows no bar


def signatures(images: np.ndarray, workers: int | None = None, chunk: int = 256) -> Signatures:
    """Fingerprints of N×S×S×3 uint8 images, computed on threads over chunks (PIL/scipy release the GIL)."""
    workers = workers or min(4, os.cpu_count() or 1)
    starts = range(0, len(images), chunk)
    shown = None if len(images) >= PROGRESS_FROM else False  # a bar (on a terminal) for the long ones only
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress_bar(len(images), "cleaning", "img", enabled=shown) as bar,
    ):
        parts = []
        for part in pool.map(lambda s: _signature_chunk(images[s : s + chunk]), starts):
            parts.append(part)
            bar.update(len(part[0]))
    if not parts:
        return Signatures(
            np.empty(0, np.uint64), np.empty(0, "S16"), np.empty((0, THUMB, THUMB), np.float32), np.empty((0, 0))
        )
    phash, digest, thumbs, features = (np.concatenate(p) for p in zip(*parts))
    return Signatures(phash, digest, thumbs, features)


def _features(colour: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Cheap descriptors that separate stained cells on a smear from things that are not cells.

    Colours are white-balanced per image first (divided by the bright background), so the stain and exposure shifts
    real scanners produce do not look unusual; what stays is layout (a dark centre on a lighter field), texture and
    the stain's hue (purple nuclei: green lowest; pinkish background).
    """
    n = len(colour)
    flat = colour.reshape(n, -1, 3)
    m = flat.shape[1]
    top = int(0.95 * (m - 1))
    white = np.partition(flat, top, axis=1)[:, top][:, None, :] + 1e-3
    balanced = np.clip(flat / white, 0.0, 1.5)
    mean, std = balanced.mean(1), balanced.std(1)
    saturation = (balanced.max(2) - balanced.min(2)).mean(1)
    g = balanced.mean(2).reshape(n, THUMB, THUMB)
    gradient = np.abs(np.diff(g, axis=1)).mean((1, 2)) + np.abs(np.diff(g, axis=2)).mean((1, 2))
    c0, c1 = THUMB // 4, THUMB - THUMB // 4
    centre = g[:, c0:c1, c0:c1].mean((1, 2))
    border = np.concatenate([g[:, :4].reshape(n, -1), g[:, -4:].reshape(n, -1)], axis=1).mean(1)
    gflat = g.reshape(n, -1)
    ranks = [int(q * (m - 1)) for q in (0.05, 0.2, 0.5, 0.6)]
    ranked = np.partition(gflat, ranks, axis=1)
    q05, q20, q50, q60 = (ranked[:, r] for r in ranks)
    dark_fraction = (gflat < 0.75).mean(1)
    quantiles = np.column_stack([q05, q50])
    dark = (gflat <= q20[:, None])[..., None]
    bright = (gflat >= q60[:, None])[..., None]
    dark_rgb = (balanced * dark).sum(1) / np.maximum(dark.sum(1), 1)
    bright_rgb = (balanced * bright).sum(1) / np.maximum(bright.sum(1), 1)
    stain = (dark_rgb[:, 0] + dark_rgb[:, 2]) / 2 - dark_rgb[:, 1]
    pink = bright_rgb[:, 0] - bright_rgb[:, 1]
    relative_grain = grain / (255.0 * flat.mean((1, 2)) + 1.0)
    sharpness = gradient / (g.std(axis=(1, 2)) + 0.02)  # edges per unit contrast: low when out of focus
    columns = [mean, std, saturation, gradient, centre - border, dark_fraction, quantiles, relative_grain, stain, pink]
    columns.append(sharpness)
    return np.column_stack(columns).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# near-duplicate pairs


def hash_pairs(
    a: np.ndarray, b: np.ndarray | None = None, threshold: int = DEFAULT_HASH_THRESHOLD, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with popcount(a[i] ^ b[j]) <= threshold; b=None: pairs within a, i < j. Blocked, never O(n²) memory."""
    same = b is None
    other = a if b is None else b
    rows, cols = [], []
    for start in range(0, len(a), block):
        x = a[start : start + block]
        lo = start if same else 0  # within one set only compare to later images
        dist = np.bitwise_count(x[:, None] ^ other[None, lo:])
        i, j = np.nonzero(dist <= threshold)
        j = j + lo
        if same:
            keep = j > i + start
            i, j = i[keep], j[keep]
        rows.append(i + start)
        cols.append(j)
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def _crop_pair(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The overlapping parts of a[k] and b[k] shifted by (dy, dx): a[y, x] is compared with b[y - dy, x - dx]."""
    h, w = a.shape[1], a.shape[2]
    return (
        a[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)],
        b[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)],
    )


def _znorm(t: np.ndarray) -> np.ndarray:
    t = t - t.mean(axis=(1, 2), keepdims=True)
    return t / (t.std(axis=(1, 2), keepdims=True) + 1e-3)


def best_shift(ta: np.ndarray, tb: np.ndarray, max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation of paired thumbnails ta[k], tb[k] over shifts |dy|,|dx| <= max_shift, and that shift.

    Thumbnails are z-normalised once as a whole; per shift only the mean product over the overlap is taken (close to
    the overlap's Pearson r for the small shifts searched, and 4x cheaper).
    """
    ta, tb = _znorm(ta), _znorm(tb)
    best = np.full(len(ta), -1.0, dtype=np.float32)
    shift = np.zeros((len(ta), 2), dtype=np.int64)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            a, b = _crop_pair(ta, tb, dy, dx)
            corr = np.einsum("ijk,ijk->i", a, b) / (a.shape[1] * a.shape[2])
            better = corr > best
            best[better] = corr[better]
            shift[better] = (dy, dx)
    return best, shift


def block_difference(a: np.ndarray, b: np.ndarray, coarse: np.ndarray, scale: float, chunk: int = 256) -> np.ndarray:
    """Largest colour difference (0-255) between block means of paired images a[k], b[k] (N×S×S×3), best alignment.

    `coarse` is the thumbnail alignment, `scale` image pixels per thumbnail pixel; shifts within half a thumbnail
    pixel of it are tried and the one whose blocks agree best counts. A re-encoded, resized or shifted copy keeps every
    block's mean colour; a different cell on a look-alike background changes at least one block. Block sums come
    from integral images, so each shift costs a few hundred lookups per pair, not a pass over the pixels.
    """
    out = np.empty(len(a), dtype=np.float32)
    size = a.shape[1]
    block = max(2, size // 12)
    radius = int(np.ceil(scale / 2))
    for start in range(0, len(a), chunk):
        base = np.rint(coarse[start : start + chunk] * scale).astype(np.int64)
        ia, ib = _integral(a[start : start + chunk]), _integral(b[start : start + chunk])
        count = (size - int(np.abs(base).max(initial=0)) - radius) // block
        best = np.full(len(base), np.inf, dtype=np.float32)
        for fy in range(-radius, radius + 1):
            for fx in range(-radius, radius + 1):
                dy, dx = base[:, 0] + fy, base[:, 1] + fx
                sums_a = _block_sums(ia, np.maximum(dy, 0), np.maximum(dx, 0), count, block)
                sums_b = _block_sums(ib, np.maximum(-dy, 0), np.maximum(-dx, 0), count, block)
                diff = np.abs(sums_a - sums_b).max(axis=(1, 2, 3)) / block**2
                np.minimum(best, diff, out=best)
        out[start : start + chunk] = best
    return out


def _integral(images: np.ndarray) -> np.ndarray:
    """Summed-area tables (N×(S+1)×(S+1)×3, int32: exact for any image up to 2,900 px)."""
    table = np.zeros((len(images), images.shape[1] + 1, images.shape[2] + 1, 3), dtype=np.int32)
    np.cumsum(np.cumsum(images, axis=1, dtype=np.int32), axis=2, out=table[:, 1:, 1:])
    return table


def _block_sums(table: np.ndarray, y0: np.ndarray, x0: np.ndarray, count: int, block: int) -> np.ndarray:
    """Sums over count×count blocks of side `block` starting at (y0[k], x0[k]) in image k."""
    steps = block * np.arange(count + 1)
    ys, xs = y0[:, None] + steps, x0[:, None] + steps
    corners = table[np.arange(len(table))[:, None, None], ys[:, :, None], xs[:, None, :]].astype(np.int64)
    return corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]


def _confirm(
    images_a: np.ndarray,
    images_b: np.ndarray,
    sa: Signatures,
    sb: Signatures,
    i: np.ndarray,
    j: np.ndarray,
    min_correlation: float,
    max_block_diff: float,
    max_shift: int,
    chunk: int = 1024,
) -> np.ndarray:
    """Mask of candidate pairs (i in a, j in b) whose pixels agree: thumbnail correlation, then block colours."""
    keep = sa.digest[i] == sb.digest[j]
    for start in range(0, len(i), chunk):
        ci, cj = i[start : start + chunk], j[start : start + chunk]
        corr, shift = best_shift(sa.thumbs[ci], sb.thumbs[cj], max_shift)
        close = np.flatnonzero(corr >= min_correlation)
        if len(close):
            diff = block_difference(images_a[ci[close]], images_b[cj[close]], shift[close], images_a.shape[1] / THUMB)
            keep[start + close[diff <= max_block_diff]] = True
    return keep


def thumbnail_neighbours(
    ta: np.ndarray, tb: np.ndarray | None = None, k: int = 4, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j): for every b image its k nearest a images by cosine of 8×8 grayscale layouts (b=None: within a).

    pHash bits flip when a copy is shifted by 3+ pixels; an 8×8 layout barely changes, so this finds shifted copies
    the hash misses. Cost: one matrix product per block, never an N×N matrix.
    """
    za = _layout(ta)
    zb = za if tb is None else _layout(tb)
    k = min(k, len(za) - (1 if tb is None else 0))
    if k <= 0 or len(zb) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols = [], []
    for start in range(0, len(zb), block):
        sim = zb[start : start + block] @ za.T
        if tb is None:
            sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        rows.append(top.ravel())
        cols.append(np.repeat(np.arange(start, start + len(sim)), k))
    i, j = np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)
    if tb is None:  # undirected within one set: (min, max), each pair once
        i, j = np.minimum(i, j), np.maximum(i, j)
        pairs = np.unique(np.stack([i, j], axis=1), axis=0)
        i, j = pairs[:, 0], pairs[:, 1]
    return i, j


def _layout(thumbs: np.ndarray) -> np.ndarray:
    n, s = len(thumbs), thumbs.shape[1]
    z = thumbs.reshape(n, 8, s // 8, 8, s // 8).mean(axis=(2, 4)).reshape(n, 64)
    z = z - z.mean(axis=1, keepdims=True)
    return (z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def _confirmed_pairs(
    images_a: np.ndarray,
    sa: Signatures,
    images_b: np.ndarray | None,
    sb: Signatures | None,
    settings: DuplicateSettings,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate pairs (pHash within threshold, or layout neighbours), kept when the pixels agree.

    Returns (i, j, number of candidates); byte-identical pairs always count.
    """
    i1, j1 = hash_pairs(sa.phash, None if sb is None else sb.phash, settings.hash_threshold)
    i2, j2 = thumbnail_neighbours(sa.thumbs, None if sb is None else sb.thumbs, settings.neighbours)
    pairs = np.unique(np.stack([np.concatenate([i1, i2]), np.concatenate([j1, j2])], axis=1), axis=0)
    i, j = pairs[:, 0], pairs[:, 1]
    other_images = images_a if images_b is None else images_b
    other = sa if sb is None else sb
    keep = _confirm(
        images_a, other_images, sa, other, i, j, settings.min_correlation, settings.max_block_diff, settings.max_shift
    )
    return i[keep], j[keep], len(i)


def find_duplicates_between(a: CellData, b: CellData, **settings: Any) -> np.ndarray:
    """Sorted indices into b of images that duplicate (exactly or nearly) some image in a: the train/test leak check.

    settings: DuplicateSettings fields (hash_threshold, neighbours, min_correlation, max_shift, max_block_diff).
    """
    if a.image_size != b.image_size:
        raise DataError(f"cannot compare images of {a.image_size} px with {b.image_size} px; load both at one size")
    if len(a) == 0 or len(b) == 0:
        return np.empty(0, dtype=np.int64)
    sa, sb = signatures(a.images), signatures(b.images)
    _, j, _ = _confirmed_pairs(a.images, sa, b.images, sb, DuplicateSettings(**settings))
    exact = np.flatnonzero(np.isin(sb.digest, sa.digest))
    return np.unique(np.concatenate([j, exact])).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# outliers


def outlier_scores(features: np.ndarray, labels: np.ndarray, min_class_size: int = 30) -> np.ndarray:
    """Distance of each image to the nearest class (robust Mahalanobis: median + MAD-scaled, shrunk covariance).

    Each class's centre and spread come from medians, so a few percent of junk in a class does not move them; an image
    scores its smallest distance over classes, so only images unlike every class score high.
    """
    n, d = features.shape
    if n == 0:
        return np.zeros(0)
    centre_all = np.median(features, axis=0)
    scale = 1.4826 * np.median(np.abs(features - centre_all), axis=0)
    scale = np.where(scale > 1e-9, scale, features.std(0) + 1e-9)
    z = (features - centre_all) / scale
    best = np.full(n, np.inf)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= min_class_size] or [None]
    for c in classes:
        member = z if c is None else z[labels == c]
        centre = np.median(member, axis=0)
        core = member[_core_mask(member, centre)]
        cov = np.cov(core, rowvar=False) + 0.05 * np.eye(d)  # shrinkage keeps small classes well-conditioned
        cov_inv = np.linalg.inv(cov)
        diff = z - centre
        dist = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, cov_inv, diff), 0.0))
        best = np.minimum(best, dist)
    return best


def _core_mask(member: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The central 90% of a class by robust z distance: the covariance is estimated without its own outliers."""
    scale = 1.4826 * np.median(np.abs(member - centre), axis=0) + 1e-9
    r = np.sqrt((((member - centre) / scale) ** 2).sum(1))
    return r <= np.quantile(r, 0.9)


# ---------------------------------------------------------------------------------------------------------------
# the cleaner


def clean(
    data: CellData,
    *,
    hash_threshold: int = DEFAULT_HASH_THRESHOLD,
    drop_duplicates: bool = True,
    drop_conflicts: bool = True,
    drop_outliers: bool = True,
    outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD,
    workers: int | None = None,
    **duplicate_settings: Any,
) -> tuple[CellData, CleanReport]:
    """Cleaned copy of data (with .groups = duplicate cluster per kept image) and a report of every image flagged.

    A duplicate cluster keeps its first image (by index) per label. drop_conflicts=False keeps one image per label of
    a conflicting cluster (one group, so folds keep them together); drop_outliers=False only flags outliers.
    duplicate_settings: the other DuplicateSettings fields. Any groups `data` had are replaced.
    """
    started = time.perf_counter()
    settings = DuplicateSettings(hash_threshold=hash_threshold, **duplicate_settings)
    n = len(data)
    if n == 0:
        raise DataError("nothing to clean: the data set has no images")
    labels = data.labels
    sig = signatures(data.images, workers=workers)
    i, j, candidates = _confirmed_pairs(data.images, sig, None, None, settings)
    _, same_bytes = np.unique(sig.digest, return_inverse=True)
    first_copy = np.full(len(same_bytes), -1, dtype=np.int64)
    first_copy[same_bytes[::-1]] = np.arange(n)[::-1]  # lowest index with these exact bytes
    rows = np.concatenate([i, np.arange(n)])
    cols = np.concatenate([j, first_copy[same_bytes]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, cluster = connected_components(graph, directed=False)

    scores = outlier_scores(sig.features, labels)
    is_outlier = scores > outlier_threshold

    reason = np.full(n, "", dtype=object)
    partner = np.full(n, -1, dtype=np.int64)  # the image a dropped duplicate was kept in favour of
    drop = np.zeros(n, dtype=bool)
    order = np.argsort(cluster, kind="stable")
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        keepers: dict[int, int] = {}
        for m in members:  # members are in index order: the first image of each label is kept
            keepers.setdefault(int(labels[m]), int(m))
        conflict = len(keepers) > 1
        for m in members:
            kept = keepers[int(labels[m])]
            if conflict:
                reason[m] = "label_conflict"
                partner[m] = next(k for k in keepers.values() if labels[k] != labels[m])
                drop[m] = drop_conflicts or (drop_duplicates and m != kept)
            elif m != kept:
                reason[m] = "exact_duplicate" if sig.digest[m] == sig.digest[kept] else "near_duplicate"
                partner[m] = kept
                drop[m] = drop_duplicates
    outlier_now = is_outlier & ~drop  # an outlier that a duplicate rule already removed keeps that reason
    reason[outlier_now] = "outlier"
    partner[outlier_now] = -1
    drop[outlier_now] = drop_outliers

    flagged = np.flatnonzero(reason != "")
    _, groups = np.unique(cluster[~drop], return_inverse=True)
    cleaned = replace(data.subset(~drop), groups=groups.astype(np.int64))
    report = CleanReport.build(
        data,
        flagged=flagged,
        reasons=reason[flagged].astype(str),
        clusters=cluster[flagged],
        partners=partner[flagged],
        dropped=drop[flagged],
        scores=scores[flagged],
        n_kept=len(cleaned),
        seconds=time.perf_counter() - started,
        settings={
            **asdict(settings),
            "drop_duplicates": drop_duplicates,
            "drop_conflicts": drop_conflicts,
            "drop_outliers": drop_outliers,
            "outlier_threshold": outlier_threshold,
            "candidate_pairs": int(candidates),
            "confirmed_pairs": int(len(i)),
        },
    )
    return cleaned, report


def save_npz(data: CellData, path: str | os.PathLike[str]) -> Path:
    """CellData -> an npz that is itself a SOURCE (images, labels, classes, ids[, groups]); atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "images": data.images,
        "labels": data.labels,
        "classes": np.array(data.classes, dtype=str),
        "ids": np.asarray(data.ids, dtype=str),
    }
    if data.groups is not None:
        arrays["groups"] = data.groups
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def run_clean(
    source: str,
    out_dir: str | os.PathLike[str],
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    strict: bool = False,
    seed: int = 0,
    cache_dir: str | None = None,
    **clean_kwargs: Any,
) -> CleanReport:
    """`cellnet clean SOURCE --out DIR`: load, clean, write DIR/clean.npz and the report (each file atomically)."""
    data = load(source, image_size, strict=strict, seed=seed, cache_dir=cache_dir)
    cleaned, report = clean(data, **clean_kwargs)
    out = Path(out_dir)
    save_npz(cleaned, out / "clean.npz")
    report.source = source
    report.write(out)
    return report
