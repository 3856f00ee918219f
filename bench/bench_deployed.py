"""What a lab gets from the recommended space: its deployed model on held-out real cells -- clean, in another framing,
under the shift suite and graded policies, with and without --adapt -- and whether its trust promises hold there.

For each seed (`--seeds`: the search's seed, hence its folds and TPE draws), on ../shared/data/pbc-sample
(bench/real_data.py; `--framing`, default crop200 = the MedMNIST framing, the cell filling much of the 64 px frame):
`python -m search.run SPACE --seed S` on the whole design part (~1,820 cells; timed: data, search, calibration,
refit), then its deployed best/ is scored once on the report part (~750 cells no choice has seen):

    clean / TTA            accuracy; coverage of the 95% sets, overall and the lowest class with >= 30 cells
    other framing          the same cells full-frame (the cell ~1.8x smaller) or centre-cropped
    flags                  share of right clean answers flagged uncertain (target <= 0.10); in the other framing,
                           the share of the answers not flagged that are right (target >= 0.95) and how many those are
    suite families, graded the shift suite's family means, torchvision RandAugment (4 ops, magnitude 9) / AugMix
                           (width 4): bench/bench_robustness.py's sets
    + adapt                the same with --adapt; predict's wall time with and without it

Nothing here chooses anything: run it for the space before and after a change, side by side (`--label`).

    .venv/bin/python -m bench.bench_deployed --space spaces/cpu_small.yaml --label after [--seeds 0 1 2]
        [--framing crop200] [--out runs/bench-deployed] [--json out.json]
    .venv/bin/python -m bench.bench_deployed --label after --recalibrate   # those runs' models, calibrated anew
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import bench_parser, dump_json, mean_sd, skip

REPO = Path(__file__).resolve().parents[1]
OTHER = {"crop200": "full", "full": "crop200"}


def trust(ckpt: Any, data: Any, *, tta: bool = False) -> dict[str, Any]:
    """Accuracy, coverage at the checkpoint's 0.95, the lowest class coverage (n >= 30), the flags' shares."""
    from cellnet.metrics import coverage_report
    from cellnet.predict import predict_batch

    out = predict_batch(ckpt, data.images, tta=tta)
    assert out.calibrated is not None
    correct = out.probs.argmax(axis=1) == data.labels
    flagged = out.uncertain()
    cov = coverage_report(out.calibrated.sets, data.labels, list(ckpt.classes))
    big = [v["coverage"] for v in cov["per_class"].values() if v["n"] >= 30]
    answered = ~flagged
    return {
        "accuracy": float(correct.mean()),
        "coverage": cov["coverage"],
        "min_class_coverage_n30": min(big) if big else None,
        "right_flagged": float(flagged[correct].mean()) if correct.any() else None,
        "answered": float(answered.mean()),
        "answered_right": float(correct[answered].mean()) if answered.any() else None,
        "ood_flagged": float(out.calibrated.ood.mean()) if out.calibrated.ood is not None else None,
    }


def search_stats(run_dir: Path) -> dict[str, Any]:
    """What the search did with its budget: trials started, scored at their first rung (ASHA's grace period),
    completed; the budget gate's decision (summary.json's `budget`, None before round 4)."""
    import pandas as pd

    summary = json.loads((run_dir / "summary.json").read_text())
    grace, max_epochs = summary["search"]["grace_period"], summary["search"]["max_epochs"]
    epochs = pd.to_numeric(pd.read_csv(run_dir / "trials.csv")["epochs"], errors="coerce").fillna(0)
    return {
        "trials_started": int(len(epochs)),
        "scored_at_first_rung": int((epochs >= grace).sum()),
        "completed": int((epochs >= max_epochs).sum()),
        "search_s": summary.get("wall_time_s"),
        "budget": summary.get("budget"),
    }


def one_seed(
    space: Path, seed: int, framing: str, out: Path, size: int, recalibrate: bool = False, score_only: bool = False
) -> dict[str, Any]:
    from bench.bench_robustness import scores
    from bench.real_data import report_split
    from cellnet.checkpoint import load_checkpoint
    from cellnet.data.clean import save_npz
    from cellnet.predict import predict_batch

    train, test = report_split(size, framing)
    _, other = report_split(size, OTHER[framing])
    assert list(other.ids) == list(test.ids)
    run_dir = out / "search"
    if (score_only or recalibrate) and not (run_dir / "best").is_dir():
        flag = "--score-only" if score_only else "--recalibrate"
        raise SystemExit(f"error: {flag} needs the searched run {run_dir}; run without it first")
    if score_only:  # the run searched before (its wall time is not measured here)
        cmd, log_name = [], ""
    elif recalibrate:  # the run searched before: its deployed model, calibrated again by this cellnet
        cmd, log_name = [sys.executable, "-m", "search.retrain", str(run_dir), "--recalibrate"], "recalibrate.log"
    else:
        out.mkdir(parents=True, exist_ok=True)
        train_npz = save_npz(train, out / "train.npz")
        cmd = [sys.executable, "-m", "search.run", str(space), "--data", str(train_npz), "--storage", str(run_dir)]
        cmd, log_name = cmd + ["--seed", str(seed)], "search.log"
    start = time.perf_counter()
    rc = 0
    if cmd:
        with open(out / log_name, "w") as log:
            rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = None if score_only else time.perf_counter() - start
    if rc:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {rc}); see {out / log_name}")
    ckpt = load_checkpoint(run_dir / "best")
    summary = json.loads((run_dir / "summary.json").read_text())
    t0 = time.perf_counter()
    predict_batch(ckpt, test.images)
    t1 = time.perf_counter()
    predict_batch(ckpt, test.images, adapt=True)
    t2 = time.perf_counter()
    row = {
        "seed": seed,
        "framing": framing,
        "space": str(space),
        "wall_s": None if recalibrate else wall,
        "recalibrate_s": wall if recalibrate else None,
        "winner": {k: summary["best"].get(k) for k in ("trial_id", "params", "best_epoch", "weights")},
        "trials": summary["trials"],
        "search": search_stats(run_dir),
        "predict_s": t1 - t0,
        "predict_adapt_s": t2 - t1,
        "clean": trust(ckpt, test),
        "clean_tta": trust(ckpt, test, tta=True) if ckpt.calibration and ckpt.calibration.tta else None,
        "other": trust(ckpt, other),
        # a recalibration changes the flag only (same weights, same OOF logits: same temperature and sets)
        "robustness": None if recalibrate else scores(ckpt, test, other, seed, adapt=False),
        "robustness_adapt": None if recalibrate else scores(ckpt, test, other, seed, adapt=True),
    }
    print(json.dumps({k: row[k] for k in ("seed", "wall_s", "winner", "clean", "other")}), flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    def col(keys: tuple[str, ...]) -> str:
        vals = []
        for r in rows:
            v: Any = r
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                vals.append(float(v))
        return mean_sd(vals, 3)

    clean, tta, other, rob, ada = ("clean",), ("clean_tta",), ("other",), ("robustness",), ("robustness_adapt",)
    spec: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = [
        ("wall time of the search (s)", ("wall_s",), None),
        (
            "trials started / scored at their first rung",
            ("search", "trials_started"),
            ("search", "scored_at_first_rung"),
        ),
        ("trials completed / search phase (s)", ("search", "completed"), ("search", "search_s")),
        ("wall time of search.retrain --recalibrate (s)", ("recalibrate_s",), None),
        ("clean accuracy / with TTA", (*clean, "accuracy"), (*tta, "accuracy")),
        ("coverage at 0.95 / lowest class (n>=30)", (*clean, "coverage"), (*clean, "min_class_coverage_n30")),
        ("with --tta: coverage / lowest class", (*tta, "coverage"), (*tta, "min_class_coverage_n30")),
        ("right clean answers flagged", (*clean, "right_flagged"), None),
        ("other framing: accuracy / with --adapt", (*other, "accuracy"), (*ada, "other_framing")),
        ("other framing: answered / of those right", (*other, "answered"), (*other, "answered_right")),
        ("flagged OOD: clean / other framing", (*clean, "ood_flagged"), (*other, "ood_flagged")),
        ("clean / with --adapt", (*rob, "clean"), (*ada, "clean")),
        ("shift suite mean / with --adapt", (*rob, "shift_mean"), (*ada, "shift_mean")),
        ("graded RandAugment / with --adapt", (*rob, "graded_randaugment"), (*ada, "graded_randaugment")),
        ("graded AugMix / with --adapt", (*rob, "graded_augmix"), (*ada, "graded_augmix")),
        ("predict s (held-out set) / with --adapt", ("predict_s",), ("predict_adapt_s",)),
    ]
    spec += [
        (f"family {k[7:]} / with --adapt", (*rob, k), (*ada, k))
        for k in rows[0]["robustness"] or {}
        if k[:7] == "family_"
    ]
    lines = [f"  {label:<44}{col(a) + (' / ' + col(b) if b else ''):>34}" for label, a, b in spec]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (no small mode: ~15 min per seed)")
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "cpu_small.yaml")
    parser.add_argument("--label", default="run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--framing", choices=sorted(OTHER), default="crop200")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-deployed")
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="search nothing: calibrate the runs already in --out/LABEL again (search.retrain --recalibrate) and "
        "score their trust figures (the flag changes; accuracy under the suites does not: not scored again)",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="search nothing: score the runs already in --out/LABEL (e.g. a run whose scoring was interrupted)",
    )
    parser.add_argument(
        "--search-stats",
        action="store_true",
        help="search nothing, score nothing: what the searches already in --out/LABEL did with their budget",
    )
    args = parser.parse_args(argv)
    if skip(args, "bench_deployed", quick="~15 min per seed", real_cells=True):
        return 0
    if args.search_stats:
        for seed in args.seeds:
            print(json.dumps({"seed": seed, **search_stats(args.out / args.label / f"seed{seed}" / "search")}))
        return 0
    rows = [
        one_seed(
            args.space.resolve(),
            s,
            args.framing,
            args.out / args.label / f"seed{s}",
            args.size,
            args.recalibrate,
            args.score_only,
        )
        for s in args.seeds
    ]
    print(
        f"\n# deployed model of {args.space.name} ({args.label}), trained on the design part in {args.framing}, "
        f"scored on the report part, seeds {args.seeds} (mean ± sd)"
    )
    print(table(rows))
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
