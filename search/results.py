"""What a finished search leaves behind: trials.csv, summary.json and a leaderboard (plots: search/plots.py).

Input is one `TrialRecord` per trial (`records_from_result_grid` makes them from Tune's ResultGrid; tests fabricate
them). Each trial is judged on its best epoch (by the search metric/mode), which is also where a retrain with
`retrain.epochs: best` stops the searched schedule. search/winner.py's `finish` calls, in order:

    records = records_from_result_grid(grid)
    out = write_outputs(cfg, records, run_dir, num_classes=..., wall_time_s=..., provenance=...)
    print(out.leaderboard)
    ... out.winner (a `Winner`: trial id, params, best epoch, the refit's epochs, its cv metrics) is deployed ...
    update_summary(run_dir, retrain={...}, test={...})
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellnet.config import SHIFT_METRICS, ExperimentConfig, TrainConfig
from cellnet.errors import ConfigError
from cellnet.files import atomic_path, jsonable, write_json
from search.budget import BUDGET_FILE, CUTS_FILE
from search.paths import FIRST_RUNG_FILE
from search.plots import plot_search
from search.trial_row import missing, params_of

log = logging.getLogger(__name__)
STATUSES = ("completed", "stopped_early", "failed")
_BEST_COLUMNS = (
    "cv_accuracy",
    "cv_accuracy_std",
    "cv_macro_f1",
    "cv_balanced_accuracy",
    "cv_val_loss",
    "cv_shifted_accuracy",
    "cv_worst_shift_accuracy",
    "cv_robust_accuracy",
)
_FOLD_METRICS = ("accuracy", "macro_f1")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_ERROR = 500


@dataclass
class TrialRecord:
    """One trial: its id, the searched params it ran, its per-epoch metrics (one row per epoch), and an error."""

    trial_id: str
    params: dict[str, Any]
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    error: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Winner:
    """The trial a search deploys: its id, the params it ran, its best epoch, the refit's epochs and schedule length
    (`retrain_epochs`), and the cv numbers a deployed checkpoint records (`checkpoint_metrics`)."""

    trial_id: str
    params: dict[str, Any]
    best_epoch: int
    retrain_epochs: int
    retrain_schedule_epochs: int
    cv_metrics: dict[str, Any]
    weights: str | None = None  # where its folds' weights came from: the refit must start from the same
    precision: str | None = None  # what its folds trained in (None: a search before decision 0014): the refit's too


@dataclass
class SearchOutputs:
    """What `write_outputs` wrote and what the caller needs next: the winner (None when no trial scored)."""

    table: pd.DataFrame
    summary: dict[str, Any]
    leaderboard: str
    winner: Winner | None
    plots: dict[str, Path]
    notes: list[str]

    @property
    def best_trial_id(self) -> str | None:
        return self.winner.trial_id if self.winner else None

    @property
    def best_params(self) -> dict[str, Any] | None:
        return self.winner.params if self.winner else None

    @property
    def best_epoch(self) -> int | None:
        return self.winner.best_epoch if self.winner else None

    @property
    def retrain_epochs(self) -> int | None:
        return self.winner.retrain_epochs if self.winner else None

    @property
    def retrain_schedule_epochs(self) -> int | None:
        return self.winner.retrain_schedule_epochs if self.winner else None

    @property
    def checkpoint_metrics(self) -> dict[str, Any] | None:
        """Pass as retrain(..., cv_metrics=...): the winner's cv numbers."""
        return self.winner.cv_metrics if self.winner else None


# ---------------------------------------------------------------------------------------------------------------
# Records


def records_from_result_grid(grid: Any) -> list[TrialRecord]:
    """One TrialRecord per Tune result (a `ResultGrid` or any iterable of `ray.tune.Result`)."""
    records: list[TrialRecord] = []
    for result in grid:
        metrics = result.metrics or {}
        path = Path(result.path) if result.path else None
        config = result.config or _read_params_json(path)
        history = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        trial_id = metrics.get("trial_id") or (history["trial_id"].iloc[-1] if "trial_id" in history else None)
        trial_id = trial_id or (path.name if path else f"trial{len(records)}")
        error = error_text(result.error) if result.error is not None else None
        records.append(
            TrialRecord(
                trial_id=str(trial_id),
                params=dict((config or {}).get("params") or {}),
                history=history,
                error=error,
                path=str(path) if path else None,
            )
        )
    return records


def error_text(error: BaseException) -> str:
    """One readable line for trials.csv: the original exception (Ray wraps it) as `Type: message`."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = [ln.strip() for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]
    message = lines[-1] if lines else ""  # a traceback's last line names the exception and its message
    text = message if message.startswith(type(error).__name__) else f"{type(error).__name__}: {message}"
    return text[:_MAX_ERROR]


def _read_params_json(path: Path | None) -> dict[str, Any]:
    """A trial that failed before its first report has no config in its metrics; Tune also wrote params.json."""
    if path is None or not (path / "params.json").is_file():
        return {}
    try:
        return dict(json.loads((path / "params.json").read_text()))
    except (OSError, ValueError):
        return {}


def _clean_history(history: pd.DataFrame) -> pd.DataFrame:
    """Epoch rows in order, one per epoch (a trial restored from an older checkpoint re-reports epochs: last wins)."""
    if history is None or history.empty:
        return pd.DataFrame()
    h = history.copy()
    if "epoch" not in h:
        h["epoch"] = h["training_iteration"] if "training_iteration" in h else np.arange(1, len(h) + 1)
    return h.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def best_row(history: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The epoch row with the best `metric` (the earliest on ties), or None when no epoch has a finite value. For a
    shift metric only the epochs the shift suite scored count (the others repeat a scored epoch's value:
    search/trainable.py `carry_shift_figures`)."""
    if history.empty or metric not in history:
        return None
    if metric in SHIFT_METRICS and "shift_scored" in history:
        history = history[pd.to_numeric(history["shift_scored"], errors="coerce").fillna(1) == 1]
    values = pd.to_numeric(history[metric], errors="coerce")
    values = values[np.isfinite(values)]
    if values.empty:
        return None
    idx = values.idxmax() if mode == "max" else values.idxmin()  # first occurrence: the earliest best epoch
    return history.loc[idx]


def trial_status(record: TrialRecord, max_epochs: int) -> str:
    """failed (errored), stopped_early (fewer epochs than max_epochs: scheduler or time budget), else completed."""
    if record.error:
        return "failed"
    epochs = len(_clean_history(record.history))
    return "completed" if epochs >= max_epochs else "stopped_early"


# ---------------------------------------------------------------------------------------------------------------
# trials.csv


def trials_table(
    cfg: ExperimentConfig, records: list[TrialRecord], *, num_classes: int, measure_cost: bool = True
) -> pd.DataFrame:
    """One row per trial: status, params, metrics at the best epoch (and the last), epochs, cost, error.

    Columns: trial_id, status, param_<name>..., <metric at best epoch: cv_accuracy, cv_accuracy_std, cv_macro_f1,
    cv_balanced_accuracy, cv_val_loss, fold<i>_accuracy, fold<i>_macro_f1>, final_cv_accuracy, final_cv_macro_f1,
    epochs, best_epoch, fold_epochs (compute: epochs x folds), time_total_s, end_time, node_ids, weights (where the
    backbone's initial weights came from, "none" for random), precision (fp32 or bf16: what the folds trained in),
    error, num_params,
    cpu_latency_ms (batch of 1 at the trial's input size, one thread, median).
    """
    metric, mode = cfg.search.metric, cfg.search.mode
    names = list(cfg.searched()) + sorted({k for r in records for k in r.params} - set(cfg.searched()))
    cost_cache: dict[tuple[Any, ...], tuple[float, float]] = {}
    rows = []
    for order, rec in enumerate(records):
        h = _clean_history(rec.history)
        best = best_row(h, metric, mode)
        last = h.iloc[-1] if not h.empty else None
        row: dict[str, Any] = {"trial_id": rec.trial_id, "status": trial_status(rec, cfg.search.max_epochs)}
        row.update({f"param_{n}": rec.params.get(n) for n in names})
        row["params_json"] = json.dumps(jsonable(rec.params), sort_keys=True)
        folds = [c for c in h.columns if c.startswith("fold") and c.endswith("_accuracy") and "train" not in c]
        per_shift = [c for c in h.columns if c.startswith("cv_shift_")]
        for col in list(_BEST_COLUMNS) + [f"fold{i}_{m}" for i in range(len(folds)) for m in _FOLD_METRICS]:
            row[col] = _num(best, col)
        for col in per_shift:
            row[col] = _num(best, col)
        row["final_cv_accuracy"] = _num(last, "cv_accuracy")
        row["final_cv_macro_f1"] = _num(last, "cv_macro_f1")
        row["epochs"] = len(h)
        row["best_epoch"] = int(best["epoch"]) if best is not None else None
        row["fold_epochs"] = len(h) * (len(folds) or cfg.cv.folds)
        # each epoch's own seconds: Tune's time_total_s starts again when a paused or resumed trial restarts
        row["time_total_s"] = (
            float(h["time_this_iter_s"].sum()) if "time_this_iter_s" in h else _num(last, "time_total_s")
        )
        row["end_time"] = _num(last, "timestamp")
        row["node_ids"] = None if best is None or "node_ids" not in best else best["node_ids"]
        row["weights"] = None if best is None or "weights" not in best else best["weights"]
        for i in range(len(folds)):  # each fold's own, recorded to show they agree (the trial fails if not)
            row[f"fold{i}_weights"] = None if best is None else best.get(f"fold{i}_weights")
        row["precision"] = None if best is None else best.get("precision")  # fp32 / bf16, the same way
        for i in range(len(folds)):
            row[f"fold{i}_precision"] = None if best is None else best.get(f"fold{i}_precision")
        row["error"] = rec.error
        row["num_params"], row["cpu_latency_ms"] = (
            _model_cost(cfg, rec.params, num_classes, cost_cache) if measure_cost else (math.nan, math.nan)
        )
        row["_order"] = order
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # completion order: when the trial last reported (failed trials without a report go last)
    table = table.sort_values(["end_time", "_order"], na_position="last", kind="stable").drop(columns="_order")
    return table.reset_index(drop=True)


def _num(row: pd.Series | None, col: str) -> float:
    if row is None or col not in row:
        return math.nan
    try:
        return float(row[col])
    except (TypeError, ValueError):
        return math.nan


def _model_cost(
    cfg: ExperimentConfig, params: dict[str, Any], num_classes: int, cache: dict[tuple[Any, ...], tuple[float, float]]
) -> tuple[float, float]:
    """(parameter count, CPU ms per image) of the trial's model, once per distinct architecture; NaN if unbuildable."""
    try:
        tc = cfg.train_config(params, pretrained=False, weights_file=None)
    except ConfigError as e:  # params outside today's space (edited between runs): no cost, said so
        log.warning("trials.csv: no model cost for params %s: %s", params, e)
        return math.nan, math.nan
    size = tc.input_size or cfg.data.image_size
    key = (tc.backbone, tc.head_layers, tc.head_width, tc.head_batchnorm, size, num_classes)
    if key not in cache:
        try:
            cache[key] = model_cost(tc, num_classes, size)
        except (RuntimeError, ValueError, ConfigError) as e:  # a model that cannot be built or run here
            log.warning("trials.csv: no num_params/cpu_latency_ms for %s at %d px: %s", tc.backbone, size, e)
            cache[key] = (math.nan, math.nan)
    return cache[key]


def model_cost(config: Any, num_classes: int, size: int, repeats: int = 7) -> tuple[float, float]:
    """Parameter count and median CPU latency (ms) for one image, one thread, eval mode, random init."""
    # torch and the model (timm): only when trials.csv measures costs; the console reporter imports this module
    import torch

    from cellnet.model import build_model

    model = build_model(config, num_classes).eval()
    n_params = float(sum(p.numel() for p in model.parameters()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(1, 3, size, size)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 2):
                t0 = time.perf_counter()
                model(x)
                if i >= 2:  # the first calls allocate
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return n_params, float(np.median(times) * 1000.0)


# ---------------------------------------------------------------------------------------------------------------
# Winner, summary.json, leaderboard


def best_trial(table: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The trial with the best best-epoch `metric` among those that reported one (failed ones never win)."""
    if table.empty or metric not in table:
        return None
    ok = table[(table["status"] != "failed") & np.isfinite(pd.to_numeric(table[metric], errors="coerce"))]
    if ok.empty:
        return None
    ranked = ok.sort_values(metric, ascending=(mode == "min"), kind="stable")
    return ranked.iloc[0]


def ranked(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Trials best first; failed and metric-less trials last."""
    key = pd.to_numeric(table[metric], errors="coerce") if metric in table else pd.Series(np.nan, index=table.index)
    key = key if mode == "min" else -key
    return table.assign(_key=key).sort_values("_key", na_position="last", kind="stable").drop(columns="_key")


def retrain_epochs(cfg: ExperimentConfig, best: pd.Series) -> tuple[int, int]:
    """(epochs to run, length of the LR schedule): `retrain.epochs: best` = the searched schedule (search.max_epochs
    long) stopped at the winner's best epoch; an int N = a fresh N-epoch schedule run to its end.

    A winner stopped before its schedule ended (the time budget, or ASHA when every trial was stopped) never reached
    the schedule's low learning rates: repeating its truncated schedule would deploy weights in mid-training. Its
    refit runs a fresh best-epoch-long schedule to its end instead (docs/benchmarks.md: 0.74 vs 0.88 validation
    accuracy over 3 seeds for a winner cut at epoch 3 of 14).
    """
    if cfg.retrain.epochs != "best":
        return int(cfg.retrain.epochs), int(cfg.retrain.epochs)
    best_epoch = int(best["best_epoch"])
    finished = int(best.get("epochs", cfg.search.max_epochs)) >= cfg.search.max_epochs
    return best_epoch, cfg.search.max_epochs if finished else best_epoch


def build_summary(
    cfg: ExperimentConfig,
    table: pd.DataFrame,
    *,
    wall_time_s: float | None,
    provenance: dict[str, Any] | None,
    run_dir: Path,
    test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run in one JSON-able dict: winner (params, full TrainConfig, cv mean ± std, per fold), counts, provenance."""
    metric, mode = cfg.search.metric, cfg.search.mode
    counts = {s: int((table["status"] == s).sum()) if not table.empty else 0 for s in STATUSES}
    best = best_trial(table, metric, mode)
    winner: dict[str, Any] | None = None
    if best is not None:
        params = params_of(best)
        refit_epochs, refit_schedule = retrain_epochs(cfg, best)
        folds = sorted({int(c[4:].split("_")[0]) for c in best.index if c.startswith("fold") and c[4:5].isdigit()})
        winner = {
            "trial_id": best["trial_id"],
            "status": best["status"],
            "params": params,
            "config": dataclasses.asdict(cfg.train_config(params, epochs=cfg.search.max_epochs)),
            "best_epoch": int(best["best_epoch"]),
            "epochs": int(best["epochs"]),
            "retrain_epochs": refit_epochs,
            "retrain_schedule_epochs": refit_schedule,
            "cv": {
                metric: best[metric],
                "cv_accuracy": best["cv_accuracy"],
                "cv_accuracy_std": best["cv_accuracy_std"],
                "cv_macro_f1": best["cv_macro_f1"],
                "cv_balanced_accuracy": best["cv_balanced_accuracy"],
                **{k: best.get(k) for k in ("cv_shifted_accuracy", "cv_worst_shift_accuracy", "cv_robust_accuracy")},
                "per_shift": {k[9:]: best[k] for k in best.index if str(k).startswith("cv_shift_")},
                "folds": {m: [best.get(f"fold{i}_{m}") for i in folds] for m in _FOLD_METRICS},
            },
            "num_params": best.get("num_params"),
            "cpu_latency_ms": best.get("cpu_latency_ms"),
            "node_ids": best.get("node_ids"),
            "weights": best.get("weights"),  # pretrained: where the backbone's weights came from ("none": scratch)
            "precision": best.get("precision"),  # what its folds trained in (train.precision, auto resolved)
        }
    return jsonable(
        {
            "name": cfg.name,
            "metric": metric,
            "mode": mode,
            "best": winner,
            "trials": {"total": len(table), **counts},
            "fold_epochs": int(table["fold_epochs"].sum()) if not table.empty else 0,
            "wall_time_s": wall_time_s,
            "test": test,
            "retrain": None,
            "outputs": {
                "trials_csv": str(run_dir / "trials.csv"),
                "report": str(run_dir / "report"),
                "tensorboard": str(run_dir / "tensorboard"),
                "best_checkpoint": str(run_dir / "best"),
            },
            "search": {**cfg.to_dict()["search"], "folds": cfg.cv.folds, "cv_seed": cfg.cv.seed},
            "seeds": {
                "cv": cfg.cv.seed,
                "search": cfg.search.seed,
                "train": cfg.fixed_values().get("seed", TrainConfig.seed),
            },
            "provenance": provenance or {},
        }
    )


def checkpoint_metrics(row: pd.Series) -> dict[str, Any]:
    """What a retrained checkpoint records about the trial it came from: {"trial_id", "cv": {cv_* and fold<i>_*
    at the trial's best epoch, "best_epoch"}} (the `cv_metrics` argument of `search.refit.retrain`)."""
    cv = {
        str(k): float(v)
        for k, v in row.items()
        if re.match(r"cv_|fold\d+_", str(k)) and isinstance(v, int | float | np.number) and math.isfinite(float(v))
    }
    if not missing(row.get("best_epoch")):
        cv["best_epoch"] = int(row["best_epoch"])
    return {"trial_id": str(row["trial_id"]), "cv": cv}


def update_summary(run_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Set top-level sections of `run_dir/summary.json` (e.g. retrain=..., test=...) after the search; atomic."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(jsonable(sections))
    write_json(path, summary)
    return summary


def format_leaderboard(
    cfg: ExperimentConfig, table: pd.DataFrame, *, top: int = 10, max_params: int = 8, run_dir: Path | None = None
) -> str:
    """Top trials as an aligned text table: rank, trial, status, metric ± std, epochs, the key params."""
    metric, mode = cfg.search.metric, cfg.search.mode
    if table.empty:
        return "No trials ran."
    counts = {s: int((table["status"] == s).sum()) for s in STATUSES}
    shown = ranked(table, metric, mode).head(top)
    param_cols = [c for c in table.columns if c.startswith("param_")]
    varying = [c for c in param_cols if shown[c].astype(str).nunique() > 1]
    param_cols = (varying + [c for c in param_cols if c not in varying])[:max_params]

    header = ["#", "trial", "status", metric, "epochs"] + [c[6:] for c in param_cols]
    lines = []
    for rank, (_, r) in enumerate(shown.iterrows(), start=1):
        value = r.get(metric)
        score = "-" if missing(value) else f"{value:.4f}"
        if metric == "cv_accuracy" and not missing(r.get("cv_accuracy_std")):
            score += f" ± {r['cv_accuracy_std']:.4f}"
        epochs = f"{int(r['epochs'])}/{cfg.search.max_epochs}"
        lines.append(
            [str(rank), str(r["trial_id"]), str(r["status"]), score, epochs] + [_fmt(r[c]) for c in param_cols]
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    right = {0, 3, 4}

    def fmt_row(cells: list[str]) -> str:
        cols = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(cols).rstrip()

    title = (
        f"Top {len(shown)} of {len(table)} trials by {metric} ({mode}; best epoch) — completed {counts['completed']}, "
        f"stopped early {counts['stopped_early']}, failed {counts['failed']}"
    )
    out = [title, fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(x) for x in lines]
    if run_dir is not None:
        out += [
            "",
            f"Outputs in {run_dir}: trials.csv, summary.json, report/ (plots), best/ (the winner, once retrained)",
            f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
        ]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if missing(value):
        return "-"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.2e}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.3g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Everything at once


def write_outputs(
    cfg: ExperimentConfig,
    records: list[TrialRecord],
    run_dir: str | Path,
    *,
    num_classes: int,
    wall_time_s: float | None = None,
    provenance: dict[str, Any] | None = None,
    test: dict[str, Any] | None = None,
    measure_cost: bool = True,
    top: int = 10,
) -> SearchOutputs:
    """trials.csv, summary.json and report/*.png in `run_dir` (all atomic), plus the leaderboard text."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = trials_table(cfg, records, num_classes=num_classes, measure_cost=measure_cost)
    with atomic_path(run_dir / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)
    plots, notes = plot_search(cfg, table, run_dir / "report") if not table.empty else ({}, ["no trials: no plots"])
    summary = build_summary(cfg, table, wall_time_s=wall_time_s, provenance=provenance, run_dir=run_dir, test=test)
    summary["plots"] = {k: str(v) for k, v in plots.items()}
    summary["notes"] = notes
    budget = run_dir / BUDGET_FILE  # the rung gate's decision (search/budget.py), when it stopped new trials
    cuts = run_dir / CUTS_FILE  # ... and the trials it stopped at a rung, the deadline before their next score
    summary["budget"] = {
        "time_budget_s": cfg.search.time_budget_s,
        "new_trials_stopped": json.loads(budget.read_text()) if budget.is_file() else None,
        "stopped_at_rung": json.loads(cuts.read_text()) if cuts.is_file() else [],
    }
    held = run_dir / FIRST_RUNG_FILE  # the synchronous first rung's decision (search/first_rung.py)
    summary["first_rung"] = {
        "trials_wanted": cfg.search.first_rung_trials,
        "decision": json.loads(held.read_text()) if held.is_file() else None,
    }
    write_json(run_dir / "summary.json", summary)
    best = summary["best"]
    row = best_trial(table, cfg.search.metric, cfg.search.mode)
    board = format_leaderboard(cfg, table, top=top, run_dir=run_dir)
    if notes:
        board += "\n" + "\n".join(f"Note: {n}" for n in notes)
    winner = None
    if best is not None and row is not None:
        winner = Winner(
            trial_id=best["trial_id"],
            params=best["params"],
            best_epoch=best["best_epoch"],
            retrain_epochs=best["retrain_epochs"],
            retrain_schedule_epochs=best["retrain_schedule_epochs"],
            cv_metrics=checkpoint_metrics(row),
            weights=best.get("weights"),
            precision=best.get("precision"),
        )
    return SearchOutputs(table=table, summary=summary, leaderboard=board, winner=winner, plots=plots, notes=notes)


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    """`run_dir/trials.csv` as written by `write_outputs` (trial ids as strings)."""
    return pd.read_csv(Path(run_dir) / "trials.csv", dtype={"trial_id": str})
