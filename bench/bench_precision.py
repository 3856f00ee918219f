"""bf16 where it pays (decision 0014): fp32 against bf16 autocast on this CPU, side by side in one run.

On real cells (../shared/data/pbc-sample, bench/real_data.py), a model of the recipe lite0_ra (bench/bench_robustness.py
`design_model`: EfficientNet-Lite0 fine-tuned from ImageNet at 96 px, RandAugment) is trained on design split 0's
training part; its validation cells are split by group into a calibration half and a scoring half. Then, in fp32 and
in bf16:

    predict       images/s of `cellnet.predict.infer` over 2,048 cells (the design part's, repeated to that many),
                  2 threads, interleaved repeats (fp32, bf16, fp32, ...), the median of each
    calibration   fitted on the calibration half from outputs computed in that precision (`fit_calibration`:
                  temperature, 95% Mondrian sets, OOD statistics with the framing check, as a search's) and applied in
                  the same precision to the scoring half (`predict_batch`): coverage of the 95% sets, ECE after
                  temperature, share flagged OOD; printed as bf16 minus fp32 (targets: coverage within 0.01, ECE
                  within 0.005)
    training      images/s of a training step (`cellnet.train_precision.measure`: a random batch of 64 at 96 px,
                  AdamW, 2 threads) for tf_efficientnet_lite0, tf_efficientnet_lite1 and resnet18, interleaved
                  rounds, the median of each -- what `train.precision: auto` decides from (a shorter probe)

Needs a CPU with bf16 instructions (`cellnet.precision.cpu_has_bf16`; $CELLNET_BF16=0 turns it off): elsewhere bf16
is emulated and its timings mean nothing, so it skips. `--quick`: synthetic cells (600 at 64 px), the recipe for
1 epoch (pretrained where the weights are installed), 512 images timed, training steps of 16 images, fewer repeats:
a few minutes, and it checks the script, not the numbers.

    .venv/bin/python -m bench.bench_precision [--quick] [--epochs 6] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, skip
from cellnet.precision import BF16_ENV

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "resnet18")
PRECISIONS = ("fp32", "bf16")
THREADS = 2
TARGETS = {"coverage": 0.01, "ece": 0.005}  # |bf16 - fp32| the decision asks for


def model_and_cells(quick: bool, epochs: int) -> tuple[Any, Any, Any]:
    """(in-memory checkpoint, its training cells, its validation cells): lite0_ra on design split 0 of the real
    cells, or (quick) on synthetic ones."""
    from bench.bench_robustness import design_model, recipe_config
    from cellnet.checkpoint import in_memory
    from cellnet.data import holdout_split
    from cellnet.data.synthetic import generate
    from cellnet.train import fit

    if not quick:
        ckpt, train, val, _ = design_model("lite0_ra", 0, epochs)
        return ckpt, train, val
    data = generate(n=600, image_size=64, seed=0)
    tr, va = holdout_split(data.labels, data.groups, 0.4, 0, classes=data.classes)
    train, val = data.subset(tr), data.subset(va)
    config = dataclasses.replace(recipe_config("lite0_ra", 0, 1), epochs=1, pretrained="auto")
    result = fit(config, train, None, early_stopping=False)
    return in_memory(result.model, result.config, train.classes, train.image_size), train, val


def predict_speed(ckpt: Any, images: np.ndarray, repeats: int) -> dict[str, float]:
    """Median images/s of `infer` over `images` per precision, at THREADS threads, repeats interleaved."""
    import torch

    from cellnet.predict import infer

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for precision in PRECISIONS:  # warm-up: oneDNN's kernels for each precision
            infer(ckpt, images[:256], precision=precision)
        for _ in range(repeats):
            for precision, taken in seconds.items():
                t0 = time.perf_counter()
                infer(ckpt, images, precision=precision)
                taken.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return {p: len(images) / statistics.median(s) for p, s in seconds.items()}


def calibration_figures(ckpt: Any, val: Any, precision: str, seed: int = 0) -> dict[str, float]:
    """The calibration fitted in `precision` on one half of `val`, applied in it to the other half."""
    from cellnet.calibrate import fit_calibration
    from cellnet.constants import FRAMING_ZOOMS
    from cellnet.data import holdout_split
    from cellnet.evaluate import expected_calibration_error
    from cellnet.metrics import coverage_report
    from cellnet.predict import infer, predict_batch
    from cellnet.shifts import zoomed_copies

    cal, scored = holdout_split(val.labels, val.groups, 0.5, seed, classes=val.classes)
    out = infer(ckpt, val.images[cal], features=True, precision=precision)
    copies = zoomed_copies(val.images[cal], FRAMING_ZOOMS)
    framing = np.stack([infer(ckpt, c, features=True, feature_kind=out.feature_kind, precision=precision).features
                        for c in copies])  # fmt: skip
    calibration = fit_calibration(
        out.logits, val.labels[cal], len(val.classes), out.features, feature_kind=out.feature_kind,
        framing_features=framing, framing_zooms=FRAMING_ZOOMS, coverage=0.95, precision=out.precision,
    )  # fmt: skip
    pred = predict_batch(dataclasses.replace(ckpt, calibration=calibration), val.images[scored])
    assert pred.calibrated is not None and pred.calibrated.ood is not None
    assert pred.inference.precision == precision, (pred.inference.precision, precision)
    labels = val.labels[scored]
    right = pred.probs.argmax(axis=1) == labels
    return {
        "accuracy": float(right.mean()),
        "coverage": float(coverage_report(pred.calibrated.sets, labels, val.classes)["coverage"]),
        "ece": expected_calibration_error(pred.probs.max(axis=1), right)["ece"],
        "ood_flagged": float(pred.calibrated.ood.mean()),
        "temperature": calibration.temperature,
        "scored": int(len(scored)),
    }


def deployed_figures(run: Path, workdir: Path) -> dict[str, dict[str, float]]:
    """A search's deployed refit calibrated twice by `search.retrain --recalibrate` on copies of `run` -- once with
    bf16 turned off (fp32) and once in bf16 -- each scored in its own precision on the report part (~750 cells of
    bench/real_data.py no choice saw): the calibration as it is deployed (out-of-fold, ~1,800 cells), not a half of
    a validation split."""
    import os
    import shutil
    import subprocess
    import sys

    from bench.real_data import report_split
    from cellnet.checkpoint import load_checkpoint
    from cellnet.evaluate import expected_calibration_error
    from cellnet.metrics import coverage_report
    from cellnet.predict import predict_batch

    _, report = report_split(64, "crop200")
    out = {}
    for precision, flag in (("fp32", "0"), ("bf16", "1")):
        copy = workdir / f"{run.name}-{precision}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tune", "tensorboard", "retrain"))
        env = {**os.environ, BF16_ENV: flag}
        subprocess.check_call([sys.executable, "-m", "search.retrain", str(copy), "--recalibrate"], env=env)
        os.environ[BF16_ENV] = flag
        try:
            ckpt = load_checkpoint(copy / "best")
            pred = predict_batch(ckpt, report.images)
        finally:
            os.environ.pop(BF16_ENV, None)
        assert pred.calibrated is not None and pred.calibrated.ood is not None
        right = pred.probs.argmax(axis=1) == report.labels
        out[precision] = {
            "accuracy": float(right.mean()),
            "coverage": float(coverage_report(pred.calibrated.sets, report.labels, report.classes)["coverage"]),
            "ece": expected_calibration_error(pred.probs.max(axis=1), right)["ece"],
            "ood_flagged": float(pred.calibrated.ood.mean()),
            "temperature": ckpt.calibration.temperature if ckpt.calibration else float("nan"),
            "scored": int(len(report)),
        }
    return out


def training_speed(backbone: str, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Median training images/s of `backbone` at 96 px, `batch` images a step, THREADS threads, per precision."""
    from cellnet.config import TrainConfig
    from cellnet.train_precision import measure

    per_s = measure(TrainConfig(backbone=backbone, batch_size=batch), 96, threads=THREADS, steps=steps, rounds=rounds)
    return {p: statistics.median(v) for p, v in per_s.items()}


def print_differences(figures: dict[str, dict[str, float]]) -> None:
    for key in ("accuracy", "coverage", "ece", "ood_flagged", "temperature"):
        a, b = figures["fp32"][key], figures["bf16"][key]
        target = f"  (target: within {TARGETS[key]})" if key in TARGETS else ""
        print(f"  {key:<12} fp32 {a:.4f}  bf16 {b:.4f}  bf16 - fp32 {b - a:+.4f}{target}")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, quick_help="synthetic cells, 1 epoch, fewer repeats (a few minutes)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of lite0_ra on the real cells")
    parser.add_argument("--repeats", type=int, default=5, help="timed predict passes and training rounds each way")
    parser.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        help="only the deployed calibration: these search runs (e.g. bench_deployed's seed<S>/search) recalibrated in "
        "fp32 and in bf16 on copies, scored on the report part",
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs") / "bench-precision")
    args = parser.parse_args(argv)
    from cellnet.precision import cpu_has_bf16  # torch: once the arguments are read

    if not cpu_has_bf16():
        print(f"bench_precision: skipped, this CPU has no bf16 instructions (or ${BF16_ENV}=0): bf16 would be emulated")
        return 0
    if not args.quick and skip(args, "bench_precision", real_cells=True):
        return 0
    if args.runs:
        rows = {}
        for run in args.runs:
            rows[str(run)] = figures = deployed_figures(run.resolve(), args.workdir.resolve())
            n = figures["fp32"]["scored"]
            print(f"\n# {run}: deployed refit recalibrated each way, scored on the report part ({n} cells)")
            print_differences(figures)
        dump_json(args.json, rows)
        return 0
    repeats = 2 if args.quick else args.repeats
    ckpt, train, val = model_and_cells(args.quick, args.epochs)
    where = "synthetic cells (--quick)" if args.quick else "design split 0 of the real cells"
    images = np.resize(train.images, (512 if args.quick else 2048, *train.images.shape[1:]))
    speed = predict_speed(ckpt, images, repeats)
    print(f"\n# lite0_ra on {where}; {THREADS} threads")
    print(
        f"predict    {len(images)} images: fp32 {speed['fp32']:.0f} images/s, bf16 {speed['bf16']:.0f} "
        f"({speed['bf16'] / speed['fp32']:.2f}x)"
    )
    figures = {p: calibration_figures(ckpt, val, p) for p in PRECISIONS}
    scored = figures["fp32"]["scored"]
    print(f"calibration fitted on {len(val) - scored} of {len(val)} validation cells, applied to the other {scored}:")
    print_differences(figures)
    training, batch = {}, 16 if args.quick else 64
    for backbone in BACKBONES:
        training[backbone] = training_speed(backbone, batch, 1 if args.quick else 3, repeats)
        t = training[backbone]
        print(
            f"training   {backbone} at 96 px, batch {batch}: fp32 {t['fp32']:.0f} images/s, bf16 {t['bf16']:.0f} "
            f"({t['bf16'] / t['fp32']:.2f}x)",
            flush=True,
        )
    dump_json(
        args.json,
        {"data": where, "threads": THREADS, "predict": speed, "calibration": figures, "training": training},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
