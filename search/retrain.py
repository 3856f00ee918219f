"""`python -m search.retrain`: a trial of a finished search retrained on all data, or its deployment recalibrated.

    python -m search.retrain runs/quickstart --trial 5e3b1_00003 [--epochs N] [--out DIR]
    python -m search.retrain runs/quickstart --recalibrate     # the deployed checkpoints' calibration, fitted again

    --trial:       run dir ─ search_config.yaml, trials.csv row ─ the data again (fingerprint checked, search/data.py)
                     ─ retrain (search/refit.py: Ray Train, all data) ─ RUN/retrained/TRIAL (or --out)
                     ─ calibrated like the search's refit when the trial's fold models are kept (search/winner.py)
    --recalibrate: summary.json's deployed best/ (and best_folds/) ─ the winner's fold models ─ calibration fitted
                     again, each checkpoint rewritten atomically; nothing trained

Ray (and search/winner.py, which needs it) is imported only once `main` has checked that the `search` extra is
installed, so without it the command says what to install in one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellnet.checkpoint import load_checkpoint
from cellnet.config import load_config
from cellnet.errors import CellnetError, ConfigError
from search import require_search_extra
from search.data import check_fingerprint, load_data
from search.paths import SEARCH_CONFIG, SUMMARY, TRIALS_CSV
from search.provenance import provenance
from search.refit import retrain
from search.results import Winner, checkpoint_metrics, read_trials, retrain_epochs
from search.trial_row import params_of


def retrain_run(
    run_dir: str | Path, trial_id: str, *, epochs: int | None = None, out_dir: str | Path | None = None
) -> Path:
    """`python -m search.retrain`: a trial of a finished search, retrained on all of the run's (cleaned) data --
    checked to be the data the search ran on -- and calibrated like the search's own refit when the trial's fold
    models are kept (the winner's are), else said in one line why not."""
    # the search extra, checked by main first (module docstring)
    import ray

    from search.winner import calibrate_retrained

    run_dir = Path(run_dir)
    _check_run(run_dir, (SEARCH_CONFIG, TRIALS_CSV))
    cfg = load_config(run_dir / SEARCH_CONFIG)
    row = _trial_row(run_dir, trial_id)
    schedule: int | None = None
    if epochs is None:
        if cfg.retrain.epochs != "best" or _finite(row.get("best_epoch")):
            epochs, schedule = retrain_epochs(cfg, row)
        else:
            raise CellnetError(
                f"trial {trial_id} ({row['status']}) has no scored epoch to take the epoch count from; pass --epochs N"
            )
    params = params_of(row)
    loaded = load_data(cfg, for_search=False)
    data = loaded.data
    check_fingerprint(run_dir, data, cfg.data.source, who="search.retrain")
    prov = provenance(
        data,
        seeds={"cv": cfg.cv.seed, "search": cfg.search.seed, "train": cfg.train_config(params).seed},
        data_source=cfg.data.source,
        data_cleaned=cfg.data.clean,
        trial_id=trial_id,
        run_dir=str(run_dir.resolve()),
        command="python -m search.retrain " + " ".join(sys.argv[1:]),
    )
    out = Path(out_dir) if out_dir else run_dir / "retrained" / trial_id
    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        path = retrain(
            cfg,
            params,
            data,
            epochs,
            out,
            schedule_epochs=schedule,
            cv_metrics=checkpoint_metrics(row),
            provenance=prov,
            expected_weights=_text(row.get("weights")),
            expected_precision=_text(row.get("precision")),
        )
    finally:
        if started:
            ray.shutdown()
    if _finite(row.get("best_epoch")):
        win = Winner(
            trial_id, params, int(row["best_epoch"]), epochs, schedule or epochs, checkpoint_metrics(row),
            _text(row.get("weights")), _text(row.get("precision")),
        )  # fmt: skip
        print(calibrate_retrained(path, cfg, run_dir, win, loaded))
    else:
        print(f"not calibrated: trial {trial_id} has no scored epoch, so no fold models to calibrate it with")
    return path


def recalibrate_run(run_dir: str | Path) -> list[str]:
    """`python -m search.retrain RUN --recalibrate`: the calibration of every checkpoint the search deployed
    (best/, best_folds/) fitted again, with this cellnet, from the winner's kept fold models -- e.g. an OOD flag on
    the features a newer release measures (decision 0010) -- without training anything. Each checkpoint is
    rewritten atomically; returns one line per checkpoint saying what changed."""
    from search.winner import calibrate_refit, fold_outputs  # needs the search extra, checked by main first

    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY
    _check_run(run_dir, (SEARCH_CONFIG, TRIALS_CSV, SUMMARY))
    summary = json.loads(summary_path.read_text())
    best = summary.get("best") or {}
    # the deployed directories' names (best, best_folds) inside this run directory: it may have been moved
    deployed = {k: run_dir / Path(v).name for k, v in ((summary.get("deployment") or {}).get("deployed") or {}).items()}
    if not best.get("trial_id") or not deployed:
        raise CellnetError(f"{summary_path}: no deployed winner to recalibrate (deploy it first: --resume)")
    cfg = load_config(run_dir / SEARCH_CONFIG)
    row = _trial_row(run_dir, str(best["trial_id"]))
    win = Winner(
        str(best["trial_id"]),
        params_of(row),
        int(best["best_epoch"]),
        int(best["retrain_epochs"]),
        int(best["retrain_schedule_epochs"]),
        checkpoint_metrics(row),
        _text(row.get("weights")),
        _text(row.get("precision")),
    )
    loaded = load_data(cfg, for_search=False)
    check_fingerprint(run_dir, loaded.data, cfg.data.source, who="search.retrain --recalibrate")
    winner = fold_outputs(cfg, run_dir, win, loaded, required=True, ensemble_ood="folds" in deployed)
    assert winner is not None  # required=True raises instead
    lines = []
    for name, path in sorted(deployed.items()):
        before = load_checkpoint(path).calibration
        if name == "refit":
            calibrate_refit(path, cfg, loaded, winner, win)
        else:
            load_checkpoint(path).save(path, calibration=winner.calibration)
        after = load_checkpoint(path).calibration
        assert after is not None and after.ood is not None
        was = before.ood if before is not None else None
        lines.append(
            f"{path} ({name}): recalibrated; OOD features {was.features if was else 'none'} -> {after.ood.features}, "
            f"framing check {_framing(was)} -> {_framing(after.ood)}, precision "
            f"{before.precision if before is not None else 'none'} -> {after.precision}"
        )
    return lines


def _framing(ood: Any) -> str:
    """The framing check of an OOD detector in a few words (decisions 0011, 0013)."""
    if ood is None or not ood.framing_zooms:
        return "off"
    how = "discriminator" if ood.framing_weights else "class means"
    return f"{how} at zooms {list(ood.framing_zooms)}"


def _check_run(run_dir: Path, names: Sequence[str]) -> None:
    """A one-line error unless `run_dir` is a search's run directory holding `names`."""
    if not run_dir.is_dir():
        raise CellnetError(f"{run_dir}: no such run directory (expected the --storage directory of a search)")
    for name in names:
        if not (run_dir / name).is_file():
            raise CellnetError(f"{run_dir}: {name} is missing; is this the directory of a finished search?")


def _trial_row(run_dir: Path, trial_id: str) -> Any:
    """Trial `trial_id`'s row of the run's trials.csv, or a one-line error listing the valid ids."""
    trials = read_trials(run_dir)
    rows = trials[trials["trial_id"] == trial_id]
    if rows.empty:
        valid = list(trials["trial_id"])
        shown = ", ".join(valid[:20]) + (f", ... ({len(valid)} in all)" if len(valid) > 20 else "")
        raise CellnetError(f"{run_dir / TRIALS_CSV}: no trial {trial_id!r}; valid trial ids: {shown}")
    return rows.iloc[0]


def _text(value: Any) -> str | None:
    """A trials.csv text cell, None where it is empty (pandas reads those as NaN)."""
    return value if isinstance(value, str) and value else None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m search.retrain",
        description="Retrain a trial of a finished search on all cleaned data and save a cellnet checkpoint.",
    )
    parser.add_argument("run_dir", help="the search's run directory (with search_config.yaml and trials.csv)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", help="trial id (column trial_id of trials.csv)")
    which.add_argument(
        "--recalibrate",
        action="store_true",
        help="train nothing: fit the calibration of the deployed best/ (and best_folds/) again with this cellnet, "
        "from the winner's kept fold models (e.g. to give a checkpoint of an older release the current OOD flag)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="a fresh N-epoch schedule (default: retrain.epochs of the config; 'best' = the searched schedule "
        "stopped at the trial's best epoch)",
    )
    parser.add_argument("--out", help="checkpoint directory (default: RUN_DIR/retrained/TRIAL)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_search_extra()
    try:
        if args.recalibrate:
            if args.epochs is not None or args.out is not None:
                raise ConfigError(
                    "--recalibrate trains nothing and rewrites the deployed checkpoints in place: "
                    "it takes no --epochs or --out"
                )
            for line in recalibrate_run(args.run_dir):
                print(line)
            return 0
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
        path = retrain_run(args.run_dir, args.trial, epochs=args.epochs, out_dir=args.out)
    except CellnetError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Checkpoint: {path}")
    print(f"  cellnet evaluate --checkpoint {path} SOURCE --out REPORT_DIR")
    print(f"  cellnet predict --checkpoint {path} IMAGES... --out predictions.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
