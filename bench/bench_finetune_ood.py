"""A finetune's OOD flag on the rest of its own lab: the rules it uses against the ones it replaced (decision 0015,
round 4 stop-4 addendum), on the same finetunes.

For each label draw: `cellnet finetune` on ten labelled cells a class of a lab (bench_new_lab's split; classes with
>= 12 cells of cellavision, the design lab, by default), its fold models and final model kept (`finetune`'s
`cross_fitted_calibration` is wrapped to see them), then the flag on the lab's other cells with
  before  the threshold from the mean over folds of (fold's 95% quantile / its seen median), the framing check's 1%
          judged on the labelled cells only (held-out logits of the final model's features)
  A       the threshold from one quantile over the folds' pooled normalised scores (`transferred_threshold` now)
  A+B     and the framing check's 1% also judged on the fold models' out-of-fold cells (`framing_budget_on`): what
          the checkpoint holds now
and the share of the other cells' zoom-outs (FRAMING_ZOOMS) the framing check catches, before and now.

    .venv/bin/python -m bench.bench_finetune_ood --runs runs/bench-deployed/after [--seeds 0] [--ft-seeds 0 1 2 3]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd, skip


def one_draw(best: Path, lab: Any, y: np.ndarray, draw: int, per_class: int, min_cells: int) -> dict[str, Any]:
    """One finetune on `per_class` labelled cells of `lab` (label draw `draw`), its flag on the other cells."""
    import cellnet.finetune as ft
    from bench.bench_new_lab import labelled_split
    from cellnet.checkpoint import in_memory, load_checkpoint
    from cellnet.constants import FRAMING_ZOOMS
    from cellnet.data.dataset import CellData
    from cellnet.ood import fit_framing_discriminator, fit_ood_held_out, mahalanobis_score, ood_threshold
    from cellnet.predict import infer
    from cellnet.shifts import zoomed_copies

    kept: dict[str, Any] = {}
    original = ft.cross_fitted_calibration

    def keep(parent, final, members, splits, data, config, coverage):  # type: ignore[no-untyped-def]
        kept.update(final=final, members=members, splits=splits, data=data, config=config)
        return original(parent, final, members, splits, data, config, coverage)

    parent = load_checkpoint(best)
    pick, rest = labelled_split(y, per_class, min_cells, draw)
    cells = CellData(lab.images[pick], y[pick], parent.classes, lab.ids[pick])
    ft.cross_fitted_calibration = keep
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = load_checkpoint(ft.finetune(best, cells, Path(tmp) / "ft", seed=draw, show_progress=False).path)
    finally:
        ft.cross_fitted_calibration = original
    assert ckpt.calibration is not None and ckpt.calibration.ood is not None
    final, data, config = kept["final"], kept["data"], kept["config"]
    precision = ckpt.calibration.precision

    def features(model: Any, images: np.ndarray) -> np.ndarray:
        one = in_memory(model, config, data.classes, data.image_size)
        return infer(one, images, features=True, feature_kind=final.feature_kind, precision=precision).features

    def zoom_outs(model: Any, images: np.ndarray) -> np.ndarray:
        return np.stack([features(model, z) for z in zoomed_copies(images, FRAMING_ZOOMS)])

    detector = ckpt.calibration.ood
    stats, threshold_now, w_now = detector.members[0], detector.thresholds[0], detector.framing_weights[0]
    seen = features(final, data.images)
    w_before = fit_framing_discriminator(seen, zoom_outs(final, data.images))  # `with_framing`'s, before B
    present = np.flatnonzero(np.bincount(data.labels, minlength=len(data.classes)))
    labels = np.searchsorted(present, data.labels)
    ratios = []  # the rule before A: per fold, its 95% quantile over its seen median; their mean
    for i, (model, (train, val)) in enumerate(zip(kept["members"], kept["splits"], strict=True)):
        stats_i, seen_i = fit_ood_held_out(
            features(model, data.images[train]), labels[train], len(present), seed=draw + i
        )
        unseen = mahalanobis_score(features(model, data.images[val]), stats_i)
        ratios.append(ood_threshold(unseen, detector.false_alarm) / float(np.median(seen_i)))
    _, seen_scores = fit_ood_held_out(seen, labels, len(present), seed=draw)
    threshold_before = float(np.median(seen_scores) * np.mean(ratios))

    other = features(final, lab.images[rest])
    zoomed = zoom_outs(final, lab.images[rest]).reshape(-1, other.shape[1])
    distance = mahalanobis_score(other, stats)

    def fires(w: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) @ w[:-1] + w[-1] > 0

    row = {
        "draw": draw,
        "other_cells": int(len(rest)),
        "flagged_before": float(np.mean((distance > threshold_before) | fires(w_before, other))),
        "flagged_A": float(np.mean((distance > threshold_now) | fires(w_before, other))),
        "flagged_now": float(np.mean(detector.score(other) > 1)),
        "zoom_outs_caught_before": float(np.mean(fires(w_before, zoomed))),
        "zoom_outs_caught_now": float(np.mean(fires(w_now, zoomed))),
        "threshold_before": threshold_before,
        "threshold_now": float(threshold_now),
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    from bench.bench_new_lab import DESIGN_LAB, MIN_CELLS, as_model_labels, lab_cells
    from cellnet.checkpoint import load_checkpoint

    parser = bench_parser(__doc__, "skip (no small mode: ~2 min per draw)")
    parser.add_argument("--runs", type=Path, required=True, help="bench_deployed's runs: DIR/seed<S>/search/best")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ft-seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="label draws")
    parser.add_argument("--lab", default=DESIGN_LAB, choices=sorted(MIN_CELLS))
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args(argv)
    if skip(args, "bench_finetune_ood", quick="~2 min per draw", real_cells=True):
        return 0
    lab = lab_cells(args.lab, 64)
    rows = []
    for seed in args.seeds:
        best = args.runs / f"seed{seed}" / "search" / "best"
        y = as_model_labels(lab, load_checkpoint(best).classes)
        for draw in args.ft_seeds:
            rows.append({"seed": seed} | one_draw(best, lab, y, draw, args.per_class, MIN_CELLS[args.lab]))
    for key in ("flagged_before", "flagged_A", "flagged_now", "zoom_outs_caught_before", "zoom_outs_caught_now"):
        print(f"{key:<24} {mean_sd([r[key] for r in rows], 3)}")
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
