"""`python -m search.run spaces/NAME.yaml`: the whole search, from YAML to a retrained, evaluated winner.

    config (YAML + flags) -> resource plan -> data loaded and cleaned once, put in the object store with the folds
    -> Tune (Optuna define-by-run searcher, ASHA/HyperBand/FIFO, one worker group per trial: search/trainable.py)
    -> trials.csv, summary.json, plots, leaderboard (search/results.py), TensorBoard (search/tensorboard.py)
    -> winner retrained on all data into <run_dir>/best (search/retrain.py) -> test-set evaluation (--test)

Everything that can be wrong with the config or the resource request is an `error: ...` line and exit code 2 before
Ray starts (or, with --address, before anything runs). Ctrl-C stops the search; `--resume` continues it.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import cloudpickle

from cellnet.config import ExperimentConfig, load_config
from cellnet.errors import CellnetError, ConfigError
from cellnet.files import write_text
from search import resources
from search.space import check_points, describe

SEARCH_CONFIG = "search_config.yaml"
SPACE_AS_GIVEN = "space_as_given.yaml"  # the YAML before flags, to notice an edited space on --resume
TUNE_DIR = "tune"


# ---------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Hyper-parameter search of cellnet classifiers on Ray Tune (Optuna + ASHA, a worker per fold).",
    )
    p.add_argument("config", help="search space YAML, e.g. spaces/quickstart.yaml")
    p.add_argument("--data", help="SOURCE to search on (overrides data.source)")
    p.add_argument("--test", help="held-out SOURCE the retrained winner is evaluated on (leaks to the data dropped)")
    p.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial at most (search.max_epochs)")
    p.add_argument("--folds", type=int, help="cross-validation folds = workers per trial (cv.folds)")
    p.add_argument("--seed", type=int, help="seed of the searcher and the fold split (search.seed, cv.seed)")
    p.add_argument("--time-budget", type=float, help="stop starting/running trials after this many seconds")
    p.add_argument("--storage", help="run directory (default runs/<name>); on a cluster a path every node shares")
    p.add_argument("--address", help="existing Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    p.add_argument("--cpus-per-fold", type=float, help="CPUs per fold worker (fractional allowed)")
    p.add_argument("--gpus-per-fold", type=float, help="GPUs per fold worker (fractional allowed)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--resume", action="store_true", help="continue the search in the run directory")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config, space and resource plan; run nothing"
    )
    p.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip retraining the winner (retrain.mode refit: deploy nothing, no test evaluation)",
    )
    p.add_argument("--verbose", action="store_true", help="Ray Tune's own status tables instead of one line per event")
    p.add_argument("--debug", action="store_true", help="tracebacks and Ray worker logs")
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "data": {"source": args.data, "test": args.test},
        "cv": {"folds": args.folds, "seed": args.seed},
        "search": {
            "num_samples": args.num_samples,
            "max_epochs": args.max_epochs,
            "seed": args.seed,
            "time_budget_s": args.time_budget,
        },
        "resources": {
            "cpus_per_fold": args.cpus_per_fold,
            "gpus_per_fold": args.gpus_per_fold,
            "max_concurrent": args.max_concurrent,
        },
    }


# What --resume may change: how many trials, for how long, on what, how spread, what is deployed at the end and how
# it is tested. Everything else (data, folds, seeds, space, metric, epochs, training) must be what the trials ran.
RESUME_SAFE = {
    ("data", "test"),
    ("search", "num_samples"),
    ("search", "time_budget_s"),
    ("search", "checkpoint_every"),
    *(("resources", k) for k in ("cpus_per_fold", "gpus_per_fold", "max_concurrent")),
    *(("retrain", k) for k in ("mode", "epochs")),
    *(("calibration", k) for k in ("coverage", "ood_false_alarm")),
}
FLAG_OF = {
    ("data", "source"): "--data",
    ("cv", "folds"): "--folds",
    ("cv", "seed"): "--seed",
    ("search", "seed"): "--seed",
    ("search", "max_epochs"): "--max-epochs",
}


def resume_conflicts(stored: ExperimentConfig, requested: ExperimentConfig) -> list[str]:
    """Every difference between the run's stored config and the one asked for that --resume must refuse, as
    'what (asked) vs stored value'; [] when the search can continue exactly as it started."""
    old, new = stored.to_dict(), requested.to_dict()
    problems = []
    for section in old:
        a, b = old[section], new.get(section)
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                problems.append(f"{section} {b!r} (stored: {a!r})")
            continue
        for key in sorted(set(a) | set(b)):
            if (section, key) in RESUME_SAFE or a.get(key) == b.get(key):
                continue
            what = FLAG_OF.get((section, key), f"{section}.{key}")
            problems.append(f"{what} {b.get(key)!r} (stored {section}.{key}: {a.get(key)!r})")
    return problems


def resolve(args: argparse.Namespace) -> tuple[ExperimentConfig, Path]:
    """The config (on --resume: the run's stored one, with the resume-safe flags on top) and the absolute run
    directory. --resume refuses any other change -- a flag that differs from the stored value, or a YAML edited
    since the search started -- so restored trials continue on exactly their data and folds."""
    over = overrides_from(args)
    cfg = load_config(args.config, over)
    run_dir = Path(args.storage or Path("runs") / cfg.name).expanduser().resolve()
    stored = run_dir / SEARCH_CONFIG
    if args.resume:
        if not (run_dir / TUNE_DIR).is_dir() or not stored.is_file():
            raise ConfigError(f"--resume: {run_dir} holds no search to resume (no {TUNE_DIR}/ or {SEARCH_CONFIG})")
        before = load_config(stored)
        conflicts = resume_conflicts(before, load_config(stored, over))
        given = run_dir / SPACE_AS_GIVEN
        if given.is_file():
            conflicts += [f"{args.config}: {c}" for c in resume_conflicts(load_config(given), load_config(args.config))]
        if conflicts:
            raise ConfigError(
                f"--resume: the search in {run_dir} must continue on exactly what it started with, but asked for "
                f"{'; '.join(conflicts)}. Resume without the change, or start a new search with --storage DIR"
            )
        safe = {sec: {k: v for k, v in values.items() if (sec, k) in RESUME_SAFE} for sec, values in over.items()}
        cfg = load_config(stored, safe)
    elif (run_dir / TUNE_DIR).exists() and not args.dry_run:
        raise ConfigError(
            f"{run_dir} already holds a search; pass --resume to continue it or --storage DIR for a new one"
        )
    check_points(cfg)
    return cfg, run_dir


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--storage {run_dir} is not writable: {e.strerror or e}") from None


def write_yaml(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def dry_run(cfg: ExperimentConfig, run_dir: Path, plan: resources.ResourcePlan) -> None:
    print(f"# resolved config ({cfg.path})")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    print(
        f"\n# search space: {len(cfg.searched())} searched parameter(s), {cfg.search.searcher} / {cfg.search.scheduler}"
    )
    print("\n".join(describe(cfg)) or "  (nothing searched)")
    print("\n# resource plan")
    print("\n".join(plan.describe()))
    print(f"\n# run directory: {run_dir}")


# ---------------------------------------------------------------------------------------------------------------
# Ray


def connect(address: str | None, debug: bool) -> bool:
    """Connect to `address` / $RAY_ADDRESS or start a local cluster; True when this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=target, log_to_driver=debug, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        if debug or target is None:
            raise
        raise ConfigError(f"--address {target}: cannot connect to a Ray cluster there ({e})") from None
    return True


def disconnect(previous_env: dict[str, str | None]) -> None:
    import ray

    ray.shutdown()
    for key, value in previous_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def scheduler(cfg: ExperimentConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s = cfg.search
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=s.max_epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.scheduler == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration", max_t=s.max_epochs, reduction_factor=s.reduction_factor
        )
    return FIFOScheduler()


def bump_num_samples(tune_dir: Path, num_samples: int) -> int:
    """Let a restored experiment run more trials: raise `total_samples` in Tune's saved search-generator state.

    Tuner.restore keeps the num_samples of the first run; the restored SearchGenerator reads its trial budget from
    `search_gen_state-*.json` (see docs/decisions/0001). Every such file is updated: Tune rewrites them all on restore
    (equal mtimes), so "the newest" is not a safe pick. Returns the previous budget.
    """
    files = sorted(tune_dir.glob("search_gen_state-*.json"))
    if not files:
        raise ConfigError(f"--resume: {tune_dir} has no search state to extend")
    before = 0
    for path in files:
        with open(path, "rb") as src:
            state = pickle.load(src)
        before = max(before, int(state["total_samples"]))
        if num_samples > int(state["total_samples"]):
            state["total_samples"] = num_samples
            state["finished"] = False
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as dst:
                cloudpickle.dump(state, dst)  # as Tune wrote it (the experiment holds closures)
            os.replace(tmp, path)
    return before


def tuner_for(
    cfg: ExperimentConfig,
    run_dir: Path,
    plan: resources.ResourcePlan,
    refs: dict[str, Any],
    *,
    resume: bool,
    tell_pruned: bool = True,
    stopper: Any = None,
    verbose: bool = False,
) -> Any:
    """The Tuner of a new search, or the restored one (`resume`, which keeps the first run's reporting).
    `tell_pruned=False` tells Optuna COMPLETE for early-stopped trials (Ray's behaviour); `stopper` (a
    ray.tune.Stopper, new searches only) can end trials or the whole search early. Both exist for
    bench/bench_search.py; the defaults are what the search runs with. `verbose`: Ray's own status tables instead of
    our one-line-per-event reporter (search/console.py)."""
    from ray import tune

    from search.console import ConsoleReporter
    from search.optuna_pruned import make_searcher
    from search.tensorboard import TensorBoardHParamsCallback
    from search.trainable import run_trial, rung_epochs

    quiet_tune(verbose)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, plan=plan, refs=refs, run_dir=str(run_dir)), dict(plan.driver)
    )
    tune_path = run_dir / TUNE_DIR
    if resume:
        before = bump_num_samples(tune_path, cfg.search.num_samples)
        if cfg.search.num_samples < before:
            print(f"note: the search already has {before} trials; --num-samples {cfg.search.num_samples} ignored")
        return tune.Tuner.restore(str(tune_path), trainable=trainable, resume_errored=True)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    s = cfg.search
    callbacks: list[Any] = [CSVLoggerCallback(), JsonLoggerCallback()]  # what Tune's results are read back from
    callbacks += [TensorBoardHParamsCallback(run_dir / "tensorboard", cfg.searched(), s.max_epochs, s.metric, s.mode)]
    if not verbose:
        callbacks.append(ConsoleReporter(s.metric, s.mode, s.max_epochs, rung_epochs(cfg), s.num_samples))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            num_samples=cfg.search.num_samples,
            search_alg=make_searcher(cfg, tell_pruned=tell_pruned),
            scheduler=scheduler(cfg),
            max_concurrent_trials=plan.max_concurrent,
            time_budget_s=cfg.search.time_budget_s,
            reuse_actors=False,  # a stopped trial's driver takes its worker group down with it
            trial_name_creator=lambda t: t.trial_id,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            storage_path=str(run_dir),
            name=TUNE_DIR,
            stop=stopper,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=0),  # retries happen in Ray Train (trainable.py)
            verbose=1 if verbose else 0,
        ),
    )


def quiet_tune(verbose: bool) -> None:
    """Tune's own terminal output off unless `verbose`: its new-style reporter prints an experiment heading and a
    TensorBoard hint for its per-trial tfevents (not this project's logs) even at verbose=0; the old-style one with
    verbose=0 prints nothing. Tune's automatic TensorBoardX logger is dropped too (search/tensorboard.py writes ours);
    its CSV/JSON loggers are added explicitly (`tuner_for`). Ray's warnings are logging records: still shown."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def unfinished(grid: Any) -> int:
    """Trials the search left neither TERMINATED nor ERROR (an interrupted run)."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return sum(1 for t in trials if t.status not in ("TERMINATED", "ERROR"))


# ---------------------------------------------------------------------------------------------------------------
# The search


def search(args: argparse.Namespace, *, tell_pruned: bool = True, stopper: Any = None) -> int:
    """The whole search for parsed `args`; `tell_pruned` and `stopper` go to `tuner_for`."""
    cfg, run_dir = resolve(args)
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    autoscaling = not local and cfg.resources.max_concurrent is not None
    if args.dry_run:  # with --address: planned against that cluster's nodes (connecting runs nothing)
        cluster = resources.local_cluster()
        if not local:
            owns = connect(args.address, args.debug)
            cluster = resources.ray_cluster()
            if owns:
                disconnect({})
        dry_run(cfg, run_dir, resources.plan(cfg, cluster, autoscaling=autoscaling, strict=False))
        return 0
    import ray

    if local and not ray.is_initialized():
        resources.plan(cfg, resources.local_cluster())  # impossible requests fail before Ray starts
    check_writable(run_dir)
    started = time.time()
    from search.data import load_data
    from search.trainable import share_ray_address

    loaded = load_data(cfg)

    owns_ray = connect(args.address, args.debug)
    previous_env = share_ray_address()
    try:
        plan = resources.plan(cfg, resources.ray_cluster(), autoscaling=autoscaling)
        resources.storage_probe(str(run_dir))
        print("\n".join(["resource plan:", *plan.describe()]))
        write_yaml(run_dir / SEARCH_CONFIG, cfg.to_dict())
        if not args.resume:
            write_yaml(run_dir / SPACE_AS_GIVEN, load_config(args.config).to_dict())
        refs = {"data": ray.put(loaded.data), "folds": ray.put(loaded.folds), "shifted": ray.put(loaded.shifted)}
        print(
            f"search: {cfg.search.num_samples} trials x up to {cfg.search.max_epochs} epochs x {cfg.cv.folds} folds on "
            f"{len(loaded.data)} images; TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
            flush=True,
        )
        tuner = tuner_for(
            cfg, run_dir, plan, refs, resume=args.resume, tell_pruned=tell_pruned, stopper=stopper, verbose=args.verbose
        )
        grid = tuner.fit()
        left = unfinished(grid)
        if left:
            print(f"\nsearch interrupted with {left} trial(s) unfinished; continue with --resume", file=sys.stderr)
            return 130
        finish(cfg, run_dir, grid, loaded, refs, started, retrain_winner=not args.no_retrain)
    finally:
        if owns_ray:
            disconnect(previous_env)
    return 0


def finish(
    cfg: ExperimentConfig,
    run_dir: Path,
    grid: Any,
    loaded: Any,
    refs: dict[str, Any],
    started: float,
    *,
    retrain_winner: bool = True,
) -> None:
    """Outputs of a finished search: tables, plots, leaderboard; then what `retrain.mode` deploys from the winner
    (its fold ensemble and out-of-fold predictions, search/winner.py; the refit, search/retrain.py), tested."""
    from search.provenance import provenance
    from search.results import records_from_result_grid, update_summary, write_outputs

    data, test = loaded.data, loaded.test
    prov = provenance(
        data,
        seeds={"cv": cfg.cv.seed, "search": cfg.search.seed, "train": cfg.train_config().seed},
        data_source=cfg.data.source,
        data_cleaned=cfg.data.clean,
        run_dir=str(run_dir),
        command="python -m search.run " + " ".join(sys.argv[1:]),
    )
    out = write_outputs(
        cfg,
        records_from_result_grid(grid),
        run_dir,
        num_classes=len(data.classes),
        wall_time_s=time.time() - started,
        provenance=prov,
        test=loaded.test_summary(cfg.data.test),
    )
    print()
    print(out.leaderboard)
    if out.best_trial_id is None or out.best_params is None or out.best_epoch is None:
        return
    from search.winner import prune_fold_files

    prov = {**prov, "trial_id": out.best_trial_id}
    sections: dict[str, Any] = {}
    deployed: dict[str, Path] = {}
    mode = cfg.retrain.mode
    # a refit-only deployment with --no-retrain deploys nothing, so it needs no out-of-fold calibration either
    needed = mode != "refit" or (retrain_winner and out.retrain_epochs is not None)
    winner = fold_outputs(cfg, run_dir, out, loaded, required=mode != "refit") if needed else None
    if mode in ("folds", "both"):
        assert winner is not None
        deployed["folds"], sections["folds"] = save_fold_ensemble(
            cfg, run_dir, out, loaded, winner, run_dir / ("best" if mode == "folds" else "best_folds"), prov
        )
        sections["folds"]["wall_s"] = time.time() - started  # the whole run up to a deployable ensemble
    if mode in ("refit", "both"):
        if not retrain_winner or out.retrain_epochs is None:
            print(
                "\nwinner not retrained (--no-retrain); to do it: "
                f"python -m search.retrain {run_dir} --trial {out.best_trial_id} --out {run_dir / 'best'}"
            )
        else:
            from search.retrain import retrain

            print(f"\nretraining {out.best_trial_id} on all {len(data)} images ...")
            path = retrain(
                cfg,
                out.best_params,
                refs["data"],
                out.retrain_epochs,
                run_dir / "best",
                schedule_epochs=out.retrain_schedule_epochs,
                cv_metrics=out.checkpoint_metrics,
                provenance=prov,
                storage_path=run_dir / "retrain",
            )
            if winner is not None:
                calibrate_refit(path, cfg, loaded, winner)
            deployed["refit"] = path
            sections["retrain"] = {
                "checkpoint": str(path),
                "epochs": out.retrain_epochs,
                "schedule_epochs": out.retrain_schedule_epochs,
                "calibrated": winner is not None,
                "wall_s": time.time() - started,  # the whole run up to a deployable refit
            }
            print(f"winner saved to {path}")
    prune_fold_files(run_dir, out.best_trial_id, out.best_epoch)
    if test is not None and deployed:
        sections["test"] = {**(loaded.test_summary(cfg.data.test) or {}), **test_deployed(cfg, run_dir, deployed, test)}
    update_summary(run_dir, **sections)


@dataclass
class WinnerFolds:
    """The winner's fold models, their out-of-fold predictions and the calibration fitted on them."""

    config: Any
    members: list[Any]
    oof: Any
    calibration: Any


def fold_outputs(cfg: ExperimentConfig, run_dir: Path, out: Any, loaded: Any, *, required: bool) -> WinnerFolds | None:
    """Load the winner's fold models, write oof.npz, fit the calibration. With `required=False` (a refit-only
    deployment) a problem with the fold files is a warning and the refit is deployed uncalibrated."""
    from cellnet.errors import CheckpointError
    from search.winner import (
        OOF_FILE,
        fit_ensemble_calibration,
        load_fold_models,
        out_of_fold,
        save_oof,
        trial_folds_dir,
    )

    data = loaded.data
    config = cfg.train_config(out.best_params, epochs=cfg.search.max_epochs)
    try:
        members = load_fold_models(
            config, trial_folds_dir(run_dir, out.best_trial_id), cfg.cv.folds, out.best_epoch, len(data.classes)
        )
    except CheckpointError as e:
        if required:
            raise
        print(f"warning: {e}; the refit is deployed without calibration", file=sys.stderr)
        return None
    oof = out_of_fold(members, config, data, loaded.folds, features=True)
    save_oof(run_dir / OOF_FILE, oof, data.classes, out.best_trial_id, out.best_epoch)
    calibration = fit_ensemble_calibration(oof, loaded.folds, len(data.classes), cfg)
    print(
        f"out-of-fold predictions of {out.best_trial_id} (epoch {out.best_epoch}): accuracy {oof.accuracy():.4f} "
        f"-> {run_dir / OOF_FILE}; temperature {calibration.temperature:.3f}"
    )
    return WinnerFolds(config, members, oof, calibration)


def save_fold_ensemble(
    cfg: ExperimentConfig,
    run_dir: Path,
    out: Any,
    loaded: Any,
    winner: WinnerFolds,
    dest: Path,
    provenance: dict[str, Any],
) -> tuple[Path, dict[str, Any]]:
    """The winner's k fold models as one calibrated ensemble checkpoint at `dest`. Returns (dest, summary)."""
    from cellnet.checkpoint import save_checkpoint
    from cellnet.model import model_normalisation
    from search.winner import OOF_FILE, ensemble

    data = loaded.data
    model = ensemble(winner.members)
    mean, std = model_normalisation(model)
    metrics = {**(out.checkpoint_metrics or {}), "oof_accuracy": winner.oof.accuracy(), "members": len(winner.members)}
    path = save_checkpoint(
        dest,
        model,
        config=winner.config,
        classes=data.classes,
        image_size=data.image_size,
        mean=mean,
        std=std,
        metrics=metrics,
        provenance={**provenance, "fold_epoch": out.best_epoch},
        calibration=winner.calibration,
    )
    print(f"fold ensemble ({len(winner.members)} members, epoch {out.best_epoch}) saved to {path}")
    return path, {
        "checkpoint": str(path),
        "members": len(winner.members),
        "epoch": out.best_epoch,
        "oof": str(run_dir / OOF_FILE),
        "oof_accuracy": winner.oof.accuracy(),
    }


def calibrate_refit(path: Path, cfg: ExperimentConfig, loaded: Any, winner: WinnerFolds) -> None:
    """Re-save the refit checkpoint with the calibration: the OOF temperature and conformal scores, and OOD
    statistics of its own (`search.winner.fit_refit_ood`)."""
    import dataclasses

    from cellnet.checkpoint import load_checkpoint, save_checkpoint
    from search.winner import fit_refit_ood

    ckpt = load_checkpoint(path)
    ood = fit_refit_ood(
        ckpt.model, winner.members, ckpt.config, loaded.data, loaded.folds, winner.oof, cfg.calibration.ood_false_alarm
    )
    save_checkpoint(
        path,
        ckpt.model,
        config=ckpt.config,
        classes=ckpt.classes,
        image_size=ckpt.image_size,
        mean=ckpt.mean,
        std=ckpt.std,
        metrics=ckpt.metrics,
        provenance=ckpt.meta.get("provenance"),
        calibration=dataclasses.replace(winner.calibration, ood=ood),
    )


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


def test_deployed(cfg: ExperimentConfig, run_dir: Path, deployed: dict[str, Path], test: Any) -> dict[str, Any]:
    """Each deployed checkpoint scored once on the held-out --test set (reported, never used to choose anything)."""
    from cellnet.checkpoint import load_checkpoint
    from cellnet.evaluate import evaluate

    section: dict[str, Any] = {}
    for name, path in deployed.items():
        where = cfg.data.test or "test"
        metrics = evaluate(load_checkpoint(path), test, run_dir / "report" / f"test_{name}", where=where)
        section[name] = metrics["clean"]
        if metrics.get("trust"):
            section[name] = {**section[name], "trust": metrics["trust"]}
        print(f"test set ({where}, {len(test)} images), {name}: {test_line(metrics)}")
    if "refit" in section:  # `clean` stays the deployed best/'s numbers, as before
        section["clean"] = section["refit"]
    elif "folds" in section:
        section["clean"] = section["folds"]
    return section


def main(argv: Sequence[str] | None = None, *, tell_pruned: bool = True, stopper: Any = None) -> int:
    """The command line; `tell_pruned` and `stopper` (see `tuner_for`) let bench/bench_search.py vary the search."""
    args = build_parser().parse_args(argv)
    try:
        return search(args, tell_pruned=tell_pruned, stopper=stopper)
    except CellnetError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
