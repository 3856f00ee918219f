"""`cellnet evaluate`: how good a checkpoint is on labelled data, and how well it holds up under distribution shift.

Outputs in REPORT_DIR (each file written atomically): metrics.json (everything below, machine-readable),
classification_report.csv (per-class precision/recall/F1/support + macro/weighted averages), confusion_matrix.csv and
.png (counts, colours row-normalised), reliability.png (calibration: accuracy vs confidence per bin, with ECE) and
predictions.csv. `shifted=True` repeats it on a heavily augmented copy of the data under REPORT_DIR/shifted/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix

from cellnet.data.dataset import CellData
from cellnet.errors import DataError
from cellnet.predict import predict_images, prediction_table

ECE_BINS = 15
SHIFT_SEED = 0
SHIFT_DESCRIPTION = (
    "albumentations, every image: HueSaturationValue(hue 20, sat 40, val 30), RandomBrightnessContrast(0.3, 0.3), "
    "Affine(rotate ±180°, scale 0.75-1.25, reflect); p=0.5 each: RandomGamma(70-140), GaussianBlur(3-7 px, "
    "sigma 0.5-2), GaussNoise(std 0.02-0.08)"
)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed onto it only if the block finishes: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def labels_for(data: CellData, classes: tuple[str, ...] | list[str], where: str = "data") -> np.ndarray:
    """`data.labels` re-indexed to `classes` (the checkpoint's order), matching class names, not positions."""
    unknown = [c for c in data.classes if c not in classes]
    if unknown:
        raise DataError(
            f"{where}: classes {unknown} are not among the checkpoint's classes {list(classes)}; "
            "evaluate needs data labelled with the classes the model was trained on"
        )
    mapping = np.array([list(classes).index(c) for c in data.classes], dtype=np.int64)
    return mapping[data.labels]


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE over `bins` equal-width confidence bins, plus the per-bin table a reliability diagram draws."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / count
        conf = np.bincount(which, weights=confidence.astype(np.float64), minlength=bins) / count
    gaps = np.where(count > 0, np.abs(acc - conf), 0.0)
    ece = float((gaps * count).sum() / max(len(confidence), 1))
    return {"ece": ece, "edges": edges.tolist(), "count": count.tolist(), "accuracy": acc, "confidence": conf}


def report(y_true: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1, confusion matrix and calibration for one prediction set."""
    names = list(classes)
    labels = np.arange(len(names))
    y_pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    table = classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0)
    per_class = pd.DataFrame(
        [{"class": k, **{m: table[k][m] for m in ("precision", "recall", "f1-score", "support")}} for k in names]
        + [
            {"class": avg, **{m: table[avg][m] for m in ("precision", "recall", "f1-score", "support")}}
            for avg in ("macro avg", "weighted avg")
        ]
    ).rename(columns={"f1-score": "f1"})
    per_class["support"] = per_class["support"].astype(int)
    calibration = expected_calibration_error(confidence, y_pred == y_true)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_precision": float(table["macro avg"]["precision"]),
        "macro_recall": float(table["macro avg"]["recall"]),
        "macro_f1": float(table["macro avg"]["f1-score"]),
        "weighted_precision": float(table["weighted avg"]["precision"]),
        "weighted_recall": float(table["weighted avg"]["recall"]),
        "weighted_f1": float(table["weighted avg"]["f1-score"]),
        "ece": calibration["ece"],
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
        "calibration": calibration,
        "text": classification_report(y_true, y_pred, labels=labels, target_names=names, zero_division=0, digits=3),
    }


SUMMARY_KEYS = (
    "n",
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "ece",
)


def _json_ready(rep: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: rep[k] for k in SUMMARY_KEYS}
    out["per_class"] = {
        row["class"]: {
            "precision": row["precision"],
            "recall": row["recall"],
            "f1": row["f1"],
            "support": row["support"],
        }
        for row in rep["per_class"].to_dict("records")
        if row["class"] in classes
    }
    out["confusion_matrix"] = rep["confusion"].tolist()
    cal = rep["calibration"]
    out["calibration_bins"] = {
        "edges": cal["edges"],
        "count": cal["count"],
        "accuracy": [None if np.isnan(v) else float(v) for v in cal["accuracy"]],
        "confidence": [None if np.isnan(v) else float(v) for v in cal["confidence"]],
    }
    return out


# ---------------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no global pyplot state, works headless)


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Counts in the cells, colour = row-normalised rate (recall per true class), class names on both axes."""
    from matplotlib.figure import Figure

    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = 1.0 + 0.6 * len(classes)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if rate[i, j] > 0.5 else "black")
    _save_figure(fig, path)


def plot_reliability(calibration: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy per confidence bin against the diagonal (perfect calibration), bin counts underneath."""
    from matplotlib.figure import Figure

    edges = np.asarray(calibration["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.nan_to_num(np.asarray(calibration["accuracy"], dtype=float))
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centers, acc, width=width * 0.95, color="tab:blue", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title}  (ECE = {calibration['ece']:.3f})")
    top.legend(loc="upper left")
    bottom.bar(centers, calibration["count"], width=width * 0.95, color="gray")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Distribution shift


def shift_transform(seed: int = SHIFT_SEED) -> Any:
    """A deliberately strong, seeded shift: another lab's stain and scanner (colour, contrast, blur, noise) and
    arbitrary orientation and magnification. Stronger than training augmentation at aug_strength=1."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=40, val_shift_limit=30, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=1.0),
            A.RandomGamma(gamma_limit=(70, 140), p=0.5),
            A.Affine(rotate=(-180, 180), scale=(0.75, 1.25), border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.5, 2.0), p=0.5),
            A.GaussNoise(std_range=(0.02, 0.08), p=0.5),
        ],
        seed=seed,
    )


def shifted_copy(data: CellData, seed: int = SHIFT_SEED) -> CellData:
    """`data` with every image passed through `shift_transform(seed)` (same seed -> same pixels)."""
    from dataclasses import replace

    transform = shift_transform(seed)
    images = np.stack([transform(image=img)["image"] for img in data.images]) if len(data) else data.images
    return replace(data, images=np.ascontiguousarray(images, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# The command


def write_report(
    rep: dict[str, Any],
    ids: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    out_dir: Path,
    title: str,
) -> None:
    """All files of one evaluation into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "classification_report.csv") as tmp:
        rep["per_class"].to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_dir / "confusion_matrix.csv") as tmp:
        pd.DataFrame(rep["confusion"], index=pd.Index(classes, name="true"), columns=classes).to_csv(tmp)
    preds = prediction_table([str(i) for i in ids], probs, [""] * len(ids), classes)
    preds.insert(1, "label", [classes[t] for t in y_true])
    preds = preds.drop(columns=["uncertain", "error"])
    with atomic_path(out_dir / "predictions.csv") as tmp:
        preds.to_csv(tmp, index=False, float_format="%.6f")
    plot_confusion(rep["confusion"], classes, out_dir / "confusion_matrix.png", f"confusion matrix — {title}")
    plot_reliability(rep["calibration"], out_dir / "reliability.png", f"reliability — {title}")


def evaluate(
    checkpoint: Any,
    data: CellData,
    out_dir: str | Path,
    *,
    tta: bool = False,
    shifted: bool = False,
    batch_size: int = 256,
    seed: int = SHIFT_SEED,
    where: str = "data",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `checkpoint` on `data`, write the report files into `out_dir`, return the metrics.json content.

    `data` must be at the checkpoint's image_size or is resized by `predict_images`; classes are matched by name.
    """
    out_dir = Path(out_dir)
    classes = list(checkpoint.classes)
    y_true = labels_for(data, checkpoint.classes, where)
    runs = {"clean": data}
    if shifted:
        runs["shifted"] = shifted_copy(data, seed)
    metrics: dict[str, Any] = {
        **(extra or {}),
        "classes": classes,
        "tta": tta,
        "shift": {"seed": seed, "transform": SHIFT_DESCRIPTION} if shifted else None,
    }
    texts: dict[str, str] = {}
    for name, d in runs.items():
        probs = predict_images(checkpoint, d.images, batch_size=batch_size, tta=tta)
        rep = report(y_true, probs, classes)
        write_report(rep, d.ids, y_true, probs, classes, out_dir if name == "clean" else out_dir / name, name)
        metrics[name] = _json_ready(rep, classes)
        texts[name] = rep["text"]
    metrics["text"] = texts
    write_text(out_dir / "metrics.json", json.dumps({k: v for k, v in metrics.items() if k != "text"}, indent=2) + "\n")
    return metrics


def summary_table(metrics: dict[str, Any]) -> str:
    """A side-by-side text table of the headline metrics (clean, and shifted when present)."""
    columns = [c for c in ("clean", "shifted") if metrics.get(c)]
    lines = [f"{'metric':<20}" + "".join(f"{c:>12}" for c in columns)]
    for key in SUMMARY_KEYS:
        cells = []
        for c in columns:
            v = metrics[c][key]
            cells.append(f"{v:>12d}" if isinstance(v, int) else f"{v:>12.4f}")
        lines.append(f"{key:<20}" + "".join(cells))
    return "\n".join(lines)
