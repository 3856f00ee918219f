"""Calibration fitted once on out-of-fold (OOF) predictions: a temperature, Mondrian conformal sets, an OOD score.

    OOF logits (N,C), labels (N,) ─ fit_temperature ─► T        softmax(logits / T): confidences that mean it
            └─ softmax(logits / T) ─ fit_conformal ─► ConformalScores (1 - p_y and class y of every OOF image)
    OOF logits of the 8 TTA views (8,N,C) ─ fit_view_calibration ─► ViewCalibration (its own T and scores)
    OOF features (N,D) ─ ood_split ─┬─ 80%: fit_mahalanobis ─► MahalanobisStats (class means, shared precision)
                                    └─ 20%: mahalanobis_score ─ ood_threshold ─► threshold
                                                      │   (one per member of a fold ensemble: OODDetector)
                          fit_calibration ─► Calibration ─ to_meta() (JSON) + to_tensors() (arrays) ─► checkpoint
                                                      └─ apply(logits, features) ─► CalibratedOutput: probs, sets,
                                                         ood_score, uncertain() -- the one way predict, evaluate
                                                         and the benchmarks turn outputs into what a user sees

The OOD score is normalised: a member's squared distance divided by its threshold, averaged over the members of a
fold ensemble (each in its own feature space), so > 1 means "out of distribution" for every checkpoint. With a
framing check (`fit_framing_discriminator`: a logistic regression telling the calibration cells from their zoomed-out
copies, decisions 0011 and 0013) an image it calls zoomed out scores > 1 as well, however close it is to a class.

Conformal p-values are crepes' (docs/decisions/0005-conformal-library.md), counted without its per-image loop;
`coverage_report`, `flag_report` and `ood_auroc` are the matching metrics for `cellnet evaluate`.
numpy/scipy/sklearn only.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
import scipy.linalg
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp
from scipy.special import softmax as _softmax
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from cellnet.config import check_framing_zooms
from cellnet.constants import FEATURE_KINDS, POOLED
from cellnet.errors import CalibrationError, CellnetError, CheckpointError, ConfigError

DEFAULT_COVERAGE = 0.95
DEFAULT_FALSE_ALARM = 0.05
TEMPERATURE_BOUNDS = (0.05, 20.0)
OOD_HOLDOUT = 0.2  # share of OOF images that set the OOD threshold instead of fitting the statistics
CONFORMAL_METHOD = (
    "Mondrian (class-conditional) split conformal; score 1 - p_y; non-smoothed p-values; p >= 1 - coverage"
)
CONFORMAL_LIBRARY = "numpy (the p-values of crepes' ConformalClassifier, smoothing=False)"
OOD_METHOD = "Mahalanobis (Lee et al. 2018): min over classes of squared distance, shared Ledoit-Wolf covariance"
TENSOR_KEYS = ("conformal_scores", "conformal_labels")
OOD_TENSOR_KEYS = ("ood_means", "ood_precision")
FRAMING_TENSOR_KEY = "ood_framing_weights"  # the framing discriminator's (k, D + 1) weights and bias (decision 0013)
FRAMING_MEANS_KEY = "ood_framing_means"  # decision 0011's zoomed-out class means: read from older checkpoints only
FRAMING_DISCRIMINATOR = "logistic regression, calibration cells vs their mirrored zoom-outs (decision 0013)"
FRAMING_CLASS_MEANS = "nearer a zoomed-out class mean than to every class mean (decision 0011)"


# ---------------------------------------------------------------------------------------------------------------
# Validation


def check_coverage(coverage: float) -> float:
    """`coverage` as a float in (0, 1); the message names the CLI flag because that is where users set it."""
    if isinstance(coverage, bool) or not isinstance(coverage, numbers.Real) or not 0.0 < coverage < 1.0:
        raise ConfigError(f"--coverage must be in (0, 1), got {coverage}")
    return float(coverage)


def check_false_alarm(false_alarm: float) -> float:
    if isinstance(false_alarm, bool) or not isinstance(false_alarm, numbers.Real) or not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    return float(false_alarm)


def _labels(labels: Any, num_classes: int, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise CalibrationError(f"labels must be 1-D with one label per row ({n}), got shape {y.shape}")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        raise CalibrationError(f"labels must be in [0, {num_classes}), got {bad[:5].tolist()}")
    return y


def _matrix(x: Any, name: str, columns: int | None = None) -> np.ndarray:
    """`x` as a finite float64 (N, columns) array."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or (columns is not None and a.shape[1] != columns):
        want = f"(N, {columns})" if columns is not None else "2-D"
        raise CalibrationError(f"{name} must be {want}, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise CalibrationError(f"{name} must be finite; {int((~np.isfinite(a)).any(axis=1).sum())} rows are not")
    return a


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
    y = _labels(labels, z.shape[2], z.shape[1])
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
    """All a Mondrian conformal classifier keeps: each calibration image's score 1 - p_y and its class y."""

    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    num_classes: int

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
        object.__setattr__(self, "labels", _labels(self.labels, self.num_classes, len(scores)))

    @property
    def counts(self) -> np.ndarray:
        """Calibration images per class (q_c)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def always_included(self, coverage: float) -> list[int]:
        """Classes too rare to ever leave a set at `coverage`: even the least conforming image gets the p-value
        1 / (q_c + 1), which is still >= 1 - coverage (q_c + 1 <= 1 / (1 - coverage); the same float comparison as
        `prediction_sets`, so the two always agree)."""
        coverage = check_coverage(coverage)
        return [c for c, q in enumerate(self.counts.tolist()) if 1.0 / (q + 1) >= 1.0 - coverage]


def fit_conformal(probs: Any, labels: Any, num_classes: int) -> ConformalScores:
    """Calibration scores from (temperature-scaled) probabilities of images no model trained on (OOF)."""
    p = _matrix(probs, "probs", num_classes)
    y = _labels(labels, num_classes, len(p))
    return ConformalScores(nonconformity(p)[np.arange(len(y)), y], y, num_classes)


def conformal_p_values(probs: Any, conformal: ConformalScores) -> np.ndarray:
    """(N, C) non-smoothed Mondrian p-values: p_c = (#{calibration scores of class c >= 1 - p_c} + 1) / (q_c + 1).

    The numbers of crepes' `ConformalClassifier.predict_p(alphas, bins, smoothing=False)` (decision 0005; the tests
    compare the two), counted by binary search in each class's sorted scores: crepes counts with a Python loop per
    image and class, 40 ms per 2,048 images, a third of what a calibration added to predict.
    """
    alphas = nonconformity(_matrix(probs, "probs", conformal.num_classes))
    p = np.empty(alphas.shape, dtype=np.float64)
    for c in range(conformal.num_classes):
        scores = np.sort(conformal.scores[conformal.labels == c])
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
# Out-of-distribution score (Mahalanobis distance on penultimate features)


@dataclass(frozen=True)
class MahalanobisStats:
    """Class means and the shared precision matrix of class-centred features (float32 to store)."""

    means: np.ndarray  # (C, D)
    precision: np.ndarray  # (D, D), symmetric positive definite

    def __post_init__(self) -> None:
        means = np.asarray(self.means)
        precision = np.asarray(self.precision)
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise CalibrationError(
                f"OOD means must be (C, D) and precision (D, D), got {means.shape} and {precision.shape}"
            )
        if not (np.isfinite(means).all() and np.isfinite(precision).all()):
            raise CalibrationError("OOD means and precision must be finite")
        object.__setattr__(self, "means", np.ascontiguousarray(means, dtype=np.float32))
        object.__setattr__(self, "precision", np.ascontiguousarray(precision, dtype=np.float32))


def fit_mahalanobis(features: Any, labels: Any, num_classes: int) -> MahalanobisStats:
    """Means per class and a Ledoit-Wolf shrunk covariance of the class-centred features, inverted by Cholesky.

    Shrinkage keeps the covariance well conditioned when D (512-1280) is close to N or features are dead (always 0);
    sklearn's own `precision_` uses an eigendecomposition (pinvh), ~100x slower than Cholesky at D = 1024.
    """
    x = _matrix(features, "features")
    y = _labels(labels, num_classes, len(x))
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        raise CalibrationError(
            f"fit_mahalanobis needs features of every class; classes {np.flatnonzero(counts == 0)} have none"
        )
    means = _class_means(x, y, num_classes)
    cov = LedoitWolf(assume_centered=True, store_precision=False).fit(x - means[y]).covariance_
    try:
        factor = scipy.linalg.cho_factor(cov)
    except np.linalg.LinAlgError as e:
        raise CalibrationError(f"features have no within-class variance (trace {np.trace(cov):.3g}); cannot fit") from e
    precision = scipy.linalg.cho_solve(factor, np.eye(len(cov)))
    return MahalanobisStats(means, (precision + precision.T) / 2)


def mahalanobis_score(features: Any, stats: MahalanobisStats) -> np.ndarray:
    """(N,) min over classes of (x - mu_c)' P (x - mu_c): higher = more unusual. Non-finite features score NaN."""
    return class_distances(features, stats).min(axis=1)


def class_distances(features: Any, stats: MahalanobisStats, extra_means: np.ndarray | None = None) -> np.ndarray:
    """(N, C) squared distances (x - mu_c)' P (x - mu_c) to the class means, then to `extra_means` (K, D) in the same
    metric (N, C + K).

    Expanded as x'Px - 2 x'P mu_c + mu_c'P mu_c: one (N, D) x (D, D) product instead of C of them; centring on the
    mean of the class means first keeps the cancellation small. The products run in float32 (the features and the
    stored precision are float32 already; 3x faster than float64 at D = 1,072; d off by up to 5e-5 of itself at
    D = 16, 5e-6 at D = 1,072), the sums over features in float64.
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != stats.means.shape[1]:
        raise CalibrationError(f"features must be (N, {stats.means.shape[1]}), got shape {x.shape}")
    means = stats.means.astype(np.float64)
    if extra_means is not None:
        means = np.concatenate([means, np.asarray(extra_means, dtype=np.float64)])
    centre = stats.means.mean(axis=0, dtype=np.float64)
    x, means = x - centre.astype(np.float32), means - centre
    xp = x @ stats.precision
    mp = means @ stats.precision.astype(np.float64)
    cross = (xp @ means.T.astype(np.float32)).astype(np.float64)
    d = (xp * x).sum(axis=1, dtype=np.float64)[:, None] - 2.0 * cross + (mp * means).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def fit_framing_discriminator(features: Any, zoomed_features: Any) -> np.ndarray:
    """(D + 1,) weights and bias of a logistic regression telling `features` (N, D: one model's features of
    calibration cells as they are) from `zoomed_features` (F, N, D: the same cells zoomed out by each of F factors,
    `cellnet.shifts.zoomed_copies`). x @ w[:-1] + w[-1] > 0 says "framed like a zoom-out": the framing check of
    `OODDetector.score` (decision 0013).

    sklearn's LogisticRegression on standardised features (C = 1, its default; both sides weighted equally), the
    scaling folded into the weights so predict needs one dot product. Class-agnostic: what it learns is the framing,
    not the cell (decision 0011's class means caught 97% of full-frame validation cells, this 99.8%)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = _matrix(features, "features")
    z = np.asarray(zoomed_features, dtype=np.float64)
    if z.ndim != 3 or len(z) < 1 or z.shape[2] != x.shape[1]:
        raise CalibrationError(f"zoomed features must be (F, N, {x.shape[1]}), got shape {z.shape}")
    if not (np.isfinite(x).all() and np.isfinite(z).all()):
        raise CalibrationError("the framing check needs finite features")
    if len(x) < 2:
        raise CalibrationError(f"the framing check needs at least 2 cells and their zoom-outs, got {len(x)}")
    both = np.concatenate([x, z.reshape(-1, x.shape[1])])
    zoomed = np.r_[np.zeros(len(x)), np.ones(len(both) - len(x))]
    scaler = StandardScaler().fit(both)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(scaler.transform(both), zoomed)
    w = model.coef_[0] / scaler.scale_
    return np.append(w, model.intercept_[0] - w @ scaler.mean_)


def _class_means(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, D) the mean of each class's rows of `x` (every class present: the callers check)."""
    return np.stack([x[y == c].mean(axis=0) for c in range(num_classes)])


def ood_split(labels: Any, holdout: float = OOD_HOLDOUT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, threshold): `holdout` of each class's images set aside to set the OOD threshold.

    Scores of the images the statistics were fitted on run low (the fit bends towards them: at D = 1024 and
    N = 5,000 an in-sample 95% threshold flagged 73% of new in-distribution images), and k-fold scores of
    statistics that shrink more than the final fit still flagged 7% at a stated 5%. A split is exact: the held-out
    images are new to the stored statistics, as deployed images are. Every class keeps at least one image to fit.

    Not sklearn's StratifiedShuffleSplit: it refuses a class with a single image ("The least populated class in y
    has only 1 member") and rounds per-class shares so that a small class can lose all its images to the held-out
    side; the statistics need every class on the fit side.
    """
    y = np.asarray(labels)
    if not 0.0 < holdout < 1.0:
        raise CalibrationError(f"holdout must be in (0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    held = [
        idx[: min(round(holdout * len(idx)), len(idx) - 1)]
        for idx in (rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y))
    ]
    threshold_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if not len(threshold_idx):
        raise CalibrationError(f"no image left for the OOD threshold: {len(y)} images, holdout {holdout}")
    return np.setdiff1d(np.arange(len(y)), threshold_idx), threshold_idx


def ood_threshold(scores: Any, false_alarm: float = DEFAULT_FALSE_ALARM) -> float:
    """The conformal (1 - false_alarm) quantile of in-distribution scores: the ceil((n + 1)(1 - false_alarm))-th
    smallest, so a new exchangeable image exceeds it with probability <= false_alarm (numpy's
    `quantile(method="higher")` is a rank lower). With n < 1 / false_alarm - 1 images this is the largest score."""
    false_alarm = check_false_alarm(false_alarm)
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if not len(s) or not np.isfinite(s).all():
        raise CalibrationError(
            f"ood_threshold needs finite scores, got {len(s)} with {int((~np.isfinite(s)).sum())} bad"
        )
    rank = math.ceil((len(s) + 1) * (1.0 - false_alarm) - 1e-9)
    return float(s[min(rank, len(s)) - 1])


@dataclass(frozen=True)
class OODDetector:
    """Mahalanobis statistics and threshold per model whose features are scored (1, or the k members of a fold
    ensemble). score(x) = mean over members of d_i(x) / threshold_i; > 1 is out of distribution.

    `features` says what the statistics measure (predict computes the same). `threshold_from` says where the
    thresholds came from: "held-out" (in-distribution images new to each member's statistics: exact for its
    false-alarm rate) or "transferred" (a refit model has no unseen images; its threshold is its seen images' median
    score times the ratio threshold / seen-median that its fold models showed, see `fit_ood_transferred`). For an
    ensemble the mean of k normalised scores exceeds 1 less often than each member's
    does: its false-alarm rate is at most about `false_alarm`.

    `framing_weights` (per member, (D + 1,): `fit_framing_discriminator`) add the framing check: a cell whose
    logit x @ w + b of "zoomed out by one of `framing_zooms`" is > 0 scores 1 + that logit, at least. A cell shown
    smaller than the training cells can sit near a class mean (a large cell shrunk into a platelet-sized one,
    decision 0011) while its framing still shows: the discriminator's boundary is its own (no threshold is
    transferred to a refit). `framing_means` (per member (F * C, D)) is decision 0011's older check, kept so the
    checkpoints that store it predict as they did: nearer a zoomed-out class mean than to every class mean, by the
    normalised difference."""

    members: tuple[MahalanobisStats, ...]
    thresholds: tuple[float, ...]
    false_alarm: float
    features: str  # what the statistics measure: one of cellnet.constants.FEATURE_KINDS (predict computes the same)
    threshold_from: str = "held-out"  # held-out images, or "transferred" (a refit: see fit_ood_transferred)
    framing_zooms: tuple[float, ...] = ()  # the F zoom factors (< 1) the framing check was fitted at, () = no check
    framing_weights: tuple[np.ndarray, ...] = ()  # per member (D + 1,): the framing discriminator (decision 0013)
    framing_means: tuple[np.ndarray, ...] = ()  # per member (F * C, D): decision 0011's check, older checkpoints

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.thresholds):
            raise CalibrationError(f"{len(self.members)} OOD members but {len(self.thresholds)} thresholds")
        if not all(math.isfinite(t) and t > 0 for t in self.thresholds):
            raise CalibrationError(f"OOD thresholds must be finite and > 0, got {list(self.thresholds)}")
        shapes = {m.means.shape for m in self.members}
        if len(shapes) != 1:
            raise CalibrationError(f"OOD members disagree on (classes, features): {sorted(shapes)}")
        check_false_alarm(self.false_alarm)
        if self.features not in FEATURE_KINDS:
            raise CalibrationError(f"OOD features must be one of {', '.join(FEATURE_KINDS)}, got {self.features!r}")
        if self.threshold_from not in ("held-out", "transferred"):
            raise CalibrationError(f"OOD threshold_from must be held-out or transferred, got {self.threshold_from!r}")
        if self.framing_weights or self.framing_means or self.framing_zooms:
            zooms = check_framing_zooms(self.framing_zooms)
            if not zooms:
                raise CalibrationError("the OOD framing check needs its zoom factors")
            if bool(self.framing_weights) == bool(self.framing_means):
                raise CalibrationError("the OOD framing check needs either discriminator weights or class means")
            name, arrays = ("weights", self.framing_weights) if self.framing_weights else ("means", self.framing_means)
            want = (
                (self.feature_dim + 1,) if self.framing_weights else (len(zooms) * self.num_classes, self.feature_dim)
            )
            got = [np.shape(a) for a in arrays]
            if len(got) != len(self.members) or any(shape != want for shape in got):
                raise CalibrationError(f"OOD framing {name} must be {len(self.members)} x {want}, got {got}")
            if not all(np.isfinite(a).all() for a in arrays):
                raise CalibrationError(f"OOD framing {name} must be finite")
            object.__setattr__(self, "framing_zooms", zooms)
            kept = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)
            object.__setattr__(self, "framing_weights" if self.framing_weights else "framing_means", kept)

    @property
    def num_classes(self) -> int:
        return int(self.members[0].means.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.members[0].means.shape[1])

    @property
    def framing_check(self) -> str | None:
        """How the framing check decides (FRAMING_DISCRIMINATOR or FRAMING_CLASS_MEANS), None without one."""
        if self.framing_weights:
            return FRAMING_DISCRIMINATOR
        return FRAMING_CLASS_MEANS if self.framing_means else None

    def score(self, features: Any) -> np.ndarray:
        """(N,) normalised score of features (N, D) for one member or (k, N, D) for k members; NaN stays NaN."""
        return np.mean([score for score, _ in self._members_scored(features)], axis=0)

    def framing_margin(self, features: Any) -> np.ndarray:
        """(N,) the framing check alone, mean over members; > 0 = framed like a zoom-out. The discriminator's logit,
        or (older checkpoints) (distance to the nearest class - distance to the nearest zoomed-out class) /
        threshold."""
        if self.framing_check is None:
            raise CalibrationError("this OOD detector has no framing check")
        return np.mean([margin for _, margin in self._members_scored(features) if margin is not None], axis=0)

    def _members_scored(self, features: Any) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per member, (its normalised score with the framing check, the check's margin or None)."""
        x = np.asarray(features)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != len(self.members):
            raise CalibrationError(
                f"features must be (N, D) or ({len(self.members)}, N, D), got shape {np.shape(features)}"
            )
        out = []
        for i, (stats, threshold) in enumerate(zip(self.members, self.thresholds, strict=True)):
            c = self.num_classes
            d = class_distances(x[i], stats, self.framing_means[i] if self.framing_means else None)
            nearest = d[:, :c].min(axis=1)
            score = nearest / threshold
            margin = None
            if self.framing_weights:
                w = self.framing_weights[i]
                margin = (x[i].astype(np.float32) @ w[:-1]).astype(np.float64) + float(w[-1])  # > 0: zoomed out
            elif self.framing_means:
                margin = (nearest - d[:, c:].min(axis=1)) / threshold  # > 0: nearer a zoomed-out class
            if margin is not None:
                score = np.where(margin > 0, np.maximum(score, 1.0 + margin), score)
            out.append((score, margin))
        return out


def with_framing(
    detector: OODDetector, features: list[Any], zoomed_features: list[Any], zooms: tuple[float, ...]
) -> OODDetector:
    """`detector` with the framing check: per member, its features (N_i, D) of some cells as they are and (F, N_i, D)
    of the same cells zoomed out by each of `zooms` (any cells like those its statistics describe: a refit's own
    training cells are fine, decision 0013 measured both)."""
    if len(zoomed_features) != len(detector.members) or len(features) != len(detector.members):
        raise CalibrationError(
            f"framing features for {len(zoomed_features)} members, the detector has {len(detector.members)}"
        )
    zooms = check_framing_zooms(zooms)
    if not zooms:
        raise CalibrationError("the framing check needs at least one zoom factor")
    weights = []
    for x, z in zip(features, zoomed_features, strict=True):
        if np.shape(z)[0] != len(zooms):
            raise CalibrationError(f"framing features for {np.shape(z)[0]} zooms, {len(zooms)} zoom factors given")
        if np.shape(z)[1:] != np.shape(x):
            raise CalibrationError(f"zoomed features {np.shape(z)[1:]} per zoom, the cells' features {np.shape(x)}")
        weights.append(fit_framing_discriminator(x, z))
    return dataclasses.replace(detector, framing_weights=tuple(weights), framing_means=(), framing_zooms=zooms)


def fit_ood_held_out(
    features: Any, labels: Any, num_classes: int, *, holdout: float = OOD_HOLDOUT, seed: int = 0
) -> tuple[MahalanobisStats, np.ndarray]:
    """Statistics fitted on 1 - `holdout` of `features` (images the scoring model did not train on), and the
    scores of the held-out rest (for `ood_threshold`)."""
    x = _matrix(features, "features")
    y = _labels(labels, num_classes, len(x))
    fit_idx, threshold_idx = ood_split(y, holdout, seed)
    stats = fit_mahalanobis(x[fit_idx], y[fit_idx], num_classes)
    return stats, mahalanobis_score(x[threshold_idx], stats)


def transferred_threshold(seen_scores: Any, pairs: list[tuple[Any, Any]], false_alarm: float) -> float:
    """A threshold for a model scored only on images it trained on (a refit on all data): the median of its
    `seen_scores` times the mean, over fold models, of (threshold from their unseen scores) / (median of their seen
    scores). The ratio carries what training on an image does to its score, nothing else: every score here must come
    from statistics that did not see the image (`fit_ood_transferred` holds `OOD_HOLDOUT` of the seen images out).

    `pairs`: per fold model, (scores of its own training images, scores of its validation images).
    """
    ratios = [ood_threshold(unseen, false_alarm) / float(np.median(seen)) for seen, unseen in pairs]
    return float(np.median(np.asarray(seen_scores, dtype=np.float64)) * np.mean(ratios))


def fit_ood_transferred(
    seen: Any,
    labels: Any,
    num_classes: int,
    folds: list[tuple[Any, Any, Any]],
    false_alarm: float,
    *,
    holdout: float = OOD_HOLDOUT,
    seed: int = 0,
) -> tuple[MahalanobisStats, float]:
    """OOD statistics and threshold of a model trained on all its images (`seen`: its features of them), from fold
    models that have unseen ones: `folds` = per fold model (its features of its training images, their labels, its
    features of its validation images).

    Every score is held out from the statistics it is measured with (`fit_ood_held_out` on the seen side), so the
    seen-vs-unseen ratio measures the model's memory of its training images and not the statistics' fit to them:
    fold models fitted on half the images bend their statistics towards them far more than a refit on all of them
    does (in D = 1,504 with ~800 images against ~1,650), and a ratio of in-sample medians carried that over into a
    threshold ~1.5x too high (decision 0010: 0.4-1.6% of clean held-out cells flagged at a stated 5%)."""
    pairs = []
    for i, (own, own_labels, unseen) in enumerate(folds):
        stats_i, seen_i = fit_ood_held_out(own, own_labels, num_classes, holdout=holdout, seed=seed + i)
        pairs.append((seen_i, mahalanobis_score(unseen, stats_i)))
    stats, seen_scores = fit_ood_held_out(seen, labels, num_classes, holdout=holdout, seed=seed)
    return stats, transferred_threshold(seen_scores, pairs, false_alarm)


# ---------------------------------------------------------------------------------------------------------------
# What a user sees: the one way from a model's outputs to probabilities, sets and flags


def is_ood(score: Any) -> np.ndarray:
    """The out-of-distribution flag of normalised OOD scores: above 1, or not a number (non-finite features)."""
    return ~(np.asarray(score, dtype=np.float64) <= 1.0)


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

    Fitted on fp32 outputs of single (or 8 averaged) views, and applied to the same: `cellnet.predict.infer` never
    runs a calibrated model in reduced precision, and the OOD score always reads the identity view's features."""

    temperature: float
    coverage: float  # default for `apply`; `cellnet predict --coverage` overrides it
    conformal: ConformalScores
    ood: OODDetector | None = None
    notes: tuple[str, ...] = ()
    tta: ViewCalibration | None = None

    def __post_init__(self) -> None:
        for t in (self.temperature, *([self.tta.temperature] if self.tta else [])):
            if not (isinstance(t, numbers.Real) and 0 < t < math.inf):
                raise CalibrationError(f"temperature must be a positive finite number, got {t}")
        check_coverage(self.coverage)
        if self.ood is not None and self.ood.num_classes != self.num_classes:
            raise CalibrationError(f"ood means have {self.ood.num_classes} classes, expected {self.num_classes}")
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
            "conformal": {"method": CONFORMAL_METHOD, "library": CONFORMAL_LIBRARY},
            "ood": ood,
            "tta": tta,
            "precision": "float32",
            "notes": list(self.notes),
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
            conformal = ConformalScores(tensors["conformal_scores"], labels, num_classes)
            if len(conformal.scores) != meta["num_calibration"]:
                raise CalibrationError(f"{len(conformal.scores)} conformal scores, meta says {meta['num_calibration']}")
            counts = meta.get("calibration_counts")
            if counts is not None and list(counts) != conformal.counts.tolist():
                raise CalibrationError(
                    f"calibration counts {conformal.counts.tolist()} do not match the meta's {counts}"
                )
            tta = None
            if tta_meta is not None:
                scores = ConformalScores(tensors["tta_conformal_scores"], tensors["tta_conformal_labels"], num_classes)
                if len(scores.scores) != tta_meta["num_calibration"]:
                    raise CalibrationError(
                        f"{len(scores.scores)} TTA conformal scores, meta says {tta_meta['num_calibration']}"
                    )
                tta = ViewCalibration(float(tta_meta["temperature"]), scores, int(tta_meta["views"]))
            return cls(
                temperature=float(meta["temperature"]),
                coverage=float(meta["coverage"]),
                conformal=conformal,
                ood=_ood_from(ood_meta, tensors) if ood_meta is not None else None,
                notes=tuple(str(n) for n in meta.get("notes", ())),
                tta=tta,
            )
        except (KeyError, TypeError, ValueError, CellnetError) as e:
            raise CheckpointError(f"calibration in checkpoint is inconsistent: {e}") from e


def _ood_from(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> OODDetector:
    means, precision = np.asarray(tensors["ood_means"]), np.asarray(tensors["ood_precision"])
    if means.ndim != 3 or precision.ndim != 3 or len(means) != len(precision):
        raise CalibrationError(f"ood means {means.shape} / precision {precision.shape} not (k, C, D) / (k, D, D)")
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
) -> Calibration:
    """Temperature first, conformal scores on the temperature-scaled OOF probabilities, then (with features) the
    Mahalanobis statistics on 1 - `ood_holdout` of the images and the threshold on the rest (see `ood_split`).
    `view_logits` (V, M, C: the TTA views of the images `view_labels` label, default the same N) adds the TTA
    calibration. `feature_kind` (required with `features`) says what they are: `cellnet.predict.Inference`'s.
    `framing_features` (F, N, D: the same images zoomed out by each of `framing_zooms`) add the framing check,
    fitted against `features`."""
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
        return Calibration(temperature, coverage, conformal, notes=tuple(notes), tta=tta)
    stats, held_scores = fit_ood_held_out(features, labels, num_classes, holdout=ood_holdout, seed=seed)
    threshold = ood_threshold(held_scores, false_alarm)
    n_fit = len(_matrix(features, "features")) - len(held_scores)
    notes.append(f"OOD statistics from {n_fit} images, threshold from {len(held_scores)} held-out images")
    if (len(held_scores) + 1) * (1.0 - false_alarm) > len(held_scores):
        notes.append(f"too few held-out images for false_alarm {false_alarm}: the threshold is their largest score")
    detector = OODDetector((stats,), (threshold,), float(false_alarm), str(feature_kind))
    if framing_features is not None:
        detector = with_framing(detector, [features], [framing_features], framing_zooms)
    return Calibration(temperature, coverage, conformal, detector, tuple(notes), tta)


# ---------------------------------------------------------------------------------------------------------------
# Metrics for `cellnet evaluate` (None where undefined, so the dicts are JSON as they are)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def coverage_report(sets: np.ndarray, labels: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Empirical coverage (true class in the set), mean set size and share of empty sets, overall and per class."""
    sets = np.asarray(sets, dtype=bool)
    y = _labels(labels, len(class_names), len(sets))
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
