"""Classification metrics from labels and predictions: one function so training, search and evaluate agree."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

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
