"""Retrain with Ray Train on a tiny real model and synthetic pixels; the `python -m search.retrain` CLI on a
fabricated run directory (search_config.yaml + trials.csv)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from cellnet.checkpoint import load_checkpoint
from cellnet.config import parse_config
from cellnet.data.synthetic import generate
from search import refit
from search import retrain as rt

SIZE = 32
RAW = {
    "name": "tiny",
    "data": {"source": "synthetic:160", "image_size": SIZE, "clean": False},
    "cv": {"folds": 2, "seed": 0},
    "train": {"batch_size": 32, "backbone": "test_resnet", "head_layers": 0, "aug_strength": 0.0},
    "search": {"num_samples": 2, "max_epochs": 3, "grace_period": 1},
    "resources": {"cpus_per_fold": 1},
    "space": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "dropout": {"choice": [0.0, 0.1]}},
}


@pytest.fixture(scope="module")
def cfg():
    return parse_config(RAW, "tiny.yaml")


@pytest.fixture(scope="module")
def data():
    return generate(n=160, image_size=SIZE, seed=0)


def test_shard_is_equal_and_covers_everything(data):
    shards = [refit.shard(data, r, 3, seed=0) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same batch count on every rank
    ids = set(np.concatenate([s.ids for s in shards]))
    assert ids == set(data.ids)


def test_cpu_retrain_asks_for_every_cpu_of_the_largest_node():
    """On CPU the retrain runs alone after the search: one worker with the whole (largest) node, as many threads."""
    two_core = refit.retrain_scaling([{"CPU": 2.0}])
    assert (two_core.workers, two_core.use_gpu, two_core.resources_per_worker, two_core.threads) == (
        1,
        False,
        {"CPU": 2.0},
        2,
    )
    cluster = refit.retrain_scaling([{"CPU": 4.0}, {"CPU": 16.0}, {"CPU": 8.0}])
    assert cluster.resources_per_worker == {"CPU": 16.0} and cluster.threads == 16
    assert refit.retrain_scaling([{"CPU": 2.0}], cpus_per_worker=1).resources_per_worker == {"CPU": 1.0}
    # two CPU workers (DDP without GPUs) share the node instead of each waiting for a whole one
    shared = refit.retrain_scaling([{"CPU": 2.0}], num_workers=2)
    assert (shared.workers, shared.resources_per_worker, shared.threads) == (2, {"CPU": 1.0}, 1)
    gpus = refit.retrain_scaling([{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}], gpu_worker_cpus=4)
    assert (gpus.workers, gpus.use_gpu, gpus.resources_per_worker) == (4, True, {"CPU": 4.0, "GPU": 1.0})
    assert not refit.retrain_scaling([{"CPU": 8.0, "GPU": 1.0}], use_gpu=False).use_gpu


def test_retrain_ddp_saves_loadable_checkpoint(ray_cluster, cfg, data, tmp_path):
    """The multi-GPU code path (equal shards, DDP over gloo) with two CPU workers: a checkpoint that
    cellnet.checkpoint loads (plain weights, no DDP `module.` prefix), trained for exactly the given epochs."""
    out = refit.retrain(
        cfg,
        {"lr": 1e-3, "dropout": 0.1},
        data,
        2,
        tmp_path / "best",
        use_gpu=False,
        num_workers=2,
        cv_metrics={"cv": {"cv_accuracy": 0.5}},
        provenance={"git_sha": "abc", "data_hash": "h"},
    )
    assert out == (tmp_path / "best").resolve()
    ckpt = load_checkpoint(out)
    assert ckpt.config.epochs == 2 and ckpt.config.lr == pytest.approx(1e-3) and ckpt.config.dropout == 0.1
    assert ckpt.config.backbone == "test_resnet" and ckpt.config.batch_size == 32
    assert ckpt.classes == data.classes and ckpt.image_size == SIZE
    assert ckpt.metrics["cv"] == {"cv_accuracy": 0.5}
    r = ckpt.metrics["retrain"]
    assert r["epochs"] == 2 and r["workers"] == 2 and r["num_images"] == len(data)
    assert np.isfinite(r["train_loss"]) and 0.0 <= r["train_accuracy"] <= 1.0
    assert ckpt.meta["provenance"] == {"git_sha": "abc", "data_hash": "h"}
    probs = ckpt.model(_batch(data, ckpt)).softmax(1)
    assert probs.shape == (4, len(data.classes))
    assert not list(tmp_path.glob(".ray-retrain-*"))  # Ray's copy of the checkpoint is cleaned up


def _batch(data, ckpt):
    import torch

    x = torch.from_numpy(data.images[:4]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(ckpt.mean).view(1, 3, 1, 1)
    std = torch.tensor(ckpt.std).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------------
# CLI


def fabricated_run(tmp_path, cfg):
    run = tmp_path / "run"
    run.mkdir()
    (run / "search_config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    table = pd.DataFrame(
        [
            {
                "trial_id": "aaa_00000",
                "status": "completed",
                "params_json": json.dumps({"lr": 0.002, "dropout": 0.1}),
                "cv_accuracy": 0.6,
                "cv_accuracy_std": 0.05,
                "fold0_accuracy": 0.55,
                "fold1_accuracy": 0.65,
                "best_epoch": 1,
                "epochs": 3,
            },
            {
                "trial_id": "aaa_00001",
                "status": "failed",
                "params_json": json.dumps({"lr": 0.01, "dropout": 0.0}),
                "cv_accuracy": float("nan"),
                "best_epoch": float("nan"),
                "epochs": 0,
            },
        ]
    )
    table.to_csv(run / "trials.csv", index=False)
    return run


def test_cli_retrains_a_trial(ray_cluster, cfg, tmp_path, capsys):
    run = fabricated_run(tmp_path, cfg)
    assert rt.main([str(run), "--trial", "aaa_00000"]) == 0
    out = run / "retrained" / "aaa_00000"
    assert str(out) in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt.metrics["retrain"]["workers"] == 1  # no GPU: one worker, no DDP
    # retrain.epochs: best -> the searched schedule (max_epochs long) stopped at the trial's best epoch
    assert ckpt.metrics["retrain"]["epochs"] == 1 and ckpt.metrics["retrain"]["schedule_epochs"] == 3
    assert ckpt.config.epochs == 3
    assert ckpt.config.lr == pytest.approx(0.002) and ckpt.config.dropout == 0.1
    assert ckpt.metrics["trial_id"] == "aaa_00000"
    assert ckpt.metrics["cv"]["cv_accuracy"] == pytest.approx(0.6)
    assert ckpt.metrics["cv"]["fold1_accuracy"] == pytest.approx(0.65)
    prov = ckpt.meta["provenance"]
    assert prov["trial_id"] == "aaa_00000" and prov["data_hash"]
    assert prov["num_images"] == ckpt.metrics["retrain"]["num_images"] >= 160  # synthetic:160 plus injected rows
    assert prov["versions"]["torch"]


def test_cli_errors(cfg, tmp_path, capsys):
    run = fabricated_run(tmp_path, cfg)
    assert rt.main([str(run), "--trial", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no trial 'nope'" in err and "aaa_00000" in err and "aaa_00001" in err

    assert rt.main([str(run), "--trial", "aaa_00001"]) == 2  # failed trial: no best epoch to take
    assert "--epochs" in capsys.readouterr().err

    assert rt.main([str(tmp_path / "missing"), "--trial", "x"]) == 2
    assert "no such run directory" in capsys.readouterr().err

    (run / "trials.csv").unlink()
    assert rt.main([str(run), "--trial", "x"]) == 2
    assert "trials.csv is missing" in capsys.readouterr().err


def test_cli_refuses_other_data_than_the_search_ran_on(cfg, tmp_path, capsys):
    run = fabricated_run(tmp_path, cfg)
    (run / "data.json").write_text(json.dumps({"data_hash": "f" * 64, "num_images": 7, "source": "synthetic:160"}))
    assert rt.main([str(run), "--trial", "aaa_00000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search.retrain: the data has changed") and "7 images (hash ffffffffffff" in err
    assert not (run / "retrained").exists()


def test_cli_module_entry_point(cfg, tmp_path):
    run = fabricated_run(tmp_path, cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "search.retrain", str(run), "--trial", "zzz"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "valid trial ids: aaa_00000, aaa_00001" in proc.stderr
