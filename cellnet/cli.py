"""The `cellnet` command: train / predict / evaluate / export / clean / weights / finetune.

Each subcommand is a plain function of its parsed arguments that returns an exit code. Errors a user can fix
(CellnetError, missing files, bad YAML) print one line `error: ...` on stderr and exit 2; `--debug` shows the
traceback instead. Ctrl-C exits 130 without a traceback. Heavy imports (torch, timm, sklearn) happen inside the
subcommands, so `cellnet --help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cellnet import __version__
from cellnet.errors import CellnetError, ConfigError

EXIT_USAGE = 2  # bad input: config, data, checkpoint, flags
EXIT_FAILED_INPUTS = 1  # `predict`: some images could not be read (their rows carry the error)
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with the same one-line `error: ...` (exit 2) as every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks on errors"
    )
    parser = _Parser(
        prog="cellnet",
        description="Train, evaluate, predict with and export blood-cell image classifiers.",
        epilog="SOURCE is one of: file.npz, file.npz:test, file.npz:train+val, a folder (one subfolder per class), "
        "bloodmnist, bloodmnist:128, synthetic, synthetic:4000.",
    )
    parser.add_argument("--version", action="version", version=f"cellnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    inference = _Parser(add_help=False)  # how predict and evaluate run the model
    inference.add_argument("--tta", action="store_true", help="average over the 8 flips/90° rotations (8x slower)")
    inference.add_argument("--batch-size", type=_positive_int, default=256, metavar="N")
    inference.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N (default: auto)")
    inference.add_argument(
        "--adapt",
        action="store_true",
        help="re-estimate the BatchNorm statistics on all the images of the call (at least 64; another lab's "
        "images): weights and checkpoint untouched, the OOD flag still uses the training statistics, the coverage "
        "promise does not cover adapted predictions",
    )
    inference.add_argument(
        "--canonicalize",
        action="store_true",
        help="per group (one INPUT: a folder or npz, one lab or scan; at least 32 images), match the framing (zoom "
        "both ways) and colour to the training cells, each kept only where the model's median OOD score drops; "
        "then --adapt, --tta and the flag see the matched images. Not the class-name matching of folder SOURCEs",
    )
    _add_train(sub, common)
    _add_predict(sub, [common, inference])
    _add_evaluate(sub, [common, inference])
    _add_export(sub, common)
    _add_clean(sub, common)
    _add_weights(sub, common)
    _add_finetune(sub, common)
    return parser


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train one model from a config with fixed values",
        description="Train one model. CONFIG is a search-space YAML whose `space` entries are all fixed values. "
        "The data is cleaned (unless data.clean: false or --no-clean), split into train/validation (grouped by "
        "near-duplicate cluster, stratified, train.val_fraction), trained with early stopping, and the best "
        "epoch's weights are saved to DIR with history.csv and training_curve.png.",
    )
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--data", metavar="SOURCE", help="data source (default: data.source of CONFIG)")
    p.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to write")
    p.add_argument("--image-size", type=_positive_int, metavar="N", help="override data.image_size")
    p.add_argument("--epochs", type=_positive_int, metavar="N", help="override train epochs (maximum)")
    p.add_argument("--seed", type=int, metavar="N", help="override the training seed")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N (default: config's device)")
    p.add_argument("--no-clean", action="store_true", help="skip duplicate/conflict/outlier cleaning")
    p.set_defaults(func=cmd_train)


def _add_predict(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "predict",
        parents=parents,
        help="predict classes of image files, folders or an npz",
        description="Write a CSV (id, predicted, confidence, uncertain, set, set_size, ood_score, ood, error, "
        "p_<class>...) for every image. With a calibrated checkpoint (a search's deployed model) probabilities are "
        "temperature-scaled, `set` lists the classes of a conformal prediction set ('|'-joined) that contains the "
        "true class with probability --coverage for cells like the training data, and `ood` flags images unlike "
        "them; `uncertain` = set not exactly one class, or ood, or confidence < --min-confidence. An unreadable "
        "image becomes a row with `error` set; the others are still predicted and the exit code is 1.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder (searched recursively) or npz")
    p.add_argument("--checkpoint", metavar="DIR", required=True)
    p.add_argument("--out", metavar="FILE", help="CSV file to write (default: stdout)")
    p.add_argument(
        "--min-confidence", type=_probability, metavar="P", help="also mark rows with confidence < P as uncertain"
    )
    p.add_argument(
        "--coverage",
        type=float,
        metavar="C",
        help="coverage of the prediction sets, in (0, 1) (default: the checkpoint's, 0.95): the set contains the "
        "true class for a share C of cells like the calibration data",
    )
    p.add_argument("--workers", type=_positive_int, metavar="N", help="image decoding threads (default: min(8, CPUs))")
    p.set_defaults(func=cmd_predict)


def _add_evaluate(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=parents,
        help="metrics, confusion matrix and calibration on labelled data",
        description="Accuracy, per-class precision/recall/F1, confusion matrix (CSV, PNG), reliability diagram "
        "and ECE, written to REPORT_DIR with metrics.json. --shifted also runs the shift suite (cellnet.shifts: "
        "zoom out 0.55x/0.75x, zoom in 1.35x, Macenko stain, Planckian and jitter colour, defocus, JPEG q20, "
        "gamma 0.6/1.6; deterministic for --seed): accuracy, macro F1 and ECE per shift, their mean and the worst, "
        "in metrics.json (shifted) and REPORT_DIR/shifted_accuracy.png.",
    )
    p.add_argument("data", metavar="DATA", help="labelled SOURCE (class names must match the checkpoint's)")
    p.add_argument("--checkpoint", metavar="DIR", required=True)
    p.add_argument("--out", metavar="REPORT_DIR", required=True)
    p.add_argument(
        "--shifted",
        action="store_true",
        help="also evaluate on each shift of the suite (accuracy per shift, mean, worst)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the shift suite's random shifts (default 0)"
    )
    p.set_defaults(func=cmd_evaluate)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a checkpoint to ONNX (checked against PyTorch)",
        description="Write an ONNX model taking float32 NHWC RGB images with values 0-255 at the checkpoint's "
        "image_size (dynamic batch) and returning softmax probabilities; resizing and normalisation are inside "
        "the graph. Classes, image_size, mean/std are in metadata_props. The file is written only if "
        "onnxruntime agrees with PyTorch within --tolerance.",
    )
    p.add_argument("--checkpoint", metavar="DIR", required=True)
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", metavar="FILE.onnx", required=True)
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference of probabilities (1e-4)")
    p.add_argument("--opset", type=_positive_int, metavar="N", help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=cmd_export)


def _add_clean(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "clean",
        parents=[common],
        help="find duplicates, label conflicts and outliers; write a cleaned npz and a report",
        description="Load SOURCE, drop near-duplicates within a class, label conflicts and outliers, and write "
        "DIR/clean.npz (with duplicate groups) plus a report (CSV, JSON, PNG grid).",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--image-size", type=_positive_int, default=None, metavar="N", help="image size (default 96)")
    p.add_argument("--threshold", type=int, metavar="N", help="perceptual-hash Hamming distance for duplicates")
    p.add_argument("--keep-conflicts", action="store_true", help="report label conflicts but keep them")
    p.add_argument("--keep-outliers", action="store_true", help="report outliers but keep them")
    p.set_defaults(func=cmd_clean)


def _add_finetune(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "finetune",
        parents=[common],
        help="adapt a deployed model to a new lab from a few labelled cells (~10 per class)",
        description="Fine-tune the single model in --checkpoint on LABELLED (any SOURCE: a few labelled cells of a "
        "new lab, about ten per class; classes matched by name, every class kept in the output layer) -- all "
        "layers, a short schedule sized by the number of cells, the model's own augmentation -- and calibrate it by "
        "cross-fitting on the same cells (out-of-fold logits of k folds: temperature, prediction sets pooled over "
        "the classes, the new lab's OOD statistics). DIR is a normal calibrated checkpoint for predict, evaluate "
        "and export; its provenance names the parent's weights hash.",
    )
    p.add_argument("labelled", metavar="LABELLED_SOURCE", help="labelled cells of the new lab (folder, npz, ...)")
    p.add_argument("--checkpoint", metavar="DIR", required=True, help="the deployed model (a search's best/)")
    p.add_argument("--out", metavar="DIR", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--canonicalize",
        action="store_true",
        help="match the cells' framing and colour to the training cells first (chosen on them by the model's OOD "
        "score; then predict the lab's cells with --canonicalize too)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="folds, shuffling and augmentation (default 0)")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.set_defaults(func=cmd_finetune)


def _add_weights(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "weights",
        parents=[common],
        help="which backbones have pretrained weights available without network access",
        description="For each BACKBONE (default: those a weights package can provide; --config: the backbones of a "
        "search space), where `pretrained: true` would take ImageNet weights from without the network -- timm's "
        "local cache or an installed weights package (converted once into the cache) -- or how to get them.",
    )
    p.add_argument("backbones", nargs="*", metavar="BACKBONE", help="timm model names")
    p.add_argument("--config", metavar="SPACE.yaml", help="list the backbones this config can train")
    p.set_defaults(func=cmd_weights)


# ---------------------------------------------------------------------------------------------------------------
# train


def fixed_train_config(config_path: str, cfg: Any, **overrides: Any) -> Any:
    """The TrainConfig of a config whose space is all fixed values; a searched entry is a ConfigError naming it."""
    searched = cfg.searched()
    if searched:
        name, param = next(iter(searched.items()))
        raise ConfigError(
            f"{config_path}: space.{name} is a search distribution ({param.kind}), but `cellnet train` trains one "
            f"model and needs a fixed value; set `{name}: <value>` (searched: {', '.join(searched)}) or run a "
            "search with `python -m search.run`"
        )
    return cfg.train_config(**{k: v for k, v in overrides.items() if v is not None})


def write_history(history: list[dict[str, Any]], out_dir: Path, best_epoch: int | None = None) -> None:
    """DIR/history.csv (one row per epoch) and DIR/training_curve.png (loss and accuracy per epoch)."""
    # pandas and matplotlib (~2 s) only once `train` has a history to write; `cellnet --help` imports none of this
    import pandas as pd
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from cellnet.files import atomic_path

    table = pd.DataFrame(history)
    table["epoch"] = table["epoch"].astype(int)
    with atomic_path(out_dir / "history.csv") as tmp:
        table.to_csv(tmp, index=False)
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split in ("train", "val"):
            col = f"{split}_{metric}"
            if col in table and table[col].notna().any():
                ax.plot(table["epoch"], table[col], marker="o", label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(out_dir / "training_curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _format_metrics(metrics: dict[str, Any], keys: Sequence[str]) -> str:
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), int | float))


def cmd_train(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    import numpy as np

    from cellnet import data as celldata
    from cellnet.checkpoint import save_checkpoint
    from cellnet.config import load_config
    from cellnet.parent import check_experiment
    from cellnet.progress import progress_bar
    from cellnet.provenance import data_hash, git_sha
    from cellnet.train import fit, select_device
    from cellnet.train_precision import training_precision

    cfg = load_config(args.config, overrides={"data": {"source": args.data, "image_size": args.image_size}})
    config = fixed_train_config(args.config, cfg, epochs=args.epochs, seed=args.seed, device=args.device)
    check_experiment(cfg)
    source, image_size = cfg.data.source, cfg.data.image_size
    out = Path(args.out)
    if out.exists() and not (out.is_dir() and ((out / "cellnet.json").is_file() or not any(out.iterdir()))):
        raise CellnetError(f"--out {out} exists and is not a cellnet checkpoint directory; choose another DIR")

    data = celldata.load(source, image_size=image_size, seed=cfg.cv.seed)
    print(f"data: {source}: {len(data)} images, {len(data.classes)} classes, {image_size}px")
    # `precision: auto` decided here, once (on a CPU with bf16: a short probe, one line), and saved as decided
    size = config.input_size or image_size
    precision = training_precision(config, select_device(config.device), size, say=print)
    config = dataclasses.replace(config, precision=precision)
    print(
        f"model: {config.backbone} (pretrained={config.pretrained}, {config.precision}), up to {config.epochs} epochs, "
        f"seed {config.seed}"
    )
    cleaned = cfg.data.clean and not args.no_clean
    if cleaned:
        data, report = celldata.clean(data)
        print(report.summary())
    train_idx, val_idx = celldata.holdout_split(data.labels, data.groups, config.val_fraction, config.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    print(f"split: {len(train)} train / {len(val)} validation (grouped by duplicate cluster, stratified)")

    with progress_bar(config.epochs, "train", "epoch", enabled=True) as bar:

        def on_epoch(metrics: dict[str, Any], trainer: Any) -> None:
            bar.set_postfix(
                {k: f"{metrics[k]:.3f}" for k in ("train_loss", "val_loss", "val_accuracy") if k in metrics},
                refresh=False,
            )
            bar.update(1)

        result = fit(config, train, val, on_epoch=on_epoch, early_stopping=True, device=config.device)

    provenance = {
        "git_sha": git_sha(),
        "data_hash": data_hash(data.images, data.labels),
        "data_source": source,
        "data_cleaned": bool(cleaned),
        "n_train": len(train),
        "n_val": len(val),
        "cellnet_version": __version__,
        "torch_version": _version("torch"),
        "timm_version": _version("timm"),
        "numpy_version": np.__version__,
        "arguments": {k: v for k, v in vars(args).items() if k not in ("func", "debug")},
    }
    save_checkpoint(
        out,
        result.model,
        config=config,
        classes=data.classes,
        image_size=image_size,
        mean=result.mean,
        std=result.std,
        metrics={**result.best_metrics, "best_epoch": result.best_epoch},
        provenance=provenance,
    )
    write_history(result.history, out, result.best_epoch)
    keys = ("val_accuracy", "val_macro_f1", "val_balanced_accuracy", "val_loss", "train_loss")
    print(f"best epoch {result.best_epoch} of {len(result.history)}: {_format_metrics(result.best_metrics, keys)}")
    print(f"checkpoint: {out}")
    return 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # ~20 ms, for `train`'s provenance only

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# predict / evaluate / export / clean


def _load(checkpoint: str, device: str) -> Any:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet.checkpoint import load_checkpoint
    from cellnet.train import select_device

    return load_checkpoint(checkpoint, device=str(select_device(device)))


def _note_precision(ckpt: Any, path: str) -> None:
    """Once per command: a checkpoint calibrated in bf16 predicts in fp32 on a device without bf16 (decision 0014)."""
    from cellnet.predict import precision_note  # torch: a subcommand's import, like the ones above

    note = precision_note(ckpt, path)
    if note:
        print(note, file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet.files import atomic_path
    from cellnet.predict import check_canonicalizable, predict_inputs

    ckpt = _load(args.checkpoint, args.device)
    _note_precision(ckpt, args.checkpoint)
    if args.canonicalize:
        check_canonicalizable(ckpt, args.checkpoint)
    if args.coverage is not None:
        from cellnet.checks import check_coverage  # numpy: a subcommand's import, like the ones above

        check_coverage(args.coverage)
    if ckpt.calibration is None:
        print(
            f"note: {args.checkpoint} has no calibration (only a search's deployed models carry one, fitted on "
            "out-of-fold predictions): prediction sets and the OOD flag are unavailable, probabilities are the "
            "model's own" + ("; --coverage ignored" if args.coverage is not None else ""),
            file=sys.stderr,
        )
    else:
        _warn_always_in_set(ckpt, args.coverage, views=8 if args.tta else 1)
    predicted = predict_inputs(
        ckpt,
        args.inputs,
        batch_size=args.batch_size,
        tta=args.tta,
        adapt=args.adapt,
        canonicalize=args.canonicalize,
        min_confidence=args.min_confidence,
        coverage=args.coverage if ckpt.calibration is not None else None,
        workers=args.workers,
    )
    table = predicted.table
    for group, (n, choice) in predicted.canonicalizations.items():
        print(choice.describe(group, n), file=sys.stderr)
    for group, adaptation in predicted.adaptations.items():
        print(f"{group}: {adaptation.describe()}", file=sys.stderr)
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    else:
        table.to_csv(sys.stdout, index=False, float_format="%.6f")
    failed = int((table["error"] != "").sum())
    uncertain = int((table["uncertain"] == True).sum())  # noqa: E712 (None on failed rows)
    sets = ""
    if ckpt.calibration is not None:
        coverage = args.coverage if args.coverage is not None else ckpt.calibration.coverage
        single = int((table["set_size"] == 1).sum())
        flagged = int((table["ood"] == True).sum())  # noqa: E712
        sets = f"; sets at coverage {coverage:g}: {single} of one class; {flagged} out of distribution"
    print(
        f"predicted {len(table) - failed} images ({uncertain} uncertain{sets}), {failed} failed"
        + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    for row in table.loc[table["error"] != "", ["id", "error"]].head(5).itertuples():
        print(f"failed: {row.id}: {row.error}", file=sys.stderr)
    for hint in predicted.hints:
        print(hint.replace("CHECKPOINT", str(args.checkpoint)), file=sys.stderr)
    return EXIT_FAILED_INPUTS if failed else 0


def _warn_always_in_set(ckpt: Any, coverage: float | None, *, views: int) -> None:
    """Decision 0005's warning: a class with too few calibration images to ever leave a set at this coverage is in
    every set, so its sets say nothing about it."""
    _, conformal = ckpt.calibration.view(views)
    coverage = ckpt.calibration.coverage if coverage is None else coverage
    rare = conformal.always_included(coverage)
    if rare:
        names = ", ".join(f"{ckpt.classes[c]} ({conformal.counts[c]} calibration images)" for c in rare)
        print(
            f"warning: at coverage {coverage:g} these classes are in every prediction set (too few calibration "
            f"images to ever leave one): {names}",
            file=sys.stderr,
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet import data as celldata
    from cellnet.canonicalize import READ_SCALE
    from cellnet.evaluate import evaluate, summary_table
    from cellnet.predict import check_canonicalizable

    ckpt = _load(args.checkpoint, args.device)
    _note_precision(ckpt, args.checkpoint)
    if args.canonicalize:
        check_canonicalizable(ckpt, args.checkpoint)
    read_size = ckpt.image_size * (READ_SCALE if args.canonicalize else 1)  # zoomed before resizing: detail kept
    data = celldata.load(args.data, image_size=read_size)
    metrics = evaluate(
        ckpt,
        data,
        args.out,
        tta=args.tta,
        adapt=args.adapt,
        canonicalize=args.canonicalize,
        shifted=args.shifted,
        batch_size=args.batch_size,
        seed=args.seed,
        where=args.data,
        header={"checkpoint": str(args.checkpoint), "data": args.data},
    )
    if metrics.get("canonicalization"):
        c = metrics["canonicalization"]
        colour = "colour matched to the training cells" if c["colour_matched"] else "colour as it is"
        print(f"--canonicalize: {args.data}: zoom {c['zoom']:g}, {colour}", file=sys.stderr)
    if metrics.get("adaptation"):
        from cellnet.adapt import Adaptation  # torch: a subcommand's import, like the ones above

        print(Adaptation(**metrics["adaptation"]).describe(), file=sys.stderr)
    for name, text in metrics["text"].items():
        print(f"== {name} ({args.data}, {len(data)} images) ==\n{text}")
    print(summary_table(metrics))
    print(f"report: {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet.export import export_onnx

    if args.tolerance <= 0:
        raise ConfigError(f"--tolerance must be > 0, got {args.tolerance}")
    ckpt = _load(args.checkpoint, "cpu")
    path, diff = export_onnx(ckpt, args.out, tolerance=args.tolerance, opset=args.opset)
    print(f"wrote {path} (max |p_onnx - p_torch| = {diff:.2e} <= {args.tolerance:g})")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet.weights import PACKAGES, cache_dir, offline_table

    names = list(args.backbones)
    if args.config:
        from cellnet.config import load_config  # yaml: a subcommand's import, like the one above

        names += load_config(args.config).backbones()
    names = list(dict.fromkeys(names or PACKAGES))
    rows = offline_table(names)
    width = max(len(n) for n, _, _ in rows)
    print(f"{'backbone':<{width}}  offline  source (or how to get the weights)")
    for name, yes, how in rows:
        print(f"{name:<{width}}  {yes:<7}  {how}")
    print(f"converted weights are cached in {cache_dir() / 'weights'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet import data as celldata
    from cellnet.canonicalize import READ_SCALE
    from cellnet.checkpoint import load_checkpoint
    from cellnet.finetune import describe, finetune
    from cellnet.predict import check_canonicalizable
    from cellnet.train import select_device

    out = Path(args.out)
    if out.exists() and not (out.is_dir() and ((out / "cellnet.json").is_file() or not any(out.iterdir()))):
        raise CellnetError(f"--out {out} exists and is not a cellnet checkpoint directory; choose another DIR")
    parent = load_checkpoint(args.checkpoint)
    if args.canonicalize:
        check_canonicalizable(parent, args.checkpoint)
    read_size = parent.image_size * (READ_SCALE if args.canonicalize else 1)  # zoomed before resizing: detail kept
    cells = celldata.load(args.labelled, image_size=read_size)
    device = str(select_device(args.device))
    result = finetune(
        args.checkpoint, cells, out, canonicalize=args.canonicalize, seed=args.seed, device=device, source=args.labelled
    )
    if result.canonicalization is not None:
        print(result.canonicalization.describe(args.labelled, len(cells)), file=sys.stderr)
    for line in describe(result):
        print(line)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    # the subcommand's modules load when it runs, so `cellnet --help` imports none of them (module docstring)
    from cellnet.data import run_clean

    kwargs: dict[str, Any] = {
        "drop_conflicts": not args.keep_conflicts,
        "drop_outliers": not args.keep_outliers,
    }
    if args.threshold is not None:
        kwargs["hash_threshold"] = args.threshold
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    report = run_clean(args.source, args.out, **kwargs)
    print(report.summary())
    print(f"cleaned data and report: {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cellnet` console script; returns the exit code."""
    import yaml  # ~13 ms, for the YAMLError clause below: importing this module stays at argparse alone

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse has already printed
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            raise
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `cellnet predict ... | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED_INPUTS
    except (
        CellnetError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        yaml.YAMLError,
    ) as e:
        if debug:
            raise
        message = " ".join(str(e).split()) if isinstance(e, CellnetError | yaml.YAMLError) else _os_error(e)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _os_error(e: OSError | Exception) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
