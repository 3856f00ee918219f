"""Which conformal scores a fine-tuned model keeps, class by class: its parent's where the new lab's cells agree.

Why: with n labelled cells of a class (5-10 is the use case) no class-conditional 95% set can leave that class
out, so a finetune's sets were pooled over the classes; and the pooled 95% quantile of ~40 cross-fitted scores is
one of its two largest, so one badly read labelled cell made every set large. On tecom the answered share swung
0-85% with the draw of ten labelled cells a class (docs/benchmarks.md, "Round 4").

The parent was calibrated on hundreds of its own lab's cells per class. For each class the new lab has cells of,
its cross-fitted (out-of-fold) cells are put through the parent's class-conditional 95% sets: where no more than
floor(5% of n) of them fall outside -- none, for n < 20 -- the new cells agree with the parent's scores and the
class keeps them (the parent's promise: the true class in the set 95% of the time for that class, *if* this lab's
scores of that class are no larger than the parent's lab's, which n cells can check only coarsely). Every other
class (disagreeing, or with no cells here) gets the pooled scores of all the cross-fitted cells: the marginal
promise, as before. Both kinds live in one Mondrian `ConformalScores` (a pooled class's calibration set is the
pooled scores), so predict needs nothing new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cellnet.calibrate import ConformalScores, conformal_p_values, fit_conformal


@dataclass(frozen=True)
class LabConformal:
    """The scores kept (`scores`), the pooled alternative (`pooled`), and per class of the new lab: its cells,
    how many of them the parent's sets left out, and whether the parent's scores were kept."""

    scores: ConformalScores
    pooled: ConformalScores
    cells: dict[int, int]
    missed: dict[int, int]
    parents: tuple[int, ...]  # classes that kept the parent's scores

    def describe(self, classes: tuple[str, ...]) -> str:
        """One line: which classes kept the parent's sets (checked on how many cells) and which are pooled."""
        kept = [f"{classes[c]} ({self.cells[c]} cells, {self.missed[c]} missed)" for c in self.parents]
        pooled = [classes[c] for c in range(len(classes)) if c not in self.parents]
        return (
            f"class-conditional sets from the parent's calibration for {', '.join(kept) or 'no class'}; pooled "
            f"(marginal) sets over the labelled cells for {', '.join(pooled) or 'no class'}"
        )


def allowed_misses(cells: int, coverage: float) -> int:
    """The most cross-fitted cells of a class the parent's sets may leave out while still agreeing with them."""
    return math.floor((1.0 - coverage) * cells + 1e-9)


def lab_conformal(
    probs: np.ndarray, labels: np.ndarray, parent: ConformalScores | None, coverage: float
) -> LabConformal:
    """`probs`: the labelled cells' cross-fitted, temperature-scaled probabilities (N, C); `labels` their classes;
    `parent`: the parent's conformal scores (None, or pooled ones: every class pooled)."""
    pooled = fit_conformal(probs, labels, probs.shape[1], mondrian=False)
    cells = {int(c): int(q) for c, q in enumerate(np.bincount(labels, minlength=probs.shape[1])) if q}
    missed: dict[int, int] = {}
    if parent is not None and parent.mondrian and parent.num_classes == probs.shape[1]:
        covered = conformal_p_values(probs, parent)[np.arange(len(labels)), labels] >= 1.0 - coverage
        vacuous = set(parent.always_included(coverage))  # too few of the parent's own: its sets never leave it out
        missed = {c: int((~covered[labels == c]).sum()) for c in cells if c not in vacuous}
    parents = tuple(c for c in cells if c in missed and missed[c] <= allowed_misses(cells[c], coverage))
    if not parents:
        return LabConformal(pooled, pooled, cells, missed, ())
    assert parent is not None
    parts = [
        (parent.scores[parent.labels == c], c) if c in parents else (pooled.scores, c) for c in range(probs.shape[1])
    ]
    scores = np.concatenate([s for s, _ in parts])
    owners = np.concatenate([np.full(len(s), c, dtype=np.int64) for s, c in parts])
    return LabConformal(ConformalScores(scores, owners, probs.shape[1]), pooled, cells, missed, parents)
