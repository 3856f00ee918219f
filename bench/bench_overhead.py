"""How much of a search's CPU time goes into training, and what does each trial cost on top of it?

One real `python -m search.run` (in this process, its own local Ray) on a workload where one fold-epoch takes
>= 30 s on one core: synthetic cells at 64 px, `mobilenetv3_small_050` from scratch, 2 folds x 1 CPU on a 2-core
machine, FIFO scheduling (every trial runs all epochs), a checkpoint every epoch (the worst case for I/O). Measured:

- fit fraction = sum over trials, epochs and folds of the time inside `Trainer.train_epoch` (training +
  validation: `fold_time_sum_s`) / (search wall time x fold CPUs in use). Target >= 0.85. The wall time is the whole
  `search.run` (Ray start-up, data generation, object store, Tune, checkpoints, outputs), retrain excluded.
- the same fraction over the trial phase only (first trial started -> last result), which leaves out the one-off
  Ray start-up, data preparation and output writing;
- per-trial fixed cost: the trial phase's wall time not spent in epochs (epoch wall = slowest fold), per trial;
- per-trial start-up latency (trial driver started -> first batch of its slowest fold: `startup_s`);
- checkpoint size per trial (all folds' Trainer state, only the latest kept) and per fold.

    .venv/bin/python -m bench.bench_overhead [--quick] [--images 6000] [--trials 4] [--epochs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

FOLDS = 2


def space(images: int, trials: int, epochs: int) -> dict[str, Any]:
    """The workload: a fixed small backbone, only the optimiser settings searched (the cost is in the epochs)."""
    return {
        "name": "bench-overhead",
        "data": {"source": f"synthetic:{images}", "image_size": 64, "clean": False},
        "cv": {"folds": FOLDS, "seed": 0},
        "train": {
            "backbone": "mobilenetv3_small_050",
            "head_layers": 1,
            "head_width": 128,
            "batch_size": 64,
            "warmup_epochs": 0,
            "device": "cpu",
            "aug_strength": 0.5,
        },
        "search": {
            "num_samples": trials,
            "max_epochs": epochs,
            "scheduler": "fifo",
            "searcher": "random",
            "seed": 0,
            "checkpoint_every": 1,
        },
        "resources": {"cpus_per_fold": 1, "max_concurrent": 1},
        "space": {"lr": {"loguniform": [3.0e-4, 3.0e-3]}, "weight_decay": {"loguniform": [1.0e-5, 1.0e-3]}},
    }


def measure(run_dir: Path, wall_s: float, cores: float) -> dict[str, Any]:
    """The figures in the module doc, from the run's progress.csv files and checkpoint directories."""
    rows = []
    for progress in sorted((run_dir / "tune").glob("*/progress.csv")):
        h = pd.read_csv(progress)
        h["trial"] = progress.parent.name
        rows.append(h)
    epochs = pd.concat(rows, ignore_index=True)
    per_trial = epochs.groupby("trial").agg(
        first_ts=("timestamp", "min"),
        last_ts=("timestamp", "max"),
        first_fit=("fit_time_s", "first"),
        startup_s=("startup_s", "first"),
        epoch_wall=("fit_time_s", "sum"),
    )
    # a trial's start: its first result minus its first epoch and its start-up (timestamps are whole seconds)
    starts = per_trial["first_ts"] - per_trial["first_fit"] - per_trial["startup_s"]
    phase_s = float(per_trial["last_ts"].max() - starts.min())
    fit_cpu_s = float(epochs["fold_time_sum_s"].sum())
    ckpt = [
        sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        for d in (run_dir / "train").iterdir()
        if d.is_dir() and any(d.glob("checkpoint_*"))
    ]
    n = len(per_trial)
    return {
        "trials": n,
        "fold_epochs": int(len(epochs) * FOLDS),
        "fold_epoch_s_median": float((epochs["fold_time_sum_s"] / FOLDS).median()),
        "wall_s": wall_s,
        "fit_cpu_s": fit_cpu_s,
        "fit_fraction": fit_cpu_s / (wall_s * cores),
        "trial_phase_s": phase_s,
        "fit_fraction_trial_phase": fit_cpu_s / (phase_s * cores),
        "one_off_s": wall_s - phase_s,
        "fixed_cost_per_trial_s": (phase_s - float(per_trial["epoch_wall"].sum())) / n,
        "startup_s_median": float(statistics.median(per_trial["startup_s"])),
        "checkpoint_mb_per_trial": statistics.median(ckpt) / 1e6 if ckpt else float("nan"),
        "checkpoint_mb_per_fold": statistics.median(ckpt) / 1e6 / FOLDS if ckpt else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 epochs per trial instead of 3")
    parser.add_argument("--images", type=int, default=6000, help="synthetic images (sets the fold-epoch time)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 3, --quick 2)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 3)

    from search.run import main as search_main

    os.environ.pop("RAY_ADDRESS", None)  # our own local Ray, not a cluster another process points at
    root = Path(tempfile.mkdtemp(prefix="cellnet-bench-overhead-"))
    try:
        path = root / "space.yaml"
        path.write_text(yaml.safe_dump(space(args.images, args.trials, epochs)))
        run_dir = root / "run"
        start = time.perf_counter()
        rc = search_main([str(path), "--storage", str(run_dir), "--no-retrain"])
        wall = time.perf_counter() - start
        if rc != 0:
            print(f"error: the search exited with {rc}")
            return 1
        m = measure(run_dir, wall, cores=float(FOLDS))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n# orchestration overhead: {m['trials']} trials x {epochs} epochs x {FOLDS} folds, 1 CPU per fold")
    print(f"fold-epoch time (median)             {m['fold_epoch_s_median']:8.1f} s   (workload target >= 30 s)")
    one_off = f"({m['one_off_s']:.0f} s one-off: Ray, data, outputs)"
    print(f"search wall time                     {m['wall_s']:8.1f} s   {one_off}")
    print(f"fit fraction, whole search           {m['fit_fraction']:8.3f}     (target >= 0.85)")
    print(f"fit fraction, trial phase            {m['fit_fraction_trial_phase']:8.3f}")
    print(f"fixed cost per trial                 {m['fixed_cost_per_trial_s']:8.1f} s")
    print(f"start-up latency (median)            {m['startup_s_median']:8.1f} s   (trial driver -> first batch)")
    per_trial, per_fold = m["checkpoint_mb_per_trial"], m["checkpoint_mb_per_fold"]
    print(f"checkpoint per trial / per fold      {per_trial:8.2f} / {per_fold:.2f} MB")
    if m["fold_epoch_s_median"] < 30:
        print("note: fold-epochs were shorter than 30 s; raise --images for the documented workload")
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
