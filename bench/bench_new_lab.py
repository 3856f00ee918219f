"""Meet a new lab: zero-shot, `--canonicalize`, `--adapt`, both, and `cellnet finetune` with 5 and 10 labelled cells
per class -- on real cells of pbc-sample shown another way and on two other labs' white cells.

Two modes (bench/real_data.py's rules: choices on the design part and cellavision, reports on the report part and
tecom):

  --design   for choices. Recipe `--recipe` (bench_robustness's lite0_ra: the recommended space's first trial)
             trained on design splits `--seeds` (crop200), calibrated on half of each split's validation cells
             (temperature, sets, OOD with the framing check, the training cells' colour). Groups: the other half of
             the validation cells centre-cropped, full-frame, restained (suite's stain_macenko, color_planckian),
             full-frame and restained; and cellavision (the development lab). Finetune on cellavision: 5 labelled
             cells per class of the classes with >= 12 cells, scored on the rest (`--ft-sweep`: 10 a class, its
             learning rate, steps per cell and canonicalize-first changed one at a time, two label draws each).
  --runs DIR --finetune-only LAB   finetune alone from those deployed models (cellavision: choices, `--ft-sweep`
             the schedules above; tecom: the report's finetune rows).
  (default)  for reports. The deployed models of bench_deployed runs (`--runs DIR`: DIR/seed<S>/search/best, each
             searched on the whole design part) on the report part centre-cropped and full-frame, and on tecom (the
             report lab); finetune on tecom's classes with >= 20 cells, 5 and 10 labelled per class, 5 seeds each,
             scored on the rest of those classes.

Per group and way: accuracy, balanced accuracy, share answered (not `uncertain`), how many answers and the share of
them right, coverage of the 95% sets (all cells; answered), OOD-flagged share, the canonicalization chosen, seconds
(and its ratio to a plain predict of the same group). Groups are read at 2x the model's size for --canonicalize (as
`cellnet predict` reads them), at its size otherwise.

    .venv/bin/python -m bench.bench_new_lab --runs runs/bench-deployed/after [--seeds 0 1 2] [--ft-seeds 0 1 2 3 4]
    .venv/bin/python -m bench.bench_new_lab --design [--seeds 0 1] [--recipe lite0_ra] [--json out.json]
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd, skip

WAYS = ("zero-shot", "canonicalize", "adapt", "canonicalize+adapt")
REPORT_LAB, DESIGN_LAB = "tecom", "cellavision"
MIN_CELLS = {DESIGN_LAB: 12, REPORT_LAB: 20}  # the classes a lab's finetune labels cells of


def lab_cells(lab: str, size: int) -> Any:
    """One of ../shared/data/other-labs' labs as a cellnet folder SOURCE at `size` px (class names canonical)."""
    from bench.real_data import OTHER_LABS
    from cellnet.data import load

    return load(str(OTHER_LABS / lab), image_size=size)


def figures(
    ckpt: Any, images: np.ndarray, labels: np.ndarray, way: str, seconds_plain: float | None, canonical: Any = None
) -> dict:
    """One way of predicting one group: what a user gets. `canonical`: a Canonicalization to apply (a finetune's)."""
    from sklearn.metrics import balanced_accuracy_score

    from cellnet.predict import predict_batch

    start = time.perf_counter()
    canonicalize = canonical if canonical is not None else (way.startswith("canonicalize"))
    out = predict_batch(ckpt, images, canonicalize=canonicalize, adapt="adapt" in way and len(images) >= 64)
    seconds = time.perf_counter() - start
    right = out.probs.argmax(axis=1) == labels
    answered = ~out.uncertain()
    row: dict[str, Any] = {
        "way": way,
        "n": int(len(labels)),
        "accuracy": float(right.mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, out.probs.argmax(axis=1))),
        "answered": float(answered.mean()),
        "answers": int(answered.sum()),
        "answers_right": float(right[answered].mean()) if answered.any() else None,
        "seconds": seconds,
        "time_ratio": seconds / seconds_plain if seconds_plain else None,
    }
    if out.calibrated is not None:
        covered = out.calibrated.sets[np.arange(len(labels)), labels]
        row["coverage"] = float(covered.mean())
        row["coverage_answered"] = float(covered[answered].mean()) if answered.any() else None
        row["ood_flagged"] = float(out.calibrated.ood.mean()) if out.calibrated.ood is not None else None
        ood = ckpt.calibration.ood if ckpt.calibration is not None else None
        if ood is not None and ood.framing_zooms and out.inference.features is not None:  # which part flags
            row["framing_fires"] = float((ood.framing_margin(out.inference.features) > 0).mean())
        row["set_of_one"] = float((out.calibrated.sets.sum(axis=1) == 1).mean())
    if out.canonicalization is not None:
        row["zoom"], row["colour_matched"] = out.canonicalization.zoom, out.canonicalization.colour_matched
    return row


def group_rows(ckpt: Any, name: str, small: np.ndarray, large: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Every way on one group: `small` at the model's size, `large` at 2x (what --canonicalize reads)."""
    plain = figures(ckpt, small, labels, "zero-shot", None)
    rows = [plain]
    for way in WAYS[1:]:
        rows.append(figures(ckpt, large if "canonicalize" in way else small, labels, way, plain["seconds"]))
    for row in rows:
        row["group"] = name
        show(row)
    return rows


def show(row: dict[str, Any]) -> None:
    def f(key: str) -> str:
        v = row.get(key)
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    chosen = f" zoom {row['zoom']:g} colour {row['colour_matched']}" if "zoom" in row else ""
    print(
        f"{row.get('seed', '')!s:>3} {row['group']:<22} {row['way']:<20} acc {f('accuracy')} "
        f"bal {f('balanced_accuracy')} answered {f('answered')} ({row['answers']}) right {f('answers_right')} "
        f"coverage {f('coverage')} OOD {f('ood_flagged')} (framing {f('framing_fires')}) sets of one "
        f"{f('set_of_one')} {row['seconds']:.1f}s x{f('time_ratio')}{chosen}",
        flush=True,
    )


def labelled_split(labels: np.ndarray, per_class: int, min_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, rest) indices: `per_class` seeded cells of each class with at least `min_cells`, and the other
    cells of those classes."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    chosen, rest = [], []
    for c in np.flatnonzero(counts >= min_cells):
        idx = rng.permutation(np.flatnonzero(labels == c))
        chosen.append(idx[:per_class])
        rest.append(idx[per_class:])
    return np.sort(np.concatenate(chosen)), np.sort(np.concatenate(rest))


def finetune_rows(
    parent: Path,
    cells: Any,
    labels: np.ndarray,
    per_class: int,
    min_cells: int,
    seeds: list[int],
    name: str,
    **how: Any,
) -> list[dict]:
    """`cellnet finetune` on `per_class` labelled cells per class (classes with >= `min_cells`), scored on the rest.
    `how`: finetune's keyword arguments (lr, steps_per_cell, canonicalize: `cells` then at 2x the model's size)."""
    from cellnet.checkpoint import load_checkpoint
    from cellnet.data.dataset import CellData
    from cellnet.finetune import finetune

    rows = []
    label = f"finetune {per_class}" + "".join(f" {k}={v}" for k, v in how.items())
    for seed in seeds:
        pick, rest = labelled_split(labels, per_class, min_cells, seed)
        classes = load_checkpoint(parent).classes
        labelled = CellData(cells.images[pick], labels[pick], classes, cells.ids[pick])
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune(parent, labelled, Path(tmp) / "ft", seed=seed, show_progress=False, source=name, **how)
            ckpt = load_checkpoint(result.path)
            row = figures(ckpt, cells.images[rest], labels[rest], label, None, canonical=result.canonicalization)
        row |= {"group": name, "seed": seed, "finetune_seconds": result.seconds, "labelled": int(len(pick))}
        show(row)
        print(f"    finetune {result.seconds:.0f} s on {len(pick)} cells", flush=True)
        rows.append(row)
    return rows


def as_model_labels(cells: Any, classes: tuple[str, ...]) -> np.ndarray:
    from cellnet.evaluate import labels_for

    return labels_for(cells, classes)


# ---------------------------------------------------------------------------------------------------------------
# Report mode: the deployed models of bench_deployed runs


def finetune_only(
    runs: Path, seeds: list[int], ft_seeds: list[int], size: int, lab_name: str, sweep: bool
) -> list[dict]:
    """Finetune alone from the deployed models (`--finetune-only LAB`): 5 and 10 labelled cells a class of LAB's
    classes with MIN_CELLS, scored on the rest (cellavision: for choices; tecom: the report's finetune rows).
    `sweep`: ten a class, each of FT_SWEEP's schedules instead."""
    from cellnet.checkpoint import load_checkpoint

    lab = lab_cells(lab_name, size)
    lab2 = lab_cells(lab_name, 2 * size) if sweep else lab
    rows: list[dict] = []
    for seed in seeds:
        best = runs / f"seed{seed}" / "search" / "best"
        y = as_model_labels(lab, load_checkpoint(best).classes)
        ways = [(10, how) for how in FT_SWEEP] if sweep else [(5, {}), (10, {})]
        for per_class, how in ways:
            cells = lab2 if how.get("canonicalize") else lab
            ft = finetune_rows(best, cells, y, per_class, MIN_CELLS[lab_name], ft_seeds, lab_name, **how)
            rows += [{**r, "model_seed": seed} for r in ft]
    return rows


def report(runs: Path, seeds: list[int], ft_seeds: list[int], size: int) -> list[dict]:
    from bench.real_data import report_split
    from cellnet.checkpoint import load_checkpoint

    _, crop = report_split(size, "crop200")
    _, full = report_split(size, "full")
    _, crop2 = report_split(2 * size, "crop200")
    _, full2 = report_split(2 * size, "full")
    assert list(crop.ids) == list(full.ids) == list(crop2.ids) == list(full2.ids)
    tecom, tecom2 = lab_cells(REPORT_LAB, size), lab_cells(REPORT_LAB, 2 * size)
    rows: list[dict] = []
    for seed in seeds:
        best = runs / f"seed{seed}" / "search" / "best"
        ckpt = load_checkpoint(best)
        y = as_model_labels(tecom, ckpt.classes)
        for row in (
            group_rows(ckpt, "report part crop200", crop.images, crop2.images, crop.labels)
            + group_rows(ckpt, "report part full-frame", full.images, full2.images, full.labels)
            + group_rows(ckpt, REPORT_LAB, tecom.images, tecom2.images, y)
        ):
            rows.append({**row, "seed": seed})
        for per_class in (5, 10):
            ft = finetune_rows(best, tecom, y, per_class, MIN_CELLS[REPORT_LAB], ft_seeds, REPORT_LAB)
            rows += [{**r, "model_seed": seed} for r in ft]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Design mode: choices


def calibrated_design_model(recipe: str, seed: int, epochs: int, size: int) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(checkpoint calibrated on half of design split `seed`'s validation cells, the validation data, the indices
    of the other half (scored), the training images) for `recipe` (bench_robustness)."""
    from bench.bench_robustness import design_model
    from cellnet.calibrate import fit_calibration
    from cellnet.colour import colour_stats
    from cellnet.constants import DEFAULT_FEATURES, FRAMING_ZOOMS
    from cellnet.data import holdout_split
    from cellnet.predict import infer
    from cellnet.shifts import zoomed_copies

    ckpt, train, val, _ = design_model(recipe, seed, epochs, size)
    cal, scored = holdout_split(val.labels, val.groups, 0.5, seed, classes=val.classes)
    out = infer(ckpt, val.images[cal], features=True, feature_kind=DEFAULT_FEATURES)
    copies = zoomed_copies(val.images[cal], FRAMING_ZOOMS)
    zoomed = np.stack([infer(ckpt, c, features=True, feature_kind=DEFAULT_FEATURES).features for c in copies])
    calibration = fit_calibration(
        out.logits, val.labels[cal], len(train.classes), out.features, feature_kind=DEFAULT_FEATURES,
        framing_features=zoomed, framing_zooms=FRAMING_ZOOMS, precision=out.precision,
    )  # fmt: skip
    calibration = dataclasses.replace(calibration, colour=colour_stats(train.images))
    return dataclasses.replace(ckpt, calibration=calibration), val, scored, train.images


FT_SWEEP = [  # one change at a time from finetune's defaults (1e-3, 2 steps a cell, the cells as they are)
    {"lr": 1e-3, "steps_per_cell": 2, "canonicalize": False},
    {"lr": 3e-4, "steps_per_cell": 2, "canonicalize": False},
    {"lr": 1e-3, "steps_per_cell": 4, "canonicalize": False},
    {"lr": 1e-3, "steps_per_cell": 2, "canonicalize": True},
]


def design(recipe: str, seeds: list[int], epochs: int, size: int, finetune: bool, sweep: bool) -> list[dict]:
    from bench.real_data import design_split
    from cellnet.checkpoint import save_checkpoint
    from cellnet.shifts import apply_shift

    rows: list[dict] = []
    lab, lab2 = lab_cells(DESIGN_LAB, size), lab_cells(DESIGN_LAB, 2 * size)
    for seed in seeds:
        ckpt, val, scored, _ = calibrated_design_model(recipe, seed, epochs, size)
        big = {f: design_split(2 * size, seed=seed, framing=f)[1] for f in ("crop200", "full")}
        small_full = design_split(size, seed=seed, framing="full")[1]
        assert list(val.ids) == list(small_full.ids) == list(big["crop200"].ids) == list(big["full"].ids)
        labels = val.labels[scored]
        groups = {
            "crop200": (val.images[scored], big["crop200"].images[scored]),
            "full-frame": (small_full.images[scored], big["full"].images[scored]),
        }
        for shift in ("stain_macenko", "color_planckian"):
            groups[shift] = tuple(apply_shift(shift, x, seed) for x in groups["crop200"])  # type: ignore[assignment]
        groups["full-frame stain_macenko"] = tuple(apply_shift("stain_macenko", x, seed) for x in groups["full-frame"])  # type: ignore[assignment]
        for name, (small, large) in groups.items():
            rows += [{**r, "seed": seed} for r in group_rows(ckpt, name, small, large, labels)]
        y = as_model_labels(lab, ckpt.classes)
        rows += [{**r, "seed": seed} for r in group_rows(ckpt, DESIGN_LAB, lab.images, lab2.images, y)]
        if finetune:
            with tempfile.TemporaryDirectory() as tmp:
                parent = save_checkpoint(
                    Path(tmp) / "parent", ckpt.model, config=ckpt.config, classes=ckpt.classes,
                    image_size=ckpt.image_size, mean=ckpt.mean, std=ckpt.std, metrics={}, calibration=ckpt.calibration,
                )  # fmt: skip
                if not sweep:
                    rows += finetune_rows(parent, lab, y, 5, MIN_CELLS[DESIGN_LAB], [seed], DESIGN_LAB)
                for how in FT_SWEEP if sweep else []:  # ten a class: --canonicalize chooses on >= 32 cells
                    cells = lab2 if how["canonicalize"] else lab
                    draws = [seed, seed + 100]
                    rows += finetune_rows(parent, cells, y, 10, MIN_CELLS[DESIGN_LAB], draws, DESIGN_LAB, **how)
    return rows


def summary(rows: list[dict]) -> None:
    print("\n# mean ± sd over seeds")
    for group in dict.fromkeys(r["group"] for r in rows):
        for way in dict.fromkeys(r["way"] for r in rows if r["group"] == group):
            mine = [r for r in rows if r["group"] == group and r["way"] == way]

            def col(key: str, rs: list[dict] = mine) -> str:
                return mean_sd([r[key] for r in rs if r.get(key) is not None], 3)

            zooms = sorted({r["zoom"] for r in mine if "zoom" in r})
            extra = f" | zoom {zooms}" if zooms else ""
            if any("finetune_seconds" in r for r in mine):
                extra += f" | finetune s {col('finetune_seconds')}"
            print(
                f"{group:<24} {way:<20} acc {col('accuracy')} | bal {col('balanced_accuracy')} | answered "
                f"{col('answered')} ({sum(r['answers'] for r in mine)} answers) right {col('answers_right')} | "
                f"coverage {col('coverage')} | OOD {col('ood_flagged')} | x{col('time_ratio')}{extra}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (no small mode: ~15 min per deployed model)")
    parser.add_argument("--design", action="store_true", help="choices: design splits and cellavision")
    parser.add_argument("--runs", type=Path, help="bench_deployed runs: DIR/seed<S>/search/best (report mode)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ft-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="finetune's label draws")
    parser.add_argument("--recipe", default="lite0_ra")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--ft-sweep", action="store_true", help="finetune's lr, steps, canonicalize")
    parser.add_argument("--finetune-only", choices=sorted(MIN_CELLS), help="with --runs: finetune on this lab only")
    args = parser.parse_args(argv)
    if skip(args, "bench_new_lab", quick="~15 min per model", real_cells=True):
        return 0
    if args.design:
        rows = design(args.recipe, args.seeds, args.epochs, args.size, not args.no_finetune, args.ft_sweep)
    elif args.runs is None:
        parser.error("--runs DIR (bench_deployed's runs) or --design")
    elif args.finetune_only:
        rows = finetune_only(args.runs, args.seeds, args.ft_seeds, args.size, args.finetune_only, args.ft_sweep)
    else:
        rows = report(args.runs, args.seeds, [] if args.no_finetune else args.ft_seeds, args.size)
    summary(rows)
    dump_json(args.json, rows)
    print(json.dumps({"rows": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
