"""SOURCE strings -> one CellData. The one grammar every command and config understands.

    file.npz              an npz with `images` + `labels` (optional `classes`, `ids`, `groups`), or a MedMNIST
                          npz (`train_images`, `train_labels`, `val_*`, `test_*`; default splits train+val)
    file.npz:test         MedMNIST splits, joined with `+`: `file.npz:train+val`, `file.npz:train+val+test`
    folder/               one subfolder per class (jpg/png/bmp/tif, any size and mode)
    bloodmnist[:SIZE][:SPLITS]   MedMNIST BloodMNIST, SIZE in 28/64/128/224 (default: smallest >= image_size),
                          read from the cache dir (`$CELLNET_CACHE` or ~/.cache/cellnet), downloaded when missing
    synthetic[:N]         `cellnet.data.synthetic.generate` (SYNTHETIC_DEFAULTS; N images with the same fractions)

Every image comes back as uint8 image_size×image_size×3; bad input raises DataError naming the file/key/index.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cellnet.constants import DEFAULT_IMAGE_SIZE, IMAGE_SUFFIXES, PBC_CLASSES
from cellnet.data.dataset import CellData
from cellnet.data.synthetic import SYNTHETIC_DEFAULTS, generate
from cellnet.errors import DataError

MEDMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_MEDMNIST_SPLITS: tuple[str, ...] = ("train", "val")  # test stays held out unless asked for
BLOODMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)
BLOODMNIST_URL = "https://zenodo.org/records/10519652/files/{name}?download=1"
GRAMMAR = "file.npz, file.npz:train+val, a folder, bloodmnist, bloodmnist:128, synthetic, synthetic:4000"

# Folder names that mean a PBC class (after lower-casing, '-'/' ' -> '_' and a trailing 's' removed).
PBC_ALIASES: dict[str, str] = {
    **{name: name for name in PBC_CLASSES},
    "immature_granulocyte": "ig",
    "immature_granulocytes": "ig",
    "granulocyte_immature": "ig",
    "thrombocyte": "platelet",
    "neutrophile": "neutrophil",
    "eosinophile": "eosinophil",
    "basophile": "basophil",
    "normoblast": "erythroblast",
}

_PROGRESS_FROM = 500  # show a progress bar when decoding at least this many files


@dataclass(frozen=True)
class Source:
    """A parsed SOURCE string: kind is one of npz / folder / bloodmnist / synthetic."""

    kind: str
    path: Path | None = None
    splits: tuple[str, ...] | None = None  # MedMNIST splits; None = the kind's default
    size: int | None = None  # bloodmnist resolution
    n: int | None = None  # synthetic image count


def parse_source(source: str) -> Source:
    """Parse a SOURCE string (no I/O besides checking the path exists). Raises DataError on bad grammar."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"empty data source {source!r}; expected one of: {GRAMMAR}")
    text = source.strip()
    head, _, rest = text.partition(":")
    if head.lower() == "synthetic":
        if not rest:
            return Source("synthetic")
        if not rest.isdigit() or int(rest) < 1:
            raise DataError(f"bad source {text!r}: expected synthetic:N with N a positive image count")
        return Source("synthetic", n=int(rest))
    if head.lower() == "bloodmnist":
        size, splits = None, None
        for part in rest.split(":") if rest else []:
            if part.isdigit():
                if int(part) not in BLOODMNIST_SIZES:
                    raise DataError(
                        f"bad source {text!r}: BloodMNIST size must be one of {BLOODMNIST_SIZES}, got {part}"
                    )
                size = int(part)
            else:
                splits = _parse_splits(part, text)
        return Source("bloodmnist", size=size, splits=splits)
    match = re.fullmatch(r"(.+?\.npz)(?::([^:/\\]*))?", text, flags=re.IGNORECASE)
    if match:
        path = Path(match.group(1)).expanduser()
        splits = _parse_splits(match.group(2), text) if match.group(2) is not None else None
        if not path.is_file():
            raise DataError(f"data file {str(path)!r} does not exist (source {text!r})")
        return Source("npz", path=path, splits=splits)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source("folder", path=path)
    if path.exists():
        raise DataError(f"source {text!r} is a file but not an .npz; expected one of: {GRAMMAR}")
    if ":" in text and not Path(head).exists():
        raise DataError(f"unknown data source {text!r}; expected one of: {GRAMMAR}")
    raise DataError(f"data source {text!r} does not exist (no such file or folder); expected one of: {GRAMMAR}")


def _parse_splits(text: str, source: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split("+"))
    bad = [name for name in names if name not in MEDMNIST_SPLITS]
    if not text or bad:
        raise DataError(
            f"bad split {text!r} in source {source!r}: expected split names from {MEDMNIST_SPLITS} joined by '+'"
        )
    return tuple(dict.fromkeys(names))


def load(
    source: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    strict: bool = False,
    seed: int = 0,
    cache_dir: str | None = None,
) -> CellData:
    """Read SOURCE as one CellData at image_size. strict=True turns skipped unreadable images into an error."""
    if image_size < 8:
        raise DataError(f"image_size must be >= 8 pixels, got {image_size}")
    parsed = parse_source(source)
    loader = LOADERS[parsed.kind]
    return loader(parsed, image_size, strict=strict, seed=seed, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------------------------
# npz files


def _load_npz(src: Source, image_size: int, **_: object) -> CellData:
    assert src.path is not None
    return load_npz(src.path, image_size, splits=src.splits)


def load_npz(path: Path, image_size: int, splits: Sequence[str] | None = None) -> CellData:
    """A plain npz (`images`, `labels`, ...) or a MedMNIST npz (`<split>_images`, `<split>_labels`)."""
    name = path.name
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile / pickle / OS errors all mean the same to a user
        raise DataError(f"cannot read {str(path)!r} as an .npz file: {exc}") from exc
    with archive:
        keys = set(archive.files)
        if "images" in keys:
            if splits is not None:
                raise DataError(
                    f"{str(path)!r} has a single `images` array, no MedMNIST splits; drop the ':{'+'.join(splits)}' "
                    f"suffix (split suffixes need keys like train_images)"
                )
            images = _read_key(archive, "images", path)
            labels = _read_key(archive, "labels", path)
            ids = _read_key(archive, "ids", path).astype(str) if "ids" in keys else None
            if ids is None:
                ids = np.array([f"{name}:{i}" for i in range(len(images))])
            groups = _read_key(archive, "groups", path) if "groups" in keys else None
            classes_raw = _read_key(archive, "classes", path) if "classes" in keys else None
            images, labels = _check_arrays(images, labels, path, "images", "labels")
        elif any(f"{split}_images" in keys for split in MEDMNIST_SPLITS):
            chosen = tuple(splits) if splits is not None else DEFAULT_MEDMNIST_SPLITS
            parts_x, parts_y, parts_id = [], [], []
            for split in chosen:
                if f"{split}_images" not in keys:
                    have = sorted(s for s in MEDMNIST_SPLITS if f"{s}_images" in keys)
                    raise DataError(f"{str(path)!r} has no split {split!r} (key {split}_images); it has {have}")
                x, y = _check_arrays(
                    _read_key(archive, f"{split}_images", path),
                    _read_key(archive, f"{split}_labels", path),
                    path,
                    f"{split}_images",
                    f"{split}_labels",
                )
                parts_x.append(x)
                parts_y.append(y)
                parts_id.append(np.array([f"{name}:{split}/{i}" for i in range(len(x))]))
            images, labels, ids = np.concatenate(parts_x), np.concatenate(parts_y), np.concatenate(parts_id)
            groups = None
            classes_raw = _read_key(archive, "classes", path) if "classes" in keys else None
            if classes_raw is None:  # count classes over every split, so :test and :train agree on them
                top = max(
                    int(np.max(archive[f"{s}_labels"], initial=0)) for s in MEDMNIST_SPLITS if f"{s}_labels" in keys
                )
                classes_raw = np.array(
                    PBC_CLASSES if top + 1 == len(PBC_CLASSES) else [f"class_{i}" for i in range(top + 1)]
                )
        else:
            raise DataError(
                f"{str(path)!r} has keys {sorted(keys)}; expected `images` + `labels` or MedMNIST "
                f"`train_images`/`train_labels` (and val_/test_)"
            )
    classes = _classes_for(classes_raw, labels, path)
    if len(ids) != len(images):
        raise DataError(f"{str(path)!r}: `ids` has {len(ids)} entries but `images` has {len(images)}")
    if groups is not None:
        if groups.shape != (len(images),) or not np.issubdtype(groups.dtype, np.integer):
            raise DataError(f"{str(path)!r}: `groups` must be an integer array of length {len(images)}")
        groups = groups.astype(np.int64)
    return CellData(
        images=resize_images(images, image_size),
        labels=labels,
        classes=classes,
        ids=ids,
        groups=groups,
    )


def _read_key(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in archive.files:
        raise DataError(f"{str(path)!r} has no key {key!r} (keys: {sorted(archive.files)})")
    try:
        return np.asarray(archive[key])
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise DataError(f"{str(path)!r}: key {key!r} cannot be read without pickle ({exc})") from exc


def _check_arrays(images: np.ndarray, labels: np.ndarray, path: Path, ikey: str, lkey: str) -> tuple[np.ndarray, ...]:
    """uint8 N×H×W×3 images (grayscale N×H×W or N×H×W×1 and RGBA accepted) and int64 labels of the same length."""
    where = f"{str(path)!r} key {ikey!r}"
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels, got dtype {images.dtype}")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise DataError(f"{where}: expected shape N×H×W×3 (or N×H×W grayscale), got {images.shape}")
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    elif images.shape[3] == 4:
        images = images[..., :3]
    if len(images) == 0:
        raise DataError(f"{where}: no images (shape {images.shape})")
    labels = _check_labels(labels, f"{str(path)!r} key {lkey!r}")
    if len(labels) != len(images):
        raise DataError(f"{str(path)!r}: {lkey!r} has {len(labels)} labels but {ikey!r} has {len(images)} images")
    return np.ascontiguousarray(images), labels


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: expected labels of shape N or N×1, got {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if len(bad):
            raise DataError(f"{where}: labels must be integers, index {bad[0]} is {labels[bad[0]].item()!r}")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        raise DataError(f"{where}: label at index {negative[0]} is {labels[negative[0]]}, expected >= 0")
    return labels


def _classes_for(classes_raw: np.ndarray | None, labels: np.ndarray, path: Path) -> tuple[str, ...]:
    """The file's `classes`, else PBC_CLASSES when labels span exactly 8 classes (BloodMNIST), else class_<i>."""
    if classes_raw is not None:
        classes = tuple(str(c) for c in np.asarray(classes_raw).ravel())
        if len(set(classes)) != len(classes) or not classes:
            raise DataError(f"{str(path)!r}: `classes` must be distinct names, got {list(classes)}")
    else:
        k = int(labels.max()) + 1
        classes = PBC_CLASSES if k == len(PBC_CLASSES) else tuple(f"class_{i}" for i in range(k))
    out_of_range = np.flatnonzero(labels >= len(classes))
    if len(out_of_range):
        i = out_of_range[0]
        raise DataError(
            f"{str(path)!r}: label at index {i} is {labels[i]}, expected 0..{len(classes) - 1} ({len(classes)} classes)"
        )
    return classes


# ---------------------------------------------------------------------------------------------------------------
# pixels


def to_rgb_square(image: Image.Image, image_size: int) -> np.ndarray:
    """Any PIL image -> uint8 image_size×image_size×3 (RGB conversion, bilinear resize with antialiasing)."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGBA").convert("RGB") if "A" in image.getbands() else image.convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """N×H×W×3 uint8 -> N×S×S×3; a no-op (same array) when already that size."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = to_rgb_square(Image.fromarray(images[i]), image_size)

    _parallel(one, range(len(images)), desc="resizing")
    return out


def read_image_file(path: str | os.PathLike[str], image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """One image file -> uint8 image_size×image_size×3 (what training saw for the same file). Raises DataError."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image_size, image_size))  # JPEG: decode at the smallest scale >= image_size
            return to_rgb_square(image, image_size)
    except FileNotFoundError as exc:
        raise DataError(f"image file {str(path)!r} does not exist") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from exc


def _parallel(fn: Callable[[int], object], items: range, desc: str) -> list[object]:
    """fn over items on threads (PIL releases the GIL while decoding/resizing), with a bar for big jobs."""
    workers = min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(fn, items, chunksize=32)
        return list(tqdm(it, total=len(items), desc=desc, disable=len(items) < _PROGRESS_FROM, leave=False))


# ---------------------------------------------------------------------------------------------------------------
# image folders


def canonical_class_name(name: str) -> str | None:
    """The PBC class a folder name means ('Immature granulocytes' -> 'ig'), or None."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if key in PBC_ALIASES:
        return PBC_ALIASES[key]
    return PBC_ALIASES.get(key[:-1]) if key.endswith("s") else None


def folder_classes(names: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """(folder names in label order, class names): PBC order and names when every folder is a PBC class."""
    canon = [canonical_class_name(n) for n in names]
    if all(c is not None for c in canon) and len(set(canon)) == len(canon):
        pairs = sorted(zip(names, canon), key=lambda p: PBC_CLASSES.index(str(p[1])))
        return [p[0] for p in pairs], tuple(str(p[1]) for p in pairs)
    ordered = sorted(names)
    return ordered, tuple(ordered)


def _load_folder(src: Source, image_size: int, *, strict: bool = False, **_: object) -> CellData:
    assert src.path is not None
    return load_folder(src.path, image_size, strict=strict)


def load_folder(root: Path, image_size: int, strict: bool = False) -> CellData:
    """One subfolder per class; ids are file paths relative to root (posix)."""
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not subdirs:
        raise DataError(
            f"folder {str(root)!r} has no class subfolders; expected one subfolder of images per class"
            + (f" (found {len(stray)} images directly inside it)" if stray else "")
        )
    order, classes = folder_classes([p.name for p in subdirs])
    files: list[Path] = []
    labels: list[int] = []
    ignored: list[str] = [f"{name} (not in a class subfolder)" for name in stray]
    for label, dirname in enumerate(order):
        members = sorted(p for p in (root / dirname).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in members if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += [
            f"{p.relative_to(root).as_posix()} (suffix not in {IMAGE_SUFFIXES})" for p in members if p not in images
        ]
        if not images:
            raise DataError(
                f"class folder {str(root / dirname)!r} has no images (expected files ending in {IMAGE_SUFFIXES})"
            )
        files += images
        labels += [label] * len(images)
    if ignored:
        warnings.warn(_listing(f"ignored {len(ignored)} non-image files in {str(root)!r}", ignored), stacklevel=3)

    out = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    errors: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            out[i] = read_image_file(files[i], image_size)
        except DataError as exc:
            errors[i] = str(exc)

    _parallel(one, range(len(files)), desc=f"reading {root.name}")
    if errors:
        bad = [f"{files[i].relative_to(root).as_posix()}: {errors[i]}" for i in sorted(errors)]
        message = _listing(f"{len(bad)} unreadable images in {str(root)!r}", bad)
        if strict:
            raise DataError(message)
        warnings.warn(message + " (skipped; strict=True makes this an error)", stacklevel=3)
    keep = np.array([i not in errors for i in range(len(files))], dtype=bool)
    if not keep.any():
        raise DataError(f"no readable images in {str(root)!r}")
    ids = np.array([p.relative_to(root).as_posix() for p in files])
    return CellData(images=out[keep], labels=np.asarray(labels, dtype=np.int64)[keep], classes=classes, ids=ids[keep])


def _listing(head: str, items: Sequence[str], limit: int = 20) -> str:
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return head + ":\n  " + "\n  ".join(items[:limit]) + more


# ---------------------------------------------------------------------------------------------------------------
# BloodMNIST and synthetic


def cache_directory(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where downloaded datasets live: cache_dir, else $CELLNET_CACHE, else ~/.cache/cellnet."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("CELLNET_CACHE") or Path.home() / ".cache" / "cellnet").expanduser()


def bloodmnist_file_name(size: int) -> str:
    """MedMNIST's own file names: bloodmnist.npz (28 px), bloodmnist_<size>.npz otherwise."""
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


def _load_bloodmnist(src: Source, image_size: int, *, cache_dir: str | None = None, **_: object) -> CellData:
    size = src.size or next((s for s in BLOODMNIST_SIZES if s >= image_size), BLOODMNIST_SIZES[-1])
    directory = cache_directory(cache_dir)
    path = directory / bloodmnist_file_name(size)
    if not path.is_file():
        _download_bloodmnist(size, directory, path)
    return load_npz(path, image_size, splits=src.splits)


def _download_bloodmnist(size: int, directory: Path, path: Path) -> None:
    """Fetch through the medmnist package; any failure says exactly how to put the file in place by hand."""
    manual = (
        f"download {BLOODMNIST_URL.format(name=path.name)} and save it as {str(path)!r} "
        f"(or set $CELLNET_CACHE to the folder that holds {path.name})"
    )
    try:
        import medmnist  # optional extra: pip install 'cellnet[medmnist]'
    except ImportError as exc:
        raise DataError(
            f"BloodMNIST ({size} px) is not in the cache ({str(path)!r}) and the medmnist package is not installed: "
            f"pip install 'cellnet[medmnist]' (needs network), or {manual}"
        ) from exc
    try:
        directory.mkdir(parents=True, exist_ok=True)
        medmnist.BloodMNIST(split="train", download=True, size=size, root=str(directory))
    except Exception as exc:  # network errors come in many types; the remedy is the same
        raise DataError(f"could not download BloodMNIST ({size} px) into {str(directory)!r} ({exc}); {manual}") from exc
    if not path.is_file():
        raise DataError(f"medmnist reported success but {str(path)!r} is missing; {manual}")


def _load_synthetic(src: Source, image_size: int, *, seed: int = 0, **_: object) -> CellData:
    kwargs = dict(SYNTHETIC_DEFAULTS)
    if src.n is not None:
        kwargs["n"] = src.n
    kwargs["image_size"] = image_size
    kwargs["seed"] = seed
    return generate(**kwargs)  # type: ignore[arg-type]


# The menu of source kinds: parse_source decides the kind, this table says who reads it.
LOADERS: dict[str, Callable[..., CellData]] = {
    "npz": _load_npz,
    "folder": _load_folder,
    "bloodmnist": _load_bloodmnist,
    "synthetic": _load_synthetic,
}
