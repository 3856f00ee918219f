"""Metrics from labels and predictions: the classification metrics (one function, so training, search and evaluate
agree) and `cellnet evaluate`'s trust metrics (prediction-set coverage, uncertain flags, OOD separation).

The trust metrics live here rather than in cellnet/calibrate.py: they score what a calibration produced, against
labels, as `classification_metrics` scores predictions; calibrate fits and applies, this measures. Results are
plain dicts with None where a share is undefined, so they are JSON as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from cellnet.checks import check_labels
from cellnet.errors import CalibrationError

METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "balanced_accuracy")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and balanced accuracy.

    Matches sklearn's `precision_recall_fscore_support(average="macro", zero_division=0)` (macro over the classes
    present in `y_true` or `y_pred`) and `balanced_accuracy_score` (mean recall over classes present in `y_true`),
    computed from one confusion matrix instead of four passes.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and the same length, got {y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        return {k: float("nan") for k in METRIC_KEYS}
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    present = (support > 0) | (predicted > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "balanced_accuracy": float(recall[support > 0].mean()),
    }


# ---------------------------------------------------------------------------------------------------------------
# Trust metrics for `cellnet evaluate` (None where undefined, so the dicts are JSON as they are)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def coverage_report(sets: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Empirical coverage (true class in the set), mean set size and share of empty sets, overall and per class."""
    sets = np.asarray(sets, dtype=bool)
    y = check_labels(labels, len(class_names), len(sets))
    if sets.ndim != 2 or sets.shape[1] != len(class_names):
        raise CalibrationError(f"sets must be (N, {len(class_names)}), got shape {sets.shape}")
    covered = sets[np.arange(len(y)), y]
    size = sets.sum(axis=1)
    per_class = {}
    for c, name in enumerate(class_names):
        mine = y == c
        n = int(mine.sum())
        per_class[name] = {
            "n": n,
            "coverage": _share(int(covered[mine].sum()), n),
            "mean_set_size": float(size[mine].mean()) if n else None,
        }
    return {
        "n": len(y),
        "coverage": _share(int(covered.sum()), len(y)),
        "mean_set_size": float(size.mean()) if len(y) else None,
        "empty_sets": _share(int((size == 0).sum()), len(y)),
        "per_class": per_class,
    }


def flag_report(uncertain: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """How well "uncertain" flags separate wrong predictions (should be flagged) from right ones (should not)."""
    flag = np.asarray(uncertain, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    if flag.shape != ok.shape or flag.ndim != 1:
        raise CalibrationError(
            f"uncertain and correct must be 1-D and the same length, got {flag.shape} and {ok.shape}"
        )
    wrong_flagged, right_flagged = int((flag & ~ok).sum()), int((flag & ok).sum())
    n_wrong, n_right = int((~ok).sum()), int(ok.sum())
    return {
        "n": len(ok),
        "wrong": n_wrong,
        "right": n_right,
        "flagged": int(flag.sum()),
        "wrong_flagged": wrong_flagged,
        "right_flagged": right_flagged,
        "share_wrong_flagged": _share(wrong_flagged, n_wrong),
        "share_right_flagged": _share(right_flagged, n_right),
    }


def ood_auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Probability that an OOD image scores above an in-distribution one (ROC AUC); NaN without one of each."""
    s_in = np.asarray(scores_in, dtype=np.float64).ravel()
    s_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if not len(s_in) or not len(s_out):
        return float("nan")
    truth = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    return float(roc_auc_score(truth, np.r_[s_in, s_out]))
