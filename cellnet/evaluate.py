"""`cellnet evaluate`: how good a checkpoint is on labelled data, and how well it holds up under distribution shift.

Outputs in REPORT_DIR (each file written atomically): metrics.json (everything below, machine-readable),
classification_report.csv (per-class precision/recall/F1/support + macro/weighted averages), confusion_matrix.csv and
.png (counts, colours row-normalised), reliability.png (calibration: accuracy vs confidence per bin, with ECE) and
predictions.csv. `shifted=True` also runs the shift suite (`cellnet.shifts`: zoom, stain, colour, defocus, JPEG,
gamma; deterministic for a seed)::

    data ─┬─> predict ─> report ─> metrics["clean"] + the files above
          └─> apply_shift(name, images, seed) for name in suite ─> predict ─> accuracy, macro F1, ECE per shift
                 ─> metrics["shifted"] (per_shift, mean_accuracy, worst_accuracy, worst_shift), shifted_accuracy.png
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix

from cellnet.calibrate import CalibratedOutput, softmax
from cellnet.canonicalize import Canonicalization
from cellnet.data.dataset import CellData
from cellnet.errors import DataError
from cellnet.files import atomic_path, write_text
from cellnet.metrics import coverage_report, flag_report, ood_auroc
from cellnet.predict import Prediction, predict_batch, prediction_table
from cellnet.shifts import DEFAULT_SUITE, FAMILIES, SHIFTS, apply_shift, resolve_names

if TYPE_CHECKING:
    from cellnet.checkpoint import Checkpoint

ECE_BINS = 15
SHIFT_SEED = 0
SHIFT_KEYS = ("accuracy", "macro_f1", "ece")  # what metrics.json keeps per shift


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
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

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
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

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


def shifted_metrics(
    checkpoint: Checkpoint,
    images: np.ndarray,
    y_true: np.ndarray,
    classes: list[str],
    *,
    suite: Sequence[str] = DEFAULT_SUITE,
    seed: int = SHIFT_SEED,
    tta: bool = False,
    adapt: bool = False,
    canonicalize: bool = False,
    batch_size: int = 256,
    clean_ood: np.ndarray | None = None,
) -> dict[str, Any]:
    """metrics.json's "shifted": accuracy, macro F1 and ECE on each shifted copy, their mean and the worst shift;
    with a calibrated checkpoint also per shift the `trust_metrics` (coverage, flags, OOD AUROC against the clean
    images' OOD scores `clean_ood`).

    One shifted copy is alive at a time (memory stays at one extra copy of the data).
    """
    names = resolve_names(suite)
    per_shift: dict[str, dict[str, Any]] = {}
    for name in names:
        shifted = apply_shift(name, images, seed)
        out = predict_batch(checkpoint, shifted, batch_size=batch_size, tta=tta, adapt=adapt, canonicalize=canonicalize)
        rep = report(y_true, out.probs, classes)
        per_shift[name] = {k: rep[k] for k in SHIFT_KEYS} | {"description": SHIFTS[name].description}
        if out.canonicalization is not None:
            per_shift[name]["canonicalization"] = canonicalization_summary(out.canonicalization)
        if out.calibrated is not None:
            per_shift[name]["trust"] = trust_metrics(y_true, out, classes, clean_ood=clean_ood)
    accuracy = {name: per_shift[name]["accuracy"] for name in names}
    worst = min(names, key=lambda n: accuracy[n])
    out_metrics: dict[str, Any] = {
        "suite": list(names),
        "seed": seed,
        "per_shift": per_shift,
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "worst_accuracy": accuracy[worst],
        "worst_shift": worst,
        "families": family_accuracy(accuracy),
    }
    trusts = [m["trust"] for m in per_shift.values() if "trust" in m]
    if trusts:
        out_metrics["mean_share_wrong_flagged"] = _mean([t["flags"]["share_wrong_flagged"] for t in trusts])
        out_metrics["mean_coverage"] = _mean([t["coverage"]["coverage"] for t in trusts])
        out_metrics["mean_ood_auroc"] = _mean([t.get("ood_auroc") for t in trusts])
    return out_metrics


def family_accuracy(accuracy: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per-shift accuracies grouped by the suite's families (cellnet.shifts FAMILIES, in that order): each family's
    mean and its shifts. What a robustness card shows."""
    out: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        mine = {n: float(a) for n, a in accuracy.items() if n in SHIFTS and SHIFTS[n].family == family}
        if mine:
            out[family] = {"accuracy": float(np.mean(list(mine.values()))), "shifts": mine}
    return out


def robustness_card(
    accuracy: dict[str, float], clean: float | None, source: str, deployed: str | None = None
) -> dict[str, Any]:
    """summary.json's `robustness`: how a deployed model holds up, shift by shift and family by family, with where
    the figures come from (a held-out test set, or the winner's cross-validation)."""
    worst = min(accuracy, key=lambda n: accuracy[n]) if accuracy else None
    return {
        "deployed": deployed,
        "source": source,
        "clean_accuracy": clean,
        "mean_shifted_accuracy": float(np.mean(list(accuracy.values()))) if accuracy else None,
        "worst_shift": worst,
        "worst_accuracy": accuracy[worst] if worst else None,
        "families": family_accuracy(accuracy),
    }


def plot_robustness_card(card: dict[str, Any], path: Path) -> None:
    """Accuracy per shift grouped and coloured by family, each family's mean as a line, the clean accuracy."""
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

    families = card["families"]
    names = [n for f in families.values() for n in f["shifts"]]
    colours = dict(zip(families, ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:red")))
    fig = Figure(figsize=(8, 1.4 + 0.32 * len(names)))
    ax = fig.add_subplot()
    y = 0
    for family, entry in families.items():
        ys = list(range(y, y + len(entry["shifts"])))
        ax.barh(
            ys,
            list(entry["shifts"].values()),
            color=colours.get(family, "gray"),
            edgecolor="black",
            label=f"{family}: {entry['accuracy']:.3f}",
        )
        y += len(ys)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    if card.get("clean_accuracy") is not None:
        ax.axvline(card["clean_accuracy"], color="black", label=f"clean {card['clean_accuracy']:.3f}")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("accuracy")
    ax.set_title(f"robustness card: {card.get('deployed') or 'model'} ({card['source']})")
    ax.legend(loc="lower left", fontsize=8)
    _save_figure(fig, path)


def _mean(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def trust_metrics(
    y_true: np.ndarray, prediction: Prediction, classes: list[str], *, clean_ood: np.ndarray | None = None
) -> dict[str, Any]:
    """What a calibrated checkpoint promises, measured: empirical coverage and set size (overall, per class), the
    share of wrong / right predictions flagged uncertain (`cellnet.calibrate.uncertain`), the OOD flag rate, and --
    for shifted data, given the clean images' scores -- the OOD score's AUROC (shifted vs clean)."""
    cal = prediction.calibrated
    if cal is None:
        raise ValueError("trust_metrics needs a calibrated checkpoint's prediction")
    correct = cal.probs.argmax(axis=1) == y_true
    out: dict[str, Any] = {"coverage": coverage_report(cal.sets, y_true, classes)}
    if cal.ood is not None and cal.ood_score is not None:
        out["ood_flagged"] = float(cal.ood.mean()) if len(cal.ood) else None
        out["ood_flagged_right"] = float(cal.ood[correct].mean()) if correct.any() else None
        if clean_ood is not None:
            out["ood_auroc"] = ood_auroc(clean_ood, cal.ood_score)
    out["flags"] = flag_report(cal.uncertain(), correct)
    out["set_flags"] = flag_report(cal.set_size != 1, correct)
    return out


def plot_shifted(shifted: dict[str, Any], clean_accuracy: float, path: Path, title: str) -> None:
    """Accuracy per shift (worst in red) against the clean accuracy and the suite mean."""
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

    names = shifted["suite"]
    acc = [shifted["per_shift"][n]["accuracy"] for n in names]
    fig = Figure(figsize=(7, 1.2 + 0.35 * len(names)))
    ax = fig.add_subplot()
    colours = ["tab:red" if n == shifted["worst_shift"] else "tab:blue" for n in names]
    ax.barh(range(len(names)), acc, color=colours, edgecolor="black")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(clean_accuracy, color="black", label=f"clean {clean_accuracy:.3f}")
    ax.axvline(shifted["mean_accuracy"], color="gray", linestyle="--", label=f"mean {shifted['mean_accuracy']:.3f}")
    for i, a in enumerate(acc):
        ax.text(min(a, 1.0) + 0.01, i, f"{a:.3f}", va="center")
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right")
    _save_figure(fig, path)


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
    *,
    calibrated: CalibratedOutput | None = None,
) -> None:
    """All files of one evaluation into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "classification_report.csv") as tmp:
        rep["per_class"].to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_dir / "confusion_matrix.csv") as tmp:
        pd.DataFrame(rep["confusion"], index=pd.Index(classes, name="true"), columns=classes).to_csv(tmp)
    sets = calibrated.sets if calibrated is not None else None
    ood = calibrated.ood_score if calibrated is not None else None
    preds = prediction_table([str(i) for i in ids], probs, [""] * len(ids), classes, sets=sets, ood_score=ood)
    preds.insert(1, "label", [classes[t] for t in y_true])
    preds = preds.drop(
        columns=["error"] if sets is not None else ["uncertain", "set", "set_size", "ood_score", "ood", "error"]
    )
    with atomic_path(out_dir / "predictions.csv") as tmp:
        preds.to_csv(tmp, index=False, float_format="%.6f")
    plot_confusion(rep["confusion"], classes, out_dir / "confusion_matrix.png", f"confusion matrix — {title}")
    plot_reliability(rep["calibration"], out_dir / "reliability.png", f"reliability — {title}")


def calibration_gain(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE of the model's own softmax and of the temperature-scaled one: `logits` N×C, or V×N×C with TTA (then
    `temperature` is the TTA calibration's)."""
    out = {}
    for key, t in (("ece_uncalibrated", 1.0), ("ece_calibrated", temperature)):
        p = softmax(logits, t)
        out[key] = expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == y_true)["ece"]
    return out


def plot_trust(
    trust: dict[str, Any], calibrated: CalibratedOutput, y_true: np.ndarray, classes: list[str], path: Path
) -> None:
    """Left: empirical coverage per class against the target. Right: accuracy of the predictions kept vs the share
    flagged, when flagging by lowest confidence (the curve), with the checkpoint's own flags as points."""
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    per_class = trust["coverage"]["per_class"]
    cov = [per_class[c]["coverage"] if per_class[c]["coverage"] is not None else np.nan for c in classes]
    left.bar(range(len(classes)), cov, color="tab:blue")
    left.axhline(trust["coverage_target"], color="black", linestyle="--", label=f"target {trust['coverage_target']:g}")
    left.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    left.set_ylim(0, 1.02)
    left.set_ylabel("share of cells whose set holds the true class")
    left.set_title(f"coverage per class (overall {trust['coverage']['coverage']:.3f})")
    left.legend(loc="lower left")
    probs = calibrated.probs
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    order = np.argsort(confidence)  # flag the least confident first
    n = len(order)
    kept_correct = np.cumsum(correct[order][::-1])[::-1]  # correct among the kept, after flagging i images
    shares = np.arange(n) / max(n, 1)
    right.plot(shares, kept_correct / np.maximum(n - np.arange(n), 1), color="tab:gray", label="flag lowest confidence")
    flags = {"set not one class": calibrated.set_size != 1}
    if calibrated.ood is not None:
        flags["out of distribution"] = calibrated.ood
        flags["uncertain (either)"] = calibrated.uncertain()
    for (label, flag), marker in zip(flags.items(), "os^"):
        kept = ~flag
        acc = float(correct[kept].mean()) if kept.any() else np.nan
        right.plot([flag.mean()], [acc], marker, markersize=9, label=f"{label}: {flag.mean():.1%} flagged")
    right.set_xlabel("share of images flagged for review")
    right.set_ylabel("accuracy of the rest")
    right.set_title("flagged vs accuracy")
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def canonicalization_summary(choice: Canonicalization) -> dict[str, Any]:
    """What --canonicalize chose for a set of images, JSON as it is."""
    return {
        "zoom": choice.zoom,
        "colour_matched": choice.colour_matched,
        "median_ood_scores": choice.medians,
        "images_scored": choice.images_scored,
        "note": choice.note,
    }


def evaluate(
    checkpoint: Checkpoint,
    data: CellData,
    out_dir: str | Path,
    *,
    tta: bool = False,
    adapt: bool = False,
    canonicalize: bool = False,
    shifted: bool = False,
    batch_size: int = 256,
    seed: int = SHIFT_SEED,
    where: str = "data",
    header: dict[str, Any] | None = None,
    shifts: Sequence[str] = DEFAULT_SUITE,
) -> dict[str, Any]:
    """Evaluate `checkpoint` on `data`, write the report files into `out_dir`, return the metrics.json content.

    `data` must be at the checkpoint's image_size or is resized by `predict_images`; classes are matched by name.
    `shifted=True` adds metrics["shifted"] for the shift names in `shifts` (seeded by `seed`). `canonicalize`: `data`
    is one group (one lab or scan) whose framing and colour are matched to the training cells first
    (`cellnet.canonicalize`); each shifted copy is a group of its own. `header`: entries
    metrics.json starts with (which checkpoint, which data).
    """
    out_dir = Path(out_dir)
    classes = list(checkpoint.classes)
    y_true = labels_for(data, checkpoint.classes, where)
    suite = resolve_names(shifts) if shifted else ()
    how = {"tta": tta, "adapt": adapt, "canonicalize": canonicalize}
    metrics: dict[str, Any] = {**(header or {}), "classes": classes, **how}
    prediction = predict_batch(
        checkpoint, data.images, batch_size=batch_size, tta=tta, adapt=adapt, canonicalize=canonicalize
    )
    if prediction.adaptation is not None:
        metrics["adaptation"] = dataclasses.asdict(prediction.adaptation)
    if prediction.canonicalization is not None:
        metrics["canonicalization"] = canonicalization_summary(prediction.canonicalization)
    probs, cal = prediction.probs, prediction.calibrated
    rep = report(y_true, probs, classes)
    write_report(rep, data.ids, y_true, probs, classes, out_dir, "clean", calibrated=cal)
    metrics["clean"] = _json_ready(rep, classes)
    if checkpoint.calibration is None or cal is None:
        metrics["trust"] = None
    else:
        temperature, _ = checkpoint.calibration.view(cal.views)
        metrics["trust"] = {
            "temperature": temperature,
            "coverage_target": cal.coverage,
            **calibration_gain(prediction.inference.all_views(), y_true, temperature),
            **trust_metrics(y_true, prediction, classes),
        }
        plot_trust(metrics["trust"], cal, y_true, classes, out_dir / "trust.png")
    if suite:
        metrics["shifted"] = shifted_metrics(
            checkpoint,
            data.images,
            y_true,
            classes,
            suite=suite,
            seed=seed,
            tta=tta,
            adapt=adapt,
            canonicalize=canonicalize,
            batch_size=batch_size,
            clean_ood=cal.ood_score if cal is not None else None,
        )
        plot_shifted(metrics["shifted"], rep["accuracy"], out_dir / "shifted_accuracy.png", "accuracy under shift")
    metrics["text"] = {"clean": rep["text"]}
    write_text(out_dir / "metrics.json", json.dumps({k: v for k, v in metrics.items() if k != "text"}, indent=2) + "\n")
    return metrics


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary_table(metrics: dict[str, Any]) -> str:
    """The headline clean metrics; with a shift suite, then accuracy/macro F1/ECE per shift, the mean and worst."""
    lines = [f"{'metric':<20}{'clean':>12}"]
    for key in SUMMARY_KEYS:
        v = metrics["clean"][key]
        lines.append(f"{key:<20}" + (f"{v:>12d}" if isinstance(v, int) else f"{v:>12.4f}"))
    trust = metrics.get("trust")
    if trust:
        cov, flags = trust["coverage"], trust["flags"]
        lines += [
            "",
            f"calibration: temperature {trust['temperature']:.3f}, ECE {trust['ece_uncalibrated']:.4f} -> "
            f"{trust['ece_calibrated']:.4f}",
            f"prediction sets at coverage {trust['coverage_target']:g}: coverage {cov['coverage']:.4f}, mean set size "
            f"{cov['mean_set_size']:.3f}",
            f"flagged uncertain: {_pct(flags['share_wrong_flagged'])} of wrong, {_pct(flags['share_right_flagged'])} "
            f"of right predictions"
            + (f"; out of distribution {_pct(trust.get('ood_flagged'))}" if "ood_flagged" in trust else ""),
        ]
        small = [
            c
            for c, v in cov["per_class"].items()
            if v["coverage"] is not None and v["coverage"] < trust["coverage_target"]
        ]
        if small:
            lines.append(
                "below target coverage: " + ", ".join(f"{c} {cov['per_class'][c]['coverage']:.3f}" for c in small)
            )
    shifted = metrics.get("shifted")
    if not shifted:
        return "\n".join(lines)
    clean = metrics["clean"]["accuracy"]
    head = f"shifted (seed {shifted['seed']})"
    lines += ["", f"{head:<24}{'accuracy':>10}{'vs clean':>10}{'macro_f1':>10}{'ece':>10}"]
    for name in shifted["suite"]:
        m = shifted["per_shift"][name]
        lines.append(
            f"{name:<24}{m['accuracy']:>10.4f}{m['accuracy'] - clean:>+10.4f}{m['macro_f1']:>10.4f}{m['ece']:>10.4f}"
        )
    for label, acc in (
        ("mean", shifted["mean_accuracy"]),
        (f"worst: {shifted['worst_shift']}", shifted["worst_accuracy"]),
        *((f"family: {f}", v["accuracy"]) for f, v in shifted.get("families", {}).items()),
    ):
        lines.append(f"{label:<24}{acc:>10.4f}{acc - clean:>+10.4f}")
    return "\n".join(lines)
