"""`cellnet finetune --checkpoint CK LABELLED --out DIR`: a deployed model meets a new lab with a few labelled cells.

    CK (one model) + LABELLED (any SOURCE: ~10 cells per class of the new lab)
      ─ classes matched by name to CK's; the output layer keeps every class (a class without cells is named)
      ─ [--canonicalize: the lab's zoom and colour chosen on the labelled cells, by CK's OOD score, and applied]
      ─ a short schedule sized by the cells (`schedule`), all layers, CK's own augmentation, from CK's weights
        (`train.init_checkpoint`, cellnet.parent)
      ─ cross-fitting: k stratified folds over the cells -> k fine-tuned models -> every cell's out-of-fold logits
        and features -> temperature, conformal scores pooled over the classes (marginal: see ConformalScores), the
        new lab's OOD statistics (their threshold transferred to the final model as a search's refit's is)
      ─ the final model: fine-tuned on all the cells; its framing check (its 1% budget judged on the fold models'
        out-of-fold cells: cells the final model trained on read more typical than the rest of the lab) and the
        lab's colour statistics
      ─ DIR: a normal calibrated checkpoint (predict, evaluate, export), CK's weights hash in its provenance

What it promises: with n cells of a class, no class-conditional 95% set can ever leave that class out below
n = 19 (its smallest p-value is 1 / (n + 1)), so the sets are marginal: over cells like the labelled ones, the
true class is in the set 95% of the time on average over classes, not for each class. The checkpoint's notes say
so, and which classes had no cells.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from cellnet import __version__
from cellnet.calibrate import Calibration, fit_conformal, fit_temperature, softmax
from cellnet.canonicalize import Canonicalization
from cellnet.checkpoint import Checkpoint, in_memory, save_checkpoint
from cellnet.colour import colour_stats
from cellnet.config import TrainConfig
from cellnet.constants import AUTO, FRAMING_ZOOMS
from cellnet.data.dataset import CellData
from cellnet.errors import DataError
from cellnet.evaluate import labels_for
from cellnet.model import CellNet
from cellnet.ood import OODDetector, fit_ood_transferred, framing_budget_on, with_framing
from cellnet.parent import load_parent
from cellnet.precision import inference_precision
from cellnet.predict import canonical_choice, infer
from cellnet.progress import progress_bar
from cellnet.shifts import zoomed_copies
from cellnet.train import fit

FOLDS = 5  # cross-fitting folds (fewer when a class has fewer cells)
BATCH = 16  # a few dozen cells: small batches, several steps per epoch
STEPS_PER_CELL = 2  # the schedule: this many optimisation steps per labelled cell ...
MIN_STEPS, MAX_STEPS = 60, 200  # ... within these bounds
LR = 1e-3  # all layers from the deployed model's weights (a search starts ImageNet weights at 1e-3 to 5e-3)
FALSE_ALARM = 0.05  # the OOD threshold's false-alarm rate, as a search's deployments


@dataclass(frozen=True)
class Schedule:
    """How long a fine-tune runs: `epochs` of `batch` cells, about `steps` optimisation steps."""

    epochs: int
    batch: int
    steps: int


def schedule(n: int, steps_per_cell: float = STEPS_PER_CELL) -> Schedule:
    """`steps_per_cell` steps per cell within [MIN_STEPS, MAX_STEPS], at batches of BATCH (fewer cells: one batch
    of all but one, so no batch is a single cell)."""
    batch = min(BATCH, max(2, n - 1))
    per_epoch = max(1, n // batch)
    steps = min(MAX_STEPS, max(MIN_STEPS, round(steps_per_cell * n)))
    return Schedule(math.ceil(steps / per_epoch), batch, steps)


@dataclass
class Finetuned:
    """What `finetune` did: the checkpoint, the cells per class, the folds, the notes it carries, seconds."""

    path: Path
    counts: dict[str, int]
    folds: int
    oof_accuracy: float
    notes: tuple[str, ...]
    seconds: float
    canonicalization: Canonicalization | None = None


def finetune(
    checkpoint: str | Path,
    cells: CellData,
    out_dir: str | Path,
    *,
    canonicalize: bool = False,
    seed: int = 0,
    coverage: float = 0.95,
    device: str = "cpu",
    source: str = "labelled cells",
    show_progress: bool | None = None,
    lr: float = LR,
    steps_per_cell: float = STEPS_PER_CELL,
) -> Finetuned:
    """Fine-tune the single-model checkpoint at `checkpoint` on `cells` (labelled by name with some of its classes)
    and write a calibrated checkpoint to `out_dir` (the module doc says how). `canonicalize`: `cells` are one group
    read at READ_SCALE x the checkpoint's image size, canonicalized first. `lr`, `steps_per_cell`: the schedule
    (their defaults were chosen on the development lab, bench/bench_new_lab.py --design)."""
    started = time.perf_counter()
    parent = load_parent(checkpoint, where="--checkpoint")
    labels = labels_for(cells, parent.classes, source)
    choice = None
    images = cells.images
    if canonicalize:
        choice = canonical_choice(parent, images)
        images = choice.apply(images)
    data = CellData(images, labels, parent.classes, cells.ids)
    counts = np.bincount(labels, minlength=len(parent.classes))
    present = np.flatnonzero(counts)
    k = min(FOLDS, int(counts[present].min()))
    if len(present) < 2 or k < 2:
        raise DataError(
            f"{source}: finetune needs at least 2 classes with at least 2 cells each, got "
            f"{ {parent.classes[c]: int(counts[c]) for c in present} }"
        )
    plan = schedule(len(data), steps_per_cell)
    config = replace(
        parent.config,
        init_checkpoint=str(Path(checkpoint).resolve()),
        epochs=plan.epochs,
        batch_size=plan.batch,
        lr=lr,
        warmup_epochs=0,
        freeze_epochs=0,
        early_stopping_patience=0,
        low_res_epochs=0,  # a search's cheap early epochs: not for a few cells
        seed=seed,
        device=device,
        precision=AUTO,  # decided on this machine (once, for every fold and the final model), not the parent's
    )
    splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))
    with progress_bar((k + 1) * plan.epochs, "finetune", "epoch", enabled=show_progress) as bar:

        def tick(metrics: dict[str, float], trainer: Any) -> None:
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", refresh=False)
            bar.update(1)

        members = [fit(config, data.subset(tr), None, early_stopping=False, on_epoch=tick).model for tr, _ in splits]
        final = fit(config, data, None, early_stopping=False, on_epoch=tick)
    calibration, oof_accuracy = cross_fitted_calibration(parent, final.model, members, splits, data, config, coverage)
    notes = promise_notes(parent, counts, k, choice)
    calibration = dataclasses.replace(calibration, notes=(*calibration.notes, *notes))
    provenance = {
        "finetuned_from": str(Path(checkpoint).resolve()),
        "parent_weights_sha256": parent.meta["weights_sha256"],
        "parent_provenance": parent.meta.get("provenance"),
        "data_source": source,
        "cells": int(len(data)),
        "seed": seed,
        "cellnet_version": __version__,
        "canonicalization": None if choice is None else {"zoom": choice.zoom, "colour_matched": choice.colour_matched},
    }
    path = save_checkpoint(
        out_dir,
        final.model,
        config=replace(config, init_checkpoint=None),  # the weights are complete: no need of the parent to load
        classes=parent.classes,
        image_size=parent.image_size,
        mean=final.mean,
        std=final.std,
        metrics={"oof_accuracy": oof_accuracy, "cells": int(len(data)), "folds": k, "schedule": plan.__dict__},
        provenance=provenance,
        calibration=calibration,
    )
    seconds = time.perf_counter() - started
    named = {parent.classes[c]: int(counts[c]) for c in range(len(counts))}
    return Finetuned(path, named, k, oof_accuracy, calibration.notes, seconds, choice)


def cross_fitted_calibration(
    parent: Checkpoint,
    final: CellNet,
    members: list[CellNet],
    splits: list[tuple[np.ndarray, np.ndarray]],
    data: CellData,
    config: TrainConfig,
    coverage: float,
) -> tuple[Calibration, float]:
    """Temperature and pooled conformal scores from the out-of-fold logits of `members`; the new lab's OOD
    statistics (classes with cells only) with the threshold transferred to `final`, its framing check, the lab's
    colour. Returns (calibration, out-of-fold accuracy)."""
    n, c = len(data), len(data.classes)
    kind = final.feature_kind
    precision = inference_precision(next(final.parameters()).device)  # every pass below, recorded in the calibration

    def outputs(model: CellNet, images: np.ndarray) -> Any:
        ckpt = in_memory(model, config, data.classes, data.image_size)
        return infer(ckpt, images, features=True, feature_kind=kind, precision=precision)

    logits = np.empty((n, c), dtype=np.float32)
    features: np.ndarray | None = None
    per_fold = []
    present = np.flatnonzero(np.bincount(data.labels, minlength=c))
    lab = np.searchsorted(present, data.labels)  # the OOD statistics have a centre per class with cells only
    for model, (train, val) in zip(members, splits, strict=True):
        out = outputs(model, data.images[val])
        logits[val] = out.logits
        if features is None:
            features = np.empty((n, out.features.shape[1]), dtype=np.float32)
        features[val] = out.features
        per_fold.append((outputs(model, data.images[train]).features, lab[train], out.features))
    assert features is not None
    temperature = fit_temperature(logits, data.labels)
    conformal = fit_conformal(softmax(logits, temperature), data.labels, c, mondrian=False)
    seen = outputs(final, data.images).features
    stats, threshold = fit_ood_transferred(seen, lab, len(present), per_fold, FALSE_ALARM, seed=config.seed)
    detector = OODDetector((stats,), (threshold,), FALSE_ALARM, kind, "transferred")
    zoomed = np.stack([outputs(final, z).features for z in zoomed_copies(data.images, FRAMING_ZOOMS)])
    detector = with_framing(detector, [seen], [zoomed], FRAMING_ZOOMS)
    detector = framing_budget_on(detector, [features])  # its 1% judged on cells their (fold) model never saw
    colour = colour_stats(data.images)
    calibration = Calibration(temperature, coverage, conformal, detector, colour=colour, precision=precision)
    return calibration, float((logits.argmax(axis=1) == data.labels).mean())


def promise_notes(
    parent: Checkpoint, counts: np.ndarray, folds: int, choice: Canonicalization | None
) -> tuple[str, ...]:
    """What the fine-tuned checkpoint promises, said where predict and evaluate show it."""
    have = {parent.classes[i]: int(q) for i, q in enumerate(counts) if q}
    notes = [
        f"fine-tuned from {parent.path} on {int(counts.sum())} labelled cells ({have}), calibrated by {folds}-fold "
        "cross-fitting on the same cells: the prediction sets are pooled over the classes (marginal), so their "
        "coverage holds on average over classes, not for each class (a class with n cells cannot be promised more "
        "finely than n / (n + 1)); the OOD statistics describe this lab's cells"
    ]
    missing = [name for name, q in zip(parent.classes, counts) if not q]
    if missing:
        notes.append(
            f"no labelled cells of {missing}: the output layer keeps them, but nothing of this lab taught or "
            "calibrated them"
        )
    if choice is not None and not choice.identity:
        notes.append(
            f"fine-tuned on canonicalized cells (zoom {choice.zoom:g}, colour "
            f"{'matched' if choice.colour_matched else 'as it was'}): predict this lab's cells with --canonicalize"
        )
    return tuple(notes)


def describe(result: Finetuned) -> list[str]:
    """Lines for the user: what it was trained on, how well the folds read the cells, where it went."""
    lines = [
        f"fine-tuned on {sum(result.counts.values())} cells ({ {k: v for k, v in result.counts.items() if v} }) in "
        f"{result.seconds:.0f} s: out-of-fold accuracy {result.oof_accuracy:.3f} ({result.folds} folds)",
    ]
    missing = [k for k, v in result.counts.items() if not v]
    if missing:
        lines.append(f"note: no labelled cells of {', '.join(missing)}: kept in the output layer, untaught here")
    lines.append(f"checkpoint: {result.path}")
    return lines
