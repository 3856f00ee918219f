"""From the search's winner to what is deployed, calibrated and tested: `finish` is called once the trials are over.

finish(cfg, run_dir, grid, loaded, data_ref, started)
  ├─ trials.csv, summary.json, plots, leaderboard (search/results.py) ─ the winner (trial id, params, best epoch)
  └─ deploy ─┬─ its fold models ─ out-of-fold predictions ─ oof.npz (search/oof.py)
             │     └─ calibration, fitted once on them (cellnet/calibrate.py), every pass in one precision (bf16
             │        on a CPU with bf16, recorded: decision 0014): temperature (NLL) and conformal
             │        scores from the OOF logits -- the same for both deployments; OOD statistics (cellnet/ood.py)
             │        per deployed model: an ensemble member's from its own validation fold (unseen, 80% fit / 20%
             │        threshold); a refit's from its training images, its threshold transferred from the fold
             │        models' seen-vs-unseen ratio (`fit_refit_ood`); both with the framing check: a discriminator
             │        of the cells from their zoom-outs (`calibration.framing_zooms`, decisions 0011, 0013)
             ├─ retrain.mode folds/both: FoldEnsemble(members) ...... best/ (folds) or best_folds/ (both)
             ├─ retrain.mode refit/both: refit on all data (search/refit.py) ........ best/, then calibrated
             └─ --test: each deployed checkpoint scored once (report/test_<name>/), summary.json's `test`
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellnet.augment import smallest_magnification
from cellnet.calibrate import Calibration, fit_calibration
from cellnet.checkpoint import load_checkpoint, save_checkpoint
from cellnet.config import ExperimentConfig, TrainConfig
from cellnet.data.dataset import CellData
from cellnet.errors import CalibrationError, CellnetError, CheckpointError
from cellnet.evaluate import evaluate, plot_robustness_card, robustness_card
from cellnet.model import CellNet, FoldEnsemble, model_normalisation
from cellnet.ood import OODDetector, fit_ood_held_out, fit_ood_transferred, ood_threshold, with_framing
from cellnet.precision import inference_precision
from cellnet.predict import infer
from cellnet.shifts import zoomed_copies
from search.data import SearchData
from search.oof import (
    OutOfFold,
    as_checkpoint,
    check_oof_folds,
    ensemble,
    load_fold_models,
    out_of_fold,
    prune_fold_files,
    save_oof,
    trial_folds_dir,
)
from search.paths import OOF_FILE, SUMMARY
from search.provenance import provenance
from search.refit import retrain
from search.results import Winner, records_from_result_grid, update_summary, write_outputs

Folds = list[tuple[np.ndarray, np.ndarray]]
FRAMING_IMAGES = 2000  # cells one framing discriminator is fitted on, at most (`framing_sample`)


class DeploymentError(CellnetError):
    """The winner could not be deployed; the search's own results are intact and --resume finishes the deployment."""


# ---------------------------------------------------------------------------------------------------------------
# The story


def finish(
    cfg: ExperimentConfig,
    run_dir: Path,
    grid: Any,
    loaded: SearchData,
    data_ref: Any,
    started: float,
    *,
    retrain_winner: bool = True,
    resume_command: str = "python -m search.run CONFIG --resume",
) -> None:
    """Outputs of a finished search (`grid`: Tune's ResultGrid): tables, plots, leaderboard; then `deploy`.
    `data_ref`: the search data in Ray's object store (what the refit trains on). Any failure of the deployment is
    one DeploymentError that says how to finish it (`resume_command`); the search's results stay as they are."""
    prov = provenance(
        loaded.data,
        seeds={"cv": cfg.cv.seed, "search": cfg.search.seed, "train": cfg.train_config().seed},
        data_source=cfg.data.source,
        data_cleaned=cfg.data.clean,
        run_dir=str(run_dir),
        command="python -m search.run " + " ".join(sys.argv[1:]),
    )
    try:
        out = write_outputs(
            cfg,
            records_from_result_grid(grid),
            run_dir,
            num_classes=len(loaded.data.classes),
            wall_time_s=time.time() - started,
            provenance=prov,
            test=loaded.test_summary(cfg.data.test),
        )
    except Exception as e:  # the trials themselves are safe in Tune's experiment; --resume writes these again
        raise DeploymentError(
            f"writing trials.csv / summary.json failed ({type(e).__name__}: {e}); the trials are kept in "
            f"{run_dir / 'tune'}: {resume_command} writes them again"
        ) from e
    print()
    print(out.leaderboard)
    if out.winner is None:
        return
    win = out.winner
    try:
        deployment = deploy(
            cfg, run_dir, win, loaded, data_ref, started, {**prov, "trial_id": win.trial_id}, retrain_winner
        )
        card = robustness(run_dir, cfg, out.summary)
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        update_summary(run_dir, deployment={"status": "failed", "error": reason})
        raise DeploymentError(
            f"deploying the winner {win.trial_id} failed ({reason}). The search's results are kept: trials.csv, "
            f"summary.json and the winner's fold models ({trial_folds_dir(run_dir, win.trial_id)}); once the cause is "
            f"fixed, finish the deployment with: {resume_command}"
        ) from e
    update_summary(run_dir, deployment=deployment, robustness=card)
    if card is not None:
        families = ", ".join(f"{f} {v['accuracy']:.3f}" for f, v in card["families"].items())
        print(f"robustness ({card['source']}): {families} -> {run_dir / 'report' / 'robustness.png'}")


def robustness(run_dir: Path, cfg: ExperimentConfig, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The deployed model's robustness card (summary.json's `robustness`, report/robustness.png): its accuracy under
    each shift of the suite, grouped by family -- on the held-out --test set when there is one, else the winner's
    cross-validated figures (its fold models on their shifted validation images: an estimate for the refit)."""
    current = json.loads((run_dir / SUMMARY).read_text())
    test = current.get("test") or {}
    name = "refit" if "refit" in test else "folds" if "folds" in test else None
    best = summary.get("best") or {}
    if name is not None and test[name].get("shifted_accuracy"):
        source = f"held-out test set {cfg.data.test} ({test[name]['n']} images)"
        card = robustness_card(test[name]["shifted_accuracy"], test[name]["accuracy"], source, deployed=name)
    elif best.get("cv", {}).get("per_shift"):
        per_shift = {k: float(v) for k, v in best["cv"]["per_shift"].items() if v is not None}
        source = "cross-validation: the winner's fold models on shifted validation images"
        card = robustness_card(per_shift, best["cv"].get("cv_accuracy"), source, deployed=cfg.retrain.mode)
    else:
        return None
    plot_robustness_card(card, run_dir / "report" / "robustness.png")
    return card


def deploy(
    cfg: ExperimentConfig,
    run_dir: Path,
    win: Winner,
    loaded: SearchData,
    data_ref: Any,
    started: float,
    provenance: dict[str, Any],
    retrain_winner: bool,
) -> dict[str, Any]:
    """What `retrain.mode` deploys from the winner, calibrated; tested on --test; summary.json's sections. Returns
    summary.json's `deployment` section. The winner's out-of-fold predictions (oof.npz) and fold models are kept in
    every mode, --no-retrain included: what `search.retrain` calibrates a later refit with."""
    sections: dict[str, Any] = {}
    deployed: dict[str, Path] = {}
    mode = cfg.retrain.mode
    refit = mode in ("refit", "both") and retrain_winner
    t0 = time.time()
    winner = fold_outputs(cfg, run_dir, win, loaded, required=mode != "refit", ensemble_ood=mode != "refit")
    fold_s = round(time.time() - t0, 1)  # oof.npz and the fold models' calibration: where a deployment's time goes
    if winner is not None and mode in ("folds", "both"):
        dest = run_dir / ("best" if mode == "folds" else "best_folds")
        deployed["folds"], sections["folds"] = save_fold_ensemble(run_dir, win, loaded, winner, dest, provenance)
        sections["folds"]["wall_s"] = time.time() - started  # the whole run up to a deployable ensemble
    if mode in ("refit", "both") and not refit:
        print(
            f"\nwinner not retrained (--no-retrain). To deploy it into {run_dir / 'best'}: the same search command "
            f"with --resume; or a calibrated copy elsewhere: python -m search.retrain {run_dir} --trial {win.trial_id}"
        )
    elif refit:
        deployed["refit"], sections["retrain"] = refit_winner(cfg, win, loaded, data_ref, winner, run_dir, provenance)
        sections["retrain"]["wall_s"] = time.time() - started  # the whole run up to a deployable refit
    prune_fold_files(run_dir, win.trial_id, win.best_epoch)
    if loaded.test is not None and deployed:
        try:
            tested = test_deployed(cfg, run_dir, deployed, loaded.test)
        except CellnetError as e:  # scoring is a report: the deployment stands without it
            print(f"warning: the --test set could not be scored: {e}", file=sys.stderr)
            tested = {"error": " ".join(str(e).split())}
        sections["test"] = {**(loaded.test_summary(cfg.data.test) or {}), **tested}
    update_summary(run_dir, **sections)
    return {
        "status": "done" if deployed else "not deployed (--no-retrain)",
        "deployed": {name: str(path) for name, path in deployed.items()},
        "calibrated": winner is not None,
        "out_of_fold_s": fold_s,
    }


# ---------------------------------------------------------------------------------------------------------------
# The winner's fold models and the calibration fitted on their out-of-fold predictions


@dataclass
class WinnerFolds:
    """The winner's fold models, their out-of-fold predictions and the calibration fitted on them."""

    config: TrainConfig
    members: list[CellNet]
    oof: OutOfFold
    calibration: Calibration


def fold_outputs(
    cfg: ExperimentConfig,
    run_dir: Path,
    win: Winner,
    loaded: SearchData,
    *,
    required: bool,
    ensemble_ood: bool = True,
) -> WinnerFolds | None:
    """Load the winner's fold models, write oof.npz, fit the calibration. With `required=False` (a refit-only
    deployment) a problem with the fold files or the calibration (e.g. a class too rare for the OOD statistics of a
    fold) is a warning and the refit is deployed uncalibrated. `ensemble_ood=False` (no fold ensemble deployed): the
    ensemble's own OOD detector and framing check are not fitted -- a refit fits its own (`fit_refit_ood`)."""
    data = loaded.data
    config = cfg.train_config(win.params, epochs=cfg.search.max_epochs)
    check_oof_folds(run_dir / OOF_FILE, data.ids, loaded.folds)  # search.retrain: the folds the search scored
    try:
        members = load_fold_models(
            config, trial_folds_dir(run_dir, win.trial_id), cfg.cv.folds, win.best_epoch, len(data.classes)
        )
        kind = members[0].supported_features(cfg.calibration.ood_features)
        # the one precision of every calibration pass (the fold models and the refit are on the CPU here), recorded in
        # the calibration: what predict runs the deployed model in
        precision = inference_precision("cpu")
        oof = out_of_fold(
            members,
            config,
            data,
            loaded.folds,
            features=True,
            feature_kind=kind,
            tta=cfg.calibration.tta,
            seed=cfg.cv.seed,
            precision=precision,
        )
        save_oof(run_dir / OOF_FILE, oof, data.classes, win.trial_id, win.best_epoch)
        calibration = fit_ensemble_calibration(oof, loaded.folds, len(data.classes), cfg, ood=ensemble_ood)
        zooms, note = framing_zooms(cfg, config)
        if calibration.ood is not None and zooms:
            ood = fit_ensemble_framing(calibration.ood, members, config, data, loaded.folds, oof, zooms)
            calibration = dataclasses.replace(calibration, ood=ood)
        if note and (calibration.ood is not None or (not ensemble_ood and oof.features is not None)):
            calibration = dataclasses.replace(calibration, notes=(*calibration.notes, note))
    except (CheckpointError, CalibrationError) as e:
        if required:
            raise
        print(f"warning: {e}; the refit is deployed without calibration", file=sys.stderr)
        return None
    print(
        f"out-of-fold predictions of {win.trial_id} (epoch {win.best_epoch}): accuracy {oof.accuracy():.4f} "
        f"-> {run_dir / OOF_FILE}; temperature {calibration.temperature:.3f} ({oof.precision})"
    )
    return WinnerFolds(config, members, oof, calibration)


def fit_ensemble_calibration(
    oof: OutOfFold, folds: Folds, num_classes: int, cfg: ExperimentConfig, *, ood: bool = True
) -> Calibration:
    """Temperature and conformal scores from the OOF logits; OOD per member, on its own (unseen) validation fold
    (`ood=False`: none)."""
    cal = fit_calibration(
        oof.logits,
        oof.labels,
        num_classes,
        view_logits=oof.views,
        view_labels=oof.view_labels,
        coverage=cfg.calibration.coverage,
        precision=oof.precision,
    )
    if oof.features is None or not ood:
        return cal
    stats, thresholds = [], []
    for i, (_, val) in enumerate(folds):
        s, held = fit_ood_held_out(oof.features[val], oof.labels[val], num_classes, seed=cfg.cv.seed + i)
        stats.append(s)
        thresholds.append(ood_threshold(held, cfg.calibration.ood_false_alarm))
    kind = str(oof.feature_kind)
    detector = OODDetector(tuple(stats), tuple(thresholds), cfg.calibration.ood_false_alarm, kind, "held-out")
    return dataclasses.replace(cal, ood=detector)


def framing_zooms(cfg: ExperimentConfig, config: TrainConfig) -> tuple[tuple[float, ...], str | None]:
    """The framing check's factors (all of `calibration.framing_zooms`, whatever the winner trained on: decision
    0013), and a note when the winner trained with `zoom_aug` on some of them (None otherwise): it may read those
    framings, but its sets and threshold were calibrated on the training framing, so they are flagged all the same."""
    zooms = cfg.calibration.framing_zooms
    trained = [z for z in zooms if z >= smallest_magnification(config.zoom_aug)]
    if not trained:
        return zooms, None
    return zooms, (
        f"framing check: zooms {trained} flagged although the winner trained on them (zoom_aug {config.zoom_aug:g}): "
        "its sets and OOD threshold hold for the training framing only (decision 0013)"
    )


def fit_ensemble_framing(
    detector: OODDetector,
    members: list[CellNet],
    config: TrainConfig,
    data: CellData,
    folds: Folds,
    oof: OutOfFold,
    zooms: tuple[float, ...],
) -> OODDetector:
    """The fold ensemble's `detector` with the framing check (decisions 0011, 0013): each member's discriminator from
    its features of its own validation fold (`oof`'s) and of the same cells zoomed out, as its statistics come from
    that fold (`fit_ensemble_calibration`)."""
    if oof.features is None:
        raise CalibrationError("the framing check needs the out-of-fold features of the fold models")
    cells = [val[framing_sample(len(val), seed=i)] for i, (_, val) in enumerate(folds)]
    framing = [
        zoomed_features(model, config, data, data.images[rows], detector.features, zooms, precision=oof.precision)
        for model, rows in zip(members, cells, strict=True)
    ]
    return with_framing(detector, [oof.features[rows] for rows in cells], framing, zooms)


def framing_sample(n: int, *, seed: int = 0) -> np.ndarray:
    """Which of n cells a framing discriminator is fitted on: all of them up to FRAMING_IMAGES, else a seeded
    random FRAMING_IMAGES (sorted). Decision 0013 chose and measured the check with at most 1,820 cells; each cell
    costs one inference pass per zoom, which on ~7,000 cells was a tenth of the deployment."""
    if n <= FRAMING_IMAGES:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, FRAMING_IMAGES, replace=False))


def fit_refit_ood(
    refit: CellNet | FoldEnsemble,
    members: list[CellNet],
    config: TrainConfig,
    data: CellData,
    folds: Folds,
    oof: OutOfFold,
    false_alarm: float,
    seed: int = 0,
    framing_zooms: tuple[float, ...] = (),
) -> OODDetector:
    """OOD statistics of a model trained on all of `data` (no unseen image left): fitted on its own features of the
    data; threshold = its seen images' median score x the fold models' (unseen threshold / seen median), every score
    from statistics that did not see the image (`cellnet.ood.fit_ood_transferred`). With `framing_zooms`, the
    framing check's discriminator from its features of the data as they are and zoomed out (decision 0013). Every
    pass in `oof`'s precision, the one the calibration records."""
    if oof.features is None:
        raise ValueError("the refit's OOD threshold needs the out-of-fold features of the fold models")
    kind, precision = str(oof.feature_kind), oof.precision
    seen = model_features(refit, config, data, data.images, kind, precision=precision)
    per_fold = [
        (
            model_features(model, config, data, data.images[train], kind, precision=precision),
            data.labels[train],
            oof.features[val],
        )
        for model, (train, val) in zip(members, folds, strict=True)
    ]
    stats, threshold = fit_ood_transferred(seen, data.labels, len(data.classes), per_fold, false_alarm, seed=seed)
    detector = OODDetector((stats,), (threshold,), false_alarm, kind, "transferred")
    if not framing_zooms:
        return detector
    rows = framing_sample(len(data), seed=seed)
    zoomed = zoomed_features(refit, config, data, data.images[rows], kind, framing_zooms, precision=precision)
    return with_framing(detector, [seen[rows]], [zoomed], framing_zooms)


def zoomed_features(
    model: CellNet | FoldEnsemble,
    config: TrainConfig,
    data: CellData,
    images: np.ndarray,
    kind: str,
    zooms: tuple[float, ...],
    *,
    precision: str | None = None,
) -> np.ndarray:
    """(F, N, D) `model`'s features of `images` zoomed out by each factor: what the framing check's
    discriminator is fitted on (one zoom at a time, so only one copy of the images is held)."""
    return np.stack(
        [model_features(model, config, data, zoomed_copies(images, (z,))[0], kind, precision=precision) for z in zooms]
    )


def model_features(
    model: CellNet | FoldEnsemble,
    config: TrainConfig,
    data: CellData,
    images: np.ndarray,
    kind: str,
    *,
    precision: str | None = None,
) -> np.ndarray:
    """`model`'s OOD features (of `kind`) for `images`, computed in `precision` (default: `cellnet.predict.infer`'s
    for its device): what the refit's statistics and threshold are fitted on."""
    ckpt = as_checkpoint(model, config, data)
    features = infer(ckpt, images, features=True, feature_kind=kind, precision=precision).features
    if features is None:
        raise ValueError("inference returned no features")
    return features


# ---------------------------------------------------------------------------------------------------------------
# The deployments


def save_fold_ensemble(
    run_dir: Path,
    win: Winner,
    loaded: SearchData,
    winner: WinnerFolds,
    dest: Path,
    provenance: dict[str, Any],
) -> tuple[Path, dict[str, Any]]:
    """The winner's k fold models as one calibrated ensemble checkpoint at `dest`. Returns (dest, summary)."""
    data = loaded.data
    model = ensemble(winner.members)
    mean, std = model_normalisation(model)
    metrics = {**win.cv_metrics, "oof_accuracy": winner.oof.accuracy(), "members": len(winner.members)}
    path = save_checkpoint(
        dest,
        model,
        config=winner.config,
        classes=data.classes,
        image_size=data.image_size,
        mean=mean,
        std=std,
        metrics=metrics,
        provenance={**provenance, "fold_epoch": win.best_epoch},
        calibration=winner.calibration,
    )
    print(f"fold ensemble ({len(winner.members)} members, epoch {win.best_epoch}) saved to {path}")
    return path, {
        "checkpoint": str(path),
        "members": len(winner.members),
        "epoch": win.best_epoch,
        "oof": str(run_dir / OOF_FILE),
        "oof_accuracy": winner.oof.accuracy(),
    }


def refit_winner(
    cfg: ExperimentConfig,
    win: Winner,
    loaded: SearchData,
    data_ref: Any,
    winner: WinnerFolds | None,
    run_dir: Path,
    provenance: dict[str, Any],
) -> tuple[Path, dict[str, Any]]:
    """The winner retrained on all data into best/ (search/refit.py), then calibrated when its fold models are
    there (`calibrate_refit`). Returns (best/, summary.json's `retrain` section)."""
    print(f"\nretraining {win.trial_id} on all {len(loaded.data)} images ...")
    t0 = time.time()
    path = retrain(
        cfg,
        win.params,
        data_ref,
        win.retrain_epochs,
        run_dir / "best",
        schedule_epochs=win.retrain_schedule_epochs,
        cv_metrics=win.cv_metrics,
        provenance=provenance,
        storage_path=run_dir / "retrain",
        expected_weights=win.weights,
        expected_precision=win.precision,
    )
    trained = time.time()
    if winner is not None:
        calibrate_refit(path, cfg, loaded, winner, win)
    print(f"winner saved to {path}")
    return path, {
        "checkpoint": str(path),
        "epochs": win.retrain_epochs,
        "schedule_epochs": win.retrain_schedule_epochs,
        "calibrated": winner is not None,
        "train_s": round(trained - t0, 1),
        "calibration_s": round(time.time() - trained, 1),
    }


def calibrate_refit(path: Path, cfg: ExperimentConfig, loaded: SearchData, winner: WinnerFolds, win: Winner) -> None:
    """Re-save the refit checkpoint with the calibration: the OOF temperature and conformal scores, and OOD
    statistics of its own (`fit_refit_ood`). A refit whose schedule differs from the one its fold models were
    trained on (a winner the time budget cut, or `retrain.epochs: N`) says so in the calibration's notes."""
    ckpt = load_checkpoint(path)
    ood = fit_refit_ood(
        ckpt.model,
        winner.members,
        ckpt.config,
        loaded.data,
        loaded.folds,
        winner.oof,
        cfg.calibration.ood_false_alarm,
        seed=cfg.cv.seed,
        framing_zooms=framing_zooms(cfg, ckpt.config)[0],
    )
    notes = winner.calibration.notes
    if win.retrain_schedule_epochs != cfg.search.max_epochs:
        notes += (
            f"calibrated on fold models stopped at epoch {win.best_epoch} of a {cfg.search.max_epochs}-epoch "
            f"schedule, while this refit ran a {win.retrain_schedule_epochs}-epoch schedule to its end: its "
            "temperature and sets come from differently trained models (docs/benchmarks.md measures the effect)",
        )
    ckpt.save(path, calibration=dataclasses.replace(winner.calibration, ood=ood, notes=notes))


def calibrate_retrained(path: Path, cfg: ExperimentConfig, run_dir: Path, win: Winner, loaded: SearchData) -> str:
    """Calibrate a checkpoint `search.retrain` wrote for trial `win` as the search calibrates its refit, when the
    trial's fold models are kept (a search keeps its winner's); returns one line saying what was done or why not."""
    folds_dir = trial_folds_dir(run_dir, win.trial_id)
    if not any(folds_dir.glob("*.safetensors")):
        return (
            f"not calibrated: the fold models of trial {win.trial_id} were not kept (a search keeps only its winner's, "
            f"in {run_dir / 'train' / '<winner>' / 'folds'}), so there are no out-of-fold predictions to fit one on"
        )
    winner = fold_outputs(cfg, run_dir, win, loaded, required=False, ensemble_ood=False)
    if winner is None:
        return f"not calibrated: the fold models in {folds_dir} could not be used (see the warning above)"
    calibrate_refit(path, cfg, loaded, winner, win)
    return f"calibrated on the out-of-fold predictions of trial {win.trial_id}'s {len(winner.members)} fold models"


def test_line(metrics: dict[str, Any]) -> str:
    """One line of a deployed checkpoint's test-set figures (the full report is in report/test_<name>/)."""
    m = metrics["clean"]
    line = f"accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, ECE {m['ece']:.4f}"
    trust = metrics.get("trust")
    if trust:
        cov = trust["coverage"]
        line += (
            f", sets at {trust['coverage_target']:g}: coverage {cov['coverage']:.4f}, mean size "
            f"{cov['mean_set_size']:.2f}, wrong flagged {trust['flags']['share_wrong_flagged'] or 0:.0%}"
        )
    return line


def test_deployed(cfg: ExperimentConfig, run_dir: Path, deployed: dict[str, Path], test: CellData) -> dict[str, Any]:
    """Each deployed checkpoint scored once on the held-out --test set, clean and under the shift suite (reported,
    never used to choose anything)."""
    section: dict[str, Any] = {}
    for name, path in deployed.items():
        where = cfg.data.test or "test"
        metrics = evaluate(load_checkpoint(path), test, run_dir / "report" / f"test_{name}", where=where, shifted=True)
        section[name] = metrics["clean"]
        if metrics.get("trust"):
            section[name] = {**section[name], "trust": metrics["trust"]}
        section[name]["shifted_accuracy"] = {n: m["accuracy"] for n, m in metrics["shifted"]["per_shift"].items()}
        print(f"test set ({where}, {len(test)} images), {name}: {test_line(metrics)}")
    if "refit" in section:  # `clean` stays the deployed best/'s numbers, as before
        section["clean"] = section["refit"]
    elif "folds" in section:
        section["clean"] = section["folds"]
    return section
