"""Class probabilities from a checkpoint: the one inference path of predict, evaluate, export and the search.

uint8 images N×S×S×3 ─ preprocess (resize to image_size / input_size, the checkpoint's mean/std)
  ─ infer: in the checkpoint's precision (`checkpoint_precision`: the one its calibration was fitted in where the
    device has it, else fp32; uncalibrated: bf16 on a CPU with bf16, fp32 elsewhere -- cellnet.precision), logits
    and the identity view's features from one forward pass, as float32; with TTA the 8 dihedral views (flips × 90°
    rotations: blood-cell smears have no up or left, so every one is a valid view) ─ Inference
  ─ predict_batch: the checkpoint's Calibration.apply (temperature, conformal sets, OOD score; the TTA
    calibration for TTA, refused when there is none) ─ Prediction (probs, sets, ood_score, uncertain())
files / folders / npz ─ predict_inputs (decoded in a thread pool while the model runs; an unreadable image is a
  row with an error, not a crash) ─ prediction_table ─ the `cellnet predict` CSV
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cellnet.adapt import Adaptation, adapt, chunk_size, shuffled
from cellnet.calibrate import CalibratedOutput, softmax, uncertain
from cellnet.canonicalize import READ_SCALE, Canonicalization, choose
from cellnet.checks import check_coverage
from cellnet.constants import IMAGE_SUFFIXES
from cellnet.errors import CellnetError, DataError
from cellnet.ood import is_ood
from cellnet.precision import FP32, autocast, inference_precision, supports
from cellnet.progress import progress_bar

if TYPE_CHECKING:
    from cellnet.checkpoint import Checkpoint
    from cellnet.model import CellNet, FoldEnsemble

# (number of 90° rotations, horizontal flip first): the dihedral group D4 of a square image.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))
FILES_GROUP = "image files given one by one"  # the group of the image files among the INPUTs
MOSTLY_FLAGGED = 0.5  # a group with more of its images out of distribution than this gets a hint of what to do


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def preprocess(
    batch: torch.Tensor,
    *,
    image_size: int,
    input_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 (or float 0-255) N×S×S×3 on any device -> float32 N×3×H×W, normalised, resized to image_size then
    input_size.

    Normalisation comes first, as one fused multiply-add over the contiguous NHWC array (x·1/σ − μ/σ, σ and μ
    scaled to 0-255): the cheapest pass, and it commutes with bilinear resizing (weights sum to 1). The result is
    a channels_last view, the fast layout for convolutions.
    """
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=batch.device) * 255.0)
    bias = -torch.tensor(mean, dtype=torch.float32, device=batch.device) * 255.0 * scale
    x = torch.addcmul(bias, batch, scale).permute(0, 3, 1, 2)
    for size in (image_size, input_size):
        if size and x.shape[-1] != size:
            shrink = size < x.shape[-1]  # antialias only matters (and only exports cleanly) when shrinking
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x


@dataclass
class Inference:
    """Raw outputs (float32) of one pass of a checkpoint over N images: `logits` N×C of the identity view (an
    ensemble's: its log mean softmax); with TTA `views` V×N×C, the outputs of all 8 dihedral views (view 0 =
    identity); and the identity view's features when asked (N×D, or k×N×D for a fold ensemble's members), of
    `feature_kind` (`cellnet.constants.FEATURE_KINDS`); `precision`: what the model ran in (a calibration fitted on
    these outputs records it)."""

    logits: np.ndarray
    views: np.ndarray | None = None
    features: np.ndarray | None = None
    feature_kind: str | None = None
    precision: str = FP32

    def all_views(self) -> np.ndarray:
        """V×N×C with TTA, else the N×C logits: what a calibration is applied to (`Calibration.apply`)."""
        return self.views if self.views is not None else self.logits

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """The mean over views of softmax(outputs / temperature), N×C float32."""
        return softmax(self.all_views(), temperature).astype(np.float32)


def preprocessed(checkpoint: Checkpoint, images: np.ndarray, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """`images` in batches as the model takes them: on its device, resized, normalised, channels_last (the fast
    layout on CPU (oneDNN) and GPU alike)."""
    device = _model_device(checkpoint.model)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        x = preprocess(
            chunk,
            image_size=checkpoint.image_size,
            input_size=checkpoint.input_size,
            mean=checkpoint.mean,
            std=checkpoint.std,
        )
        yield x.contiguous(memory_format=torch.channels_last)


def infer(
    checkpoint: Checkpoint,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    tta: bool = False,
    features: bool = False,
    feature_kind: str | None = None,
    precision: str | None = None,
    on_batch: Callable[[int], object] | None = None,
) -> Inference:
    """Run `checkpoint` (model, image_size, input_size, mean, std, classes) over uint8 images N×S×S×3 on the device
    its model is on, in `precision` (default `checkpoint_precision`: what a calibration was fitted in is what it is
    applied to), logits and features from the same forward pass, as float32. With `tta` every image is also seen in
    the 7 other dihedral views.
    The features are of `feature_kind`; default: what the checkpoint's OOD calibration measured, or, without one,
    what a new calibration of this model would (`CellNet.feature_kind`).
    `on_batch(n)` is called after each batch with its size (progress bars)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"expected uint8 images N×S×S×3, got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise CellnetError(f"batch size must be >= 1, got {batch_size}")
    model = checkpoint.model
    model.eval()
    kind = feature_kind or checkpoint_feature_kind(checkpoint)
    precision = precision or checkpoint_precision(checkpoint)
    device = _model_device(model)
    n, c = len(images), len(checkpoint.classes)
    views = DIHEDRAL if tta else DIHEDRAL[:1]
    logits = np.empty((len(views), n, c), dtype=np.float32)
    feats: np.ndarray | None = None
    start = 0
    with torch.inference_mode():
        for x in preprocessed(checkpoint, images, batch_size):
            rows = slice(start, start + len(x))
            for i, (k, flip) in enumerate(views):
                view = _dihedral(x, k, flip)
                if features and i == 0:
                    with autocast(precision, device):
                        out, f = model.forward_with_features(view, kind)
                    f_np = f.float().cpu().numpy()
                    if feats is None:
                        feats = np.empty((*f_np.shape[:-2], n, f_np.shape[-1]), dtype=np.float32)
                    feats[..., rows, :] = f_np
                else:
                    with autocast(precision, device):
                        out = model(view)
                logits[i, rows] = out.float().cpu().numpy()
            start += len(x)
            if on_batch is not None:
                on_batch(len(x))
    return Inference(logits[0], logits if tta else None, feats, kind if features else None, precision)


def checkpoint_precision(checkpoint: Checkpoint) -> str:
    """The precision `infer` runs `checkpoint` in: its calibration's (recorded when it was fitted) where the model's
    device has it, else fp32 (`precision_note` says so); uncalibrated, `cellnet.precision.inference_precision`."""
    device = _model_device(checkpoint.model)
    if checkpoint.calibration is None:
        return inference_precision(device)
    fitted = checkpoint.calibration.precision
    return fitted if supports(fitted, device) else FP32


def precision_note(checkpoint: Checkpoint, where: str = "this checkpoint") -> str | None:
    """One line for `cellnet predict` / `evaluate` when `checkpoint`'s calibration was fitted in a precision its
    device cannot run (None otherwise): it predicts in fp32, a little off what was calibrated."""
    calibration = checkpoint.calibration
    if calibration is None or checkpoint_precision(checkpoint) == calibration.precision:
        return None
    device = _model_device(checkpoint.model)
    return (
        f"note: {where} was calibrated on {calibration.precision} outputs, which this {device.type} cannot compute "
        "natively: predicting in fp32 (the probabilities differ by far less than the calibration's own error, but its "
        "sets and OOD flag were fitted on the other)"
    )


def checkpoint_feature_kind(checkpoint: Checkpoint) -> str:
    """The features `checkpoint`'s OOD statistics were fitted on, or (none) those a new calibration would use."""
    calibration = checkpoint.calibration
    if calibration is not None and calibration.ood is not None:
        return calibration.ood.features
    return str(checkpoint.model.feature_kind)


@dataclass
class Prediction:
    """A checkpoint's answer for N images: probabilities (calibrated when the checkpoint has a calibration), the raw
    `inference`, and what the calibration adds (sets at a coverage, OOD score) -- None for an uncalibrated one;
    `adaptation`: what --adapt did, `canonicalization`: what --canonicalize chose (None without them)."""

    probs: np.ndarray
    inference: Inference
    calibrated: CalibratedOutput | None = None
    adaptation: Adaptation | None = None
    canonicalization: Canonicalization | None = None

    def uncertain(self, min_confidence: float | None = None) -> np.ndarray:
        """The one "uncertain" rule (`cellnet.calibrate.uncertain`) with what this checkpoint can tell."""
        if self.calibrated is not None:
            return self.calibrated.uncertain(min_confidence)
        return uncertain(self.probs, min_confidence=min_confidence)


def predict_batch(
    checkpoint: Checkpoint,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    tta: bool = False,
    coverage: float | None = None,
    adapt: bool = False,
    canonicalize: bool | Canonicalization = False,
    on_batch: Callable[[int], object] | None = None,
) -> Prediction:
    """`infer`, then the checkpoint's calibration (`Calibration.apply`: the temperature, sets and OOD score fitted
    for this way of predicting; TTA on a checkpoint calibrated on single views only is a CalibrationError, raised
    before any work). Features are computed only when the calibration has OOD statistics.

    `canonicalize`: `images` are one group (one lab or scan): its zoom and colour are chosen from them by the
    model's OOD score (`cellnet.canonicalize`; or given, a Canonicalization) and every step after -- TTA, --adapt,
    the sets and the flag -- sees the canonicalized images. `adapt`: the BatchNorm statistics re-estimated on all of
    `images` (`cellnet.adapt`) for the probabilities and sets; the OOD score still comes from the model with its
    training statistics (a foreign batch stays foreign)."""
    calibration = checkpoint.calibration
    if calibration is not None:
        calibration.view(len(DIHEDRAL) if tta else 1)
    choice = None
    if canonicalize is not False:
        choice = canonicalize if isinstance(canonicalize, Canonicalization) else canonical_choice(checkpoint, images)
        images = choice.apply(images)
    with_features = calibration is not None and calibration.ood is not None
    out = infer(checkpoint, images, batch_size=batch_size, tta=tta, features=with_features, on_batch=on_batch)
    adaptation = None
    if adapt:
        out, adaptation = _adapted(checkpoint, images, out, batch_size=batch_size, tta=tta)
    if calibration is None:
        return Prediction(out.probs(), out, adaptation=adaptation, canonicalization=choice)
    calibrated = calibration.apply(out.all_views(), out.features, coverage)
    return Prediction(calibrated.probs, out, calibrated, adaptation, choice)


def check_canonicalizable(checkpoint: Checkpoint, where: str = "this checkpoint") -> None:
    """--canonicalize chooses by the model's OOD score: a checkpoint without one (from `cellnet train`) is refused
    in one line."""
    calibration = checkpoint.calibration
    if calibration is None or calibration.ood is None:
        raise CellnetError(
            f"--canonicalize chooses a group's framing and colour by the model's own OOD score, which {where} does "
            "not have (a `cellnet train` model has no calibration; a search's deployed best/ has one)"
        )


def canonical_choice(checkpoint: Checkpoint, images: np.ndarray, *, batch_size: int = 256) -> Canonicalization:
    """The zoom and colour that bring the group `images` closest to `checkpoint`'s training cells, by the median of
    its OOD score (`cellnet.canonicalize.choose`); without stored colour statistics, the zoom only."""
    check_canonicalizable(checkpoint)
    calibration = checkpoint.calibration
    assert calibration is not None and calibration.ood is not None
    ood = calibration.ood

    def score(x: np.ndarray) -> np.ndarray:
        features = infer(checkpoint, x, batch_size=batch_size, features=True).features
        return ood.score(features)

    return choose(images, score, calibration.colour, size=checkpoint.image_size)


def _adapted(
    checkpoint: Checkpoint, images: np.ndarray, plain: Inference, *, batch_size: int, tta: bool
) -> tuple[Inference, Adaptation]:
    """The outputs of the checkpoint's model with BatchNorm adapted to `images`, with `plain`'s features (training
    statistics); the class-mix guard compares with the calibration's class counts (none: no guard)."""

    def predict(model: CellNet | FoldEnsemble) -> np.ndarray:
        return infer(dataclasses.replace(checkpoint, model=model), images, batch_size=batch_size).probs()

    prior = checkpoint.calibration.conformal.counts if checkpoint.calibration is not None else None
    order, chunk = shuffled(len(images)), chunk_size(len(images), batch_size)
    model, adaptation = adapt(
        checkpoint.model, len(images), lambda: preprocessed(checkpoint, images[order], chunk), predict, prior
    )
    if model is checkpoint.model:
        return plain, adaptation
    out = infer(dataclasses.replace(checkpoint, model=model), images, batch_size=batch_size, tta=tta)
    return Inference(out.logits, out.views, plain.features, plain.feature_kind, out.precision), adaptation


def predict_images(
    checkpoint: Checkpoint,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    tta: bool = False,
    calibrated: bool = True,
    on_batch: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Softmax probabilities (N×C float32) for uint8 images N×S×S×3 — temperature-scaled when the checkpoint holds
    a calibration and `calibrated` (the default), else the model's own softmax."""
    if calibrated:
        return predict_batch(checkpoint, images, batch_size=batch_size, tta=tta, on_batch=on_batch).probs
    return infer(checkpoint, images, batch_size=batch_size, tta=tta, on_batch=on_batch).probs()


# ---------------------------------------------------------------------------------------------------------------
# `cellnet predict`: inputs -> table


@dataclass
class _Source:
    """One row group of the output: image files (decoded lazily) or an in-memory array from an npz/SOURCE."""

    ids: list[str]
    paths: list[Path] | None = None
    images: np.ndarray | None = None
    error: str | None = None
    group: str = FILES_GROUP  # the INPUT it came from: one lab or scan (image files given one by one: one group)


def _looks_like_npz(text: str) -> bool:
    return text.split(":", 1)[0].lower().endswith(".npz")


def expand_inputs(inputs: Sequence[str], image_size: int) -> list[_Source]:
    """Files, folders (image files found recursively) and npz/SOURCE strings -> row groups in the order given.

    An input that cannot be read becomes a one-row group carrying the error.
    """
    from cellnet import data  # heavy imports (imagehash, ...) only when predicting

    sources: list[_Source] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                sources.append(_Source(ids=[str(p) for p in files], paths=files, group=text))
            else:
                sources.append(_Source([text], error=f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder"))
        elif path.is_file() and not _looks_like_npz(text):
            sources.append(_Source(ids=[text], paths=[path]))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            sources.append(_Source([text], error="no such file"))
        else:
            try:
                loaded = data.load(text, image_size=image_size)
            except CellnetError as e:
                sources.append(_Source([text], error=str(e)))
            else:
                sources.append(_Source(ids=[str(i) for i in loaded.ids], images=loaded.images, group=text))
    return sources


def _read(path: Path, image_size: int) -> np.ndarray | str:
    """The decoded image, or the reason it could not be decoded (never raises: one bad file must not stop a run)."""
    from cellnet.data.sources import read_image_file  # cellnet.data only when files are read (export needs none)

    try:
        return read_image_file(path, image_size)
    except CellnetError as e:
        return str(e)
    except Exception as e:  # a decoder crash on a corrupt file is still just a bad row
        return f"{path}: cannot read image ({type(e).__name__}: {e})"


def _decoded_chunks(
    paths: list[Path], image_size: int, chunk: int, pool: ThreadPoolExecutor
) -> Iterator[list[np.ndarray | str]]:
    """Decode `paths` in chunks; the next chunk decodes in the pool while the caller runs the model on this one."""
    starts = list(range(0, len(paths), chunk))

    def submit(start: int) -> list[Future[np.ndarray | str]]:
        return [pool.submit(_read, p, image_size) for p in paths[start : start + chunk]]

    pending = submit(starts[0]) if starts else []
    for i in range(len(starts)):
        following = submit(starts[i + 1]) if i + 1 < len(starts) else []
        yield [f.result() for f in pending]
        pending = following


@dataclass
class PredictedTable:
    """What `predict_inputs` returns: the CSV's rows, per group (one INPUT) what --adapt did and what
    --canonicalize chose, and one line of advice per group that is mostly out of distribution."""

    table: pd.DataFrame
    adaptations: dict[str, Adaptation] = field(default_factory=dict)
    canonicalizations: dict[str, tuple[int, Canonicalization]] = field(default_factory=dict)  # (images, choice)
    hints: list[str] = field(default_factory=list)


def mostly_flagged_hint(group: str, flagged: int, n: int, *, canonicalized: bool) -> str | None:
    """Advice for a group whose images are mostly out of distribution (None when they are not)."""
    if n == 0 or flagged / n <= MOSTLY_FLAGGED:
        return None
    first = "" if canonicalized else "try --canonicalize (framing and colour matched from the images); if they stay "
    first += "flagged, " if not canonicalized else "even canonicalized: "
    return (
        f"hint: {group}: {flagged} of {n} images ({flagged / n:.0%}) are unlike the training cells (ood): {first}"
        "label about ten cells per class of this lab and fine-tune on them: cellnet finetune --checkpoint CHECKPOINT "
        "LABELLED_CELLS --out DIR, then predict with DIR"
    )


def predict_inputs(
    checkpoint: Checkpoint,
    inputs: Sequence[str],
    *,
    batch_size: int = 256,
    tta: bool = False,
    adapt: bool = False,
    canonicalize: bool = False,
    min_confidence: float | None = None,
    coverage: float | None = None,
    workers: int | None = None,
    show_progress: bool | None = None,
) -> PredictedTable:
    """The `cellnet predict` table, in input order: id, predicted, confidence, uncertain, set, set_size, ood_score,
    ood, error, p_<class> per class (see `prediction_table`); with `adapt` or `canonicalize` also `group` (the INPUT
    a row came from), `adapted`, `zoom` and `colour_matched`.

    Rows whose image could not be read have `error` set and empty prediction columns; the rest are still predicted.
    `coverage`: the prediction sets' coverage (default: the checkpoint's); needs a calibrated checkpoint. A group is
    one INPUT (a folder, an npz: one lab or scan; image files given one by one are one group together). With
    `canonicalize` or `adapt` every readable image of a group is decoded first and the group is predicted in one
    call: canonicalized first (`cellnet.canonicalize`, at least 32 images), then its BatchNorm statistics
    re-estimated on all its images (`cellnet.adapt`, at least 64).
    """
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise CellnetError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    if coverage is not None:
        check_coverage(coverage)
    calibration = checkpoint.calibration
    if calibration is not None:
        calibration.view(len(DIHEDRAL) if tta else 1)  # refuse a way of predicting it was not fitted on, up front
    if canonicalize:
        check_canonicalizable(checkpoint)
    classes = list(checkpoint.classes)
    read_size = checkpoint.image_size * (READ_SCALE if canonicalize else 1)  # zoomed before resizing: detail kept
    sources = expand_inputs(inputs, read_size)
    ids = [i for s in sources for i in s.ids]
    probs = np.full((len(ids), len(classes)), np.nan, dtype=np.float32)
    sets = np.zeros((len(ids), len(classes)), dtype=bool) if calibration is not None else None
    ood = np.full(len(ids), np.nan) if calibration is not None and calibration.ood is not None else None
    errors = [""] * len(ids)
    groups = [s.group for s in sources for _ in s.ids]
    out = PredictedTable(pd.DataFrame())

    def run(group: str, rows: np.ndarray, images: np.ndarray) -> None:
        pred = predict_batch(
            checkpoint,
            images,
            batch_size=batch_size,
            tta=tta,
            coverage=coverage,
            adapt=adapt,
            canonicalize=canonicalize,
        )
        probs[rows] = pred.probs
        if pred.adaptation is not None:
            out.adaptations[group] = pred.adaptation
        if pred.canonicalization is not None:
            out.canonicalizations[group] = (len(rows), pred.canonicalization)
        if sets is not None and pred.calibrated is not None:
            sets[rows] = pred.calibrated.sets
        if ood is not None and pred.calibrated is not None and pred.calibrated.ood_score is not None:
            ood[rows] = pred.calibrated.ood_score

    whole_groups = adapt or canonicalize
    held: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # a group's chunks, predicted together at its end
    with progress_bar(len(ids), "predict", "img", enabled=show_progress) as bar:
        chunks = _readable(sources, read_size, max(batch_size, 64), errors, workers, bar.update)
        for group, rows, images in chunks:
            if whole_groups:
                held.setdefault(group, []).append((rows, images))
            else:
                run(group, rows, images)
    for group, parts in held.items():
        run(group, np.concatenate([r for r, _ in parts]), np.concatenate([x for _, x in parts]))
    out.table = prediction_table(ids, probs, errors, classes, min_confidence, sets=sets, ood_score=ood)
    if whole_groups:
        _group_columns(out, groups, errors, adapt=adapt)
    if ood is not None:
        for group in dict.fromkeys(groups):
            mine = np.array([g == group and not e for g, e in zip(groups, errors)], dtype=bool)
            hint = mostly_flagged_hint(
                group, int(is_ood(ood[mine]).sum()), int(mine.sum()), canonicalized=group in out.canonicalizations
            )
            if hint:
                out.hints.append(hint)
    return out


def _group_columns(out: PredictedTable, groups: list[str], errors: list[str], *, adapt: bool) -> None:
    """The per-group columns: the INPUT, whether --adapt changed anything, what --canonicalize chose."""
    table = out.table
    table["group"] = groups
    if adapt:  # no BatchNorm: nothing was adapted, and the column says so
        changed = {g for g, a in out.adaptations.items() if a.layers > 0}
        table["adapted"] = [None if e else g in changed for g, e in zip(groups, errors)]
    if out.canonicalizations:
        choice = {g: c for g, (_, c) in out.canonicalizations.items()}
        table["zoom"] = [None if e or g not in choice else choice[g].zoom for g, e in zip(groups, errors)]
        table["colour_matched"] = [
            None if e or g not in choice else choice[g].colour_matched for g, e in zip(groups, errors)
        ]


def _readable(
    sources: list[_Source],
    image_size: int,
    chunk: int,
    errors: list[str],
    workers: int | None,
    progress: Callable[[int], object],
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(group, row numbers, uint8 images) of every readable image, chunk by chunk in input order; an unreadable
    input's reason goes to `errors` at its row."""
    offset = 0
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for src in sources:
            if src.error is not None:
                errors[offset] = src.error
                progress(1)
            elif src.images is not None:
                yield src.group, np.arange(offset, offset + len(src.ids)), src.images
                progress(len(src.ids))
            elif src.paths is not None:
                row = offset
                for decoded in _decoded_chunks(src.paths, image_size, chunk, pool):
                    good = [j for j, d in enumerate(decoded) if isinstance(d, np.ndarray)]
                    for j, d in enumerate(decoded):
                        if isinstance(d, str):
                            errors[row + j] = d
                    if good:
                        yield src.group, np.array([row + j for j in good]), np.stack([decoded[j] for j in good])
                    progress(len(decoded))
                    row += len(decoded)
            offset += len(src.ids)


def prediction_table(
    ids: Sequence[str],
    probs: np.ndarray,
    errors: Sequence[str],
    classes: Sequence[str],
    min_confidence: float | None = None,
    *,
    sets: np.ndarray | None = None,
    ood_score: np.ndarray | None = None,
) -> pd.DataFrame:
    """Rows of the predictions CSV. Rows with an error keep empty (NaN/None) prediction cells.

    `set` (class names joined by '|') and `set_size` come from `sets`, `ood_score` / `ood` (score > 1) from
    `ood_score`; both empty for an uncalibrated checkpoint. `uncertain` is `cellnet.calibrate.uncertain`: the set is
    not exactly one class, or the image is out of distribution, or confidence < `min_confidence` -- whichever of
    these is available.
    """
    failed = np.array([bool(e) for e in errors], dtype=bool)
    safe = np.where(failed[:, None], 0.0, probs)
    top = safe.argmax(axis=1) if len(ids) else np.zeros(0, dtype=int)
    confidence = np.where(failed, np.nan, safe.max(axis=1) if len(ids) else np.zeros(0))
    unsure = uncertain(safe, sets, ood_score, min_confidence) if len(ids) else np.zeros(0, dtype=bool)
    set_text: list[str | None] = [None] * len(ids)
    set_size = np.full(len(ids), np.nan)
    if sets is not None:
        set_size = np.where(failed, np.nan, sets.sum(axis=1))
        set_text = [
            None if f else "|".join(c for c, inside in zip(classes, row) if inside) for f, row in zip(failed, sets)
        ]
    flagged = np.full(len(ids), np.nan)
    if ood_score is not None:
        flagged = np.where(failed, np.nan, is_ood(ood_score).astype(float))
    table = pd.DataFrame(
        {
            "id": list(ids),
            "predicted": [None if f else classes[t] for f, t in zip(failed, top)],
            "confidence": confidence,
            "uncertain": [None if f else bool(u) for f, u in zip(failed, unsure)],
            "set": set_text,
            "set_size": pd.array([None if np.isnan(v) else int(v) for v in set_size], dtype="Int64"),
            "ood_score": np.where(failed, np.nan, ood_score) if ood_score is not None else np.full(len(ids), np.nan),
            "ood": pd.array([None if np.isnan(v) else bool(v) for v in flagged], dtype="boolean"),
            "error": list(errors),
        }
    )
    for j, name in enumerate(classes):
        table[f"p_{name}"] = np.where(failed, np.nan, probs[:, j])
    return table
