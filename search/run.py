"""`python -m search.run spaces/NAME.yaml`: the search's story, from a YAML file to a deployed, calibrated winner.

    parse: config (YAML + flags; on --resume the stored one, changes refused) -> resource plan (search/resources.py)
    plan:  data loaded and cleaned once (search/data.py), put in Ray's object store with the folds
    tune:  Tuner (search/tuner.py): Optuna TPE proposes, ASHA stops, a worker group per trial (search/trainable.py)
    hand over: search/winner.py `finish` -- trials.csv, summary.json, leaderboard, then the winner deployed
           (refit and/or fold ensemble), calibrated on its out-of-fold predictions and tested on --test

Everything that can be wrong with the config or the resource request is an `error: ...` line and exit code 2 before
Ray starts (or, with --address, before anything runs). Ctrl-C stops the search; `--resume` continues it. Ray and
Optuna are imported only once the command runs, after checking that the `search` extra is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cellnet.config import ExperimentConfig, load_config
from cellnet.errors import CellnetError, ConfigError
from cellnet.files import write_json, write_text
from search import require_search_extra, resources
from search.paths import PRECISION_FILE, SEARCH_CONFIG, SPACE_AS_GIVEN, TUNE_DIR

# ---------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Hyper-parameter search of cellnet classifiers on Ray Tune (Optuna + ASHA, a worker per fold).",
    )
    p.add_argument("config", help="search space YAML, e.g. spaces/quickstart.yaml")
    p.add_argument("--data", help="SOURCE to search on (overrides data.source)")
    p.add_argument("--test", help="held-out SOURCE the retrained winner is evaluated on (leaks to the data dropped)")
    p.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial at most (search.max_epochs)")
    p.add_argument("--folds", type=int, help="cross-validation folds = workers per trial (cv.folds)")
    p.add_argument("--seed", type=int, help="seed of the searcher and the fold split (search.seed, cv.seed)")
    p.add_argument("--time-budget", type=float, help="stop starting/running trials after this many seconds")
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds for the search and its deployment together: no trial started whose rung, with the deployment's "
        "estimate, would pass it",
    )
    p.add_argument("--storage", help="run directory (default runs/<name>); on a cluster a path every node shares")
    p.add_argument("--address", help="existing Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    p.add_argument("--cpus-per-fold", type=float, help="CPUs per fold worker (fractional allowed)")
    p.add_argument("--gpus-per-fold", type=float, help="GPUs per fold worker (fractional allowed)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--resume", action="store_true", help="continue the search in the run directory")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config, space and resource plan; run nothing"
    )
    p.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip retraining the winner (retrain.mode refit: deploy nothing, no test evaluation)",
    )
    p.add_argument("--verbose", action="store_true", help="Ray Tune's own status tables instead of one line per event")
    p.add_argument("--debug", action="store_true", help="tracebacks and Ray worker logs")
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "data": {"source": args.data, "test": args.test},
        "cv": {"folds": args.folds, "seed": args.seed},
        "search": {
            "num_samples": args.num_samples,
            "max_epochs": args.max_epochs,
            "seed": args.seed,
            "time_budget_s": args.time_budget,
            "deadline_s": args.deadline,
        },
        "resources": {
            "cpus_per_fold": args.cpus_per_fold,
            "gpus_per_fold": args.gpus_per_fold,
            "max_concurrent": args.max_concurrent,
        },
    }


# What --resume may change: how many trials, for how long, on what, how spread, what is deployed at the end and how
# it is tested. Everything else (data, folds, seeds, space, metric, epochs, training) must be what the trials ran.
RESUME_SAFE = {
    ("data", "test"),
    ("search", "num_samples"),
    ("search", "time_budget_s"),
    ("search", "deadline_s"),
    ("search", "checkpoint_every"),
    *(("resources", k) for k in ("cpus_per_fold", "gpus_per_fold", "max_concurrent")),
    *(("retrain", k) for k in ("mode", "epochs")),
    *(("calibration", k) for k in ("coverage", "ood_false_alarm", "ood_features", "tta", "framing_zooms")),
}
FLAG_OF = {
    ("data", "source"): "--data",
    ("cv", "folds"): "--folds",
    ("cv", "seed"): "--seed",
    ("search", "seed"): "--seed",
    ("search", "max_epochs"): "--max-epochs",
}


def resume_conflicts(stored: ExperimentConfig, requested: ExperimentConfig) -> list[str]:
    """Every difference between the run's stored config and the one asked for that --resume must refuse, as
    'what (asked) vs stored value'; [] when the search can continue exactly as it started."""
    old, new = stored.to_dict(), requested.to_dict()
    problems = []
    for section in old:
        a, b = old[section], new.get(section)
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                problems.append(f"{section} {b!r} (stored: {a!r})")
            continue
        for key in sorted(set(a) | set(b)):
            if (section, key) in RESUME_SAFE or a.get(key) == b.get(key):
                continue
            what = FLAG_OF.get((section, key), f"{section}.{key}")
            problems.append(f"{what} {b.get(key)!r} (stored {section}.{key}: {a.get(key)!r})")
    return problems


def resolve(args: argparse.Namespace) -> tuple[ExperimentConfig, Path]:
    """The config (on --resume: the run's stored one, with the resume-safe flags on top) and the absolute run
    directory. --resume refuses any other change -- a flag that differs from the stored value, or a YAML edited
    since the search started -- so restored trials continue on exactly their data and folds."""
    over = overrides_from(args)
    cfg = load_config(args.config, over)
    run_dir = Path(args.storage or Path("runs") / cfg.name).expanduser().resolve()
    stored = run_dir / SEARCH_CONFIG
    if args.resume:
        if not (run_dir / TUNE_DIR).is_dir() or not stored.is_file():
            raise ConfigError(f"--resume: {run_dir} holds no search to resume (no {TUNE_DIR}/ or {SEARCH_CONFIG})")
        before = load_config(stored)
        conflicts = resume_conflicts(before, load_config(stored, over))
        given = run_dir / SPACE_AS_GIVEN
        if given.is_file():
            conflicts += [f"{args.config}: {c}" for c in resume_conflicts(load_config(given), load_config(args.config))]
        if conflicts:
            raise ConfigError(
                f"--resume: the search in {run_dir} must continue on exactly what it started with, but asked for "
                f"{'; '.join(conflicts)}. Resume without the change, or start a new search with --storage DIR"
            )
        safe = {sec: {k: v for k, v in values.items() if (sec, k) in RESUME_SAFE} for sec, values in over.items()}
        cfg = load_config(stored, safe)
    elif (run_dir / TUNE_DIR).exists() and not args.dry_run:
        raise ConfigError(
            f"{run_dir} already holds a search; pass --resume to continue it or --storage DIR for a new one"
        )
    from cellnet.parent import check_experiment  # torch: loads only once a search is asked for
    from search.space import check_points  # search.space imports optuna (the search extra): main checks it first

    check_points(cfg)
    check_experiment(cfg)  # a trial that could not start from init_checkpoint is refused before any runs
    return cfg, run_dir


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--storage {run_dir} is not writable: {e.strerror or e}") from None


def write_yaml(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def dry_run(cfg: ExperimentConfig, run_dir: Path, plan: resources.ResourcePlan) -> None:
    from search.space import describe  # as in resolve: optuna

    print(f"# resolved config ({cfg.path})")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    print(
        f"\n# search space: {len(cfg.searched())} searched parameter(s), {cfg.search.searcher} / {cfg.search.scheduler}"
    )
    print("\n".join(describe(cfg)) or "  (nothing searched)")
    print("\n# pretrained weights (what each backbone starts from; `cellnet weights` lists every source)")
    print("\n".join(describe_weights(cfg)))
    print("\n# resource plan")
    print("\n".join(plan.describe()))
    print(f"\n# run directory: {run_dir}")


def describe_weights(cfg: ExperimentConfig) -> list[str]:
    """One line per backbone the config can train: the offline weights it would start from, or what happens
    without them (scratch under pretrained: auto or false, the hub or an error under true)."""
    from cellnet.weights import find_offline  # torch (~1.5 s), for the dry run's weights lines only

    init = cfg.fixed_values().get("init_checkpoint")
    if init is not None:
        return [f"  {name}: the weights of init_checkpoint {init} (backbone, and head when the classes match)"
                for name in cfg.backbones()]  # fmt: skip
    p = cfg.space.get("pretrained")
    choices = set(p.values) if p is not None else {cfg.fixed_values().get("pretrained", False)}
    lines = []
    for name in cfg.backbones():
        source = find_offline(name, cfg.fixed_values().get("weights_file"))
        if choices == {False}:
            lines.append(f"  {name}: from scratch (pretrained: false)")
        elif source is not None:
            lines.append(f"  {name}: {source.describe()}")
        elif "auto" in choices:
            lines.append(f"  {name}: no offline weights -> from scratch (pretrained: auto)")
        else:
            lines.append(f"  {name}: no offline weights -> the hub, or an error without network (pretrained: true)")
    return lines


def training_precisions(
    cfg: ExperimentConfig, run_dir: Path, plan: resources.ResourcePlan, *, resume: bool
) -> ExperimentConfig:
    """`cfg` with what `precision: auto` trains each backbone in (`cellnet.train_precision`: a short probe on a CPU
    with bf16), decided once before any trial runs and kept in PRECISION_FILE: every trial and the refit get the same
    answer, and a resumed search continues in what it started with."""
    path = run_dir / PRECISION_FILE
    if resume and path.is_file():
        return dataclasses.replace(cfg, precisions=json.loads(path.read_text()))
    from cellnet.train_precision import resolve_precisions  # torch and timm: only once the search runs

    cfg = resolve_precisions(cfg, "cuda" if plan.gpus_per_fold > 0 else "cpu", plan.threads_per_fold)
    write_json(path, cfg.precisions)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# The search


def search(args: argparse.Namespace, *, tell_pruned: bool = True, stopper: Any = None) -> int:
    """The whole search for parsed `args`; `tell_pruned` and `stopper` go to `tuner_for`."""
    from search.tuner import connect, disconnect, tuner_for, unfinished  # Ray: the extra main has just checked

    cfg, run_dir = resolve(args)
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    autoscaling = not local and cfg.resources.max_concurrent is not None
    if args.dry_run:  # with --address: planned against that cluster's nodes (connecting runs nothing)
        cluster = resources.local_cluster()
        if not local:
            owns = connect(args.address, args.debug)
            cluster = resources.ray_cluster()
            if owns:
                disconnect({})
        dry_run(cfg, run_dir, resources.plan(cfg, cluster, autoscaling=autoscaling, strict=False))
        return 0
    import ray  # as above

    if local and not ray.is_initialized():
        resources.plan(cfg, resources.local_cluster())  # impossible requests fail before Ray starts
    check_writable(run_dir)
    started = time.time()
    # the data and the hand-over (sklearn, torch, Ray Train) only once the config and the plan have been checked
    from search.data import check_fingerprint, load_data, record_fingerprint
    from search.trainable import share_ray_address
    from search.winner import finish

    loaded = load_data(cfg)
    if args.resume:  # the trials restored must continue on exactly the data and folds they started with
        check_fingerprint(run_dir, loaded.data, cfg.data.source, who="--resume")
    else:
        record_fingerprint(run_dir, loaded.data, cfg.data.source)

    owns_ray = connect(args.address, args.debug)
    previous_env = share_ray_address()
    try:
        plan = resources.plan(cfg, resources.ray_cluster(), autoscaling=autoscaling)
        resources.storage_probe(str(run_dir))
        print("\n".join(["resource plan:", *plan.describe()]))
        cfg = training_precisions(cfg, run_dir, plan, resume=args.resume)
        write_yaml(run_dir / SEARCH_CONFIG, cfg.to_dict())
        if not args.resume:
            write_yaml(run_dir / SPACE_AS_GIVEN, load_config(args.config).to_dict())
        refs = {"data": ray.put(loaded.data), "folds": ray.put(loaded.folds), "shifted": ray.put(loaded.shifted)}
        print(
            f"search: {cfg.search.num_samples} trials x up to {cfg.search.max_epochs} epochs x {cfg.cv.folds} folds on "
            f"{len(loaded.data)} images{drawn_line(cfg, loaded.folds)}{held_line(cfg)}{deadline_line(cfg)}; "
            f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
            flush=True,
        )
        tuner = tuner_for(
            cfg,
            run_dir,
            plan,
            refs,
            resume=args.resume,
            tell_pruned=tell_pruned,
            stopper=stopper,
            verbose=args.verbose,
            deadline_from=(started, len(loaded.data)),
        )
        grid = tuner.fit()
        left = unfinished(grid)
        if left:
            print(f"\nsearch interrupted with {left} trial(s) unfinished; continue with --resume", file=sys.stderr)
            return 130
        resume = f"python -m search.run {args.config} --storage {run_dir} --resume"
        finish(
            cfg, run_dir, grid, loaded, refs["data"], started, retrain_winner=not args.no_retrain, resume_command=resume
        )
    finally:
        if owns_ray:
            disconnect(previous_env)
    return 0


def drawn_line(cfg: ExperimentConfig, folds: Sequence[tuple[Any, Any]]) -> str:
    """What the search line says of `search.epoch_images` where it caps a fold's epoch (nothing where it does not)."""
    cap, largest = cfg.search.epoch_images, max(len(train) for train, _ in folds)
    if cap is None or cap >= largest:
        return ""
    return f" (a fold draws {cap} of its ~{largest} training images an epoch; the refit every image)"


def deadline_line(cfg: ExperimentConfig) -> str:
    """What the search line says of `search.deadline_s`, if there is one."""
    d = cfg.search.deadline_s
    return f" (search and deployment within {d:.0f} s of the start)" if d else ""


def held_line(cfg: ExperimentConfig) -> str:
    """What the search line says of a synchronous first rung (search/first_rung.py), if there is one."""
    k = cfg.search.first_rung_trials
    return f" (no trial past epoch {cfg.search.grace_period} before {k} reached it)" if k > 1 else ""


def main(argv: Sequence[str] | None = None, *, tell_pruned: bool = True, stopper: Any = None) -> int:
    """The command line; `tell_pruned` and `stopper` (see `tuner_for`) let bench/bench_search.py vary the search."""
    args = build_parser().parse_args(argv)
    require_search_extra()
    try:
        return search(args, tell_pruned=tell_pruned, stopper=stopper)
    except CellnetError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
