"""Can the deployed models' confidence be trusted? Calibration, coverage and flags on held-out real cells.

Reads the duel's runs (bench/bench_real_cells.py, default runs/bench-real-cells/seed<N>/): for each seed, the
calibrated refit (best/) and fold ensemble (best_folds/) of the search, scored on the report part (the duel's
test.npz) -- in the framing they were trained on (`full`: the whole JPEG at 64 px) and the same cells
centre-cropped (`crop200`, the MedMNIST framing, the cell ~1.8x larger: what another lab's crop does). Nothing
here is fitted or chosen.

Reported per deployment (mean over seeds) against issue 14's targets:
    ECE before -> after the temperature (clean)                    target after <= 0.02
    coverage at 0.95, overall and the lowest class with >= 30 test cells   target >= 0.93 each
    mean set size (clean)                                          target <= 1.15
    share of right clean predictions flagged uncertain             target <= 0.10
    other framing: share of wrong predictions flagged uncertain    target >= 0.80
    OOD AUROC, clean vs other framing

    .venv/bin/python -m bench.bench_trust [--runs runs/bench-real-cells] [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd

REPO = Path(__file__).resolve().parents[1]


def figures(ckpt_dir: Path, clean: Any, other: Any) -> dict[str, Any]:
    from cellnet.checkpoint import load_checkpoint
    from cellnet.evaluate import calibration_gain
    from cellnet.metrics import coverage_report, flag_report, ood_auroc
    from cellnet.predict import predict_batch

    ckpt = load_checkpoint(ckpt_dir)
    out: dict[str, Any] = {}
    scores = {}
    for name, data in (("clean", clean), ("other", other)):
        prediction = predict_batch(ckpt, data.images)
        cal = prediction.calibrated
        assert cal is not None and cal.ood is not None
        correct = cal.probs.argmax(axis=1) == data.labels
        cov = coverage_report(cal.sets, data.labels, list(ckpt.classes))
        flags = flag_report(cal.uncertain(), correct)
        big = [v["coverage"] for v in cov["per_class"].values() if v["n"] >= 30]
        out[name] = {
            "accuracy": float(correct.mean()),
            **calibration_gain(prediction.inference.logits, data.labels, ckpt.temperature),
            "coverage": cov["coverage"],
            "min_class_coverage_n30": min(big) if big else None,
            "mean_set_size": cov["mean_set_size"],
            "share_wrong_flagged": flags["share_wrong_flagged"],
            "share_right_flagged": flags["share_right_flagged"],
            "ood_flagged": float(cal.ood.mean()),
        }
        scores[name] = cal.ood_score
    out["ood_auroc"] = ood_auroc(scores["clean"], scores["other"])
    out["temperature"] = ckpt.temperature
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (needs the duel's runs)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-real-cells")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if args.quick or not args.runs.is_dir():
        print(f"bench_trust: skipped (needs the duel's runs in {args.runs}: python -m bench.bench_real_cells)")
        return 0
    from bench.real_data import load_pbc
    from cellnet.data import load

    crops = load_pbc(64, "crop200")
    index = {i: k for k, i in enumerate(crops.ids)}
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        base = args.runs / f"seed{seed}"
        clean = load(str(base / "test.npz"), 64)
        other = crops.subset(np.array([index[str(i)] for i in clean.ids]))
        assert list(other.labels) == list(clean.labels)
        for deployment in ("best", "best_folds"):
            path = base / "search" / deployment
            if path.is_dir():
                row = {"seed": seed, "deployment": deployment, **figures(path, clean, other)}
                rows.append(row)
                print(json.dumps(row), flush=True)

    def mean(dep: str, *keys: str) -> str:
        vals = []
        for r in rows:
            if r["deployment"] == dep:
                v: Any = r
                for k in keys:
                    v = v[k]
                vals.append(v)
        return mean_sd([v for v in vals if v is not None], 3)

    lines = [
        ("accuracy, clean / other framing", ("clean", "accuracy"), ("other", "accuracy")),
        ("ECE before -> after temperature (clean)", ("clean", "ece_uncalibrated"), ("clean", "ece_calibrated")),
        ("coverage at 0.95, overall / lowest class n>=30", ("clean", "coverage"), ("clean", "min_class_coverage_n30")),
        ("mean set size, clean / other framing", ("clean", "mean_set_size"), ("other", "mean_set_size")),
        (
            "right predictions flagged, clean / other",
            ("clean", "share_right_flagged"),
            ("other", "share_right_flagged"),
        ),
        (
            "wrong predictions flagged, clean / other",
            ("clean", "share_wrong_flagged"),
            ("other", "share_wrong_flagged"),
        ),
        ("OOD flagged, clean / other framing", ("clean", "ood_flagged"), ("other", "ood_flagged")),
    ]
    print(f"\n# trust on held-out pbc-sample cells, seeds {args.seeds} (mean ± sd)")
    for dep in ("best", "best_folds"):
        if not any(r["deployment"] == dep for r in rows):
            continue
        print(f"\n{dep}:")
        for label, a, b in lines:
            print(f"  {label:<50}{mean(dep, *a):>18}{mean(dep, *b):>18}")
        print(f"  {'OOD AUROC, clean vs other framing':<50}{mean(dep, 'ood_auroc'):>18}")
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
