"""The search's plots: best-so-far against trials and against compute, and fANOVA parameter importance.

    trials table (search/results.py) ─ plot_search ─┬─ report/best_vs_trials.png, report/best_vs_compute.png
                                                    └─ param_importances (an Optuna study rebuilt from the trials)
                                                         ─ report/param_importance.png
A plot that cannot be made (too few trials, nothing varies) is skipped with a note, never an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellnet.config import ExperimentConfig, Param
from cellnet.files import atomic_path
from search.trial_row import params_of

__all__ = ["param_importances", "plot_search"]


def plot_search(cfg: ExperimentConfig, table: pd.DataFrame, out_dir: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Best-so-far vs trials and vs compute, and parameter importance, as PNGs in `out_dir`. Returns (plots, notes):
    a plot that cannot be made (too few trials, nothing varies) is skipped with a note instead of failing the run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric, mode = cfg.search.metric, cfg.search.mode
    plots: dict[str, Path] = {}
    notes: list[str] = []
    scored = table[table["status"] != "failed"] if not table.empty else table
    values = pd.to_numeric(scored[metric], errors="coerce") if metric in scored else pd.Series(dtype=float)
    if values.notna().sum() == 0:
        notes.append(f"progress plots skipped: no trial reported {metric}")
    else:
        plots["best_vs_trials"] = _plot_progress(table, metric, mode, out_dir / "best_vs_trials.png", compute=False)
        plots["best_vs_compute"] = _plot_progress(table, metric, mode, out_dir / "best_vs_compute.png", compute=True)
    importance, note = param_importances(cfg, table)
    if importance is None:
        notes.append(f"parameter importance skipped: {note}")
    else:
        n = int((table["status"] != "failed").sum())
        plots["param_importance"] = _plot_importance(importance, metric, n, out_dir / "param_importance.png")
    return plots, notes


def _plot_progress(table: pd.DataFrame, metric: str, mode: str, path: Path, *, compute: bool) -> Path:
    """Each trial's best-epoch value (by status) and the best so far, in completion order (trials or fold-epochs)."""
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

    values = pd.to_numeric(table[metric], errors="coerce").where(table["status"] != "failed")
    x = table["fold_epochs"].cumsum().to_numpy() if compute else np.arange(1, len(table) + 1)
    filled = values.fillna(-np.inf if mode == "max" else np.inf)
    best = filled.cummax() if mode == "max" else filled.cummin()
    best = best.where(np.isfinite(best))
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    colors = {"completed": "tab:blue", "stopped_early": "tab:orange"}
    for status, color in colors.items():
        m = (table["status"] == status).to_numpy() & values.notna().to_numpy()
        ax.scatter(x[m], values[m], s=18, color=color, alpha=0.7, label=status.replace("_", " "))
    ax.step(x, best, where="post", color="black", label="best so far")
    failed = (table["status"] == "failed").to_numpy()
    if failed.any():
        ax.plot([], [], " ", label=f"failed: {int(failed.sum())}")
    ax.set_xlabel("cumulative fold-epochs" if compute else "trials (completion order)")
    ax.set_ylabel(f"{metric} (best epoch)")
    ax.set_title(f"Best {metric} so far vs {'compute' if compute else 'trials'}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path


def param_importances(cfg: ExperimentConfig, table: pd.DataFrame) -> tuple[dict[str, float] | None, str]:
    """fANOVA importance of each searched parameter for the search metric, from an Optuna study rebuilt from the
    trials (finished and stopped-early trials, each with its best-epoch value). (None, reason) when it cannot be
    estimated: fewer than two scored trials, or no parameter took two different values."""
    # optuna, the search extra: search.retrain imports this module (through results) before it checks the extra
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    metric, mode = cfg.search.metric, cfg.search.mode
    space = cfg.searched()
    if table.empty or metric not in table:
        return None, "no trials"
    scored = table[(table["status"] != "failed") & np.isfinite(pd.to_numeric(table[metric], errors="coerce"))]
    if len(scored) < 2:
        return None, f"needs at least 2 trials with a {metric}, got {len(scored)}"
    varying = [n for n in space if f"param_{n}" in scored and scored[f"param_{n}"].astype(str).nunique() > 1]
    if not varying:
        return None, "no searched parameter took two different values"
    dists = {n: _distribution(p) for n, p in space.items()}
    trials = []
    for _, r in scored.iterrows():
        params = {n: v for n, v in params_of(r).items() if n in dists}
        params = {n: (int(v) if space[n].kind == "int" else v) for n, v in params.items()}
        try:
            trials.append(
                optuna.trial.create_trial(
                    params=params, distributions={n: dists[n] for n in params}, value=float(r[metric])
                )
            )
        except ValueError:  # a value outside the declared space (space edited between runs): leave the trial out
            continue
    if len(trials) < 2:
        return None, "fewer than 2 trials fit the search space"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    study.add_trials(trials)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=cfg.search.seed))
    except (ValueError, RuntimeError) as e:
        return None, f"optuna could not estimate it ({e})"
    if not imp:
        return None, "optuna found no parameter present in every scored trial"
    return {k: float(v) for k, v in imp.items()}, ""


def _distribution(p: Param) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # as above

    if p.kind == "choice":
        return CategoricalDistribution(list(p.values))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=p.step)
    return FloatDistribution(p.low, p.high, log=p.kind == "loguniform")


def _plot_importance(importance: dict[str, float], metric: str, n_trials: int, path: Path) -> Path:
    from matplotlib.figure import Figure  # matplotlib (~2 s): only when a figure is drawn

    names = list(importance)[::-1]
    fig = Figure(figsize=(6.4, 0.45 * len(names) + 1.2), dpi=100)
    ax = fig.subplots()
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)")
    ax.set_title(f"Hyper-parameter importance (from {n_trials} trials)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
