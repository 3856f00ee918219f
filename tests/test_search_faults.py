"""Faults, each in its own `python -m search.run` process (own Ray cluster): a killed driver and --resume, more
samples on --resume, a fold worker killed mid-trial, a diverging trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from search.trainable import FAULT_ENV

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "name": "faults",
    "data": {"source": "synthetic:200", "image_size": 32, "clean": False},
    "cv": {"folds": 2, "seed": 0},
    "train": {"batch_size": 32, "warmup_epochs": 0, "device": "cpu", "head_layers": 0, "backbone": "test_resnet"},
    "search": {
        "num_samples": 2,
        "max_epochs": 3,
        "scheduler": "fifo",
        "seed": 0,
        "checkpoint_every": 1,
        "grace_period": 1,
    },
    "resources": {"cpus_per_fold": 1},
    "space": {"lr": {"loguniform": [1.0e-4, 1.0e6]}, "optimizer": {"choice": ["adamw", "sgd"]}},
}


def space(tmp_path: Path, **search: Any) -> Path:
    raw = {**BASE, "search": {**BASE["search"], **search}}
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def command(path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search.run", str(path), "--storage", str(run_dir), "--no-retrain", *extra]


def own_cluster_env(**extra: str) -> dict[str, str]:
    """The environment for a search that starts its own Ray (not the session cluster $RAY_ADDRESS points at)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=ROOT, env=own_cluster_env(**(env or {})), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def progress(run_dir: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for d in sorted((run_dir / "tune").iterdir()):
        if d.is_dir() and (d / "progress.csv").is_file() and (d / "progress.csv").stat().st_size:
            out[d.name] = pd.read_csv(d / "progress.csv")
    return out


def test_killed_driver_resumes_and_more_samples_run_only_new_trials(tmp_path: Path) -> None:
    path, run_dir = space(tmp_path, num_samples=3), tmp_path / "run"
    proc = subprocess.Popen(
        command(path, run_dir),
        cwd=ROOT,
        env=own_cluster_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # kill the whole driver (and its Ray) once the first trial has finished
            done = [t for t, p in progress(run_dir).items() if len(p) == 3] if (run_dir / "tune").is_dir() else []
            if done:
                break
            time.sleep(2)
        assert done, "no trial finished in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = done[0]
    before = progress(run_dir)[first]

    run(command(path, run_dir, "--resume"))
    after = progress(run_dir)
    assert len(after) == 3 and all(len(p) == 3 for p in after.values())
    pd.testing.assert_frame_equal(after[first], before)  # the finished trial was not run again
    assert len(pd.read_csv(run_dir / "trials.csv")) == 3

    run(command(path, run_dir, "--resume", "--num-samples", "4"))
    grown = progress(run_dir)
    assert len(grown) == 4 and set(after) < set(grown)
    for trial, p in after.items():
        pd.testing.assert_frame_equal(grown[trial], p)  # old trials untouched, only the new one ran
    assert len(pd.read_csv(run_dir / "trials.csv")) == 4


def test_killed_worker_resumes_from_checkpoint_and_divergence_is_not_retried(tmp_path: Path) -> None:
    good = {"lr": 3.0e-3, "optimizer": "adamw"}
    nan = {"lr": 1.0e6, "optimizer": "sgd"}  # explodes to NaN in the first epoch
    # ranked by the robust metric, scored at the last epoch only (fifo): epochs 1 and 2 skip validation too
    search = {"num_samples": 2, "points_to_evaluate": [good, nan], "metric": "cv_robust_accuracy", "shift_images": 64}
    path, run_dir = space(tmp_path, **search), tmp_path / "run"
    marker = tmp_path / "killed-once"
    run(command(path, run_dir, "--max-concurrent", "1"), env={FAULT_ENV: str(marker)})
    assert marker.exists()  # a fold worker really was SIGKILLed at epoch 2

    trials = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    by_lr = {round(json.loads(p)["lr"]): t for t, p in trials["params_json"].items()}
    good_id, nan_id = by_lr[0], by_lr[1_000_000]
    assert trials.loc[good_id, "status"] == "completed"
    # resumed from the epoch-2 checkpoint: epochs 1..3 reported once each, none re-run from scratch
    good = progress(run_dir)[good_id]
    assert list(good["epoch"]) == [1, 2, 3]
    # no clean validation before the scored epoch: said (val_scored 0), not made up (NaN)
    assert list(good["val_scored"]) == [0, 0, 1] and list(good["shift_scored"]) == [0, 0, 1]
    assert good["cv_accuracy"].iloc[:2].isna().all() and 0 <= good["cv_accuracy"].iloc[2] <= 1
    assert trials.loc[good_id, "best_epoch"] == 3

    assert trials.loc[nan_id, "status"] == "failed"
    assert "diverged" in trials.loc[nan_id, "error"] and "nan" in trials.loc[nan_id, "error"].lower()
    # not retried: Tune saw one attempt with no result, Train never restarted its worker group
    assert nan_id not in progress(run_dir)
    assert len(list((run_dir / "train" / nan_id).glob("checkpoint_*"))) == 0
