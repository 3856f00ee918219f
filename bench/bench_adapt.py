"""Does `--adapt` hurt a clean batch whose class mix is not training's, and does its class-mix guard prevent that?

The danger (issue 24): BatchNorm statistics re-estimated over a batch of mostly one or two classes describe the class
mix, not the microscope, and clean accuracy falls. On the validation holdout of design split `--seed` (crop200
framing, 64 px, bench/real_data.py), one recipe of bench/bench_robustness.py is trained once, then each batch is
predicted three ways: plain, `--adapt` as shipped (the guard shrinks the blend weight when the adapted predictions'
class mix is far from training's, cellnet/adapt.py GUARD_TV), and `--adapt` with the guard off. Batches: all
validation cells (mixed classes), and only the k most frequent classes (k = 1, 2, 3) -- clean and full-frame (the
same cells, another framing: where adapting should help).

    .venv/bin/python -m bench.bench_adapt [--recipe lite0_ra] [--seed 0] [--epochs 6] [--json out.json]
"""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

import numpy as np

from bench.common import bench_parser, dump_json, skip


def batches(val: Any, full: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The validation cells, all classes and the k most frequent ones, in both framings (same ids, same order)."""
    out = {"clean, all classes": (val.images, val.labels), "full-frame, all classes": (full.images, full.labels)}
    frequent = np.argsort(-np.bincount(val.labels))
    for k in (1, 2, 3):
        keep = np.isin(val.labels, frequent[:k])
        out[f"clean, {k} class(es)"] = (val.images[keep], val.labels[keep])
        out[f"full-frame, {k} class(es)"] = (full.images[keep], full.labels[keep])
    return out


def run(recipe: str, seed: int, epochs: int, size: int = 64) -> list[dict[str, Any]]:
    from bench.bench_robustness import design_model
    from cellnet import adapt
    from cellnet.calibrate import fit_calibration
    from cellnet.predict import infer, predict_batch

    ckpt, train, val, full = design_model(recipe, seed, epochs, size)
    # a calibration fitted on the mixed validation cells: the guard compares with its class counts
    out = infer(ckpt, val.images)
    ckpt = dataclasses.replace(ckpt, calibration=fit_calibration(out.logits, val.labels, len(train.classes)))

    def accuracy(images: np.ndarray, labels: np.ndarray, **kw: Any) -> tuple[float, Any]:
        pred = predict_batch(ckpt, images, **kw)
        return float((pred.probs.argmax(axis=1) == labels).mean()), pred.adaptation

    rows = []
    for name, (images, labels) in batches(val, full).items():
        plain, _ = accuracy(images, labels)
        guarded, info = accuracy(images, labels, adapt=True)
        with mock.patch.object(adapt, "GUARD_TV", float("inf")):
            unguarded, _ = accuracy(images, labels, adapt=True)
        row = {"batch": name, "n": len(labels), "plain": plain, "adapt": guarded, "adapt_no_guard": unguarded}
        row |= {"weight": info.weight, "class_mix_tv": info.class_mix_tv}
        print(
            f"{name:<26}{len(labels):>6}{plain:>9.3f}{guarded:>9.3f}{unguarded:>10.3f}"
            f"{info.weight:>8.2f}{info.class_mix_tv:>7.2f}",
            flush=True,
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.bench_robustness import RECIPES

    parser = bench_parser(__doc__, "skip (no small mode: ~3 min)")
    parser.add_argument("--recipe", default="lite0_ra", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6, help="for recipes that do not set their own")
    args = parser.parse_args(argv)
    if skip(args, "bench_adapt", quick="~3 min", real_cells=True):
        return 0
    print(f"# --adapt and its class-mix guard: {args.recipe}, design split {args.seed}, validation holdout")
    print(f"{'batch':<26}{'n':>6}{'plain':>9}{'adapt':>9}{'no guard':>10}{'weight':>8}{'tv':>7}")
    dump_json(args.json, run(args.recipe, args.seed, args.epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
