"""Does the search search on a CPU? Trials judged in the budget, each at the machine's speed (issue 33).

Subcommands, each printing figures measured side by side in one run (this machine is shared and noisy):

  threads      fold-parallel (2 processes x 1 thread, what a trial runs) against fold-sequential (1 process x 2
               threads, the folds one after the other) for the space's backbones at 96 px: training images/s of
               both folds together.
  rung-order   on design split `--seed` (bench/real_data.py): `--configs` configurations drawn from
               spaces/cpu_small.yaml's space (Optuna's seeded random sampler, the first one the space's first
               point), each one fit (6 epochs, the space's fixed values) with and without progressive resizing
               (`--low-res-epochs` at the stored 64 px, then 96 px); at the first rung (epoch 2) and at the end: the
               robust metric on the design split's validation cells (clean accuracy + the shift suite, the search's
               own shifted validation with `--shift-images` images). Printed: Spearman's rho between the first-rung
               and the final ranking per variant, final figures and wall time per variant, and the shift metric's
               noise (bootstrap sd over images at several sizes) against the differences it ranks at the first rung.
  search       `python -m search.run spaces/cpu_small.yaml` on `--data` (default: pbc-sample's design part, crop200,
               64 px, ~1,820 cells; or e.g. synthetic:7000) -- this checkout, and with `--before REV` the same
               command from a git worktree of REV (the code before) -- one after the other: trials started, trials
               scored at their first rung, trials completed, the budget gate's decision, the winner, wall time of the
               search and of everything; the deployed model's clean accuracy on the report part (real cells); in the
               same run, training images/s of the winner's backbone through cellnet against a bare PyTorch loop, and
               predict images/s bf16 against fp32.

    .venv/bin/python -m bench.bench_search_cpu threads [--backbones tf_efficientnet_lite0 tf_efficientnet_lite1]
    .venv/bin/python -m bench.bench_search_cpu rung-order [--seed 0] [--configs 8] [--json out.json]
    .venv/bin/python -m bench.bench_search_cpu search [--before REV] [--data synthetic:7000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd, skip

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "spaces" / "cpu_small.yaml"


# ---------------------------------------------------------------------------------------------------------------
# threads: fold-parallel against fold-sequential


def train_rate(backbone: str, threads: int, steps: int, size: int = 96, batch: int = 64) -> float:
    """Training images/s of `backbone` at `size` px through cellnet's Trainer step, `threads` threads."""
    from cellnet.config import TrainConfig
    from cellnet.data.synthetic import generate
    from cellnet.train import Trainer

    os.environ["CELLNET_NUM_THREADS"] = str(threads)
    data = generate(n=batch * (steps + 1), image_size=64, seed=0)
    config = TrainConfig(
        backbone=backbone, pretrained=False, input_size=size, batch_size=batch, epochs=1, warmup_epochs=0,
        aug_strength=0.0, device="cpu", precision="fp32",
    )  # fmt: skip
    trainer = Trainer(config, data, None, device="cpu")
    images, labels = next(iter(trainer.train_loader))
    trainer._step(images, labels)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer._step(images, labels)
    return batch * steps / (time.perf_counter() - start)


def threads(backbones: list[str], steps: int) -> list[dict[str, Any]]:
    rows = []
    for backbone in backbones:
        probe = [sys.executable, "-m", "bench.bench_search_cpu", "_rate", "--backbone", backbone, "--steps", str(steps)]
        sequential = float(subprocess.check_output([*probe, "--threads", "2"], cwd=REPO, text=True).split()[-1])
        procs = [
            subprocess.Popen([*probe, "--threads", "1"], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)
        ]
        parallel = sum(float(p.communicate()[0].split()[-1]) for p in procs)
        row = {"backbone": backbone, "fold_parallel": parallel, "fold_sequential": sequential}
        row["parallel_over_sequential"] = parallel / sequential
        print(
            f"{backbone:<24} fold-parallel 2x1 thread {parallel:6.1f} img/s | fold-sequential 1x2 threads "
            f"{sequential:6.1f} img/s | ratio {parallel / sequential:.2f}",
            flush=True,
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# rung-order: does the first rung rank trials as the end does, with and without low-res early epochs?


def sampled_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """The space's first point, then seeded random draws of cpu_small's searched parameters."""
    import optuna

    from cellnet.config import load_config
    from search.space import check_points, define_by_run

    cfg = load_config(SPACE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = list(check_points(cfg))[:1]
    space = define_by_run(cfg)
    while len(draws) < n:
        trial = study.ask()
        params = space(trial) or {}
        draws.append({**params, **trial.params})
    return draws


def robust(ckpt: Any, val: Any, shifted: Any) -> tuple[float, float, np.ndarray]:
    """(clean accuracy, shift accuracy (mean over shifts), per-image right/wrong on the shifted images)."""
    from cellnet.predict import infer

    clean = float((infer(ckpt, val.images).probs().argmax(axis=1) == val.labels).mean())
    right = infer(ckpt, shifted.images).probs().argmax(axis=1) == shifted.labels
    per_shift = [right[shifted.shift == j].mean() for j in range(len(shifted.names))]
    return clean, float(np.mean(per_shift)), right


def timed_fit(config: Any, train: Any, val: Any, shifted: Any, marks: tuple[int, int]) -> dict[str, Any]:
    """One fit on `train`, scored on `val` and `shifted` at epochs `marks` (first rung, last); training seconds
    (scoring excluded) to the first rung and in all."""
    from cellnet.checkpoint import in_memory
    from cellnet.train import fit

    scores: dict[int, tuple[float, float, np.ndarray]] = {}
    clock = {"train": 0.0, "last": time.perf_counter(), "to_rung": 0.0}

    def score(metrics: dict[str, float], trainer: Any) -> None:
        now = time.perf_counter()
        clock["train"] += now - clock["last"]
        epoch = int(metrics["epoch"])
        if epoch == marks[0]:
            clock["to_rung"] = clock["train"]
        if epoch in marks:  # scored at the size the epoch trained at, as the search's folds score it
            now_config = replace(config, input_size=trainer.input_size_now)
            scores[epoch] = robust(in_memory(trainer.core, now_config, train.classes, train.image_size), val, shifted)
        clock["last"] = time.perf_counter()

    fit(config, train, None, early_stopping=False, on_epoch=score)
    rung, last = scores[marks[0]], scores[marks[1]]
    return {
        "rung_robust": (rung[0] + rung[1]) / 2,
        "final_robust": (last[0] + last[1]) / 2,
        "final_clean": last[0],
        "final_shifted": last[1],
        "rung_right": rung[2].tolist(),
        "seconds_to_rung": clock["to_rung"],
        "seconds": clock["train"],
    }


def rung_order(seed: int, n: int, low_res_epochs: list[int], shift_images: int) -> list[dict[str, Any]]:
    from scipy.stats import spearmanr

    from bench.real_data import design_split
    from cellnet.config import load_config
    from cellnet.shifts import DEFAULT_SUITE
    from search.data import shifted_validation

    cfg = load_config(SPACE)
    train, val = design_split(64, seed=seed, framing="crop200")
    folds = [(np.arange(len(val)), np.arange(len(val)))]
    shifted = shifted_validation(val, folds, DEFAULT_SUITE, shift_images, seed)[0]
    rows = []
    for i, params in enumerate(sampled_configs(n, seed)):
        for low in sorted({0, *low_res_epochs}):
            config = cfg.train_config(params, epochs=cfg.search.max_epochs, seed=seed, low_res_epochs=low)
            row = {"config": i, "params": params, "low_res_epochs": low}
            row |= timed_fit(config, train, val, shifted, (cfg.search.grace_period, cfg.search.max_epochs))
            print(
                f"config {i} low-res {low}: rung robust {row['rung_robust']:.3f} final {row['final_robust']:.3f} "
                f"(clean {row['final_clean']:.3f}) | {row['seconds_to_rung']:.0f} s to the rung, {row['seconds']:.0f} "
                f"s in all | {json.dumps(params)}",
                flush=True,
            )
            rows.append(row)
    print(f"\n# design split {seed}, {n} configurations, {shift_images} shifted validation images")
    for low in sorted({0, *low_res_epochs}):
        mine = [r for r in rows if r["low_res_epochs"] == low]
        rho = spearmanr([r["rung_robust"] for r in mine], [r["final_robust"] for r in mine]).statistic
        print(
            f"low_res_epochs {low}: Spearman(first rung, final) {rho:.3f} | final robust "
            f"{mean_sd([r['final_robust'] for r in mine], 3)} clean {mean_sd([r['final_clean'] for r in mine], 3)} | "
            f"to the rung {mean_sd([r['seconds_to_rung'] for r in mine], 0)} s, in all "
            f"{mean_sd([r['seconds'] for r in mine], 0)} s"
        )
    noise(rows, shifted, seed)
    return rows


def noise(rows: list[dict[str, Any]], shifted: Any, seed: int) -> None:
    """The shift metric's sampling noise (bootstrap sd of the mean over shifts, at several image counts) against the
    differences between configurations at the first rung (what ASHA ranks)."""
    rng = np.random.default_rng(seed)
    rung = [r for r in rows if r["low_res_epochs"] == 0]
    gaps = [abs(a["rung_robust"] - b["rung_robust"]) for i, a in enumerate(rung) for b in rung[i + 1 :]]
    quartile = np.quantile(gaps, 0.25)
    print(f"first-rung differences between configurations: median {np.median(gaps):.3f}, 25% {quartile:.3f}")
    for size in (256, 512, 1024, 2048):
        sds = []
        for r in rung:
            right = np.asarray(r["rung_right"], dtype=float)
            shift = shifted.shift
            draws = []
            for _ in range(200):
                pick = rng.integers(0, len(right), size)
                per = [
                    right[pick][shift[pick] == j].mean() for j in range(len(shifted.names)) if (shift[pick] == j).any()
                ]
                draws.append(np.mean(per))
            sds.append(np.std(draws))
        print(
            f"  {size:>5} shifted images: sd of the shift metric {np.median(sds):.4f} (of the robust metric: "
            f"{np.median(sds) / 2:.4f})"
        )


# ---------------------------------------------------------------------------------------------------------------
# search: the recommended space on real cells (or synthetic:7000), this code and the code before


def search_once(code: Path, data: str, out: Path, seed: int) -> dict[str, Any]:
    """`search.run spaces/cpu_small.yaml` from checkout `code` on `data`; what it did and how long it took."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "search.run", str(code / "spaces" / "cpu_small.yaml"), "--data", data]
    cmd += ["--storage", str(out), "--seed", str(seed)]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if rc:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {rc}); see {out.parent / (out.name + '.log')}")
    import pandas as pd

    trials = pd.read_csv(out / "trials.csv")
    summary = json.loads((out / "summary.json").read_text())
    grace, max_epochs = summary["search"]["grace_period"], summary["search"]["max_epochs"]
    epochs = pd.to_numeric(trials["epochs"], errors="coerce").fillna(0)
    shares = []
    for result in sorted((out / "tune").glob("*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if reports and reports[-1].get("time_total_s"):
            shares.append(sum(r.get("shift_eval_s") or 0.0 for r in reports) / reports[-1]["time_total_s"])
    return {
        "code": str(code),
        "wall_s": wall,
        "shift_share_of_trials": float(np.median(shares)) if shares else None,
        "search_s": summary.get("wall_time_s"),
        "trials_started": int(len(trials)),
        "scored_at_first_rung": int((epochs >= grace).sum()),
        "completed": int((epochs >= max_epochs).sum()),
        "budget": summary.get("budget"),
        "deployment_s": {  # where the time after the search went (summary.json, when the code records it)
            "out_of_fold": (summary.get("deployment") or {}).get("out_of_fold_s"),
            "refit_train": (summary.get("retrain") or {}).get("train_s"),
            "refit_calibration": (summary.get("retrain") or {}).get("calibration_s"),
        },
        "winner": {k: (summary.get("best") or {}).get(k) for k in ("trial_id", "params", "best_epoch")},
        "winner_metric": ((summary.get("best") or {}).get("cv") or {}).get(summary["search"]["metric"]),
    }


def deployed_figures(run: Path) -> dict[str, Any]:
    """The deployed model's clean accuracy on the report part (real cells), predict images/s bf16 against fp32."""
    from bench.real_data import report_split
    from cellnet.checkpoint import load_checkpoint
    from cellnet.predict import infer

    ckpt = load_checkpoint(run / "best")
    _, report = report_split(64, "crop200")
    out: dict[str, Any] = {
        "report_clean": float((infer(ckpt, report.images).probs().argmax(1) == report.labels).mean())
    }
    rates = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        start = time.perf_counter()
        infer(ckpt, report.images, precision=precision)
        rates.setdefault(precision, []).append(len(report) / (time.perf_counter() - start))
    out["predict_fp32"], out["predict_bf16"] = float(np.median(rates["fp32"])), float(np.median(rates["bf16"]))
    return out


def bare_against_cellnet(backbone: str, epochs: int = 3) -> dict[str, float]:
    """Training images/s of `backbone` at 96 px: cellnet's fit epoch against bench_train's bare loop, alternated."""
    from bench.bench_train import BareLoop
    from cellnet.config import TrainConfig
    from cellnet.data.synthetic import generate
    from cellnet.train import Trainer

    data = generate(n=640, image_size=96, seed=0)
    config = TrainConfig(backbone=backbone, pretrained=False, batch_size=64, epochs=epochs + 1, warmup_epochs=0,
                         aug_strength=0.0, device="cpu", precision="fp32")  # fmt: skip
    trainer, bare = Trainer(config, data, None, device="cpu"), BareLoop(config, data, __import__("torch").device("cpu"))
    ours, theirs = [], []
    for i in range(epochs + 1):
        a, b = trainer.train_epoch()["images_per_s"], bare.epoch()
        if i:  # the first pair warms up
            ours.append(a)
            theirs.append(b)
    return {"cellnet": float(np.median(ours)), "bare": float(np.median(theirs))}


def search(before: str | None, data: str | None, out: Path, seed: int) -> list[dict[str, Any]]:
    from bench.real_data import report_split
    from cellnet.data.clean import save_npz

    out.mkdir(parents=True, exist_ok=True)
    source = data
    if source is None:
        design, _ = report_split(64, "crop200")
        source = str(save_npz(design, out / "design.npz"))
    runs: list[tuple[str, Path]] = [("after", REPO)]
    worktree = None
    if before is not None:
        worktree = Path(tempfile.mkdtemp(prefix="cellnet-before-"))
        subprocess.check_call(["git", "worktree", "add", "--detach", str(worktree), before], cwd=REPO)
        runs.insert(0, ("before", worktree))
    rows = []
    try:
        for label, code in runs:
            row = {"label": label, **search_once(code, source, out / label, seed)}
            if data is None:
                row |= deployed_figures(out / label)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if worktree is not None:
            subprocess.call(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO)
            shutil.rmtree(worktree, ignore_errors=True)
    backbone = ((rows[-1]["winner"] or {}).get("params") or {}).get("backbone", "tf_efficientnet_lite0")
    rates = bare_against_cellnet(backbone)
    print(f"\n# search on {source}, seed {seed}")
    for r in rows:
        print(
            f"{r['label']:<7} trials started {r['trials_started']}, scored at their first rung "
            f"{r['scored_at_first_rung']}, completed {r['completed']} | winner {r['winner']['trial_id']} "
            f"{r['winner_metric']} | search {r['search_s'] or 0:.0f} s, all in {r['wall_s']:.0f} s | shift suite "
            f"{(r['shift_share_of_trials'] or 0):.1%} of a trial (median)"
            + (f" | report-part clean {r['report_clean']:.3f}" if "report_clean" in r else "")
            + (
                f" | predict fp32 {r['predict_fp32']:.0f} img/s, bf16 {r['predict_bf16']:.0f} "
                f"(x{r['predict_bf16'] / r['predict_fp32']:.2f})"
                if "predict_fp32" in r
                else ""
            )
        )
        if r["budget"] and r["budget"].get("new_trials_stopped"):
            print(f"        budget: {r['budget']['new_trials_stopped']}")
        for cut in (r["budget"] or {}).get("stopped_at_rung") or []:
            print(f"        stopped at a rung for the budget: {cut}")
        spent = {k: v for k, v in r["deployment_s"].items() if v is not None}
        if spent:
            print("        deployment: " + ", ".join(f"{k} {v:.0f} s" for k, v in spent.items()))
    print(
        f"training {backbone} at 96 px: cellnet {rates['cellnet']:.0f} img/s, bare loop {rates['bare']:.0f} img/s "
        f"(x{rates['cellnet'] / rates['bare']:.2f})"
    )
    return [*rows, {"label": "training_rate", "backbone": backbone, **rates}]


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_rate"]:  # the threads probe's own process
        p = argparse.ArgumentParser()
        p.add_argument("--backbone")
        p.add_argument("--threads", type=int)
        p.add_argument("--steps", type=int)
        a = p.parse_args(argv[1:])
        print(train_rate(a.backbone, a.threads, a.steps))
        return 0
    parser = bench_parser(__doc__, "skip (no small mode)")
    parser.add_argument("what", choices=("threads", "rung-order", "search"))
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "tf_efficientnet_lite1"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--low-res-epochs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shift-images", type=int, default=1024)
    parser.add_argument("--before", help="git revision whose code runs the search first (a temporary worktree)")
    parser.add_argument("--data", help="SOURCE to search (default: pbc-sample's design part)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-search-cpu")
    args = parser.parse_args(argv)
    if skip(
        args, "bench_search_cpu", quick="minutes to an hour", real_cells=args.what == "rung-order" or not args.data
    ):
        return 0
    if args.what == "threads":
        rows = threads(args.backbones, args.steps)
    elif args.what == "rung-order":
        rows = rung_order(args.seed, args.configs, args.low_res_epochs, args.shift_images)
    else:
        rows = search(args.before, args.data, args.out / time.strftime("%Y%m%d-%H%M%S"), args.seed)
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
