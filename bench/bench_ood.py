"""Which features should the out-of-distribution score measure? The flag's blind spot (issue 22, item 8): a model
trained on centre-cropped cells answers full-frame copies of them (the cell ~1.8x smaller) and is mostly wrong.

On the validation holdout of design splits `--seeds` (bench/real_data.py; crop200 framing, 64 px): one recipe of
bench/bench_robustness.py (default lite0_ra: the recommended space's first trial) is trained on the design split's
training part; its validation cells are split by group into a calibration half and a scoring half. For each feature
kind (`cellnet.constants.FEATURE_KINDS`: the pooled last stage, the penultimate stage's per-channel mean/std, both) a
calibration is fitted on the calibration half (`fit_calibration`, 95% sets, 5% false alarms) and applied, through
`predict_batch`, to the scoring half clean, full-frame and under the graded policies and a few suite shifts; a fifth
variant adds the framing check (decisions 0011, 0013: `calibration.framing_zooms`; for a recipe trained with
`zoom_aug`, a sixth keeps only the factors it never trained on, as decision 0011 did and 0013 undid), with what the
check fires on alone and what it adds to the flag. Only the OOD flag is scored here: it is the one part of
"uncertain" the feature kind changes, and ~200 calibration images leave the rarer classes in every 95% set (too few
of them for a Mondrian quantile), which would hide it. The whole rule is measured on the deployed model
(bench_deployed, or `search.retrain RUN --recalibrate` on its runs).

    clean            right answers flagged OOD (the flag's share of the <= 0.10 target), clean images flagged OOD
                     (~ the 5% asked)
    full-frame       OOD AUROC against clean, share flagged OOD, share not flagged, right among those
    other shifts     the same: a flag that refuses every mild shift the model gets right is no help either

`--deployment` scores the threshold a deployed refit gets instead (the search's default: `retrain.mode: refit`, 2
folds in cpu_small). The refit has no unseen image, so its threshold is transferred from the fold models'
seen-vs-unseen ratio (`search.winner.fit_refit_ood`). The design split's training part is cut into the space's 2
grouped folds; the 2 fold models and a refit on all of it are trained; for each feature kind, two transfer rules:

    in-sample     statistics fitted on all seen images, the ratio of in-sample medians (round 3 as shipped)
    held out      every score from statistics that did not see the image (`cellnet.calibrate.fit_ood_transferred`)

scored on the validation cells (new to every model): clean flagged (the 5% asked), full-frame flagged, AUROC.

    .venv/bin/python -m bench.bench_ood [--recipe lite0_ra] [--seeds 0 1 2] [--epochs 6] [--deployment]
        [--json out.json]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bench.common import bench_parser, dump_json, mean_sd, skip

SHIFTS = ("graded_randaugment", "graded_augmix", "stain_macenko", "jpeg_q20", "defocus", "zoom_out_0.75")


def shifted_sets(val: Any, full: Any, seed: int) -> dict[str, np.ndarray]:
    """The validation images clean, full-frame, and under the graded policies and suite shifts (same order)."""
    from bench.bench_robustness import graded
    from cellnet.shifts import SHIFTS as SUITE
    from cellnet.shifts import apply_shift

    out = {"clean": val.images, "full-frame": full.images}
    for name in SHIFTS:
        if name.startswith("graded_"):
            out[name] = graded(name, val.images, seed)
        elif name in SUITE:
            out[name] = apply_shift(name, val.images, seed)
    return out


def run(recipe: str, seed: int, epochs: int, size: int = 64) -> list[dict[str, Any]]:
    from bench.bench_robustness import RECIPES, design_model
    from cellnet.augment import smallest_magnification
    from cellnet.calibrate import fit_calibration
    from cellnet.constants import DEFAULT_FEATURES, FEATURE_KINDS, FRAMING_ZOOMS
    from cellnet.data import holdout_split
    from cellnet.metrics import ood_auroc
    from cellnet.predict import infer, predict_batch
    from cellnet.shifts import zoomed_copies

    ckpt, train, val, full = design_model(recipe, seed, epochs, size)
    cal_idx, score_idx = holdout_split(val.labels, val.groups, 0.5, seed, classes=val.classes)
    labels = val.labels[score_idx]
    images = {name: x[score_idx] for name, x in shifted_sets(val, full, seed).items()}
    rows = []
    variants = [(kind, ()) for kind in FEATURE_KINDS] + [(DEFAULT_FEATURES, FRAMING_ZOOMS)]
    smallest = smallest_magnification(RECIPES[recipe].get("zoom_aug", 0.0))
    untrained = tuple(z for z in FRAMING_ZOOMS if z < smallest)
    if untrained and untrained != FRAMING_ZOOMS:  # what decision 0011 kept for a recipe trained on zoom-outs
        variants.append((DEFAULT_FEATURES, untrained))
    for kind, zooms in variants:
        out = infer(ckpt, val.images[cal_idx], features=True, feature_kind=kind)
        zoomed = None
        if zooms:
            copies = zoomed_copies(val.images[cal_idx], zooms)
            zoomed = np.stack([_features(infer(ckpt, c, features=True, feature_kind=kind)) for c in copies])
        calibration = fit_calibration(
            out.logits,
            val.labels[cal_idx],
            len(train.classes),
            out.features,
            feature_kind=kind,
            framing_features=zoomed,
            framing_zooms=zooms,
            coverage=0.95,
        )
        calibrated = dataclasses.replace(ckpt, calibration=calibration)
        preds = {name: predict_batch(calibrated, x) for name, x in images.items()}
        clean_calibrated = preds["clean"].calibrated
        assert clean_calibrated is not None and clean_calibrated.ood_score is not None
        clean_score = clean_calibrated.ood_score
        label = kind if not zooms else f"{kind}+framing" + ("" if zooms == FRAMING_ZOOMS else f" {list(zooms)}")
        row: dict[str, Any] = {"seed": seed, "features": label, "dim": int(out.features.shape[-1])}  # type: ignore[union-attr]
        for name, pred in preds.items():
            assert pred.calibrated is not None and pred.calibrated.ood_score is not None
            right = pred.probs.argmax(axis=1) == labels
            answered = ~pred.calibrated.ood  # type: ignore[operator]
            row[name] = {
                "accuracy": float(right.mean()),
                "ood_flagged": float(pred.calibrated.ood.mean()),  # type: ignore[union-attr]
                "answered": float(answered.mean()),
                "answered_right": float(right[answered].mean()) if answered.any() else None,
                "right_flagged": float((~answered)[right].mean()) if right.any() else None,
                "auroc": None if name == "clean" else ood_auroc(clean_score, pred.calibrated.ood_score),
            }
            if zooms:
                row[name] |= framing_figures(calibrated, images[name], right)
        rows.append(row)
        show(row)
    return rows


def framing_figures(checkpoint: Any, images: np.ndarray, right: np.ndarray) -> dict[str, float | None]:
    """The framing check (decisions 0011, 0013) on its own: the share it fires on, of the right answers too, and the
    share it flags that the distance alone (same statistics and threshold) does not."""
    from cellnet.ood import is_ood
    from cellnet.predict import infer

    ood = checkpoint.calibration.ood
    features = _features(infer(checkpoint, images, features=True))
    fired = ood.framing_margin(features) > 0
    plain = dataclasses.replace(ood, framing_weights=(), framing_means=(), framing_zooms=())
    return {
        "check_fires": float(fired.mean()),
        "check_fires_right": float(fired[right].mean()) if right.any() else None,
        "check_adds": float((is_ood(ood.score(features)) & ~is_ood(plain.score(features))).mean()),
    }


def _features(out: Any) -> np.ndarray:
    assert out.features is not None
    return np.asarray(out.features)


def deployment(recipe: str, seed: int, epochs: int, k: int = 2, size: int = 64) -> list[dict[str, Any]]:
    """The refit's OOD threshold under both transfer rules, for each feature kind (module doc, `--deployment`)."""
    from bench.bench_robustness import recipe_config
    from bench.real_data import design_split
    from cellnet.constants import FEATURE_KINDS
    from cellnet.data import folds as make_folds
    from cellnet.metrics import ood_auroc
    from cellnet.ood import OODDetector, fit_mahalanobis, is_ood, mahalanobis_score, transferred_threshold
    from cellnet.train import fit
    from search.oof import out_of_fold
    from search.winner import fit_refit_ood, model_features

    train, val = design_split(size, seed=seed, framing="crop200")
    _, full = design_split(size, seed=seed, framing="full")
    config = recipe_config(recipe, seed, epochs)
    folds = make_folds(train.labels, train.groups, k, seed, classes=train.classes)
    members = [fit(config, train.subset(tr), None, early_stopping=False).model.eval() for tr, _ in folds]
    refit = fit(config, train, None, early_stopping=False).model.eval()
    c = len(train.classes)

    def features(model: Any, images: np.ndarray, kind: str) -> np.ndarray:
        return model_features(model, config, train, images, kind)

    rows = []
    for kind in FEATURE_KINDS:
        oof = out_of_fold(members, config, train, folds, features=True, feature_kind=kind)
        assert oof.features is not None
        held_out = fit_refit_ood(refit, members, config, train, folds, oof, 0.05, seed=seed)
        seen = features(refit, train.images, kind)
        stats = fit_mahalanobis(seen, train.labels, c)
        pairs = []
        for model, (tr, va) in zip(members, folds, strict=True):
            own = features(model, train.images[tr], kind)
            s = fit_mahalanobis(own, train.labels[tr], c)
            pairs.append((mahalanobis_score(own, s), mahalanobis_score(oof.features[va], s)))
        in_sample = OODDetector(
            (stats,), (transferred_threshold(mahalanobis_score(seen, stats), pairs, 0.05),), 0.05, kind, "transferred"
        )
        clean, shifted = features(refit, val.images, kind), features(refit, full.images, kind)
        for rule, detector in (("in-sample", in_sample), ("held out", held_out)):
            a, b = detector.score(clean), detector.score(shifted)
            row = {
                "seed": seed,
                "features": kind,
                "rule": rule,
                "clean_flagged": float(is_ood(a).mean()),
                "full_flagged": float(is_ood(b).mean()),
                "auroc": ood_auroc(a, b),
                "full_flagged_at_clean_q95": float((b > np.quantile(a, 0.95)).mean()),
            }
            print(
                f"seed {seed} {kind:<19} {rule:<10} clean flagged {row['clean_flagged']:.3f} | full-frame flagged "
                f"{row['full_flagged']:.3f} (AUROC {row['auroc']:.3f}; at clean's own 95% quantile "
                f"{row['full_flagged_at_clean_q95']:.3f})",
                flush=True,
            )
            rows.append(row)
    return rows


def deployment_summary(rows: list[dict[str, Any]]) -> None:
    print("\n# mean ± sd over seeds (validation cells, the refit's threshold)")
    for kind, rule in dict.fromkeys((r["features"], r["rule"]) for r in rows):
        mine = [r for r in rows if r["features"] == kind and r["rule"] == rule]
        cols = {key: mean_sd([r[key] for r in mine], 3) for key in ("clean_flagged", "full_flagged", "auroc")}
        print(
            f"{kind:<19} {rule:<10} clean flagged {cols['clean_flagged']} | full-frame flagged "
            f"{cols['full_flagged']} | AUROC {cols['auroc']}"
        )


def show(row: dict[str, Any]) -> None:
    c, f = row["clean"], row["full-frame"]
    line = (
        f"seed {row['seed']} {row['features']:<19}{row['dim']:>6} | clean right OOD {c['right_flagged']:.3f} "
        f"OOD {c['ood_flagged']:.3f} | full-frame acc {f['accuracy']:.3f} AUROC {f['auroc']:.3f} OOD "
        f"{f['ood_flagged']:.3f} not flagged {f['answered']:.3f} right {_num(f['answered_right'])}"
    )
    for name in SHIFTS:
        if name in row:
            s = row[name]
            line += (
                f" | {name} acc {s['accuracy']:.2f} not flagged {s['answered']:.2f} right {_num(s['answered_right'])}"
            )
    if "check_fires" in c:
        line += "\n    framing check alone, fires on (right answers) / adds:" + "".join(
            f" {name} {s['check_fires']:.3f} ({_num(s['check_fires_right'])}) / {s['check_adds']:.3f};"
            for name, s in ((name, row[name]) for name in ("clean", "full-frame", *SHIFTS) if name in row)
        )
    print(line, flush=True)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def summary(rows: list[dict[str, Any]]) -> None:
    """Per feature kind, mean ± sd over seeds of the figures the choice rests on."""
    print("\n# mean ± sd over seeds")
    for kind in dict.fromkeys(r["features"] for r in rows):
        mine = [r for r in rows if r["features"] == kind]

        def col(name: str, key: str, rs: list[dict[str, Any]] = mine) -> str:
            return mean_sd([r[name][key] for r in rs if r[name][key] is not None], 3)

        print(
            f"{kind:<19} clean: right OOD {col('clean', 'right_flagged')}, OOD {col('clean', 'ood_flagged')} | "
            f"full-frame: AUROC {col('full-frame', 'auroc')}, not flagged {col('full-frame', 'answered')}, right "
            f"{col('full-frame', 'answered_right')} | graded RA: not flagged {col('graded_randaugment', 'answered')}, "
            f"right {col('graded_randaugment', 'answered_right')} | AugMix: not flagged "
            f"{col('graded_augmix', 'answered')}, right {col('graded_augmix', 'answered_right')}"
        )
        if "check_fires" in mine[0]["clean"]:
            print(
                "    framing check alone, fires on:"
                + "".join(f" {name} {col(name, 'check_fires')};" for name in ("clean", "full-frame", *SHIFTS))
                + f" right clean answers {col('clean', 'check_fires_right')}; adds flags: clean "
                f"{col('clean', 'check_adds')}, full-frame {col('full-frame', 'check_adds')}, zoom_out_0.75 "
                f"{col('zoom_out_0.75', 'check_adds')}"
            )


def main(argv: list[str] | None = None) -> int:
    from bench.bench_robustness import RECIPES

    parser = bench_parser(__doc__, "skip (no small mode: ~3 min per seed)")
    parser.add_argument("--recipe", default="lite0_ra", choices=sorted(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6, help="for recipes that do not set their own")
    parser.add_argument("--deployment", action="store_true", help="the refit's transferred threshold (module doc)")
    args = parser.parse_args(argv)
    if skip(args, "bench_ood", quick="~3 min per seed (--deployment: ~5)", real_cells=True):
        return 0
    if args.deployment:
        print(f"# OOD threshold of a refit: {args.recipe}, design splits {args.seeds}, 2 folds, validation cells")
        rows = [row for seed in args.seeds for row in deployment(args.recipe, seed, args.epochs)]
        deployment_summary(rows)
    else:
        print(f"# OOD features: {args.recipe}, design splits {args.seeds}, validation holdout (calibrate / score)")
        rows = [row for seed in args.seeds for row in run(args.recipe, seed, args.epochs)]
        summary(rows)
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
