"""Does the search beat a hand-written single run on real cells, at the same compute, on the same held-out test set?

On real PBC images (default ../shared/data/pbc-sample: 2,579 JPEGs, one folder per class), at 64 px on the CPU:

1. load, clean, and hold out 20% as a test set (grouped by duplicate cluster, stratified): nothing of it is seen by
   either side;
2. search: `python -m search.run spaces/cpu_small.yaml` on the other 80% (2-fold CV, TPE + ASHA, the backbone fixed
   to `mobilenetv3_small_050` from scratch), winner retrained on all of it and evaluated on the test set (`--test`);
3. baseline: `cellnet train spaces/baseline.yaml` (same backbone, a careful hand-picked recipe, its own 80/20
   validation split for picking the best epoch) on the same 80%, given the search's whole compute as its epoch
   budget (training images processed, search trials + retrain; no early stopping, the best epoch is kept), then
   evaluated on the same test set.

Printed side by side: cross-validation / validation accuracy, test accuracy and macro F1, compute (training images
processed), wall time. Full mode only (~15 min on 2 cores); `--quick` prints why it is skipped.

    .venv/bin/python -m bench.bench_real_cells [--data DIR] [--image-size 64] [--seed 0] [--out runs/bench-real-cells]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pbc-sample"


def split(data_dir: Path, image_size: int, seed: int, out: Path) -> tuple[Path, Path, str]:
    """train.npz / test.npz: the cleaned data, 80/20, grouped and stratified; returns the paths and a clean summary."""
    from cellnet.data import clean, holdout_split, load
    from cellnet.data.clean import save_npz

    data, report = clean(load(str(data_dir), image_size=image_size))
    train_idx, test_idx = holdout_split(data.labels, data.groups, 0.2, seed, classes=data.classes)
    return (
        save_npz(data.subset(train_idx), out / "train.npz"),
        save_npz(data.subset(test_idx), out / "test.npz"),
        (report.summary()),
    )


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output in `log`; its wall time in seconds (a failure is an error naming the log)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=own_ray_env())
    if rc != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed (exit {rc}); see {log}")
    return time.perf_counter() - start


def own_ray_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def search_compute(run_dir: Path, n_train: int) -> tuple[float, dict[str, Any]]:
    """Training images the search processed (every fold-epoch of every trial, plus the retrain) and its summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    k = int(summary["search"]["folds"])
    images = float(summary["fold_epochs"]) * n_train * (k - 1) / k
    images += float(summary["retrain"]["epochs"]) * n_train
    return images, summary


def evaluate_on(checkpoint: Path, test: Path, out: Path) -> dict[str, Any]:
    from cellnet.checkpoint import load_checkpoint
    from cellnet.data import load
    from cellnet.evaluate import evaluate

    ckpt = load_checkpoint(checkpoint)
    metrics = evaluate(ckpt, load(str(test), image_size=ckpt.image_size), out, where=str(test))
    return dict(metrics["clean"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip (this benchmark has no small mode)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder, one subfolder per class")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the test split and the search")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-real-cells")
    args = parser.parse_args(argv)
    if args.quick:
        print("bench_real_cells: skipped in --quick mode (~15 min on 2 cores; run `python -m bench.bench_real_cells`)")
        return 0
    if not args.data.is_dir():
        print(f"bench_real_cells: skipped, no image folder at {args.data} (pass --data DIR)")
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    train, test, cleaned = split(args.data, args.image_size, args.seed, args.out)
    n_train = int(len(np.load(train)["labels"]))
    print(f"data: {args.data} at {args.image_size}px; cleaning: {cleaned}")
    print(f"split: {n_train} search/train images, test set {test}", flush=True)

    py = sys.executable
    run_dir = args.out / "search"
    search_s = run(
        [py, "-m", "search.run", "spaces/cpu_small.yaml", "--data", str(train), "--test", str(test)]
        + ["--storage", str(run_dir), "--seed", str(args.seed)],
        args.out / "search.log",
    )
    images, summary = search_compute(run_dir, n_train)
    search_test = evaluate_on(run_dir / "best", test, args.out / "search-test")

    base_cfg = yaml.safe_load((REPO / "spaces" / "baseline.yaml").read_text())
    val_fraction = float(base_cfg["train"].get("val_fraction", 0.2))
    epochs = max(1, round(images / (n_train * (1 - val_fraction))))
    base_cfg["data"]["image_size"] = args.image_size
    base_cfg["space"]["epochs"] = epochs
    base_cfg["train"]["early_stopping_patience"] = epochs  # spend the whole budget; the best epoch is kept
    base_yaml = args.out / "baseline.yaml"
    base_yaml.write_text(yaml.safe_dump(base_cfg, sort_keys=False))
    base_dir = args.out / "baseline"
    base_s = run(
        [py, "-m", "cellnet", "train", str(base_yaml), "--data", str(train), "--out", str(base_dir), "--no-clean"]
        + ["--seed", str(args.seed)],
        args.out / "baseline.log",
    )
    base_meta = json.loads((base_dir / "cellnet.json").read_text())
    base_history = pd.read_csv(base_dir / "history.csv")
    base_test = evaluate_on(base_dir, test, args.out / "baseline-test")

    best = summary["best"]
    params = json.dumps(best.get("params", {}), sort_keys=True)
    rows = [
        ("search (TPE+ASHA, 2-fold CV)", best["cv"]["cv_accuracy"], search_test, images, search_s),
        (
            f"single run ({epochs} epochs)",
            float(base_history["val_accuracy"].max()),
            base_test,
            epochs * n_train * (1 - val_fraction),
            base_s,
        ),
    ]
    print(f"\n# real cells: {args.data.name}, {args.image_size}px, mobilenetv3_small_050 from scratch, CPU")
    print(f"{'method':<32}{'cv/val acc':>11}{'test acc':>10}{'test F1':>9}{'images':>11}{'wall s':>9}")
    for name, val, t, imgs, wall in rows:
        print(f"{name:<32}{val:>11.4f}{t['accuracy']:>10.4f}{t['macro_f1']:>9.4f}{imgs:>11.0f}{wall:>9.0f}")
    ratio = search_test["accuracy"] - base_test["accuracy"]
    print(
        f"test accuracy, search - single run: {ratio:+.4f}   (same test set, compute ratio {images / rows[1][3]:.2f})"
    )
    print(f"winner: {best.get('trial_id')} {params}, retrained {summary['retrain']['epochs']} epochs")
    print(f"baseline best epoch: {base_meta.get('metrics', {}).get('best_epoch', '?')}")
    result = {
        "search": {"cv_accuracy": best["cv"]["cv_accuracy"], "test": search_test, "images": images, "wall_s": search_s},
        "baseline": {"epochs": epochs, "test": base_test, "wall_s": base_s},
        "winner": {"trial_id": best.get("trial_id"), "params": best.get("params")},
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
