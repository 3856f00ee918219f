"""Calibration fitted once on out-of-fold (OOF) predictions: a temperature, Mondrian conformal sets, an OOD score.

    OOF logits (N,C), labels (N,) ─ fit_temperature ─► T        softmax(logits / T): confidences that mean it
            └─ softmax(logits / T) ─ fit_conformal ─► ConformalScores (1 - p_y and class y of every OOF image)
    OOF logits of the 8 TTA views (8,N,C) ─ fit_view_calibration ─► ViewCalibration (its own T and scores)
    OOF features (N,D) ─ cellnet/ood.py ─► OODDetector (Mahalanobis statistics and thresholds, framing check)
                                                      │
                          fit_calibration ─► Calibration ─ to_meta() (JSON) + to_tensors() (arrays) ─► checkpoint
                                                      └─ apply(logits, features) ─► CalibratedOutput: probs, sets,
                                                         ood_score, uncertain() -- the one way predict, evaluate
                                                         and the benchmarks turn outputs into what a user sees

Conformal p-values are crepes' (docs/decisions/0005-conformal-library.md), counted without its per-image loop; the
OOD score (normalised: > 1 is out of distribution) is cellnet/ood.py's, and `cellnet.metrics` holds the matching
metrics for `cellnet evaluate` (`coverage_report`, `flag_report`, `ood_auroc`). numpy/scipy only.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp
from scipy.special import softmax as _softmax

from cellnet.checks import check_coverage, check_false_alarm, check_labels, check_matrix
from cellnet.colour import ColourStats
from cellnet.constants import FP32, POOLED, PRECISIONS
from cellnet.errors import CalibrationError, CellnetError, CheckpointError
from cellnet.ood import (
    DEFAULT_FALSE_ALARM,
    FRAMING_CLASS_MEANS,
    FRAMING_DISCRIMINATOR,
    OOD_HOLDOUT,
    OOD_METHOD,
    MahalanobisStats,
    OODDetector,
    fit_ood_held_out,
    is_ood,
    ood_threshold,
    with_framing,
)

DEFAULT_COVERAGE = 0.95
TEMPERATURE_BOUNDS = (0.05, 20.0)
MARGINAL_METHOD = "split conformal pooled over the classes (marginal coverage); score 1 - p_y; non-smoothed p-values"
CONFORMAL_METHOD = (
    "Mondrian (class-conditional) split conformal; score 1 - p_y; non-smoothed p-values; p >= 1 - coverage"
)
CONFORMAL_LIBRARY = "numpy (the p-values of crepes' ConformalClassifier, smoothing=False)"
TENSOR_KEYS = ("conformal_scores", "conformal_labels")
OOD_TENSOR_KEYS = ("ood_means", "ood_precision")
FRAMING_TENSOR_KEY = "ood_framing_weights"  # the framing discriminator's (k, D + 1) weights and bias (decision 0013)
FRAMING_MEANS_KEY = "ood_framing_means"  # decision 0011's zoomed-out class means: read from older checkpoints only
LEGACY_PRECISIONS = {"float32": FP32}  # written before decision 0014, when every calibration was fitted in fp32


# ---------------------------------------------------------------------------------------------------------------
# Temperature scaling


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) per row in float64 (scipy subtracts the row maximum, so large logits are safe).

    `logits` (N, C), or (V, N, C) for V views of each image (test-time augmentation): then the mean over views of
    each view's softmax, the probability TTA predicts. Any "logits" work, e.g. log-probabilities of an ensemble:
    softmax(log p̄ / T) sharpens or flattens p̄.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise CalibrationError(f"temperature must be a positive finite number, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    return _softmax(z, axis=-1).mean(axis=0) if z.ndim == 3 else _softmax(z, axis=1)


def _views(logits: Any) -> np.ndarray:
    """`logits` as finite float64 (V, N, C): one view when given (N, C)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or not len(z):
        raise CalibrationError(f"logits must be (N, C) or (views, N, C), got shape {np.shape(logits)}")
    if not np.isfinite(z).all():
        raise CalibrationError(f"logits must be finite; {int((~np.isfinite(z)).any(axis=(0, 2)).sum())} rows are not")
    return z


def _nll(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean -log p_y of the (view-averaged) softmax of z / T, z (V, N, C), in log space."""
    logp = log_softmax(z / temperature, axis=2)[:, np.arange(len(labels)), labels]  # (V, N)
    return float(-(logsumexp(logp, axis=0) - math.log(len(z))).mean())


def fit_temperature(logits: Any, labels: Any) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the mean NLL of softmax(logits / T) (Guo et al. 2017); for (V, N, C)
    logits, of the view-averaged softmax that TTA predicts (each view divided by T before its softmax).

    Searched over log T: the NLL is smoother there and T = 0.5 and T = 2 are equally far from 1. Log-probabilities
    must be finite: clip them (e.g. np.log(np.clip(p, 1e-12, None))) before calling.
    """
    z = _views(logits)
    y = check_labels(labels, z.shape[2], z.shape[1])
    if not z.shape[1]:
        raise CalibrationError("fit_temperature needs at least one image, got 0")
    lo, hi = TEMPERATURE_BOUNDS
    res = minimize_scalar(
        lambda log_t: _nll(z, y, math.exp(log_t)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(res.x))


# ---------------------------------------------------------------------------------------------------------------
# Conformal prediction sets (Mondrian: one calibration distribution per class)


def nonconformity(probs: Any) -> np.ndarray:
    """The hinge score 1 - p_c for every class (float32 both when fitting and predicting, so ties stay ties)."""
    return (1.0 - np.asarray(probs, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class ConformalScores:
    """All a conformal classifier keeps: each calibration image's score 1 - p_y and its class y. `mondrian` (the
    default): one calibration distribution per class, so the coverage holds for each class; False: one pooled over
    the classes, so it holds on average over classes only -- what a few labelled cells per class allow (with q
    cells of a class no p-value is below 1 / (q + 1): at 10 cells, no 95% set could ever leave that class out)."""

    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    num_classes: int
    mondrian: bool = True

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise CalibrationError(f"num_classes must be at least 2, got {self.num_classes}")
        scores = np.asarray(self.scores)
        if scores.ndim != 1 or not (np.issubdtype(scores.dtype, np.floating) or len(scores) == 0):
            raise CalibrationError(
                f"conformal scores must be a 1-D float array, got shape {scores.shape} {scores.dtype}"
            )
        if not np.isfinite(scores).all():
            raise CalibrationError("conformal scores must be finite")
        object.__setattr__(self, "scores", np.ascontiguousarray(scores, dtype=np.float32))
        object.__setattr__(self, "labels", check_labels(self.labels, self.num_classes, len(scores)))

    @property
    def counts(self) -> np.ndarray:
        """Calibration images per class (q_c)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def always_included(self, coverage: float) -> list[int]:
        """Classes too rare to ever leave a set at `coverage`: even the least conforming image gets the p-value
        1 / (q_c + 1), which is still >= 1 - coverage (q_c + 1 <= 1 / (1 - coverage); the same float comparison as
        `prediction_sets`, so the two always agree)."""
        coverage = check_coverage(coverage)
        counts = self.counts.tolist() if self.mondrian else [len(self.scores)] * self.num_classes
        return [c for c, q in enumerate(counts) if 1.0 / (q + 1) >= 1.0 - coverage]


def fit_conformal(probs: Any, labels: Any, num_classes: int, *, mondrian: bool = True) -> ConformalScores:
    """Calibration scores from (temperature-scaled) probabilities of images no model trained on (OOF)."""
    p = check_matrix(probs, "probs", num_classes)
    y = check_labels(labels, num_classes, len(p))
    return ConformalScores(nonconformity(p)[np.arange(len(y)), y], y, num_classes, mondrian)


def conformal_p_values(probs: Any, conformal: ConformalScores) -> np.ndarray:
    """(N, C) non-smoothed Mondrian p-values: p_c = (#{calibration scores of class c >= 1 - p_c} + 1) / (q_c + 1);
    for pooled (`mondrian=False`) scores the same over all N calibration scores.

    The numbers of crepes' `ConformalClassifier.predict_p(alphas, bins, smoothing=False)` (decision 0005; the tests
    compare the two), counted by binary search in each class's sorted scores: crepes counts with a Python loop per
    image and class, 40 ms per 2,048 images, a third of what a calibration added to predict.
    """
    alphas = nonconformity(check_matrix(probs, "probs", conformal.num_classes))
    p = np.empty(alphas.shape, dtype=np.float64)
    pooled = np.sort(conformal.scores)
    for c in range(conformal.num_classes):
        scores = np.sort(conformal.scores[conformal.labels == c]) if conformal.mondrian else pooled
        at_least = len(scores) - np.searchsorted(scores, alphas[:, c], side="left")
        p[:, c] = (at_least + 1) / (len(scores) + 1)
    return p


def prediction_sets(probs: Any, conformal: ConformalScores, coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
    """(N, C) bool: class c is in an image's set when its p-value >= 1 - coverage (crepes' `predict_set` rule).

    For images exchangeable with the calibration images, each class's sets contain the true class with probability
    >= coverage. Non-smoothed p-values make the sets deterministic and slightly larger than needed.
    """
    coverage = check_coverage(coverage)
    return conformal_p_values(probs, conformal) >= 1.0 - coverage


# ---------------------------------------------------------------------------------------------------------------
# What a user sees: the one way from a model's outputs to probabilities, sets and flags


def uncertain(
    probs: np.ndarray,
    sets: np.ndarray | None = None,
    ood_score: np.ndarray | None = None,
    min_confidence: float | None = None,
) -> np.ndarray:
    """The one "uncertain" rule (predict's column, evaluate's flags, the benchmarks): the prediction set is not exactly
    one class, or the image is out of distribution, or the top probability is below `min_confidence` -- whichever
    of these the checkpoint can tell (an uncalibrated one: only the last)."""
    flag = np.zeros(len(probs), dtype=bool)
    if sets is not None:
        flag |= np.asarray(sets).sum(axis=1) != 1
    if ood_score is not None:
        flag |= is_ood(ood_score)
    if min_confidence is not None:
        flag |= np.asarray(probs).max(axis=1) < min_confidence
    return flag


@dataclass
class CalibratedOutput:
    """What a calibration makes of a model's outputs for N images: temperature-scaled probabilities, conformal sets
    at `coverage`, and the OOD score when features were given; `views` = 1, or 8 with test-time augmentation."""

    probs: np.ndarray  # (N, C) float32
    sets: np.ndarray  # (N, C) bool
    coverage: float
    views: int
    always_in_set: list[int]  # classes in every set at this coverage (too few calibration images)
    ood_score: np.ndarray | None = None  # (N,) normalised: > 1 is out of distribution

    @property
    def set_size(self) -> np.ndarray:
        return self.sets.sum(axis=1)

    @property
    def ood(self) -> np.ndarray | None:
        return None if self.ood_score is None else is_ood(self.ood_score)

    def uncertain(self, min_confidence: float | None = None) -> np.ndarray:
        return uncertain(self.probs, self.sets, self.ood_score, min_confidence)


@dataclass(frozen=True)
class ViewCalibration:
    """The temperature and conformal scores of predicting with test-time augmentation (the mean of the 8 dihedral
    views' softmax): fitted on the same out-of-fold images, each scored under all 8 views."""

    temperature: float
    conformal: ConformalScores
    views: int = 8


# ---------------------------------------------------------------------------------------------------------------
# What the checkpoint stores


@dataclass(frozen=True)
class Calibration:
    """Temperature, conformal calibration scores and (optionally) the OOD statistics of one deployed model; `tta`
    the same for predicting with test-time augmentation (None: fitted on single views only).

    Fitted on the outputs of single (or 8 averaged) views computed in `precision` (fp32, or bf16 autocast on a CPU
    with bf16: decision 0014), and applied to the same: `cellnet.predict.infer` runs a calibrated model in the
    precision recorded here where its device has it (fp32 where not, and `cellnet predict` says so); the OOD score
    always reads the identity view's features."""

    temperature: float
    coverage: float  # default for `apply`; `cellnet predict --coverage` overrides it
    conformal: ConformalScores
    ood: OODDetector | None = None
    notes: tuple[str, ...] = ()
    tta: ViewCalibration | None = None
    colour: ColourStats | None = None  # the training cells' colour (`predict --canonicalize` matches a group to it)
    precision: str = FP32  # what the outputs it was fitted on were computed in (cellnet.precision)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise CalibrationError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for t in (self.temperature, *([self.tta.temperature] if self.tta else [])):
            if not (isinstance(t, numbers.Real) and 0 < t < math.inf):
                raise CalibrationError(f"temperature must be a positive finite number, got {t}")
        check_coverage(self.coverage)
        if self.ood is not None and not 1 <= self.ood.num_classes <= self.num_classes:  # a finetune: its lab's classes
            raise CalibrationError(f"ood means have {self.ood.num_classes} classes, expected <= {self.num_classes}")
        if self.tta is not None and self.tta.conformal.num_classes != self.num_classes:
            raise CalibrationError(f"the TTA calibration has {self.tta.conformal.num_classes} classes")

    @property
    def num_classes(self) -> int:
        return self.conformal.num_classes

    @property
    def num_calibration(self) -> int:
        return len(self.conformal.scores)

    def view(self, views: int) -> tuple[float, ConformalScores]:
        """(temperature, conformal scores) for predictions averaged over `views` views: 1, or the TTA calibration's.
        Anything else would silently break the promise the sets and flags make: a CalibrationError."""
        if views == 1:
            return self.temperature, self.conformal
        if self.tta is not None and views == self.tta.views:
            return self.tta.temperature, self.tta.conformal
        fitted = "single views only" if self.tta is None else f"single views and {self.tta.views}-view TTA"
        raise CalibrationError(
            f"this checkpoint's calibration was fitted on {fitted}, not on {views} averaged views: its temperature, "
            "prediction sets and coverage would not hold for them. Predict without --tta, or deploy the model again "
            "with this cellnet (it calibrates the TTA view too)"
        )

    def apply(self, logits: Any, features: Any = None, coverage: float | None = None) -> CalibratedOutput:
        """Calibrated probabilities, conformal sets at `coverage` (default: the checkpoint's) and, with `features`,
        the OOD score. `logits` (N, C) for single views or (V, N, C) for TTA's V views (`view`); `features` (N, D),
        or (k, N, D) for a fold ensemble's members, always of the identity view."""
        coverage = self.coverage if coverage is None else check_coverage(coverage)
        z = _views(logits)
        temperature, conformal = self.view(len(z))
        if z.shape[2] != self.num_classes:
            raise CalibrationError(f"logits have {z.shape[2]} classes, the calibration {self.num_classes}")
        probs = softmax(z if len(z) > 1 else z[0], temperature)
        out = CalibratedOutput(
            probs=probs.astype(np.float32),
            sets=prediction_sets(probs, conformal, coverage),
            coverage=coverage,
            views=len(z),
            always_in_set=conformal.always_included(coverage),
        )
        if features is not None:
            if self.ood is None:
                raise CalibrationError("this calibration was fitted without features: it has no OOD statistics")
            out.ood_score = self.ood.score(features)
        return out

    def to_meta(self) -> dict[str, Any]:
        """JSON-able description (numbers, strings, lists); the arrays go to `to_tensors`."""
        ood = None
        if self.ood is not None:
            ood = {
                "method": OOD_METHOD,
                "members": len(self.ood.members),
                "thresholds": [float(t) for t in self.ood.thresholds],
                "false_alarm": float(self.ood.false_alarm),
                "threshold_from": self.ood.threshold_from,
                "features": self.ood.features,
                "feature_dim": self.ood.feature_dim,
                "centres": self.ood.num_classes,  # a finetune's: the classes its lab had cells of
                "framing_zooms": list(self.ood.framing_zooms),
                "framing_check": self.ood.framing_check,
                "library": f"scikit-learn {version('scikit-learn')}",
            }
        tta = None
        if self.tta is not None:
            tta = {
                "temperature": float(self.tta.temperature),
                "views": self.tta.views,
                "num_calibration": len(self.tta.conformal.scores),
            }
        return {
            "temperature": float(self.temperature),
            "coverage": float(self.coverage),
            "num_classes": self.num_classes,
            "num_calibration": self.num_calibration,
            "calibration_counts": self.conformal.counts.tolist(),
            "always_in_set": self.conformal.always_included(self.coverage),
            "conformal": {
                "method": CONFORMAL_METHOD if self.conformal.mondrian else MARGINAL_METHOD,
                "mondrian": self.conformal.mondrian,
                "library": CONFORMAL_LIBRARY,
            },
            "ood": ood,
            "tta": tta,
            "precision": self.precision,
            "notes": list(self.notes),
            "colour": self.colour.to_meta() if self.colour is not None else None,
        }

    def to_tensors(self) -> dict[str, np.ndarray]:
        """The arrays: conformal scores (N,) float32 and labels (N,) int64 (TTA's scores for the same images);
        OOD means (k, C, D), precision (k, D, D) for the k scored members."""
        out = {"conformal_scores": self.conformal.scores, "conformal_labels": self.conformal.labels}
        if self.tta is not None:
            out["tta_conformal_scores"] = self.tta.conformal.scores
            out["tta_conformal_labels"] = self.tta.conformal.labels
        if self.ood is not None:
            out |= {
                "ood_means": np.stack([m.means for m in self.ood.members]),
                "ood_precision": np.stack([m.precision for m in self.ood.members]),
            }
            if self.ood.framing_weights:
                out[FRAMING_TENSOR_KEY] = np.stack(self.ood.framing_weights).astype(np.float32)
            elif self.ood.framing_means:
                out[FRAMING_MEANS_KEY] = np.stack(self.ood.framing_means).astype(np.float32)
        return out

    @classmethod
    def from_parts(cls, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Calibration:
        """Rebuild from `to_meta()` + `to_tensors()`; anything missing, extra or inconsistent is a CheckpointError."""
        missing = [k for k in ("temperature", "coverage", "num_classes", "num_calibration", "ood") if k not in meta]
        if missing:
            raise CheckpointError(f"calibration meta lacks {missing}")
        ood_meta, tta_meta = meta["ood"], meta.get("tta")
        expected = set(TENSOR_KEYS) | (set(OOD_TENSOR_KEYS) if ood_meta is not None else set())
        expected |= {_framing_key(ood_meta)} if ood_meta is not None and ood_meta.get("framing_zooms") else set()
        expected |= {"tta_conformal_scores", "tta_conformal_labels"} if tta_meta is not None else set()
        if set(tensors) != expected:
            raise CheckpointError(
                f"calibration tensors {sorted(tensors)} do not match the meta (ood "
                f"{'present' if ood_meta is not None else 'absent'}, tta {'present' if tta_meta else 'absent'}): "
                f"expected {sorted(expected)}"
            )
        try:
            labels, num_classes = tensors["conformal_labels"], int(meta["num_classes"])
            mondrian = bool((meta.get("conformal") or {}).get("mondrian", True))  # pooled: a finetune's few cells
            conformal = ConformalScores(tensors["conformal_scores"], labels, num_classes, mondrian)
            if len(conformal.scores) != meta["num_calibration"]:
                raise CalibrationError(f"{len(conformal.scores)} conformal scores, meta says {meta['num_calibration']}")
            counts = meta.get("calibration_counts")
            if counts is not None and list(counts) != conformal.counts.tolist():
                raise CalibrationError(
                    f"calibration counts {conformal.counts.tolist()} do not match the meta's {counts}"
                )
            tta = None
            if tta_meta is not None:
                tta_labels = tensors["tta_conformal_labels"]
                scores = ConformalScores(tensors["tta_conformal_scores"], tta_labels, num_classes, mondrian)
                if len(scores.scores) != tta_meta["num_calibration"]:
                    raise CalibrationError(
                        f"{len(scores.scores)} TTA conformal scores, meta says {tta_meta['num_calibration']}"
                    )
                tta = ViewCalibration(float(tta_meta["temperature"]), scores, int(tta_meta["views"]))
            recorded = meta.get("precision", FP32)
            return cls(
                temperature=float(meta["temperature"]),
                coverage=float(meta["coverage"]),
                conformal=conformal,
                ood=_ood_from(ood_meta, tensors, num_classes) if ood_meta is not None else None,
                notes=tuple(str(n) for n in meta.get("notes", ())),
                tta=tta,
                colour=ColourStats.from_meta(meta["colour"]) if meta.get("colour") else None,  # none before round 4
                precision=LEGACY_PRECISIONS.get(recorded, recorded),
            )
        except (KeyError, TypeError, ValueError, CellnetError) as e:
            raise CheckpointError(f"calibration in checkpoint is inconsistent: {e}") from e


def _ood_from(meta: dict[str, Any], tensors: dict[str, np.ndarray], num_classes: int) -> OODDetector:
    means, precision = np.asarray(tensors["ood_means"]), np.asarray(tensors["ood_precision"])
    if means.ndim != 3 or precision.ndim != 3 or len(means) != len(precision):
        raise CalibrationError(f"ood means {means.shape} / precision {precision.shape} not (k, C, D) / (k, D, D)")
    centres = int(meta.get("centres", num_classes))  # written before finetune: a centre per class
    if means.shape[1] != centres:
        raise CalibrationError(f"ood means have {means.shape[1]} classes, meta says {centres}")
    members = tuple(MahalanobisStats(m, p) for m, p in zip(means, precision))
    if members[0].means.shape[1] != meta["feature_dim"]:
        raise CalibrationError(f"ood means have {members[0].means.shape[1]} features, meta says {meta['feature_dim']}")
    thresholds = tuple(float(t) for t in meta["thresholds"])
    zooms = tuple(meta.get("framing_zooms") or ())  # written before decision 0011: no framing check
    key = _framing_key(meta) if zooms else None
    framing = tuple(np.asarray(tensors[key])) if key else ()
    discriminator = key == FRAMING_TENSOR_KEY
    return OODDetector(
        members,
        thresholds,
        float(meta["false_alarm"]),
        str(meta.get("features", POOLED)),  # written before the kind was recorded: pooled features
        str(meta.get("threshold_from", "held-out")),
        zooms,
        framing_weights=framing if discriminator else (),
        framing_means=() if discriminator else framing,
    )


def _framing_key(ood_meta: dict[str, Any]) -> str:
    """The tensor holding the framing check: the discriminator's weights, or (written by decision 0011's cellnet,
    whose meta names no `framing_check`) the zoomed-out class means."""
    check = ood_meta.get("framing_check", FRAMING_CLASS_MEANS)
    if check not in (FRAMING_DISCRIMINATOR, FRAMING_CLASS_MEANS):
        raise CheckpointError(f"unknown OOD framing_check {check!r} in the calibration meta")
    return FRAMING_TENSOR_KEY if check == FRAMING_DISCRIMINATOR else FRAMING_MEANS_KEY


def fit_view_calibration(view_logits: Any, labels: Any, num_classes: int) -> ViewCalibration:
    """Temperature and conformal scores of TTA predictions from (V, N, C) out-of-fold logits of V views (N may be a
    random subset of the calibration images: conformal sets only need exchangeable ones)."""
    z = _views(view_logits)
    temperature = fit_temperature(z, labels)
    return ViewCalibration(temperature, fit_conformal(softmax(z, temperature), labels, num_classes), len(z))


def fit_calibration(
    logits: Any,
    labels: Any,
    num_classes: int,
    features: Any = None,
    *,
    feature_kind: str | None = None,
    view_logits: Any = None,
    view_labels: Any = None,
    framing_features: Any = None,
    framing_zooms: tuple[float, ...] = (),
    coverage: float = DEFAULT_COVERAGE,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    ood_holdout: float = OOD_HOLDOUT,
    seed: int = 0,
    precision: str = FP32,
) -> Calibration:
    """Temperature first, conformal scores on the temperature-scaled OOF probabilities, then (with features) the
    Mahalanobis statistics on 1 - `ood_holdout` of the images and the threshold on the rest (see `ood_split`).
    `view_logits` (V, M, C: the TTA views of the images `view_labels` label, default the same N) adds the TTA
    calibration. `feature_kind` (required with `features`) says what they are: `cellnet.predict.Inference`'s.
    `framing_features` (F, N, D: the same images zoomed out by each of `framing_zooms`) add the framing check,
    fitted against `features`. `precision`: what all of these were computed in (`Inference.precision`), recorded so
    that predict runs the model in it."""
    coverage = check_coverage(coverage)
    if features is not None:
        check_false_alarm(false_alarm)
        if feature_kind is None:
            raise CalibrationError("features need their feature_kind: predict must compute the same ones")
    temperature = fit_temperature(logits, labels)
    conformal = fit_conformal(softmax(logits, temperature), labels, num_classes)
    tta = None
    if view_logits is not None:
        tta = fit_view_calibration(view_logits, labels if view_labels is None else view_labels, num_classes)
    notes: list[str] = []
    for name, t in (("temperature", temperature), ("TTA temperature", tta.temperature if tta else 1.0)):
        if not TEMPERATURE_BOUNDS[0] * 1.01 < t < TEMPERATURE_BOUNDS[1] / 1.01:
            notes.append(f"{name} {t:.3g} is at the edge of the search range {TEMPERATURE_BOUNDS}")
    rare = conformal.always_included(coverage)
    if rare:
        notes.append(
            f"classes {rare} have too few calibration images ({conformal.counts[rare].tolist()}) for coverage "
            f"{coverage}: they are in every prediction set"
        )
    if features is None:
        return Calibration(temperature, coverage, conformal, notes=tuple(notes), tta=tta, precision=precision)
    stats, held_scores = fit_ood_held_out(features, labels, num_classes, holdout=ood_holdout, seed=seed)
    threshold = ood_threshold(held_scores, false_alarm)
    n_fit = len(check_matrix(features, "features")) - len(held_scores)
    notes.append(f"OOD statistics from {n_fit} images, threshold from {len(held_scores)} held-out images")
    if (len(held_scores) + 1) * (1.0 - false_alarm) > len(held_scores):
        notes.append(f"too few held-out images for false_alarm {false_alarm}: the threshold is their largest score")
    detector = OODDetector((stats,), (threshold,), float(false_alarm), str(feature_kind))
    if framing_features is not None:
        detector = with_framing(detector, [features], [framing_features], framing_zooms)
    return Calibration(temperature, coverage, conformal, detector, tuple(notes), tta, precision=precision)
