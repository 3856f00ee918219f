"""A finetune's conformal scores: the parent's for a class whose labelled cells agree with them, else pooled."""

from __future__ import annotations

import numpy as np

from cellnet.calibrate import ConformalScores, prediction_sets
from cellnet.lab_conformal import allowed_misses, lab_conformal

CLASSES = 3


def parent_scores(rng: np.random.Generator, per_class: int = 200) -> ConformalScores:
    """A confident parent: its own lab's true-class probabilities near 0.9 (scores near 0.1)."""
    labels = np.repeat(np.arange(CLASSES), per_class)
    return ConformalScores(rng.uniform(0.0, 0.2, len(labels)).astype(np.float32), labels, CLASSES)


def confident(labels: np.ndarray, p_true: np.ndarray) -> np.ndarray:
    """(N, C) probabilities with `p_true` on each cell's class and the rest spread evenly."""
    probs = np.repeat(((1 - p_true) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    probs[np.arange(len(labels)), labels] = p_true
    return probs


def test_a_class_whose_cells_agree_keeps_the_parents_sets_and_one_that_does_not_is_pooled() -> None:
    rng = np.random.default_rng(0)
    parent = parent_scores(rng)
    labels = np.repeat(np.arange(CLASSES), 10)
    p_true = np.full(len(labels), 0.95)
    p_true[labels == 2] = np.linspace(0.4, 0.95, 10)  # class 2: this lab's cells read far less surely
    choice = lab_conformal(confident(labels, p_true), labels, parent, 0.95)
    assert choice.parents == (0, 1) and choice.missed[0] == 0 and choice.missed[2] > allowed_misses(10, 0.95)
    kept = choice.scores
    assert kept.mondrian and np.array_equal(np.sort(kept.scores[kept.labels == 0]), np.sort(parent.scores[:200]))
    assert np.array_equal(np.sort(kept.scores[kept.labels == 2]), np.sort(choice.pooled.scores))
    # a sure cell of class 0: in its set by the parent's scores, class 1 left out by them, class 2 by the pooled
    sure = confident(np.array([0]), np.array([0.9]))
    assert prediction_sets(sure, kept, 0.95).sum() == 1
    line = choice.describe(("a", "b", "c"))
    assert "a (10 cells, 0 missed)" in line and line.endswith("for c")


def test_no_parent_scores_or_too_few_of_them_means_pooled_for_every_class() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(CLASSES), 10)
    probs = confident(labels, np.full(len(labels), 0.95))
    alone = lab_conformal(probs, labels, None, 0.95)
    assert alone.parents == () and alone.scores is alone.pooled and not alone.scores.mondrian
    few = parent_scores(rng, per_class=10)  # 10 of its own a class: its 95% sets never leave a class out
    assert lab_conformal(probs, labels, few, 0.95).parents == ()


def test_allowed_misses_is_five_percent_rounded_down() -> None:
    assert [allowed_misses(n, 0.95) for n in (5, 10, 19, 20, 40)] == [0, 0, 0, 1, 2]
