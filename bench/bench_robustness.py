"""Robust to the next lab? Train on one framing of real cells, test on the same held-out cells in both framings.

../shared/data/pbc-sample (bench/real_data.py) framed two ways at 64 px -- `crop200` (the centre 200x200 px, the
MedMNIST framing) and `full` (the whole 360x363 JPEG: the cell ~1.8x smaller) -- the same ids in both, cleaned, a
grouped stratified 80/20 split per seed. For each seed, training framing and recipe, one single run
(`cellnet.train.fit`, fixed epochs, no early stopping, 2 threads) on the training part, then scored once on the
evaluation part -- `--split design` (the default): the inner 80/20 holdout of the seed's training 80%, where
recipes are compared and defaults chosen (decision records cite these); `--split test`: the held-out 20%, for
reporting a recipe already chosen (never to choose one):

    clean          the held-out cells in the training framing
    other framing  the same cells in the other framing (what another lab's microscope/crop does)
    shift suite    cellnet.shifts on the clean held-out cells: mean and worst accuracy, and per shift

Recipes (`RECIPES`, on top of cpu_small's first point): `default` (its augmentation as it is), `zoom` (+ zoom_aug 1:
0.5x-2x with border-coloured padding), `robust` (+ zoom_aug and stain_aug 0.5), side by side in one run. Nothing
here chooses a setting by itself: the recipes are fixed before the run.

    .venv/bin/python -m bench.bench_robustness [--split design|test] [--seeds 0 1] [--epochs 14]
        [--recipes default zoom robust] [--json out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd, skip

RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "zoom": {"zoom_aug": 1.0},
    "robust": {"zoom_aug": 1.0, "stain_aug": 0.5},
    "robust_ln": {"zoom_aug": 1.0, "stain_aug": 0.5, "backbone": "convnext_atto"},  # LayerNorm, no BatchNorm
}
OTHER = {"crop200": "full", "full": "crop200"}


def accuracy(ckpt: Any, images: np.ndarray, labels: np.ndarray) -> float:
    from cellnet.predict import predict_images

    return float((predict_images(ckpt, images).argmax(axis=1) == labels).mean())


def one_run(seed: int, framing: str, recipe: str, epochs: int, size: int, which: str = "design") -> dict[str, Any]:
    from bench.real_data import FIRST_TRIAL, design_split, split
    from cellnet.checkpoint import in_memory
    from cellnet.config import TrainConfig
    from cellnet.shifts import DEFAULT_SUITE, apply_shift
    from cellnet.train import fit

    def parts(f: str) -> tuple[Any, Any]:
        return design_split(size, seed=seed, framing=f) if which == "design" else split(size, seed, f)

    train, _ = parts(framing)
    tests = {f: parts(f)[1] for f in ("crop200", "full")}
    config = TrainConfig(**{**FIRST_TRIAL, **RECIPES[recipe], "epochs": epochs, "seed": seed})
    start = time.perf_counter()
    result = fit(config, train, None, early_stopping=False)
    wall = time.perf_counter() - start
    ckpt = in_memory(result.model, result.config, train.classes, train.image_size)
    clean = tests[framing]
    per_shift = {name: accuracy(ckpt, apply_shift(name, clean.images, seed), clean.labels) for name in DEFAULT_SUITE}
    row = {
        "seed": seed,
        "split": which,
        "train_framing": framing,
        "recipe": recipe,
        "config": {**FIRST_TRIAL, **RECIPES[recipe]},
        "epochs": epochs,
        "train_wall_s": wall,
        "clean": accuracy(ckpt, clean.images, clean.labels),
        "other_framing": accuracy(ckpt, tests[OTHER[framing]].images, tests[OTHER[framing]].labels),
        "shift_mean": float(np.mean(list(per_shift.values()))),
        "shift_worst": float(min(per_shift.values())),
        "per_shift": per_shift,
    }
    print(json.dumps({k: v for k, v in row.items() if k not in ("per_shift", "config")}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (no small mode: ~3 min per run)")
    parser.add_argument("--split", choices=("design", "test"), default="design", help="where the runs are scored")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--recipes", nargs="+", default=["default", "zoom", "robust"], choices=sorted(RECIPES))
    parser.add_argument("--framings", nargs="+", default=["crop200", "full"], choices=sorted(OTHER))
    args = parser.parse_args(argv)
    if skip(args, "bench_robustness", quick="~3 min per run", real_cells=True):
        return 0
    os.environ.setdefault("CELLNET_NUM_THREADS", "2")
    rows = [
        one_run(seed, framing, recipe, args.epochs, args.size, args.split)
        for seed in args.seeds
        for framing in args.framings
        for recipe in args.recipes
    ]
    where = "inner validation holdout (choices)" if args.split == "design" else "held-out 20% (report only)"
    print(
        f"\n# robustness on pbc-sample at {args.size}px, {args.epochs} epochs, seeds {args.seeds}, scored on the "
        f"{where} (mean ± sd)"
    )
    print(f"{'trained on':<12}{'recipe':<10}{'clean':>16}{'other framing':>16}{'shift mean':>16}{'shift worst':>16}")
    for framing in args.framings:
        for recipe in args.recipes:
            mine = [r for r in rows if r["train_framing"] == framing and r["recipe"] == recipe]
            cells = [mean_sd([r[k] for r in mine], 3) for k in ("clean", "other_framing", "shift_mean", "shift_worst")]
            print(f"{framing:<12}{recipe:<10}" + "".join(f"{c:>16}" for c in cells))
    names = list(rows[0]["per_shift"])
    print(f"\n{'per shift (mean over seeds and framings)':<44}" + "".join(f"{r:>10}" for r in args.recipes))
    for name in names:
        vals = [statistics.mean(r["per_shift"][name] for r in rows if r["recipe"] == rec) for rec in args.recipes]
        print(f"{name:<44}" + "".join(f"{v:>10.3f}" for v in vals))
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
