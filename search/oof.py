"""The winner's fold models and their out-of-fold predictions: what every deployment and its calibration start from.

    <run_dir>/train/<trial>/folds/fold_<i>_epoch<best>.safetensors   (written by the fold workers, trainable.py)
      ├─ load_fold_models ─ member i, checked against the model the trial's config builds
      ├─ out_of_fold ─ member i scores validation fold i ─ OutOfFold (every training image once, by the model that
      │                did not train on it: logits, labels, ids, fold, features) ─ save_oof ─ oof.npz
      └─ ensemble ─ FoldEnsemble(members) (mean of softmax)

After the search only the winner's fold files are kept (`prune_fold_files`); every other trial's are deleted.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from cellnet.checkpoint import Checkpoint, in_memory
from cellnet.config import TrainConfig
from cellnet.constants import FP32
from cellnet.data.dataset import CellData
from cellnet.errors import CellnetError, CheckpointError
from cellnet.files import atomic_path
from cellnet.model import CellNet, FoldEnsemble, build_model
from cellnet.predict import infer
from cellnet.weights import check_state_dict
from search.paths import OOF_FILE, TRAIN_DIR
from search.trainable import FOLDS_DIR, fold_model_path

__all__ = [
    "OOF_FILE",
    "OutOfFold",
    "as_checkpoint",
    "ensemble",
    "load_fold_models",
    "out_of_fold",
    "prune_fold_files",
    "save_oof",
    "trial_folds_dir",
]
TTA_IMAGES = 2000  # out-of-fold images the TTA calibration is fitted on (8 inference passes each)
_FOLD_FILE = re.compile(r"^fold_(\d+)_epoch(\d+)\.safetensors$")


@dataclass
class OutOfFold:
    """Every training image scored once, by the fold model that did not train on it (rows in data order)."""

    logits: np.ndarray  # N×C float32, the member's raw outputs
    labels: np.ndarray  # N int64
    ids: np.ndarray  # N str
    fold: np.ndarray  # N int64: which fold model scored the image (= the fold it was validated in)
    features: np.ndarray | None = None  # N×D features of the scoring member (for the OOD score) ...
    feature_kind: str | None = None  # ... of this kind (cellnet.constants.FEATURE_KINDS)
    views: np.ndarray | None = None  # V×M×C outputs under the 8 dihedral views of the images `views_index` names
    views_index: np.ndarray | None = None  # M rows (a random subset of at most TTA_IMAGES): the TTA calibration's
    precision: str = FP32  # what the members ran in (cellnet.precision): the calibration fitted on these records it

    def accuracy(self) -> float:
        return float((self.logits.argmax(axis=1) == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def view_labels(self) -> np.ndarray | None:
        """The labels of the images `views` holds (M, in `views_index` order); None without TTA views."""
        return None if self.views_index is None else self.labels[self.views_index]


def trial_folds_dir(run_dir: Path, trial_id: str) -> Path:
    return Path(run_dir) / TRAIN_DIR / trial_id / FOLDS_DIR


def load_fold_models(config: TrainConfig, folds_dir: Path, k: int, epoch: int, num_classes: int) -> list[CellNet]:
    """The k fold models of a trial at `epoch` (its best epoch), each checked against the model `config` builds.
    A missing or mismatched fold file is a CheckpointError that says which folds are there at which epochs."""
    models = []
    for rank in range(k):
        path = fold_model_path(folds_dir, rank, epoch)
        if not path.is_file():
            present = sorted(p.name for p in folds_dir.glob("fold_*.safetensors")) if folds_dir.is_dir() else []
            raise CheckpointError(
                f"{path}: fold {rank}'s model at the best epoch {epoch} is missing (present: "
                f"{', '.join(present) or 'none'}); the trial's fold models are incomplete"
            )
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        model = build_model(dataclasses.replace(config, pretrained=False, weights_file=None), num_classes)
        check_state_dict(model, state, where=str(path))
        model.load_state_dict(state, strict=True)
        models.append(model.eval())
    return models


def as_checkpoint(model: Any, config: TrainConfig, data: CellData) -> Checkpoint:
    """An in-memory Checkpoint around `model` (for `cellnet.predict.infer`), with the data's classes and size."""
    return in_memory(model, config, data.classes, data.image_size)


def out_of_fold(
    members: list[CellNet],
    config: TrainConfig,
    data: CellData,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    features: bool = False,
    feature_kind: str | None = None,
    tta: bool = False,
    tta_images: int = TTA_IMAGES,
    seed: int = 0,
    batch_size: int = 256,
    precision: str | None = None,
) -> OutOfFold:
    """Member i scores validation fold i; the folds partition the data, so every image is scored exactly once, its
    logits and features (of `feature_kind`; default: `cellnet.predict.infer`'s) from one pass. With `tta` a random
    subset of at most `tta_images` images (seeded) is also scored under all 8 dihedral views: conformal sets need
    exchangeable calibration images, not all of them, and 8 passes over 7,000 images would cost minutes. Every pass
    runs in `precision` (default: `cellnet.predict.infer`'s for the members' device)."""
    if len(members) != len(folds):
        raise ValueError(f"{len(members)} fold models for {len(folds)} folds")
    n, c = len(data), len(data.classes)
    logits = np.full((n, c), np.nan, dtype=np.float32)
    fold = np.full(n, -1, dtype=np.int64)
    feats: np.ndarray | None = None
    kind: str | None = None
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[:tta_images]) if tta else np.zeros(0, dtype=np.int64)
    views = np.full((8, len(chosen), c), np.nan, dtype=np.float32)
    for i, (model, (_, val)) in enumerate(zip(members, folds, strict=True)):
        ckpt = as_checkpoint(model, config, data)
        out = infer(
            ckpt,
            data.images[val],
            batch_size=batch_size,
            features=features,
            feature_kind=feature_kind,
            precision=precision,
        )
        precision = out.precision  # the members' one precision, the default resolved by the first
        logits[val] = out.logits
        fold[val] = i
        if out.features is not None:
            if feats is None:
                feats = np.full((n, out.features.shape[-1]), np.nan, dtype=np.float32)
            feats[val] = out.features
            kind = out.feature_kind
        mine = np.flatnonzero(np.isin(chosen, val))  # positions in `chosen` of this fold's subset
        if len(mine):
            scored = infer(ckpt, data.images[chosen[mine]], batch_size=batch_size, tta=True, precision=precision)
            views[:, mine] = scored.all_views()
    if (fold < 0).any():
        raise ValueError(f"the folds leave {(fold < 0).sum()} images unscored; they must partition the data")
    labels, ids = data.labels.astype(np.int64), np.asarray(data.ids).astype(str)
    tta_views, tta_index = (views, chosen) if tta else (None, None)
    return OutOfFold(logits, labels, ids, fold, feats, kind, tta_views, tta_index, precision or FP32)


def save_oof(path: Path, oof: OutOfFold, classes: tuple[str, ...], trial_id: str, epoch: int) -> Path:
    """oof.npz (atomic; plain arrays, loadable with allow_pickle=False): logits, TTA view logits (`views`, when
    scored), labels, ids, fold, classes, meta. The features are not kept: the fold models are (`prune_fold_files`),
    and `search.retrain` scores them again to calibrate a refit."""
    arrays: dict[str, Any] = {
        "logits": oof.logits,
        **({"views": oof.views, "views_index": oof.views_index} if oof.views is not None else {}),
        "labels": oof.labels,
        "ids": oof.ids.astype(str),
        "fold": oof.fold,
        "classes": np.array(classes, dtype=str),
        "trial_id": np.array(trial_id),
        "epoch": np.array(epoch),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def check_oof_folds(path: Path, ids: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuse, in one line, to calibrate on folds other than those `path` (the search's oof.npz, if there) was scored
    with: `search.retrain` rebuilds the folds from the data and cv.seed, and another split would put a fold model's
    own training images among its "out-of-fold" ones."""
    if not path.is_file():
        return
    with np.load(path, allow_pickle=False) as stored:
        old = dict(zip(stored["ids"].astype(str).tolist(), stored["fold"].tolist()))
    new = {}
    for k, (_, val) in enumerate(folds):
        new.update(dict.fromkeys(np.asarray(ids)[val].astype(str).tolist(), k))
    moved = sum(1 for i, k in new.items() if old.get(i) != k)
    if moved or set(old) != set(new):
        raise CellnetError(
            f"{path}: the folds rebuilt from the data differ from those the search scored ({moved} of {len(new)} "
            f"images in another fold or new, {len(set(old) - set(new))} gone): the data or cv.seed changed, and the "
            "calibration would no longer be out of fold; calibrate on the data the search ran on"
        )


def ensemble(members: list[CellNet]) -> FoldEnsemble:
    return FoldEnsemble(members).eval()


def prune_fold_files(run_dir: Path, keep: str | None, epoch: int | None) -> int:
    """Delete every trial's fold model files except trial `keep`'s at `epoch` (its best epoch). Returns how many
    files were deleted."""
    deleted = 0
    for folds_dir in sorted((Path(run_dir) / TRAIN_DIR).glob(f"*/{FOLDS_DIR}")):
        if folds_dir.parent.name != keep:
            deleted += sum(1 for _ in folds_dir.glob("*.safetensors"))
            shutil.rmtree(folds_dir, ignore_errors=True)
            continue
        for path in folds_dir.glob("*.safetensors"):
            m = _FOLD_FILE.match(path.name)
            if m is None or int(m.group(2)) != epoch:
                path.unlink(missing_ok=True)
                deleted += 1
    return deleted
