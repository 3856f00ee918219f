"""The data a search runs on, loaded once by the driver (workers get it through the object store, never re-read).

    data.source --load--> raw --clean--> search data (.groups: near-duplicate clusters) --folds--> k (train, val)
                                 (data.clean: false -> nothing dropped, but the groups are still computed, so near
                                  duplicates never straddle two folds)
    data.test   --load--> test --drop images that duplicate any *raw* search image--> held-out test set
                                 (raw, not cleaned: a duplicate of an image cleaning dropped is still a leak)

    each fold's validation images --class-stratified subsample of search.shift_images--> one shift of the suite
                                 per image (round-robin within each class) --> ShiftedFold, made once per search
                                 and put in the object store: the fold workers score it every epoch
                                 (cv_shifted_accuracy, cv_worst_shift_accuracy, cv_robust_accuracy)

`python -m search.retrain` rebuilds the search data with `load_data` (same config, same result). What the search
ran on is fingerprinted when it starts (`record_fingerprint`: <run_dir>/data.json, the content hash of the cleaned
pixels and labels); `--resume` and `search.retrain` refuse data whose fingerprint differs (`check_fingerprint`): new
files under the same --data folder would re-split the folds under restored trials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellnet.config import ExperimentConfig
from cellnet.data import clean, find_duplicates_between, folds, load
from cellnet.data.dataset import CellData
from cellnet.errors import ConfigError
from cellnet.files import write_json
from cellnet.provenance import data_hash
from search.paths import DATA_FILE, SUMMARY


@dataclass
class ShiftedFold:
    """A fold's shifted validation subset: image i is validation image `index[i]` under shift `names[shift[i]]`."""

    images: np.ndarray
    labels: np.ndarray
    shift: np.ndarray
    names: tuple[str, ...]
    index: np.ndarray

    def accuracy_per_shift(self, predicted: np.ndarray) -> list[float]:
        """Accuracy on each shift's images (NaN for a shift without images)."""
        correct = predicted == self.labels
        return [
            float(correct[self.shift == j].mean()) if (self.shift == j).any() else float("nan")
            for j in range(len(self.names))
        ]


def shifted_validation(
    data: CellData, folds: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...], per_fold: int, seed: int
) -> list[ShiftedFold]:
    """Per fold: `per_fold` shifted validation images, class-stratified, each under one shift of `names` (every shift
    gets a share of every class). With fewer validation images than `per_fold`, they are used again, each time under
    the next shift (an image never twice under the same one while there are shifts left). Deterministic for `seed`;
    the shifts themselves are `cellnet.shifts.apply_shift`."""
    from cellnet.shifts import apply_shift  # torch, albumentations (~3 s): only searches with shifted validation

    out = []
    for i, (_, val) in enumerate(folds):
        rng = np.random.default_rng([seed, i])
        by_class = [rng.permutation(val[data.labels[val] == c]) for c in np.unique(data.labels[val])]
        order = np.array([idx[r] for r in range(max(map(len, by_class))) for idx in by_class if r < len(idx)])
        rounds = -(-per_fold // len(order)) if len(order) else 0  # ceil: how many times each image is shown
        chosen = np.tile(order, rounds)[:per_fold]
        position, size = np.arange(len(chosen)), max(len(order), 1)
        shift = (position % size + position // size) % len(names)  # round r shows image i under shift i + r
        images = np.empty_like(data.images[chosen])
        for j, name in enumerate(names):
            images[shift == j] = apply_shift(name, data.images[chosen[shift == j]], seed)
        out.append(ShiftedFold(images, data.labels[chosen], shift, names, chosen))
    return out


@dataclass
class SearchData:
    """What `load_data` returns: the search data, its folds, the test set and what the leak check dropped from it."""

    data: CellData
    folds: list[tuple[np.ndarray, np.ndarray]]
    test: CellData | None = None
    leaks_dropped: list[str] = field(default_factory=list)  # ids of --test images that duplicate search images
    shifted: list[ShiftedFold] | None = None  # per fold, its shifted validation subset (None: search.shift_images 0)

    def test_summary(self, source: str | None) -> dict[str, object] | None:
        """summary.json's `test` section before any evaluation: the source and the leak check's result."""
        if self.test is None:
            return None
        dropped = {"count": len(self.leaks_dropped), "ids": list(self.leaks_dropped)}
        return {"source": source, "n": len(self.test), "leaks_dropped": dropped}


def _cleaned(cfg: ExperimentConfig, raw: CellData) -> CellData:
    if cfg.data.clean:
        return clean(raw)[0]
    # nothing dropped, but every image gets its near-duplicate group for the grouped folds
    return clean(raw, drop_duplicates=False, drop_conflicts=False, drop_outliers=False)[0]


def load_data(cfg: ExperimentConfig, *, for_search: bool = True) -> SearchData:
    """Search data, its grouped stratified folds, and the --test data with images leaking from the search dropped.
    `for_search=False` (a retrain): no test set and no shifted validation subsets."""
    raw = load(cfg.data.source, cfg.data.image_size)
    data = _cleaned(cfg, raw)
    splits = folds(data.labels, data.groups, cfg.cv.folds, cfg.cv.seed, classes=data.classes)
    if not for_search:
        return SearchData(data, splits)
    shifted = None
    if cfg.search.shift_images > 0:
        from cellnet.shifts import DEFAULT_SUITE, resolve_names  # as in shifted_validation: only when it runs

        names = resolve_names(cfg.search.shift_suite or DEFAULT_SUITE)
        shifted = shifted_validation(data, splits, names, cfg.search.shift_images, cfg.cv.seed)
    if not cfg.data.test:
        return SearchData(data, splits, shifted=shifted)
    test = load(cfg.data.test, cfg.data.image_size)
    leaks = find_duplicates_between(raw, test)
    dropped = [str(test.ids[i]) for i in leaks]
    if len(leaks):
        print(
            f"warning: {len(leaks)} of {len(test)} --test images duplicate search images; dropped from the test "
            f"set (e.g. {', '.join(dropped[:5])})"
        )
        test = test.subset(np.setdiff1d(np.arange(len(test)), leaks))
    return SearchData(data, splits, test, dropped, shifted)


# ---------------------------------------------------------------------------------------------------------------
# The fingerprint of what a search ran on


def fingerprint(data: CellData, source: str) -> dict[str, Any]:
    """What identifies the search data: the content hash of its cleaned pixels and labels (order included), the
    number of images and the classes, and the SOURCE it was read from (for the message, not the comparison)."""
    return {
        "data_hash": data_hash(data.images, data.labels),
        "num_images": len(data),
        "classes": list(data.classes),
        "source": source,
    }


def record_fingerprint(run_dir: Path, data: CellData, source: str) -> dict[str, Any]:
    """Write <run_dir>/data.json when a search starts; returns it."""
    info = fingerprint(data, source)
    write_json(Path(run_dir) / DATA_FILE, info)
    return info


def stored_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """The fingerprint a search recorded: data.json, else (runs from before it existed) summary.json's provenance;
    None when neither is there."""
    run_dir = Path(run_dir)
    if (run_dir / DATA_FILE).is_file():
        return dict(json.loads((run_dir / DATA_FILE).read_text()))
    if (run_dir / SUMMARY).is_file():
        prov = json.loads((run_dir / SUMMARY).read_text()).get("provenance") or {}
        if prov.get("data_hash"):
            return {"data_hash": prov["data_hash"], "num_images": prov.get("num_images"), "source": "summary.json"}
    return None


def check_fingerprint(run_dir: Path, data: CellData, source: str, *, who: str) -> None:
    """Refuse (ConfigError naming both) data other than what the search in `run_dir` ran on; `who` names the command
    in the message. Nothing to compare with (a run directory made by hand) passes."""
    stored = stored_fingerprint(run_dir)
    if stored is None:
        return
    now = fingerprint(data, source)
    if now["data_hash"] != stored["data_hash"]:
        raise ConfigError(
            f"{who}: the data has changed since the search in {run_dir} started: {source} now gives "
            f"{now['num_images']} images (content hash {now['data_hash'][:12]}), the search ran on "
            f"{stored.get('num_images')} images (hash {str(stored['data_hash'])[:12]}, {DATA_FILE}). New or changed "
            "files would re-split the folds under the trials already run. Restore the data the search started with, "
            "or start a new search with --storage DIR"
        )
