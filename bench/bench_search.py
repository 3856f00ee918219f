"""Does TPE+ASHA find a good classifier with less compute than random search, and does telling Optuna PRUNED help?

Three searches per seed, each a whole `search.run.main` run (its own local Ray, `--no-retrain`), same data, folds
and search space (tiny timm `test_*` backbones; `--space` takes `train`/`space` from another YAML):
- `random+FIFO`: Optuna's random sampler, every trial trained for `max_epochs` (no early stopping): the baseline.
  Its total compute is the budget B for the other two.
- `TPE+ASHA`: our searcher (ASHA-stopped trials told to Optuna as PRUNED, search/optuna_pruned.py).
- `TPE+ASHA/Ray`: the same, but told COMPLETE with the truncated value, as Ray's OptunaSearch does
  (`tuner_for(..., tell_pruned=False)`).

Compute is counted in fold-epochs: epochs a trial ran x folds, summed over trials (one fold-epoch = one model trained
one epoch on one fold; the 5-30 s start-up of a trial is wall time, not compute). Equal compute: the TPE+ASHA
searches get more trials than they can use and a `ray.tune.Stopper` (passed through `search.run.main(stopper=...)`)
ends the whole search once the fold-epochs reported reach B; their curves are also cut at B afterwards, so epochs that
concurrent trials finished after the stop never count. Curves: every trial's per-epoch `cv_accuracy` from
`tune/<trial>/progress.csv`, in the order results arrived (timestamp, then the trial's start, then the epoch), as best
cv_accuracy so far vs cumulative fold-epochs.

Headline ratio = fold-epochs TPE+ASHA needed to first reach random+FIFO's final best cv_accuracy ÷ B (target <= 1/3;
"not reached" when it never did within B). Over seeds: the median (a seed that never reached counts as infinite).
PRUNED vs COMPLETE: best cv_accuracy at B, trials run to max_epochs / stopped early (by ASHA, or the ones the budget
cut), and the trial states Optuna recorded (read from the live searcher after the search). Trials the budget stop ends
stay RUNNING in Optuna: Tune's stop_all path never calls the searcher's on_trial_complete (true of time_budget_s too).

Workload: every search runs `--concurrent` (2) trials at once, whatever the machine (cpus_per_fold = CPUs / (folds x
2), at most 1): a trial's start-up is mostly waiting, and two at a time halve the wall time on 2 CPUs. ASHA's grace
period is 2 epochs, not 1: after one epoch these models are still near chance (0.1-0.3), so a rung there ranks noise.
Epochs are cheap next to a trial's start-up, so the quick mode runs few trials of 8 epochs rather than many short ones.

TPE's random start-up. The TPE searches get num_samples = more trials than the budget can pay for, so that the budget,
not the trial count, ends them; search.space's default start-up (a third of num_samples, 3 to 10) would then be a
third of that inflated count. They get `search.startup_trials` instead: the same default applied to the trials the
budget is expected to pay for under ASHA (B / (folds x the mean epochs of an ASHA trial: all reach the grace period,
1/rf of them each next rung)), as a user who sized num_samples for that budget would have: 3 of 8 in the quick mode,
6 of 20 in the full one. `--startup-trials` sets it. Runs before 2026-12-02 used a third of the inflated count (6 and
10), i.e. TPE's first 6-10 trials were random+FIFO's own configs (docs/benchmarks.md has both).

Caveats. With a seeded TPE sampler the start-up trials are the random sampler's draws for that seed, i.e. the same
configs, in the same order, as random+FIFO's; until then PRUNED vs COMPLETE can only differ by ASHA's decisions,
which depend on the order concurrent results arrive in (run-to-run noise; the table says when a search never left
the start-up). One seed is one draw: the ratio mostly says where in the random sequence the best config fell; the
full mode's 3 seeds say more.

    .venv/bin/python -m bench.bench_search --quick    # 1 seed, synthetic:600 @ 32 px, 4 random trials (~8 min, 2 CPUs)
    .venv/bin/python -m bench.bench_search            # 3 seeds, synthetic:1200 @ 32 px, 10 random trials (~1 h, 2 CPUs)
    .venv/bin/python -m bench.bench_search --data ../shared/data/pbc-sample --image-size 64
Writes <out>/search_efficiency.png, <out>/search_efficiency.json and the searches under <out>/searches/ (each with a
search.log of its console output). Default --out runs/bench/ (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from ray.tune import Stopper

from bench.common import bench_parser

METHODS = {  # key: (label, searcher, scheduler, tell_pruned)
    "random_fifo": ("random+FIFO", "random", "fifo", True),
    "tpe_asha": ("TPE+ASHA (PRUNED told)", "tpe", "asha", True),
    "tpe_asha_ray": ("TPE+ASHA/Ray (COMPLETE told)", "tpe", "asha", False),
}
TARGET_RATIO = 1 / 3
PRESETS = {  # unset flags take these
    "quick": {"n": 600, "image_size": 32, "folds": 2, "max_epochs": 8, "grace": 2, "rf": 2, "random_trials": 4,
              "seeds": 1},
    "full": {"n": 1200, "image_size": 32, "folds": 2, "max_epochs": 8, "grace": 2, "rf": 2, "random_trials": 10,
             "seeds": 3},
}  # fmt: skip
TRAIN = {"batch_size": 32, "warmup_epochs": 0, "device": "cpu"}
SPACE = {  # spaces/quickstart.yaml's, copied so the benchmark does not change when the quickstart does
    "backbone": {"choice": ["test_efficientnet", "test_resnet", "test_convnext"]},
    "head_layers": {"int": [0, 1]},
    "head_width": {"choice": [32, 64], "when": "head_layers > 0"},
    "dropout": {"uniform": [0.0, 0.3]},
    "lr": {"loguniform": [3.0e-4, 1.0e-2]},
    "optimizer": {"choice": ["adamw", "sgd"]},
    "aug_strength": {"uniform": [0.0, 0.6]},
}


class BenchError(Exception):
    pass


class FoldEpochBudget(Stopper):
    """Ends the whole search once the trials' reported epochs x folds reach `budget`: equal compute, not equal time."""

    def __init__(self, budget: int, folds: int) -> None:
        self.budget, self.folds = budget, folds
        self.seen: set[tuple[str, int]] = set()  # (trial, epoch): a re-reported epoch (restart) counts once

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.seen.add((trial_id, int(result.get("training_iteration", 0))))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) * self.folds >= self.budget


# ---------------------------------------------------------------------------------------------------------------
# Running one search


def search_config(
    a: argparse.Namespace, method: str, seed: int, num_samples: int, startup: int | None
) -> dict[str, Any]:
    """The search YAML for one method and seed: only searcher, scheduler, num_samples and TPE's start-up differ."""
    _, searcher, scheduler, _ = METHODS[method]
    train, space = dict(TRAIN), dict(SPACE)
    if a.space:
        raw = yaml.safe_load(Path(a.space).read_text()) or {}
        train, space = dict(raw.get("train") or {}), dict(raw.get("space") or {})
    return {
        "name": f"bench-{method}-seed{seed}",
        "data": {"source": a.data, "image_size": a.image_size, "clean": True},
        "cv": {"folds": a.folds, "seed": seed},
        "train": train,
        "search": {
            "metric": "cv_accuracy",
            "mode": "max",
            "num_samples": num_samples,
            "max_epochs": a.max_epochs,
            "grace_period": a.grace,
            "reduction_factor": a.rf,
            "searcher": searcher,
            "scheduler": scheduler,
            "seed": seed,
            "checkpoint_every": a.max_epochs,  # ASHA rungs and the last epoch checkpoint anyway
            "startup_trials": startup,
        },
        "resources": {
            "cpus_per_fold": a.cpus_per_fold,
            "gpus_per_fold": a.gpus_per_fold,
            "max_concurrent": a.concurrent,
        },
        "retrain": {"epochs": "best"},
        "space": space,
    }


@contextlib.contextmanager
def live_searcher() -> Iterator[list[Any]]:
    """Keep the searcher `tuner_for` builds: the study Tune pickles can miss the states of the trials that ended last
    (the budget stop), the live one cannot. `tuner_for` imports `make_searcher` when called, so it gets this one."""
    import search.optuna_pruned as op

    made: list[Any] = []
    original = op.make_searcher

    def keep(*args: Any, **kwargs: Any) -> Any:
        made.append(original(*args, **kwargs))
        return made[-1]

    op.make_searcher = keep  # type: ignore[assignment]
    try:
        yield made
    finally:
        op.make_searcher = original  # type: ignore[assignment]


@contextlib.contextmanager
def captured(log: Path) -> Iterator[None]:
    """This process's stdout/stderr, and its children's, into `log`: Tune's status tables would bury the results."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_search(a: argparse.Namespace, method: str, seed: int, budget: int | None) -> dict[str, Any]:
    """One whole search (own local Ray, no retrain) and what it spent and found; `budget` None = run num_samples."""
    from search.run import main as search_main

    if budget is None:
        num_samples, stopper, startup = a.random_trials, None, None
    else:  # more trials than the budget can pay for, even if every one stops at the grace period
        num_samples, stopper = budget // (a.grace * a.folds) + 2, FoldEpochBudget(budget, a.folds)
        startup = tpe_startup(a, budget)
    run_dir = Path(a.out) / "searches" / f"seed{seed}-{method}"
    if run_dir.exists():  # an earlier bench run's search (the bench owns <out>/searches/)
        if not (run_dir / "search_config.yaml").is_file() and any(run_dir.iterdir()):
            raise BenchError(f"{run_dir} exists and is not a search this benchmark wrote; choose another --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    space = run_dir / "bench_space.yaml"
    space.write_text(yaml.safe_dump(search_config(a, method, seed, num_samples, startup), sort_keys=False))
    log = run_dir / "search.log"
    print(f"  seed {seed}  {METHODS[method][0]:<30} ", end="", flush=True)
    start = time.perf_counter()
    with captured(log), live_searcher() as made:
        rc = search_main(
            [str(space), "--storage", str(run_dir), "--no-retrain"], tell_pruned=METHODS[method][3], stopper=stopper
        )
    wall = time.perf_counter() - start
    if rc != 0:
        print("failed", flush=True)
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise BenchError(f"{method} seed {seed}: search exited {rc} ({' '.join(tail)[:300]}; log: {log})")
    out = collect(run_dir, a.folds, a.max_epochs, budget)
    if made:
        out["optuna_states"] = states_of(made[-1].study)
    out.update(method=method, seed=seed, wall_s=round(wall, 1), num_samples=num_samples, startup_trials=startup)
    out["run_dir"] = str(run_dir)
    print(
        f"{out['trials']:3d} trials, {out['fold_epochs']:4d} fold-epochs, best cv_accuracy {out['best']:.4f}, "
        f"{wall:5.0f} s",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading a finished search


def events(run_dir: Path) -> pd.DataFrame:
    """Every (trial, epoch) result in arrival order: trial_id, epoch, cv_accuracy, timestamp."""
    frames = []
    cols = {"training_iteration", "cv_accuracy", "timestamp", "time_total_s"}
    for progress in sorted((run_dir / "tune").glob("*/progress.csv")):
        df = pd.read_csv(progress, usecols=cols.__contains__)
        if df.empty:
            continue
        df = df.rename(columns={"training_iteration": "epoch"}).drop_duplicates("epoch", keep="first")
        df["trial_id"] = progress.parent.name
        df["start"] = float((df["timestamp"] - df["time_total_s"]).min())  # ties within a second: earlier trial first
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["trial_id", "epoch", "cv_accuracy", "timestamp"])
    ev = pd.concat(frames, ignore_index=True).sort_values(["timestamp", "start", "epoch"], kind="stable")
    return ev[["trial_id", "epoch", "cv_accuracy", "timestamp"]].reset_index(drop=True)


def optuna_states(run_dir: Path) -> dict[str, int]:
    """Trial states in the Optuna study Tune saved with the searcher (a fallback for `live_searcher`)."""
    files = sorted((run_dir / "tune").glob("searcher-state-*.pkl"), key=lambda f: f.stat().st_mtime)
    if not files:
        return {}
    with open(files[-1], "rb") as f:
        return states_of(pickle.load(f)["_ot_study"])


def states_of(study: Any) -> dict[str, int]:
    """How many trials of an Optuna study are COMPLETE, PRUNED, FAIL, ... (what TPE learnt from)."""
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def collect(run_dir: Path, folds: int, max_epochs: int, budget: int | None) -> dict[str, Any]:
    """A search's best-so-far curve (cut at `budget` fold-epochs) and its trial counts."""
    ev = events(run_dir)
    ev["fold_epochs"] = np.arange(1, len(ev) + 1) * folds
    if budget is not None:
        ev = ev[ev["fold_epochs"] <= budget]
    acc = pd.to_numeric(ev["cv_accuracy"], errors="coerce").fillna(-math.inf)
    ev = ev.assign(best=np.maximum.accumulate(acc.to_numpy()) if len(ev) else acc)
    epochs = ev.groupby("trial_id")["epoch"].max()
    trials = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str})
    return {
        "curve": [[int(x), float(y)] for x, y in zip(ev["fold_epochs"], ev["best"], strict=True)],
        "fold_epochs": int(ev["fold_epochs"].iloc[-1]) if len(ev) else 0,
        "best": float(ev["best"].iloc[-1]) if len(ev) else math.nan,
        "trials": int(len(epochs)),
        "full_trials": int((epochs >= max_epochs).sum()),
        "stopped_early": int((epochs < max_epochs).sum()),
        "failed": int((trials["status"] == "failed").sum()),
        "optuna_states": optuna_states(run_dir),
    }


def reach(curve: list[list[float]], target: float) -> int | None:
    """Fold-epochs at which a best-so-far curve first reaches `target`; None if it never does."""
    return next((int(x) for x, y in curve if y >= target - 1e-9), None)


def best_at(curve: list[list[float]], grid: np.ndarray) -> np.ndarray:
    """A best-so-far curve as a step function on `grid` (NaN before its first result)."""
    xs = np.array([c[0] for c in curve], dtype=float)
    ys = np.array([c[1] for c in curve], dtype=float)
    idx = np.searchsorted(xs, grid, side="right") - 1
    return np.where(idx >= 0, ys[np.clip(idx, 0, None)] if len(ys) else np.nan, np.nan)


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


def summarise(runs: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per seed: each TPE+ASHA's fold-epochs to reach random+FIFO's final best and its ratio; then over seeds."""
    for by_method in runs.values():
        base = by_method["random_fifo"]
        for method in ("tpe_asha", "tpe_asha_ray"):
            r = by_method[method]
            r["reach_fold_epochs"] = reach(r["curve"], base["best"])
            r["ratio"] = None if r["reach_fold_epochs"] is None else r["reach_fold_epochs"] / base["fold_epochs"]
    out: dict[str, Any] = {}
    for method in METHODS:
        rs = [by_method[method] for by_method in runs.values()]
        out[method] = {
            "best_mean": statistics.fmean(r["best"] for r in rs),
            "fold_epochs_mean": statistics.fmean(r["fold_epochs"] for r in rs),
            "trials_mean": statistics.fmean(r["trials"] for r in rs),
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in rs),
        }
        if method != "random_fifo":
            ratios = [math.inf if r["ratio"] is None else r["ratio"] for r in rs]
            out[method]["ratio_median"] = statistics.median(ratios)
            out[method]["ratio_mean"] = statistics.fmean(ratios) if all(map(math.isfinite, ratios)) else None
            out[method]["reached"] = sum(map(math.isfinite, ratios))
    return out


def plot(runs: dict[int, dict[str, dict[str, Any]]], title: str, path: Path) -> None:
    """Best cv_accuracy so far vs cumulative fold-epochs: thin line per seed, thick line for the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds_step = min(c[0] for by in runs.values() for r in by.values() for c in r["curve"][:1])
    top = max(r["fold_epochs"] for by in runs.values() for r in by.values())
    grid = np.arange(folds_step, top + 1, folds_step, dtype=float)
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = (("tab:gray", "-", 4.0), ("tab:blue", "--", 2.5), ("tab:orange", ":", 2.5))  # curves often coincide
    for (method, (label, *_)), (color, ls, lw) in zip(METHODS.items(), styles, strict=True):
        curves = []
        for by_method in runs.values():
            r = by_method[method]
            x = [0.0] + [c[0] for c in r["curve"]]
            y = [math.nan] + [c[1] for c in r["curve"]]
            ax.step(x, y, where="post", color=color, ls=ls, lw=0.8, alpha=0.45)
            y_grid = best_at(r["curve"], grid)
            y_grid[grid > r["fold_epochs"]] = np.nan  # a curve ends where its search did
            curves.append(y_grid)
        ax.step(grid, np.mean(curves, axis=0), where="post", color=color, ls=ls, lw=lw, label=label)
    base = statistics.fmean(by["random_fifo"]["best"] for by in runs.values())
    ax.axhline(base, color="tab:gray", ls=":", lw=1, label="random+FIFO final best (mean)")
    ax.axvline(top / 3, color="k", ls=":", lw=0.8, label="1/3 of random+FIFO's compute")
    ax.set_xlabel("compute: cumulative fold-epochs (epochs x folds, in the order results arrived)")
    ax.set_ylabel("best cv_accuracy so far")
    ax.set_title(title.replace("; random", ";\nrandom", 1), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def asha_epochs_per_trial(grace: int, rf: float, max_epochs: int) -> float:
    """The mean epochs of a trial under ASHA: all run to the grace period, 1/rf of them on to each next rung."""
    rungs = [float(grace)]
    while rungs[-1] * rf < max_epochs:
        rungs.append(rungs[-1] * rf)
    rungs.append(float(max_epochs))
    return rungs[0] + sum((hi - lo) / rf ** (k + 1) for k, (lo, hi) in enumerate(zip(rungs, rungs[1:])))


def tpe_startup(a: argparse.Namespace, budget: int) -> int:
    """TPE's random start-up for a budget of `budget` fold-epochs: --startup-trials, else search.space's default for
    the trials that budget is expected to pay for under ASHA (see the module doc)."""
    from search.space import startup_trials

    if a.startup_trials is not None:
        return int(a.startup_trials)
    expected = budget / (a.folds * asha_epochs_per_trial(a.grace, a.rf, a.max_epochs))
    return startup_trials(max(1, int(expected)))


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (a ratio never reached, a search with no result) as None: valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _fmt(v: float | None, spec: str = ".3f", never: str = "not reached") -> str:
    if v is None or not math.isfinite(v):
        return never
    return format(v, spec)


def table(runs: dict[int, dict[str, dict[str, Any]]], summary: dict[str, Any]) -> list[str]:
    """The printed table: per seed and mean, every method's best, compute, trials and ratio."""
    head = (f"{'seed':>4}  {'method':<30} {'trials':>6} {'full':>5} {'early':>5} {'optuna C/P/R':>12} "
            f"{'fold-ep':>7} {'best cv_acc':>11} {'to reach':>8} {'ratio':>11} {'wall s':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for seed, by_method in runs.items():
        for method, r in by_method.items():
            st = r["optuna_states"]
            cp = f"{st.get('COMPLETE', 0)}/{st.get('PRUNED', 0)}/{st.get('RUNNING', 0)}" if st else "-"
            to_reach = "-" if method == "random_fifo" else _fmt(r["reach_fold_epochs"], "d", "never")
            ratio = "-" if method == "random_fifo" else _fmt(r["ratio"])
            lines.append(
                f"{seed:>4}  {METHODS[method][0]:<30} {r['trials']:>6} {r['full_trials']:>5} {r['stopped_early']:>5} "
                f"{cp:>12} {r['fold_epochs']:>7} {r['best']:>11.4f} {to_reach:>8} {ratio:>11} {r['wall_s']:>6.0f}"
            )
    if len(runs) > 1:
        for method, s in summary.items():
            ratio = "-" if method == "random_fifo" else f"{_fmt(s['ratio_median'])} med"
            lines.append(
                f"{'mean':>4}  {METHODS[method][0]:<30} {s['trials_mean']:>6.1f} {'':>5} {'':>5} {'':>12} "
                f"{s['fold_epochs_mean']:>7.0f} {s['best_mean']:>11.4f} {'':>8} {ratio:>11} {s['wall_s_mean']:>6.0f}"
            )
    return lines


def run(a: argparse.Namespace) -> dict[str, Any]:
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in range(a.seeds):
        base = run_search(a, "random_fifo", seed, None)
        if base["fold_epochs"] == 0:
            raise BenchError(f"random+FIFO seed {seed}: no trial reported an epoch (log: {base['run_dir']}/search.log)")
        runs[seed] = {"random_fifo": base}
        for method in ("tpe_asha", "tpe_asha_ray"):
            runs[seed][method] = run_search(a, method, seed, base["fold_epochs"])
    return {"runs": runs, "summary": summarise(runs)}


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """Unset flags from the --quick / full preset; checks that fail before any search starts."""
    for key, value in PRESETS["quick" if a.quick else "full"].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.data = a.data or f"synthetic:{a.n}"
    for key in ("image_size", "folds", "max_epochs", "grace", "rf", "random_trials", "seeds", "concurrent"):
        if getattr(a, key) < 1:
            raise BenchError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(a, key)}")
    if a.cpus_per_fold is None:
        a.cpus_per_fold = min(1.0, len(os.sched_getaffinity(0)) / (a.folds * a.concurrent))
    if a.startup_trials is not None and a.startup_trials < 0:
        raise BenchError(f"--startup-trials must be >= 0, got {a.startup_trials}")
    if a.grace > a.max_epochs:
        raise BenchError(f"--grace {a.grace} must be <= --max-epochs {a.max_epochs}")
    if a.space and not Path(a.space).is_file():
        raise BenchError(f"--space {a.space}: no such file")
    return a


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, "1 seed, synthetic:600, 4 random trials (~8 min on 2 CPUs)", json_help=None)
    p.add_argument("--data", help="SOURCE searched on (default synthetic:N)")
    p.add_argument("--n", type=int, help="images of the default synthetic source (600 quick, 1200 full)")
    p.add_argument("--image-size", type=int, help="pixels (default 32)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (1 quick, 3 full)")
    p.add_argument("--folds", type=int, help="cv folds (default 2)")
    p.add_argument("--max-epochs", type=int, help="epochs a trial runs at most (default 8)")
    p.add_argument("--grace", type=int, help="ASHA grace period (default 2)")
    p.add_argument("--rf", type=int, help="ASHA reduction factor (default 2)")
    p.add_argument("--random-trials", type=int, help="random+FIFO trials = the compute budget (4 quick, 10 full)")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once in every search (default 2)")
    p.add_argument("--cpus-per-fold", type=float, help="default: this machine's CPUs / (folds x concurrent), at most 1")
    p.add_argument("--gpus-per-fold", type=float, default=0.0)
    p.add_argument("--startup-trials", type=int, help="TPE's random start-up (default: see the module doc)")
    p.add_argument("--space", help="YAML whose train/space sections replace the built-in ones")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench, git-ignored)")
    a = p.parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)  # every search starts its own local Ray, never someone else's cluster
    start = time.perf_counter()
    try:
        a = resolve(a)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        title = (
            f"{a.data} @ {a.image_size} px, {a.folds} folds, max_epochs {a.max_epochs}, {a.seeds} seed(s); "
            f"random+FIFO {a.random_trials} trials = budget; ASHA grace {a.grace}, rf {a.rf}; "
            f"{a.concurrent} trials at once"
        )
        print(f"search efficiency: {title}", flush=True)
        result = run(a)
        report(a, result, title, start)
    except Exception as e:  # one line, as the CLIs do; the search logs have the details
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def report(a: argparse.Namespace, result: dict[str, Any], title: str, start: float) -> None:
    """The table, the headline ratios, the plot and the JSON."""
    runs, summary = result["runs"], result["summary"]
    out = Path(a.out)
    print()
    print("\n".join(table(runs, summary)))
    print(
        "  trials: that reported an epoch; full: ran max_epochs; early: stopped by ASHA or the budget;\n"
        "  optuna C/P/R: COMPLETE/PRUNED/RUNNING in the study (RUNNING: never told, stopped by the budget);\n"
        "  to reach: fold-epochs to random+FIFO's final best; ratio: that ÷ random+FIFO's fold-epochs "
        f"(target <= {TARGET_RATIO:.3f})"
    )
    print()
    for method in ("tpe_asha", "tpe_asha_ray"):
        s = summary[method]
        per_seed = ", ".join(_fmt(by[method]["ratio"]) for by in runs.values())
        needed = (
            f"needed {s['ratio_median']:.3f} of random+FIFO's compute to reach its final best"
            if math.isfinite(s["ratio_median"])
            else "did not reach random+FIFO's final best within its compute"
        )
        print(f"{METHODS[method][0]:<30} {needed} (median of {a.seeds} seed(s): {per_seed}; reached in "
              f"{s['reached']}/{a.seeds}; target <= {TARGET_RATIO:.3f})")  # fmt: skip
    pr, co = summary["tpe_asha"], summary["tpe_asha_ray"]
    print(f"at equal compute ({summary['random_fifo']['fold_epochs_mean']:.0f} fold-epochs): best cv_accuracy "
          f"PRUNED told {pr['best_mean']:.4f} vs COMPLETE told {co['best_mean']:.4f} vs random+FIFO "
          f"{summary['random_fifo']['best_mean']:.4f} (mean of {a.seeds} seed(s))")  # fmt: skip
    for method in ("tpe_asha", "tpe_asha_ray"):
        short = [seed for seed, by in runs.items() if by[method]["trials"] <= by[method]["startup_trials"]]
        if short:
            seeds = ", ".join(map(str, short))
            print(
                f"note: {METHODS[method][0]} ran no more trials than TPE's random start-up in seed(s) {seeds}: "
                "its configs were random+FIFO's, only ASHA told them apart"
            )
    png, js = out / "search_efficiency.png", out / "search_efficiency.json"
    plot(runs, title, png)
    wall = time.perf_counter() - start
    doc = finite({"config": vars(a), "wall_s": round(wall, 1), **result})
    js.write_text(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")
    print(f"\nwall time {wall:.0f} s; wrote {png} and {js}")


if __name__ == "__main__":
    raise SystemExit(main())
