"""A whole search in-process on the shared Ray cluster: tiny timm models, synthetic cells, 2 folds, 4 trials,
`retrain.mode: both` (refit in best/, fold ensemble in best_folds/) and a --test set.

One deliberately poor config (points_to_evaluate, after a good one) makes ASHA stop a trial early for sure; the
test then checks that every output agrees with Tune's view and with Optuna's.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from cellnet.constants import DEFAULT_FEATURES, FRAMING_ZOOMS

pytestmark = pytest.mark.slow

GOOD = {"backbone": "test_resnet", "head_layers": 0, "lr": 3.0e-3, "optimizer": "adamw"}
POOR = {"backbone": "test_resnet", "head_layers": 0, "lr": 1.0e-5, "optimizer": "sgd"}
SPACE: dict[str, Any] = {
    "name": "e2e",
    "data": {"source": "synthetic:300", "image_size": 32, "clean": True},
    "cv": {"folds": 2, "seed": 0},
    "train": {"batch_size": 32, "warmup_epochs": 0, "momentum": 0.0, "device": "cpu"},
    "search": {
        "num_samples": 4,
        "max_epochs": 3,
        "grace_period": 1,
        "reduction_factor": 2,
        "searcher": "tpe",
        "scheduler": "asha",
        "seed": 0,
        "checkpoint_every": 1,
        "first_rung_trials": 2,  # GOOD waits at epoch 1 for POOR, then restarts from its checkpoint
        "epoch_images": 128,  # of a fold's ~145 training images: the capped epoch runs under Ray (same 4 batches)
        "points_to_evaluate": [GOOD, POOR],
    },
    "resources": {"cpus_per_fold": 1},
    "retrain": {"mode": "both"},
    "space": {
        "backbone": {"choice": ["test_resnet", "test_efficientnet"]},
        "head_layers": {"int": [0, 1]},
        "head_width": {"choice": [16, 32], "when": "head_layers > 0"},
        "lr": {"loguniform": [1.0e-5, 1.0e-2]},
        "optimizer": {"choice": ["adamw", "sgd"]},
    },
}


@pytest.fixture(scope="module")
def run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.run import main

    root = tmp_path_factory.mktemp("e2e")
    space = root / "e2e.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    run_dir = root / "run"
    assert main([str(space), "--storage", str(run_dir), "--test", "synthetic:64"]) == 0
    return run_dir


def optuna_trials(run_dir: Path) -> list[Any]:
    """The searcher's Optuna study as Tune saved it (what TPE learnt from)."""
    state_file = sorted((run_dir / "tune").glob("searcher-state-*.pkl"))[-1]
    with open(state_file, "rb") as f:
        state = pickle.load(f)
    return state["_ot_study"].trials


def test_outputs_exist_and_agree(run: Path) -> None:
    for name in ("trials.csv", "summary.json", "search_config.yaml", "best/cellnet.json", "best/model.safetensors"):
        assert (run / name).is_file(), name
    assert any((run / "report").glob("*.png"))
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    tune_trials = sorted(p.name for p in (run / "tune").iterdir() if p.is_dir())
    assert len(trials) == 4 == len(tune_trials)
    assert sorted(trials["trial_id"]) == tune_trials
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    assert trials["node_ids"].notna().all()

    summary = json.loads((run / "summary.json").read_text())
    meta = json.loads((run / "best" / "cellnet.json").read_text())
    # the retrained winner is the best trial's config: the searched schedule, stopped at the winner's best epoch
    assert meta["config"] == summary["best"]["config"] and meta["config"]["epochs"] == SPACE["search"]["max_epochs"]
    assert meta["metrics"]["retrain"]["epochs"] == summary["best"]["retrain_epochs"] == summary["best"]["best_epoch"]
    assert summary["best"]["trial_id"] in set(trials["trial_id"])
    assert summary["provenance"]["data_hash"] and summary["provenance"]["seeds"]["search"] == 0

    # every epoch row names one node per fold; the per-fold accuracies average to cv_accuracy
    for trial_dir in (run / "tune").iterdir():
        if trial_dir.is_dir():
            progress = pd.read_csv(trial_dir / "progress.csv")
            assert list(progress["training_iteration"]) == list(progress["epoch"])
            assert all(len(str(n).split(",")) == 2 for n in progress["node_ids"])
            mean = progress[["fold0_accuracy", "fold1_accuracy"]].mean(axis=1)
            assert np.allclose(mean, progress["cv_accuracy"])


def test_fold_ensemble_and_out_of_fold_predictions(run: Path) -> None:
    """oof.npz scores every training image exactly once, by the fold model that did not train on it; best_folds/ is
    those fold models as one ensemble; only the winner's fold files are kept."""
    import torch

    from cellnet.checkpoint import load_checkpoint
    from cellnet.config import load_config
    from cellnet.data import folds
    from cellnet.model import FoldEnsemble
    from search.data import load_data

    summary = json.loads((run / "summary.json").read_text())
    cfg = load_config(run / "search_config.yaml")
    data = load_data(cfg, for_search=False).data
    splits = folds(data.labels, data.groups, cfg.cv.folds, cfg.cv.seed)
    oof = np.load(run / "oof.npz", allow_pickle=False)
    assert list(oof["ids"]) == [str(i) for i in data.ids]  # every image, once, in data order
    assert (oof["labels"] == data.labels).all() and oof["logits"].shape == (len(data), len(data.classes))
    assert str(oof["trial_id"]) == summary["best"]["trial_id"] and int(oof["epoch"]) == summary["best"]["best_epoch"]
    ens = load_checkpoint(run / "best_folds")
    assert isinstance(ens.model, FoldEnsemble) and ens.members == cfg.cv.folds
    for i, (train_idx, val_idx) in enumerate(splits):
        assert (oof["fold"][val_idx] == i).all()  # scored by member i, which trained on train_idx only
        assert not set(data.ids[val_idx]) & set(data.ids[train_idx])
        x = torch.from_numpy(data.images[val_idx[:8]])
        from cellnet.predict import preprocess

        with torch.inference_mode():
            z = ens.model.members[i](preprocess(x, image_size=32, input_size=None, mean=ens.mean, std=ens.std))
        np.testing.assert_allclose(z.numpy(), oof["logits"][val_idx[:8]], atol=1e-4)
    acc = float((oof["logits"].argmax(1) == oof["labels"]).mean())
    assert acc == pytest.approx(summary["folds"]["oof_accuracy"])
    # pooled out-of-fold accuracy = the cv_accuracy the winner was ranked by (up to unequal fold sizes)
    assert acc == pytest.approx(summary["best"]["cv"]["cv_accuracy"], abs=0.02)
    kept = sorted(p.parent.parent.name for p in (run / "train").glob("*/folds/*.safetensors"))
    assert kept == [summary["best"]["trial_id"]] * cfg.cv.folds


def test_test_set_scores_both_deployed_models(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    test = summary["test"]
    assert test["source"] == "synthetic:64" and test["leaks_dropped"]["count"] == len(test["leaks_dropped"]["ids"])
    from cellnet.data import load

    assert test["n"] + test["leaks_dropped"]["count"] == len(load("synthetic:64", 32))
    for name in ("refit", "folds"):
        assert 0.0 <= test[name]["accuracy"] <= 1.0 and test[name]["n"] == test["n"]
    assert (run / "report" / "test_refit" / "metrics.json").is_file()


def test_the_deployed_model_has_a_robustness_card(run: Path) -> None:
    """summary.json's `robustness`: the deployed refit on the held-out test set under the whole shift suite, grouped
    by family; the same as report/robustness.png shows."""
    from cellnet.shifts import DEFAULT_SUITE, FAMILIES

    summary = json.loads((run / "summary.json").read_text())
    card = summary["robustness"]
    assert card["deployed"] == "refit" and card["source"].startswith("held-out test set synthetic:64")
    assert list(card["families"]) == list(FAMILIES)
    shifts = {n: a for f in card["families"].values() for n, a in f["shifts"].items()}
    assert set(shifts) == set(DEFAULT_SUITE) and shifts == summary["test"]["refit"]["shifted_accuracy"]
    for family in card["families"].values():
        assert family["accuracy"] == pytest.approx(np.mean(list(family["shifts"].values())))
    assert card["clean_accuracy"] == summary["test"]["refit"]["accuracy"]
    assert (run / "report" / "robustness.png").stat().st_size > 1000


def test_optuna_is_told_the_best_epoch_value(run: Path) -> None:
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    completed = trials[trials["status"] == "completed"]
    told = sorted(t.value for t in optuna_trials(run) if t.state == TrialState.COMPLETE)
    assert told == pytest.approx(sorted(completed["cv_accuracy"]))  # best epoch, the leaderboard's number


def test_asha_stopped_a_trial_and_optuna_saw_it_pruned(run: Path) -> None:
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    assert (trials["status"] == "stopped_early").sum() >= 1
    assert (trials["status"] == "completed").sum() >= 1
    states = [t.state for t in optuna_trials(run)]
    assert states.count(TrialState.PRUNED) == (trials["status"] == "stopped_early").sum()
    assert states.count(TrialState.COMPLETE) == (trials["status"] == "completed").sum()
    poor = next(t for t in optuna_trials(run) if t.params.get("lr") == POOR["lr"])
    assert poor.state == TrialState.PRUNED and poor.intermediate_values  # told with its per-epoch values


def test_the_first_trial_waited_at_the_first_rung_and_restarted_from_it(run: Path) -> None:
    """search.first_rung_trials: 2 -- the first two trials reached epoch 1 before either went past it; the best went
    on from its rung checkpoint (no epoch trained or reported twice), the other was stopped there."""
    decision = json.loads((run / "first_rung.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["first_rung"] == {"trials_wanted": 2, "decision": decision}
    assert len(decision["reached"]) == 2 and len(decision["kept"]) == 1
    (kept,), (other,) = decision["kept"], decision["stopped"]
    assert decision["reached"][kept] >= decision["reached"][other]
    progress = {t: pd.read_csv(run / "tune" / t / "progress.csv") for t in (kept, other)}
    epochs = list(progress[kept]["training_iteration"])  # restarted from its checkpoint, not from scratch: no epoch
    assert epochs[0] == 1 and epochs[-1] == 3 and epochs == sorted(set(epochs))  # twice (epoch 2 may go unreported
    # when the pause stopped the workers after they wrote its checkpoint)
    assert list(progress[other]["training_iteration"]) == [1]
    # the kept one trained its epoch 2 only after the other had reported its epoch 1
    assert progress[kept]["timestamp"].iloc[1] >= progress[other]["timestamp"].iloc[0]
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert trials.loc[kept, "status"] == "completed" and trials.loc[other, "status"] == "stopped_early"
    assert trials.loc[kept, "time_total_s"] == pytest.approx(progress[kept]["time_this_iter_s"].sum())


def test_shift_metrics_in_every_trial(run: Path) -> None:
    """Every fold scores its shifted validation subset each epoch: the robust metrics reach trials.csv, summary.json
    and the HParams table."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    for col in ("cv_shifted_accuracy", "cv_worst_shift_accuracy", "cv_robust_accuracy", "cv_shift_zoom_out_0.55"):
        assert trials[col].between(0, 1).all(), col
    assert (trials["cv_worst_shift_accuracy"] <= trials["cv_shifted_accuracy"] + 1e-9).all()
    expected = (trials["cv_accuracy"] + trials["cv_shifted_accuracy"]) / 2
    assert np.allclose(trials["cv_robust_accuracy"], expected)
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["best"]["cv"]["cv_shifted_accuracy"] <= 1 and "defocus" in summary["best"]["cv"]["per_shift"]
    trial_id = trials["trial_id"].iloc[0]
    acc = EventAccumulator(str(run / "tensorboard" / trial_id), size_guidance={"scalars": 0})
    acc.Reload()
    assert "hparams/cv_shifted_accuracy" in acc.Tags()["scalars"] and "cv/shifted_accuracy" in acc.Tags()["scalars"]


def test_hparams_for_every_trial(run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    for trial_id in trials["trial_id"]:
        acc = EventAccumulator(str(run / "tensorboard" / trial_id), size_guidance={"tensors": 0})
        acc.Reload()
        assert acc.PluginTagToContent("hparams"), f"no HParams for trial {trial_id}"
        assert "cv/accuracy" in acc.Tags()["scalars"]


def test_winner_checkpoint_predicts(run: Path, tmp_path: Path) -> None:
    from cellnet.cli import main as cellnet_main
    from cellnet.data import generate

    cells = generate(12, 32, seed=5)
    np.savez(tmp_path / "cells.npz", images=cells.images, labels=cells.labels)
    out = tmp_path / "pred.csv"
    assert (
        cellnet_main(["predict", "--checkpoint", str(run / "best"), "--out", str(out), str(tmp_path / "cells.npz")])
        == 0
    )
    pred = pd.read_csv(out)
    assert len(pred) == 12 and pred["error"].isna().all()


# ---------------------------------------------------------------------------------------------------------------
# What the deployment promises: calibrations there and used, every path


def test_deployed_checkpoints_carry_their_calibration_and_use_it(run: Path) -> None:
    """best/ (refit) and best_folds/ (ensemble) each hold the temperature and conformal scores fitted on oof.npz --
    single views and TTA -- and OOD statistics of their own; predict applies exactly those."""
    from cellnet.calibrate import fit_temperature, softmax
    from cellnet.checkpoint import load_checkpoint
    from cellnet.data import generate
    from cellnet.predict import infer, predict_batch

    oof = np.load(run / "oof.npz", allow_pickle=False)
    chosen = oof["views_index"]  # the TTA calibration's images: all of them here (fewer than 2,000)
    assert oof["views"].shape == (8, *oof["logits"].shape) and list(chosen) == list(range(len(oof["labels"])))
    np.testing.assert_allclose(oof["views"][0], oof["logits"][chosen], atol=1e-5)
    images = generate(40, 32, seed=21).images
    for name, threshold_from, members in (("best", "transferred", 1), ("best_folds", "held-out", 2)):
        ckpt = load_checkpoint(run / name)
        cal = ckpt.calibration
        assert cal is not None and cal.ood is not None and cal.tta is not None, name
        assert cal.num_calibration == len(oof["labels"]) and cal.coverage == 0.95
        assert cal.temperature == pytest.approx(fit_temperature(oof["logits"], oof["labels"]), rel=1e-4)
        assert cal.tta.temperature == pytest.approx(fit_temperature(oof["views"], oof["labels"][chosen]), rel=1e-4)
        assert cal.ood.threshold_from == threshold_from and len(cal.ood.members) == members
        assert cal.ood.features == DEFAULT_FEATURES  # decision 0010: the penultimate stage's statistics too
        assert cal.ood.framing_zooms == FRAMING_ZOOMS and len(cal.ood.framing_weights) == members  # decision 0013
        out = predict_batch(ckpt, images)
        raw = infer(ckpt, images, features=True)
        np.testing.assert_allclose(out.probs, softmax(raw.logits, cal.temperature), atol=1e-6)
        assert out.calibrated is not None and out.calibrated.ood_score is not None
        np.testing.assert_allclose(out.calibrated.ood_score, cal.ood.score(raw.features), rtol=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["deployment"]["status"] == "done" and summary["deployment"]["calibrated"]
    assert summary["deployment"]["out_of_fold_s"] > 0  # where the deployment's time went
    assert summary["retrain"]["train_s"] > 0 and summary["retrain"]["calibration_s"] > 0


def test_onnx_export_gives_the_calibrated_probabilities(run: Path, tmp_path: Path) -> None:
    """The temperature folded into the ONNX graph is the one predict applies: same probabilities."""
    import onnxruntime as ort

    from cellnet.checkpoint import load_checkpoint
    from cellnet.data import generate
    from cellnet.export import export_onnx
    from cellnet.predict import predict_images

    ckpt = load_checkpoint(run / "best")
    path, _ = export_onnx(ckpt, tmp_path / "best.onnx")
    images = generate(16, 32, seed=22).images
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"images": images.astype(np.float32)})[0]
    np.testing.assert_allclose(onnx_probs, predict_images(ckpt, images), atol=1e-4)
    assert ckpt.temperature != 1.0  # a real temperature, not the identity


def test_a_failed_deployment_keeps_the_search_and_resume_finishes_it(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fold model the deployment cannot read: one error line naming --resume, trials.csv and summary.json intact;
    with the file back, --resume deploys (calibrated) without running a trial again."""
    import shutil

    from search.run import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    space = tmp_path / "e2e.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    for name in ("best", "best_folds"):
        shutil.rmtree(copy / name)
    fold_file = sorted((copy / "train").glob("*/folds/fold_0_epoch*.safetensors"))[0]
    saved = fold_file.read_bytes()
    fold_file.write_bytes(saved[:100])  # truncated: not a readable safetensors file

    def trials() -> pd.DataFrame:  # trials.csv without the CPU latency column, which is measured anew each time
        return pd.read_csv(copy / "trials.csv", dtype={"trial_id": str}).drop(columns="cpu_latency_ms")

    trials_before = trials()
    args = [str(space), "--storage", str(copy), "--test", "synthetic:64", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: deploying the winner") and "--resume" in err[0], err
    pd.testing.assert_frame_equal(trials(), trials_before)
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["deployment"]["status"] == "failed" and "safetensors" in summary["deployment"]["error"]
    assert not (copy / "best").exists() and fold_file.exists()  # the fold models stay for the next try

    fold_file.write_bytes(saved)
    assert main(args) == 0
    from cellnet.checkpoint import load_checkpoint

    assert load_checkpoint(copy / "best").calibration is not None
    assert load_checkpoint(copy / "best_folds").calibration is not None
    assert json.loads((copy / "summary.json").read_text())["deployment"]["status"] == "done"
    pd.testing.assert_frame_equal(trials(), trials_before)  # no trial ran again


def test_search_retrain_calibrates_the_winner_and_says_why_not_for_others(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cellnet.checkpoint import load_checkpoint
    from search.retrain import main

    summary = json.loads((run / "summary.json").read_text())
    winner = summary["best"]["trial_id"]
    assert main([str(run), "--trial", winner, "--out", str(tmp_path / "winner")]) == 0
    assert "calibrated on the out-of-fold predictions" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "winner")
    assert ckpt.calibration is not None and ckpt.calibration.ood is not None
    other = next(t for t in pd.read_csv(run / "trials.csv", dtype={"trial_id": str})["trial_id"] if t != winner)
    assert main([str(run), "--trial", other, "--out", str(tmp_path / "other"), "--epochs", "1"]) == 0
    assert "not calibrated: the fold models of trial" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "other").calibration is None


def test_recalibrate_refits_the_deployed_calibrations_in_place_without_training(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run deployed with an OOD flag on pooled features only (`calibration.ood_features: pooled`, what releases
    before decision 0010 measured) gets the current flag from `search.retrain RUN --recalibrate`: the weights stay,
    the calibrations are fitted again (in a moved run too)."""
    import shutil

    from cellnet.checkpoint import load_checkpoint
    from cellnet.constants import POOLED
    from cellnet.data import generate
    from cellnet.predict import predict_batch
    from search.retrain import main

    copy = tmp_path / "moved"
    shutil.copytree(run, copy)  # summary.json still names the original's best/: the copy's own must be rewritten
    config = copy / "search_config.yaml"
    current = config.read_text()
    as_before = yaml.safe_load(current)
    as_before["calibration"]["ood_features"] = POOLED
    as_before["calibration"]["framing_zooms"] = []
    config.write_text(yaml.safe_dump(as_before))
    assert main([str(copy), "--recalibrate"]) == 0
    capsys.readouterr()
    weights = {name: (copy / name / "model.safetensors").read_bytes() for name in ("best", "best_folds")}
    assert {load_checkpoint(copy / n).calibration.ood.features for n in weights} == {POOLED}  # type: ignore[union-attr]
    assert not any(load_checkpoint(copy / n).calibration.ood.framing_check for n in weights)  # type: ignore[union-attr]
    config.write_text(current)
    assert main([str(copy), "--recalibrate"]) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if "recalibrated" in line]
    changed = (
        f"OOD features {POOLED} -> {DEFAULT_FEATURES}, "
        f"framing check off -> discriminator at zooms {list(FRAMING_ZOOMS)}"
    )
    assert len(out) == 2 and all(changed in line for line in out), out
    images = generate(40, 32, seed=23).images
    for name, content in weights.items():
        assert (copy / name / "model.safetensors").read_bytes() == content  # nothing was trained
        ckpt = load_checkpoint(copy / name)
        assert ckpt.calibration is not None and ckpt.calibration.ood is not None
        assert ckpt.calibration.ood.features == DEFAULT_FEATURES and ckpt.calibration.ood.framing_zooms == FRAMING_ZOOMS
        assert predict_batch(ckpt, images).calibrated.ood_score is not None  # type: ignore[union-attr]
    assert load_checkpoint(run / "best").calibration.ood.features == DEFAULT_FEATURES  # type: ignore[union-attr]
    assert main([str(copy), "--recalibrate", "--epochs", "2"]) == 2
    assert "takes no --epochs" in capsys.readouterr().err


def test_a_calibration_that_cannot_be_fitted_is_a_warning_for_a_refit_and_an_error_for_an_ensemble(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One fold's validation images without a class: its OOD statistics cannot be fitted. A refit is still deployed
    (uncalibrated, said in one warning line); an ensemble, which is nothing but those fold models, is refused."""
    import dataclasses
    import shutil

    from cellnet.config import load_config
    from cellnet.errors import CalibrationError
    from search.data import load_data
    from search.results import Winner
    from search.winner import fold_outputs

    copy = tmp_path / "run"
    # without oof.npz: these folds are not those the search scored (check_oof_folds would refuse them first)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tune", "tensorboard", "report", "oof.npz"))
    cfg = load_config(copy / "search_config.yaml")
    loaded = load_data(cfg, for_search=False)
    (train0, val0), (train1, val1) = loaded.folds
    gone = val0[loaded.data.labels[val0] == 0]  # class 0 leaves fold 0's validation for fold 1's
    folds = [(np.union1d(train0, gone), np.setdiff1d(val0, gone)), (np.setdiff1d(train1, gone), np.union1d(val1, gone))]
    bad = dataclasses.replace(loaded, folds=folds)
    summary = json.loads((copy / "summary.json").read_text())["best"]
    win = Winner(summary["trial_id"], summary["params"], summary["best_epoch"], 1, 1, {})
    assert fold_outputs(cfg, copy, win, bad, required=False) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "deployed without calibration" in err[0]
    with pytest.raises(CalibrationError, match="every class"):
        fold_outputs(cfg, copy, win, bad, required=True)
