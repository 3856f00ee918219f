"""Ray for the search: connecting to (or starting) a cluster, and the Tune Tuner that runs the trials.

connect(address) ─ ray.init (a local cluster, or the one at --address / $RAY_ADDRESS)
tuner_for(cfg, ...) ─ Tuner(trainable = search/trainable.py run_trial, one worker group per trial;
                            searcher = Optuna TPE told PRUNED for stopped trials, search/optuna_pruned.py;
                            scheduler = ASHA / HyperBand / FIFO; callbacks: CSV/JSON results, TensorBoard HParams,
                            the one-line-per-event console) ─ or Tuner.restore on --resume
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle

from cellnet.config import ExperimentConfig
from cellnet.errors import ConfigError
from search import resources
from search.budget import BUDGET_FILE, rung_epochs
from search.paths import FIRST_RUNG_FILE, TUNE_DIR


def connect(address: str | None, debug: bool) -> bool:
    """Connect to `address` / $RAY_ADDRESS or start a local cluster; True when this call started the connection."""
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
    ray.shutdown()
    for key, value in previous_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def scheduler(cfg: ExperimentConfig, hold: Any = None, gate: Any = None) -> Any:
    """Tune's scheduler for `cfg`; ASHA stops at a rung a trial the budget's `gate` cannot take to its next scored
    epoch (search/budget.py); with a `hold` (search.first_rung_trials), ASHA with a synchronous first rung."""
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler  # Tune: as in tuner_for

    from search.first_rung import BudgetedASHA, FirstRungASHA  # Tune, as above

    s = cfg.search
    if s.scheduler == "asha" and hold is not None:
        return FirstRungASHA(
            hold=hold,
            gate=gate,
            time_attr="training_iteration",
            max_t=s.max_epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.scheduler == "asha":
        return BudgetedASHA(
            gate=gate,
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
    deadline_from: tuple[float, int] | None = None,
) -> Any:
    """The Tuner of a new search, or the restored one (`resume`, which keeps the first run's reporting).
    `tell_pruned=False` tells Optuna COMPLETE for early-stopped trials (Ray's behaviour); `stopper` (a
    ray.tune.Stopper, new searches only) can end trials or the whole search early. Both exist for
    bench/bench_search.py; the defaults are what the search runs with. `verbose`: Ray's own status tables instead of
    our one-line-per-event reporter (search/console.py). `deadline_from`: (when the command started, how many images
    the refit will train on), what `search.deadline_s` counts from and estimates the deployment with."""
    # Tune (~2 s) and the search's callbacks (tensorboard, torch: ~4 s) only when a search is built: --dry-run
    # imports this module to connect
    from ray import tune

    from search.console import ConsoleReporter
    from search.optuna_pruned import make_searcher
    from search.tensorboard import TensorBoardHParamsCallback
    from search.trainable import run_trial

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
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback  # Tune, as above

    from search.first_rung import RungHold  # Tune, as above

    s = cfg.search
    # a synchronous first rung pauses trials: the searcher then limits concurrency itself, not counting them
    hold = RungHold(s.first_rung_trials, run_dir / FIRST_RUNG_FILE) if s.first_rung_trials > 1 else None
    searcher = make_searcher(
        cfg,
        tell_pruned=tell_pruned,
        budget_file=run_dir / BUDGET_FILE,
        hold=hold,
        max_live=plan.max_concurrent if hold is not None else None,
        deadline_from=deadline_from,
    )
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
            search_alg=searcher,
            scheduler=scheduler(cfg, hold, searcher.gate),  # the searcher's rung gate: one budget for both
            max_concurrent_trials=plan.max_concurrent if hold is None else None,
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
