"""The duel: does the recommended search beat a plain hand-written script on real cells at equal wall-clock time?

On ../shared/data/pbc-sample (2,579 PBC JPEGs) at 64 px, for each seed (the search's; bench/real_data.py):

    design part ──> python -m search.run SPACE (retrain.mode both: the refit in best/, the fold ensemble in best_folds/)
       │        total wall W (data, search, out-of-fold calibration, refit), all measured
       └──> bench/plain_timm.py: resnet18 from scratch, AdamW 1e-3 / wd 0.05, one-cycle, flips, batch 64, given as
            many epochs as fit in W
    report part ──> each model scored once (accuracy, macro F1); nothing of it was seen by anything that trained or
                    chose

Both deployments come from the same run and are compared with the same plain run at W (the whole run, refit
included). The fold ensemble needs no retrain: it was deployable at W_folds < W (also reported), so the comparison
is conservative for it. Mean ± sd over seeds of test accuracy and macro-F1 for: plain script, refit winner, fold
ensemble. `--set search.time_budget_s=... --set search.max_epochs=...` make the smaller runs of the second table.

`--design` instead runs the same duel inside design split `seed` (a grouped 80/20 holdout of the design part as the
"test"): what spaces and settings are chosen on, so that no choice looks at the report part.

    .venv/bin/python -m bench.bench_real_cells [--space spaces/cpu_small.yaml] [--seeds 0 1 2] [--out DIR]
        [--design] [--json out.json] [--set key=value ...]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import bench_parser, dump_json, mean_sd, skip

REPO = Path(__file__).resolve().parents[1]
BENCH_OUT = REPO / "runs" / "bench-real-cells"
MARKER = ".cellnet-bench"  # an --out folder this benchmark made, and may therefore empty again


def prepare_out(out: Path) -> None:
    """Create `out`, or reuse one this benchmark made before; never delete a folder it did not make."""
    import shutil

    if out.exists():
        if not (out / MARKER).is_file():
            raise SystemExit(f"error: --out {out} exists and was not made by this benchmark; choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by bench/bench_real_cells.py\n")


def own_ray_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def run(cmd: list[str], log: Path) -> float:
    """Run `cmd` with its output in `log`; its wall time (a failure is an error naming the log)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=own_ray_env())
    if rc != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed (exit {rc}); see {log}")
    return time.perf_counter() - start


def score(checkpoint: Path, test_npz: Path) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    from cellnet.checkpoint import load_checkpoint
    from cellnet.data import load
    from cellnet.predict import predict_images

    ckpt = load_checkpoint(checkpoint)
    test = load(str(test_npz), image_size=ckpt.image_size)
    pred = predict_images(ckpt, test.images).argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(test.labels, pred)),
        "macro_f1": float(f1_score(test.labels, pred, average="macro")),
    }


def space_with(space: Path, sets: list[str], out: Path) -> Path:
    """The space YAML with `--set section.key=value` overrides (YAML values), written to `out`."""
    raw = yaml.safe_load(space.read_text())
    raw.setdefault("retrain", {})["mode"] = "both"
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    path = out / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def duel(seed: int, space: Path, out: Path, *, design: bool, image_size: int) -> dict[str, Any]:
    """One seed: search (both deployments) vs the plain script at the search's wall time, trained on the design part
    and scored on the report part (`design`: a design split's 80/20 holdout instead)."""
    from bench.real_data import design_split, report_split
    from cellnet.data.clean import save_npz

    train, test = design_split(image_size, seed=seed) if design else report_split(image_size)
    out.mkdir(parents=True, exist_ok=True)
    train_npz, test_npz = save_npz(train, out / "train.npz"), save_npz(test, out / "test.npz")
    py = sys.executable
    run_dir = out / "search"
    wall = run(
        [py, "-m", "search.run", str(space), "--data", str(train_npz), "--storage", str(run_dir), "--seed", str(seed)],
        out / "search.log",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    folds_wall = float(summary["folds"]["wall_s"])  # the search's wall when best_folds/ was saved (no retrain yet)
    res = out / "plain.json"
    plain_wall = run(
        [py, "-m", "bench.plain_timm", "--train", str(train_npz), "--test", str(test_npz)]
        + ["--budget-s", f"{wall:.0f}", "--seed", str(seed), "--json", str(res)],
        out / "plain.log",
    )
    plain = json.loads(res.read_text())
    row = {
        "seed": seed,
        "n_train": len(train),
        "n_test": len(test),
        "search_wall_s": wall,
        "folds_wall_s": folds_wall,
        "plain_wall_s": plain_wall,  # its own, measured: given the search's wall as its budget
        "refit": score(run_dir / "best", test_npz),
        "folds": score(run_dir / "best_folds", test_npz),
        "plain": plain,
        "winner": {k: summary["best"].get(k) for k in ("trial_id", "params", "best_epoch")},
        "cv_accuracy": summary["best"]["cv"]["cv_accuracy"],
        "oof_accuracy": summary.get("folds", {}).get("oof_accuracy"),
        "trials": summary["trials"],
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'model':<34}{'wall s (mean)':>14}{'test accuracy':>22}{'test macro F1':>22}",
    ]
    entries = [
        ("plain script (given W)", "plain", "plain_wall_s"),
        ("search, refit winner (best/)", "refit", "search_wall_s"),
        ("search, fold ensemble (best_folds/)", "folds", "folds_wall_s"),
    ]
    for label, key, wall in entries:
        acc = [r[key]["accuracy"] for r in rows]
        f1 = [r[key]["macro_f1"] for r in rows]
        w = statistics.mean(r.get(wall, float("nan")) for r in rows)
        lines.append(f"{label:<34}{w:>14.0f}{mean_sd(acc):>22}{mean_sd(f1):>22}")
    gap_refit = [r["refit"]["accuracy"] - r["plain"]["accuracy"] for r in rows]
    gap_folds = [r["folds"]["accuracy"] - r["plain"]["accuracy"] for r in rows]
    lines.append(f"refit - plain: {mean_sd(gap_refit)}   fold ensemble - plain: {mean_sd(gap_folds)}   (target +0.01)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "cpu_small.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--design", action="store_true", help="duel inside design split SEED (for choices)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the space")
    parser.add_argument("--out", type=Path, default=BENCH_OUT)
    args = parser.parse_args(argv)
    if skip(args, "bench_real_cells", quick="~15-40 min per seed", real_cells=True):
        return 0
    prepare_out(args.out)
    space = space_with(args.space, args.set, args.out)
    rows = [duel(s, space, args.out / f"seed{s}", design=args.design, image_size=args.image_size) for s in args.seeds]
    what = "design holdout" if args.design else "report part"
    print(
        f"\n# duel on pbc-sample at {args.image_size}px, {args.space.name} {' '.join(args.set)}, "
        f"seeds {args.seeds}, {what}"
    )
    print(table(rows))
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
