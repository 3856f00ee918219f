"""The out-of-distribution score: Mahalanobis distance on a model's features, with a framing check.

    OOF features (N,D) ─ ood_split ─┬─ 80%: fit_mahalanobis ─► MahalanobisStats (class means, shared precision)
                                    └─ 20%: mahalanobis_score ─ ood_threshold ─► threshold
                                               (fit_ood_held_out + ood_threshold; one per member of a fold ensemble)
    a refit (no unseen image) ─ fit_ood_transferred: its seen scores x the fold models' unseen/seen ratio ─► threshold
    cells and their zoom-outs ─ fit_framing_discriminator ─ with_framing ─► the framing check
                                                      │
                                 OODDetector(stats, thresholds, framing) ─ score(features) ─ is_ood: > 1 or NaN

The score is normalised: a member's squared distance divided by its threshold, averaged over the members of a fold
ensemble (each in its own feature space), so > 1 means "out of distribution" for every checkpoint. With a framing
check (`fit_framing_discriminator`: a logistic regression telling the calibration cells from their zoomed-out copies,
decisions 0011 and 0013) an image it calls zoomed out scores > 1 as well, however close it is to a class.
`cellnet.calibrate` stores a detector in the checkpoint and applies it; numpy/scipy/sklearn only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cellnet.checks import check_false_alarm, check_labels, check_matrix
from cellnet.config import check_framing_zooms
from cellnet.constants import FEATURE_KINDS
from cellnet.errors import CalibrationError

DEFAULT_FALSE_ALARM = 0.05
OOD_HOLDOUT = 0.2  # share of OOF images that set the OOD threshold instead of fitting the statistics
OOD_METHOD = "Mahalanobis (Lee et al. 2018): min over classes of squared distance, shared Ledoit-Wolf covariance"
FRAMING_DISCRIMINATOR = "logistic regression, calibration cells vs their mirrored zoom-outs (decision 0013)"
FRAMING_CLASS_MEANS = "nearer a zoomed-out class mean than to every class mean (decision 0011)"
FRAMING_FALSE_ALARM = 0.01  # the framing check fires on at most this share of cells like those it was fitted on
FRAMING_FOLDS = 5  # held-out logits for that budget: a cell and its zoom-outs left out together


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
    x = check_matrix(features, "features")
    y = check_labels(labels, num_classes, len(x))
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
    not the cell (decision 0011's class means caught 97% of full-frame validation cells, this 99.8%). Its bias is then
    raised where needed so that it fires on at most FRAMING_FALSE_ALARM of the cells as they are, judged on logits
    held out of the fit (`held_out_margins`): a boundary that cuts into one class's near side would otherwise add
    false alarms beyond the threshold's stated rate (the flag as a whole: at most false_alarm + FRAMING_FALSE_ALARM of
    cells like the calibration cells)."""
    x = check_matrix(features, "features")
    z = np.asarray(zoomed_features, dtype=np.float64)
    if z.ndim != 3 or len(z) < 1 or z.shape[2] != x.shape[1]:
        raise CalibrationError(f"zoomed features must be (F, N, {x.shape[1]}), got shape {z.shape}")
    if not (np.isfinite(x).all() and np.isfinite(z).all()):
        raise CalibrationError("the framing check needs finite features")
    if len(x) < 2:
        raise CalibrationError(f"the framing check needs at least 2 cells and their zoom-outs, got {len(x)}")
    both = np.concatenate([x, z.reshape(-1, x.shape[1])])
    zoomed = np.r_[np.zeros(len(x)), np.ones(len(both) - len(x))]
    w, bias = _discriminator(both, zoomed)
    margins = held_out_margins(both, zoomed, len(x))
    if (margins > 0).mean() > FRAMING_FALSE_ALARM:  # cells as they are, new to the fit: at most this share may fire
        bias -= float(np.quantile(margins, 1.0 - FRAMING_FALSE_ALARM, method="higher"))
    return np.append(w, bias)


def _discriminator(both: np.ndarray, zoomed: np.ndarray) -> tuple[np.ndarray, float]:
    """(weights, bias) of the logistic regression on standardised features, the scaling folded in."""
    scaler = StandardScaler().fit(both)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(scaler.transform(both), zoomed)
    w = model.coef_[0] / scaler.scale_
    return w, float(model.intercept_[0] - w @ scaler.mean_)


def held_out_margins(both: np.ndarray, zoomed: np.ndarray, n: int, folds: int = FRAMING_FOLDS) -> np.ndarray:
    """(n,) the logits of the first `n` rows of `both` (the cells as they are) from discriminators fitted without
    them: a cell and its zoom-outs are held out together (`folds`-fold, by cell). In-sample logits of a few dozen
    cells run far below those of the lab's next cells (a discriminator in 1,504 dimensions separates what it saw):
    the false-alarm budget must be judged on cells the fit did not see."""
    cell = np.r_[np.arange(n), np.tile(np.arange(n), (len(both) - n) // n)]
    out = np.empty(n)
    order = np.random.default_rng(0).permutation(n)
    for k in range(min(folds, n)):
        held = np.isin(cell, order[k :: min(folds, n)])
        w, b = _discriminator(both[~held], zoomed[~held])
        rows = np.flatnonzero(held[:n])
        out[rows] = both[rows] @ w + b
    return out


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


def framing_budget_on(detector: OODDetector, unseen: list[Any]) -> OODDetector:
    """`detector` with each member's framing bias raised (never lowered) so that it fires on at most
    FRAMING_FALSE_ALARM of `unseen` (per member, (N, D) features of cells as they are that its model never trained
    on). A finetune's discriminator is fitted on its final model's features of the cells it trained on; the rest of
    the lab reads less typical, and the held-out-by-cell budget alone let it fire on 7-28% of them (decision 0015);
    the fold models' out-of-fold features are the unseen cells at hand."""
    if not detector.framing_weights:
        raise CalibrationError("this OOD detector has no framing discriminator to budget")
    if len(unseen) != len(detector.framing_weights):
        raise CalibrationError(f"unseen features for {len(unseen)} members, the detector has {len(detector.members)}")
    weights = []
    for w, x in zip(detector.framing_weights, unseen, strict=True):
        margins = check_matrix(x, "unseen features").astype(np.float32) @ w[:-1] + w[-1]
        budgeted = w.copy()
        if (margins > 0).mean() > FRAMING_FALSE_ALARM:
            budgeted[-1] -= float(np.quantile(margins, 1.0 - FRAMING_FALSE_ALARM, method="higher"))
        weights.append(budgeted)
    return dataclasses.replace(detector, framing_weights=tuple(weights))


def fit_ood_held_out(
    features: Any, labels: Any, num_classes: int, *, holdout: float = OOD_HOLDOUT, seed: int = 0
) -> tuple[MahalanobisStats, np.ndarray]:
    """Statistics fitted on 1 - `holdout` of `features` (images the scoring model did not train on), and the
    scores of the held-out rest (for `ood_threshold`)."""
    x = check_matrix(features, "features")
    y = check_labels(labels, num_classes, len(x))
    fit_idx, threshold_idx = ood_split(y, holdout, seed)
    stats = fit_mahalanobis(x[fit_idx], y[fit_idx], num_classes)
    return stats, mahalanobis_score(x[threshold_idx], stats)


def transferred_threshold(seen_scores: Any, pairs: list[tuple[Any, Any]], false_alarm: float) -> float:
    """A threshold for a model scored only on images it trained on (a refit on all data): the median of its
    `seen_scores` times the mean, over fold models, of (threshold from their unseen scores) / (median of their seen
    scores). The ratio carries what training on an image does to its score, nothing else: every score here must come
    from statistics that did not see the image (`fit_ood_transferred` holds `OOD_HOLDOUT` of the seen images out).

    `pairs`: per fold model, (scores of its own training images, scores of its validation images).

    The ratio is one conformal quantile over every fold's unseen scores, each divided by its fold's seen median:
    the mean of per-fold quantiles (round 2 to 4) is the same for folds of hundreds of images, but with a finetune's
    few dozen cells a fold holds ~8 and its quantile is its largest score (~10% false alarms at a stated 5%, where
    the pooled quantile holds 5%: decision 0015, stop-4 addendum).
    """
    ratios = [np.asarray(unseen, dtype=np.float64) / float(np.median(seen)) for seen, unseen in pairs]
    ratio = ood_threshold(np.concatenate(ratios), false_alarm)
    return float(np.median(np.asarray(seen_scores, dtype=np.float64)) * ratio)


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


def is_ood(score: Any) -> np.ndarray:
    """The out-of-distribution flag of normalised OOD scores: above 1, or not a number (non-finite features)."""
    return ~(np.asarray(score, dtype=np.float64) <= 1.0)
