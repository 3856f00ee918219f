"""bf16 where it pays (decision 0014): inference in bf16 autocast on a CPU with bf16, calibrations that record the
precision they were fitted in and predict that uses it (fp32, said once, where the CPU lacks it), `train.precision`
(auto decided once by a short probe, recorded per fold, folds or a refit in another precision refused), and an export
that stays fp32.

The session runs with $CELLNET_BF16=0 (tests/conftest.py); the tests here set it to 1 where they need bf16 (on a CPU
without the instructions torch emulates it, slowly but with the same rounding). A tiny model: test_resnet at 32 px.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from cellnet.calibrate import fit_calibration
from cellnet.checkpoint import load_checkpoint, save_checkpoint
from cellnet.cli import main
from cellnet.config import TrainConfig, parse_config
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate
from cellnet.errors import CheckpointError, ConfigError, PrecisionMismatchError
from cellnet.precision import BF16_ENV, autocast, inference_precision, supports
from cellnet.predict import checkpoint_precision, infer, precision_note, predict_batch
from tests.test_cli import TINY_SIZE, assert_one_line_error, tiny_config

TINY = {
    "backbone": "test_resnet", "head_layers": 0, "dropout": 0.0, "batch_size": 32, "warmup_epochs": 0,
    "aug_strength": 0.0, "lr": 3e-3, "device": "cpu",
}  # fmt: skip


@pytest.fixture(autouse=True)
def own_probes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own machine-wide probes file: a probe one test faked is not another's measurement."""
    from cellnet import train_precision as tp

    monkeypatch.setattr(tp, "probes_file", lambda: tmp_path / "probes" / tp.PROBES_FILE)


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's CPU has bf16 (emulated where it has not)."""
    monkeypatch.setenv(BF16_ENV, "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet trained 4 epochs in fp32 on 600 synthetic cells, saved uncalibrated."""
    from cellnet.train import fit

    data = generate(n=600, image_size=TINY_SIZE, seed=0)
    result = fit(TrainConfig(**TINY, epochs=4), data, None, early_stopping=False)
    return save_checkpoint(
        tmp_path_factory.mktemp("precision") / "plain", result.model, config=result.config, classes=data.classes,
        image_size=TINY_SIZE, mean=result.mean, std=result.std, metrics={},
    )  # fmt: skip


def held_out(n: int = 300, seed: int = 11) -> Any:
    return generate(n=n, image_size=TINY_SIZE, seed=seed)


def calibrated(trained: Path, dest: Path, precision: str) -> Path:
    """`trained` calibrated on held-out cells whose outputs were computed in `precision`."""
    ckpt, cells = load_checkpoint(trained), held_out()
    out = infer(ckpt, cells.images, features=True, precision=precision)
    assert out.precision == precision
    cal = fit_calibration(
        out.logits, cells.labels, len(ckpt.classes), out.features, feature_kind=out.feature_kind,
        precision=out.precision,
    )  # fmt: skip
    return ckpt.save(dest, calibration=cal)


# ---------------------------------------------------------------------------------------------------------------
# The precision of this process


def test_cellnet_bf16_switches_this_cpus_bf16_and_a_bad_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BF16_ENV, "0")
    assert inference_precision("cpu") == "fp32" and not supports("bf16", "cpu") and supports("fp32", "cpu")
    monkeypatch.setenv(BF16_ENV, "1")  # read at every call: set in a running process, it takes effect
    assert inference_precision("cpu") == "bf16" and supports("bf16", "cpu")
    assert inference_precision("cuda") == "fp32"  # inference on CUDA stays fp32, as it always was
    monkeypatch.setenv(BF16_ENV, "yes")
    with pytest.raises(ConfigError, match=r"^\$CELLNET_BF16 must be 0 .* got 'yes'$"):
        inference_precision("cpu")
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, got 'fp16'"):
        autocast("fp16", "cpu")
    x = torch.randn(2, 4)
    with autocast("bf16", "cpu"):
        assert torch.nn.functional.linear(x, torch.randn(3, 4)).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert torch.nn.functional.linear(x, torch.randn(3, 4)).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# Inference


@pytest.mark.usefixtures("bf16_cpu")
def test_bf16_inference_is_close_to_fp32_and_float32_out(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with bf16 an uncalibrated model predicts in bf16: the same answers as fp32 (argmax), probabilities a
    little off, float32 arrays out; without bf16, fp32 exactly."""
    ckpt, cells = load_checkpoint(trained), held_out()
    fast = infer(ckpt, cells.images, features=True, tta=True)
    exact = infer(ckpt, cells.images, features=True, tta=True, precision="fp32")
    assert (fast.precision, exact.precision) == ("bf16", "fp32")
    for array in (fast.logits, fast.views, fast.features):
        assert array is not None and array.dtype == np.float32
    p, q = fast.probs(), exact.probs()
    assert (p.argmax(axis=1) == q.argmax(axis=1)).mean() >= 0.98
    diff = np.abs(p - q)
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.005  # > 0: it did run in bf16
    assert np.abs(fast.features - exact.features).max() > 0  # type: ignore[operator]
    monkeypatch.setenv(BF16_ENV, "0")
    plain = infer(ckpt, cells.images, features=True, tta=True)
    assert plain.precision == "fp32" and np.array_equal(plain.logits, exact.logits)


@pytest.mark.usefixtures("bf16_cpu")
def test_predict_proba_scores_in_bf16_where_the_cpu_has_it(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's shift suite (`cellnet.train.predict_proba`, in every fold worker) predicts in bf16 on such a
    CPU: close to fp32, not equal to it."""
    from cellnet.train import predict_proba

    ckpt, cells = load_checkpoint(trained), held_out(128)
    kw: dict[str, Any] = {"mean": ckpt.mean, "std": ckpt.std, "device": "cpu"}
    fast = predict_proba(ckpt.model, cells.images, **kw)
    exact = predict_proba(ckpt.model, cells.images, precision="fp32", **kw)
    assert fast.dtype == np.float32 and 0 < np.abs(fast - exact).max() < 0.05
    monkeypatch.setenv(BF16_ENV, "0")
    assert np.array_equal(predict_proba(ckpt.model, cells.images, **kw), exact)


# ---------------------------------------------------------------------------------------------------------------
# The calibration records its precision; predict uses it


@pytest.mark.usefixtures("bf16_cpu")
def test_the_calibration_records_its_precision_and_predict_uses_it(trained: Path, tmp_path: Path) -> None:
    cells = held_out(64, seed=5)
    fast = load_checkpoint(calibrated(trained, tmp_path / "bf16", "bf16"))
    meta = json.loads((tmp_path / "bf16" / "cellnet.json").read_text())
    assert meta["calibration"]["precision"] == "bf16"
    assert fast.calibration is not None and fast.calibration.precision == "bf16"
    assert checkpoint_precision(fast) == "bf16" and predict_batch(fast, cells.images).inference.precision == "bf16"
    # fitted in fp32: predicted in fp32, although this CPU has bf16
    exact = load_checkpoint(calibrated(trained, tmp_path / "fp32", "fp32"))
    assert checkpoint_precision(exact) == "fp32" and predict_batch(exact, cells.images).inference.precision == "fp32"
    assert precision_note(exact) is None and precision_note(fast) is None


def test_older_calibrations_read_as_fp32_and_an_unknown_precision_is_refused(trained: Path, tmp_path: Path) -> None:
    """Calibrations written before decision 0014 say "float32": fp32."""
    path = calibrated(trained, tmp_path / "old", "fp32")
    meta_path = path / "cellnet.json"
    meta = json.loads(meta_path.read_text())
    meta["calibration"]["precision"] = "float32"
    meta_path.write_text(json.dumps(meta))
    calibration = load_checkpoint(path).calibration
    assert calibration is not None and calibration.precision == "fp32"
    meta["calibration"]["precision"] = "fp16"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="precision must be one of fp32, bf16, got 'fp16'"):
        load_checkpoint(path)


def test_a_bf16_calibration_on_a_cpu_without_bf16_predicts_fp32_and_says_so_once(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(BF16_ENV, "1")
    path = calibrated(trained, tmp_path / "bf16", "bf16")
    monkeypatch.setenv(BF16_ENV, "0")  # the same checkpoint on a CPU without bf16
    ckpt = load_checkpoint(path)
    cells = held_out(64, seed=5)
    assert checkpoint_precision(ckpt) == "fp32"
    assert predict_batch(ckpt, cells.images).inference.precision == "fp32"
    note = precision_note(ckpt, str(path))
    assert note is not None and "calibrated on bf16" in note and "predicting in fp32" in note
    npz = save_npz(cells, tmp_path / "cells.npz")
    assert main(["predict", "--checkpoint", str(path), str(npz), "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert err.count("predicting in fp32") == 1 and "\n" not in note
    assert main(["evaluate", "--checkpoint", str(path), str(npz), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().err.count("predicting in fp32") == 1


# ---------------------------------------------------------------------------------------------------------------
# The search's calibration passes run in one precision, the one recorded


@pytest.mark.usefixtures("bf16_cpu")
def test_the_searchs_calibration_passes_run_in_the_oof_precision(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out-of-fold scores, the ensemble's framing check and the refit's OOD statistics all run in the precision the
    out-of-fold predictions were made in (the one the calibration records), whatever this CPU would default to."""
    import search.winner
    from search.oof import out_of_fold

    ckpt = load_checkpoint(trained)
    data = held_out(120, seed=3)
    model = ckpt.model
    folds = [(np.arange(60, 120), np.arange(60)), (np.arange(60), np.arange(60, 120))]
    assert out_of_fold([model, model], ckpt.config, data, folds).precision == "bf16"  # this CPU's default
    oof = out_of_fold([model, model], ckpt.config, data, folds, features=True, tta=True, precision="fp32")
    assert oof.precision == "fp32"
    seen: list[str | None] = []
    real = search.winner.infer

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(search.winner, "infer", spy)
    cal = search.winner.fit_ensemble_calibration(oof, folds, len(data.classes), parse_config({"name": "t"}))
    assert cal.precision == "fp32"
    assert cal.ood is not None
    search.winner.fit_ensemble_framing(cal.ood, [model, model], ckpt.config, data, folds, oof, (0.7,))
    search.winner.fit_refit_ood(model, [model, model], ckpt.config, data, folds, oof, 0.05, framing_zooms=(0.7,))
    assert len(seen) >= 5 and set(seen) == {"fp32"}


# ---------------------------------------------------------------------------------------------------------------
# Training precision


def test_train_precision_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"^precision must be one of auto, fp32, bf16, got 'half'$"):
        TrainConfig(precision="half")
    with pytest.raises(ConfigError) as e:
        parse_config({"name": "t", "train": {"precision": "fp16"}}, "space.yaml")
    assert str(e.value) == "space.yaml: precision must be one of auto, fp32, bf16, got 'fp16'"
    with pytest.raises(ConfigError) as e:
        parse_config({"name": "t", "space": {"precision": {"choice": ["fp32", "float16"]}}}, "space.yaml")
    assert "\n" not in str(e.value) and "space.precision" in str(e.value) and "'float16'" in str(e.value)
    cfg = parse_config({"name": "t", "space": {"precision": {"choice": ["auto", "bf16"]}}}, "space.yaml")
    assert cfg.train_config({"precision": "bf16"}).precision == "bf16" and cfg.train_config().precision == "auto"
    config = tiny_config(tmp_path / "tiny.yaml", "synthetic:64", space="  precision: half\n")
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    assert_one_line_error(capsys.readouterr().err, "precision must be one of auto, fp32, bf16, got 'half'", "tiny.yaml")


def test_cellnet_train_decides_auto_and_saves_what_it_trained_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cellnet import train_precision as tp

    npz = save_npz(generate(n=96, image_size=TINY_SIZE, seed=0), tmp_path / "data.npz")
    config = tiny_config(tmp_path / "tiny.yaml", str(npz), epochs=1)
    assert main(["train", str(config), "--out", str(tmp_path / "a")]) == 0  # $CELLNET_BF16=0: fp32, no probe
    assert load_checkpoint(tmp_path / "a").config.precision == "fp32" and "(pretrained=False, fp32)" in (
        capsys.readouterr().out
    )
    monkeypatch.setenv(BF16_ENV, "1")
    monkeypatch.setattr(tp, "measure", lambda *a, **k: {"fp32": [10.0], "bf16": [30.0]})
    monkeypatch.setattr(tp, "_PROBES", {})
    assert main(["train", str(config), "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    line = r"precision: test_resnet at 32 px, batch 32, \d+ thread\(s\): 10 images/s fp32, 30 bf16 -> bf16"
    assert re.search(line, out)
    assert load_checkpoint(tmp_path / "b").config.precision == "bf16"


def test_training_precision_auto_and_the_probe_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: bf16 on CUDA, fp32 on a CPU without bf16 (no probe), the probe's choice on a CPU with bf16 -- measured
    once per (backbone, size, batch size, threads) in a process (one line when measured, none from that cache) and
    once per machine (the probes file: a new process reads it, says so, and measures again where it is unreadable)."""
    from cellnet import train_precision as tp

    monkeypatch.setattr(tp, "_PROBES", {})
    auto, given = TrainConfig(**TINY), TrainConfig(**{**TINY, "precision": "fp32"})
    monkeypatch.setenv(BF16_ENV, "0")
    assert tp.training_precision(auto, "cpu", 32) == "fp32" and tp.training_precision(auto, "cuda", 32) == "bf16"
    assert not tp._PROBES  # no probe without bf16
    monkeypatch.setenv(BF16_ENV, "1")
    assert tp.training_precision(given, "cpu", 32) == "fp32" and not tp._PROBES  # as given: no probe either
    measured, lines = [], []
    real = tp.measure

    def counting(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
        measured.append(args[0].backbone)
        return real(*args, **kwargs)

    monkeypatch.setattr(tp, "measure", counting)
    choice = tp.training_precision(auto, "cpu", 32, threads=1, say=lines.append)
    probe = tp._PROBES[("test_resnet", 32, 32, 1)]
    assert choice == probe.choice in ("fp32", "bf16") and probe.fp32 > 0 and probe.bf16 > 0
    assert choice == ("bf16" if probe.bf16 >= tp.BF16_MIN_SPEEDUP * probe.fp32 else "fp32")
    assert (
        len(lines) == 1
        and "test_resnet at 32 px, batch 32, 1 thread(s)" in lines[0]
        and lines[0].endswith(f"-> {choice} (train.precision: auto)")
    )
    assert tp.training_precision(auto, "cpu", 32, threads=1, say=lines.append) == choice
    assert tp.probe("test_resnet", 32, 32, 1) is probe and measured == ["test_resnet"] and len(lines) == 1
    tp.training_precision(auto, "cpu", 48, threads=1)  # another size: measured again
    assert measured == ["test_resnet", "test_resnet"]
    monkeypatch.setattr(tp, "_PROBES", {})  # a new process on the same machine: the machine's file answers
    assert tp.training_precision(auto, "cpu", 32, threads=1, say=lines.append) == choice
    assert measured == ["test_resnet", "test_resnet"] and tp._PROBES[("test_resnet", 32, 32, 1)] == probe
    assert lines[-1].endswith(f"(measured on this machine before: {tp.probes_file()})")
    saved = json.loads(tp.probes_file().read_text())
    assert len(saved) == 2 and all(k.startswith(f"{tp.cpu_name()}|{torch.__version__}|test_resnet|") for k in saved)
    tp.probes_file().write_text("{not json")  # unreadable: measured again, and written again
    monkeypatch.setattr(tp, "_PROBES", {})
    tp.training_precision(auto, "cpu", 32, threads=1)
    assert measured == ["test_resnet"] * 3 and len(json.loads(tp.probes_file().read_text())) == 1


def test_a_search_decides_auto_once_per_backbone_and_a_resume_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cellnet import train_precision as tp
    from search.paths import PRECISION_FILE
    from search.run import training_precisions

    backbones = ["test_resnet", "test_efficientnet"]
    cfg = parse_config({"name": "t", "data": {"image_size": 32}, "space": {"backbone": {"choice": backbones}}})
    fake = {b: tp.Probe(b, 32, 64, 1, fp32=100.0, bf16=200.0 if b == "test_resnet" else 90.0) for b in backbones}
    monkeypatch.setattr(tp, "_PROBES", {(b, 32, 64, 1): p for b, p in fake.items()})
    monkeypatch.setenv(BF16_ENV, "1")
    plan: Any = SimpleNamespace(gpus_per_fold=0, threads_per_fold=1)
    resolved = training_precisions(cfg, tmp_path, plan, resume=False)
    assert resolved.precisions == {"test_resnet": "bf16", "test_efficientnet": "fp32"}
    assert json.loads((tmp_path / PRECISION_FILE).read_text()) == resolved.precisions
    assert resolved.train_config({"backbone": "test_efficientnet"}).precision == "fp32"
    assert resolved.train_config({"backbone": "test_resnet"}).precision == "bf16"
    assert resolved.train_config({"backbone": "test_resnet", "precision": "fp32"}).precision == "fp32"  # given wins
    assert resolved.to_dict() == cfg.to_dict()  # not part of the YAML: --resume compares that
    (tmp_path / PRECISION_FILE).write_text(json.dumps({"test_resnet": "fp32", "test_efficientnet": "fp32"}))
    again = training_precisions(cfg, tmp_path, plan, resume=True)
    assert again.precisions == {"test_resnet": "fp32", "test_efficientnet": "fp32"}  # not decided again
    for name in ("new", "gpu"):  # run directories exist by then (search.run checks they are writable)
        (tmp_path / name).mkdir()
    fixed = parse_config({"name": "t", "train": {"precision": "fp32"}})
    assert training_precisions(fixed, tmp_path / "new", plan, resume=False).precisions == {}
    assert training_precisions(cfg, tmp_path / "gpu", SimpleNamespace(gpus_per_fold=1, threads_per_fold=1),
                               resume=False).precisions == dict.fromkeys(backbones, "bf16")  # fmt: skip


def test_bf16_training_on_cpu_runs_under_autocast_and_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """`precision: bf16` on a CPU trains under bf16 autocast (other weights than fp32 from the same seed, a finite
    loss), and auto resolved by the probe is what the fit's config records."""
    from cellnet import train_precision as tp
    from cellnet.train import Trainer, fit

    monkeypatch.setenv(BF16_ENV, "1")
    data = generate(n=96, image_size=TINY_SIZE, seed=2)
    weights = {}
    for precision in ("fp32", "bf16"):
        result = fit(TrainConfig(**TINY, epochs=1, precision=precision), data, None, early_stopping=False)
        assert result.config.precision == precision and np.isfinite(result.history[-1]["train_loss"])
        weights[precision] = result.model.head[-1].weight.detach().clone()
    assert not torch.equal(weights["fp32"], weights["bf16"])
    monkeypatch.setattr(tp, "_PROBES", {("test_resnet", 32, 32, torch.get_num_threads()): tp.Probe(
        "test_resnet", 32, 32, torch.get_num_threads(), fp32=10.0, bf16=20.0)})  # fmt: skip
    trainer = Trainer(TrainConfig(**TINY, epochs=1), data, None)
    assert trainer.precision == "bf16" and trainer.config.precision == "bf16"


def test_validation_on_a_cpu_runs_in_the_precision_the_model_predicts_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model trained in fp32 is validated (and so ranked by the search) in bf16 where the CPU has it, as predict
    and the shift suite score it; fp32 where it has not; the figures stay close to fp32's."""
    from cellnet.train import Trainer

    data = generate(n=96, image_size=TINY_SIZE, seed=2)
    train, val = data.subset(np.arange(64)), data.subset(np.arange(64, 96))
    config = TrainConfig(**TINY, epochs=1, precision="fp32")
    monkeypatch.setenv(BF16_ENV, "0")
    plain = Trainer(config, train, val)
    assert plain.precision == plain.eval_precision == "fp32"
    fp32 = plain.train_epoch()
    monkeypatch.setenv(BF16_ENV, "1")
    bf16_cpu = Trainer(config, train, val)
    assert bf16_cpu.precision == "fp32" and bf16_cpu.eval_precision == "bf16"
    bf16 = bf16_cpu.train_epoch()  # the same weights (fp32 training, same seed), validated in bf16
    assert bf16["train_loss"] == fp32["train_loss"] and abs(bf16["val_loss"] - fp32["val_loss"]) < 0.05
    assert abs(bf16["val_accuracy"] - fp32["val_accuracy"]) <= 2 / 32


# ---------------------------------------------------------------------------------------------------------------
# Folds and refits in one precision


def test_folds_or_a_refit_in_other_precisions_are_a_clear_error(tmp_path: Path) -> None:
    """Each fold's precision is recorded; folds that trained in different precisions fail the trial with a line
    naming each fold's, and a refit in another precision than its winner's folds is refused before it is saved."""
    from cellnet.files import write_json
    from search.refit import check_same_precision
    from search.trainable import DIVERGED_FILE, failure, fold_metrics, folds_disagree, precision_disagree

    assert precision_disagree(["bf16", "bf16"], ["n1", "n2"]) == []
    errors = precision_disagree(["bf16", "fp32"], ["node-with-bf16", "node-without"])
    assert len(errors) == 1 and "fold 0 on node node-with-bf: bf16; fold 1 on node node-without: fp32" in errors[0]
    assert "train.precision: fp32 or bf16" in errors[0]
    per_fold = [
        {"epoch": 1, "val_accuracy": 0.5, "val_macro_f1": 0.5, "val_balanced_accuracy": 0.5, "val_loss": 1.0,
         "train_loss": 1.0, "train_accuracy": 0.5, "lr": 0.1, "images_per_s": 1.0, "epoch_time_s": 1.0,
         "weights": "none", "precision": p}
        for p in ("bf16", "fp32")
    ]  # fmt: skip
    assert folds_disagree(per_fold, ["n1", "n2"]) == (precision_disagree(["bf16", "fp32"], ["n1", "n2"]), "precision")
    row = fold_metrics(per_fold, ["n1", "n2"])
    assert (row["precision"], row["fold0_precision"], row["fold1_precision"]) == ("bf16", "bf16", "fp32")
    same = [{**m, "precision": "fp32"} for m in per_fold]
    assert folds_disagree(same, ["n1", "n2"])[0] == []
    different_weights = [{**same[0], "weights": "package: x"}, same[1]]
    assert folds_disagree(different_weights, ["n1", "n2"])[1] == "weights"
    write_json(tmp_path / DIVERGED_FILE, {"epoch": 1, "errors": errors, "kind": "precision"})
    reason = failure(tmp_path)
    assert isinstance(reason, PrecisionMismatchError) and "different precisions" in str(reason)
    check_same_precision("bf16", "bf16")
    with pytest.raises(PrecisionMismatchError, match=r"^the refit trained in fp32, but the winner's folds in bf16: "):
        check_same_precision("fp32", "bf16")
    with pytest.raises(PrecisionMismatchError, match="nothing was deployed$"):
        check_same_precision(None, "fp32")


def test_the_winner_carries_its_folds_precision(tmp_path: Path) -> None:
    """trials.csv's precision columns and the Winner the refit is checked against come from the best epoch's row."""
    import pandas as pd

    from search.results import TrialRecord, write_outputs

    cfg = parse_config({"name": "t", "cv": {"folds": 2}, "search": {"max_epochs": 1, "grace_period": 1}})
    history = pd.DataFrame(
        [{"epoch": 1, "training_iteration": 1, "cv_accuracy": 0.9, "cv_accuracy_std": 0.0, "cv_macro_f1": 0.9,
          "cv_balanced_accuracy": 0.9, "cv_val_loss": 0.3, "fold0_accuracy": 0.9, "fold1_accuracy": 0.9,
          "weights": "none", "fold0_weights": "none", "fold1_weights": "none", "precision": "bf16",
          "fold0_precision": "bf16", "fold1_precision": "bf16", "time_total_s": 1.0, "timestamp": 1.0}]
    )  # fmt: skip
    out = write_outputs(cfg, [TrialRecord("t1", {}, history)], tmp_path, num_classes=8, measure_cost=False)
    assert out.winner is not None and out.winner.precision == "bf16"
    assert list(out.table[["precision", "fold0_precision", "fold1_precision"]].iloc[0]) == ["bf16"] * 3


# ---------------------------------------------------------------------------------------------------------------
# Export


@pytest.mark.usefixtures("bf16_cpu")
def test_export_stays_fp32(trained: Path, tmp_path: Path) -> None:
    """A bf16-calibrated checkpoint on a CPU with bf16 exports an fp32 graph, checked against PyTorch in fp32: the
    parity is float rounding (1e-4), where bf16 would be off by ~1e-2."""
    from cellnet.export import export_onnx

    ckpt = load_checkpoint(calibrated(trained, tmp_path / "bf16", "bf16"))
    assert checkpoint_precision(ckpt) == "bf16"
    _, diff = export_onnx(ckpt, tmp_path / "model.onnx", samples=4)
    assert diff <= 1e-4
