"""One trial = one Ray Train worker group with a worker per fold; the Tune function trainable just launches it.

    Tune trial driver (`run_trial`, 0 CPU, head node)
      └─ TorchTrainer.fit()  (Ray Train V2 controller, 0 CPU)
           └─ k fold workers (`fold_worker`), SPREAD: worker i trains fold i with cellnet's Trainer (independent
              models, no DDP); after every epoch they all_gather their metrics over gloo, and every rank calls
              ray.train.report with the same fold-mean metrics (rank 0's reach Tune through TuneReportCallback).

Checkpoints: at ASHA rung epochs, at the end and (if set) every `search.checkpoint_every` epochs each worker
writes `fold_<i>.pt` (Trainer.state_dict, tensors and plain values only: read back with `weights_only=True`) and
reports it; Ray Train merges the ranks' files into one checkpoint directory under `<run_dir>/train/<trial_id>/`,
keeping only the latest. A restarted worker group (worker died: Train FailureConfig; search resumed: same Train run
name) continues from it. `training_iteration` is reported as the epoch, so Tune, ASHA and Optuna count epochs, not
reports, across restarts.

Fold models (the winner's fold ensemble and out-of-fold predictions: search/oof.py, search/winner.py): the folds
run in lock step, so "the trial's best epoch" is one epoch for all folds: the first epoch with the best fold-mean
search metric, the same rule trials.csv ranks by. Whenever an epoch becomes the new best, every worker writes its
fold's weights to `<run_dir>/train/<trial_id>/folds/fold_<i>_epoch<e>.safetensors`; after a barrier (all folds
written) the epoch is reported, and only then the best file before the previous one is deleted: a report that
returned in the worker may still never reach Tune (a trial the time budget stops while its last epoch reports: seen
on real cells, the refit was deployed uncalibrated), so the two newest bests are kept. Whichever moment a trial is
stopped (ASHA, time budget, lost node), the files of the best epoch Tune has seen exist for every fold; the
deployment prunes the rest.

Robustness: at ASHA's rung epochs and the last epoch (the scored epochs, where the search decides) each fold also
scores its shifted validation subset (search/data.py `shifted_validation`: `search.shift_images` validation images,
each under one shift of the suite, made once per search), giving cv_shifted_accuracy (mean over shifts of the
fold-mean accuracy), cv_worst_shift_accuracy (the lowest shift) and cv_robust_accuracy = (cv_accuracy +
cv_shifted_accuracy) / 2; any of them can be search.metric. Epochs in between repeat the last scored figures and say
so (`shift_scored`, `shift_epoch`: `carry_shift_figures`), and only a scored epoch can be a trial's best. When the
search metric is one of these, the clean validation pass runs at the scored epochs only as well (a quarter of a CPU
epoch; the plateau schedule excepted): between them the val_* figures repeat the last validated epoch's, NaN before
the first, with `val_scored` 0 (`carry_validation`).

Synchronous first rung (search/first_rung.py): a trial paused at its first rung is stopped by Tune and restarted
later from that rung's checkpoint like any restarted worker group.

Divergence (NaN loss) is deterministic, so it must not be retried: the workers catch DivergedError, stop together,
rank 0 records the reason in `<run_dir>/train/<trial_id>/diverged.json`, and the trial driver raises DivergedError
(Tune max_failures=0: the trial ends ERROR with that reason; Optuna is told FAIL). Worker and node losses are
retried by Ray Train, not Tune.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from ray.train.v2._internal import constants as train_constants

from cellnet.config import SHIFT_METRICS, ExperimentConfig, TrainConfig
from cellnet.errors import CellnetError, CheckpointError, DivergedError, PrecisionMismatchError, WeightsMismatchError
from cellnet.files import atomic_path, write_json
from cellnet.weights import weights_identity
from search.budget import rung_epochs
from search.paths import TRAIN_DIR
from search.resources import ResourcePlan

FAULT_ENV = "CELLNET_FAULT_KILL_WORKER"  # test-only: marker path; the last fold worker SIGKILLs itself once at epoch 2
FAULT_EPOCH = 2
FOLDS_DIR = "folds"
TRAIN_RETRIES = 2  # worker-group restarts per trial (worker or node lost), each from the latest checkpoint
DIVERGED_FILE = "diverged.json"
PER_FOLD = ("accuracy", "macro_f1", "val_loss", "train_loss", "train_accuracy")
_CV = {
    "cv_accuracy": "val_accuracy",
    "cv_macro_f1": "val_macro_f1",
    "cv_balanced_accuracy": "val_balanced_accuracy",
    "cv_val_loss": "val_loss",
    "cv_train_loss": "train_loss",
    "cv_train_accuracy": "train_accuracy",
}
VAL_KEYS = tuple(v for v in _CV.values() if v.startswith("val_"))  # what fold_metrics reads of a validation pass


def fold_metrics(
    per_fold: list[dict[str, Any]],
    node_ids: list[str],
    startup: tuple[float, float] | None = None,
    shift_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The per-epoch row of the search-layer contract from the k folds' Trainer metrics (fold order).

    `startup`: seconds from the trial driver's start to (the slowest fold's worker function being entered, its first
    batch) -- `worker_start_s` and `startup_s`, NaN after a restart; the benchmarks read them, with
    `fold_time_sum_s` / `fold_cpu_sum_s` (wall / CPU seconds inside the epochs, summed over folds), to separate
    training from orchestration time.
    """
    out: dict[str, Any] = {"epoch": int(per_fold[0]["epoch"])}
    for key, src in _CV.items():
        out[key] = float(np.mean([m[src] for m in per_fold]))
    out["cv_accuracy_std"] = float(np.std([m["val_accuracy"] for m in per_fold]))
    out["lr"] = float(per_fold[0]["lr"])
    out["images_per_s"] = float(sum(m["images_per_s"] for m in per_fold))
    out["fit_time_s"] = float(max(m["epoch_time_s"] for m in per_fold))
    out["fold_time_sum_s"] = float(sum(m["epoch_time_s"] for m in per_fold))
    out["fold_cpu_sum_s"] = float(sum(m.get("cpu_time_s", m["epoch_time_s"]) for m in per_fold))
    out["worker_start_s"], out["startup_s"] = startup if startup is not None else (float("nan"), float("nan"))
    shifted = [m["shift_accuracy"] for m in per_fold if m.get("shift_accuracy") is not None]
    if shifted and shift_names:
        per_shift = np.nanmean(np.array(shifted, dtype=np.float64), axis=0)  # fold mean, per shift
        out["cv_shifted_accuracy"] = float(np.nanmean(per_shift))
        out["cv_worst_shift_accuracy"] = float(np.nanmin(per_shift))
        out["cv_robust_accuracy"] = (out["cv_accuracy"] + out["cv_shifted_accuracy"]) / 2
        out["shift_eval_s"] = float(max(m.get("shift_eval_s", 0.0) for m in per_fold))
        for name, value in zip(shift_names, per_shift):
            out[f"cv_shift_{name}"] = float(value)
    for i, m in enumerate(per_fold):
        out[f"fold{i}_accuracy"] = float(m["val_accuracy"])
        out[f"fold{i}_macro_f1"] = float(m["val_macro_f1"])
        out[f"fold{i}_val_loss"] = float(m["val_loss"])
        out[f"fold{i}_train_loss"] = float(m["train_loss"])
        out[f"fold{i}_train_accuracy"] = float(m["train_accuracy"])
    out["node_ids"] = ",".join(node_ids)
    out["weights"] = per_fold[0].get("weights") or "none"  # where the backbone's initial weights came from
    for i, m in enumerate(per_fold):  # per fold too: they must agree (`weights_disagree`)
        out[f"fold{i}_weights"] = m.get("weights") or "none"
    if any(m.get("precision") for m in per_fold):  # what each fold trained in: they must agree (`precision_disagree`)
        out["precision"] = per_fold[0].get("precision")
        out.update({f"fold{i}_precision": m.get("precision") for i, m in enumerate(per_fold)})
    out["val_scored"] = int(min(m.get("val_scored", 1) for m in per_fold))  # 0: val_* repeat an earlier epoch's
    out["diverged"] = 0
    out["training_iteration"] = out["epoch"]  # Tune keeps a reported value: epochs survive restarts
    return out


def _fault_hook(rank: int, world: int, epoch: int) -> None:
    """Test-only (see FAULT_ENV): simulate a worker process dying mid-trial, exactly once per marker path."""
    marker = os.environ.get(FAULT_ENV)
    if not marker or rank != world - 1 or epoch != FAULT_EPOCH:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def fold_worker(loop: dict[str, Any]) -> None:
    """Ray Train worker: train fold `rank` for up to max_epochs, reporting fold-mean metrics every epoch."""
    entered = time.time()
    # in the fold worker's own process: the Tune driver imports this module and never trains (torch, timm: ~4 s)
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device

    from cellnet.train import Trainer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ["CELLNET_NUM_THREADS"] = str(loop["threads"])
    data = ray.get(loop["refs"]["data"])
    train_idx, val_idx = ray.get(loop["refs"]["folds"])[rank]
    all_shifted = ray.get(loop["refs"]["shifted"]) if loop["refs"].get("shifted") is not None else None
    shifted = all_shifted[rank] if all_shifted else None
    config = TrainConfig(**loop["train_config"])
    device = str(get_device()) if loop["use_gpu"] else "cpu"
    trainer = Trainer(config, data.subset(train_idx), data.subset(val_idx), device=device)
    metric, mode = loop["metric"], loop["mode"]
    folds_dir = Path(loop["trial_dir"]) / FOLDS_DIR
    best: float | None = None  # the lock-step best value of the search metric so far
    best_files = BestFiles()
    carried: dict[str, float] = {}  # the last scored epoch's shift figures, reported again until the next one
    validated: dict[str, float] = {}  # the last validated epoch's val_* figures, the same way

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = read_fold_state(Path(d) / f"fold_{rank}.pt")
        trainer.load_state_dict(state)
        best = state.get("lockstep_best")
        carried.update(state.get("shift_carried") or {})
        validated.update(state.get("val_carried") or {})

    node = ray.get_runtime_context().get_node_id()
    max_epochs, every, rungs = loop["max_epochs"], loop["checkpoint_every"], set(loop["rungs"])
    scored_epochs = rungs | {max_epochs}  # the shift suite runs where ASHA decides and at the end, not more
    # ranked by a shift metric, a trial is judged at scored epochs only: the clean validation pass runs there too
    # (a quarter of a CPU epoch), except under the plateau schedule, which steps on every epoch's validation loss
    validate_only_scored = metric in SHIFT_METRICS and config.schedule != "plateau"
    startup: tuple[float, float] | None = None  # (trial start -> worker entered, trial start -> first batch)
    measure_startup = checkpoint is None  # a restarted group's "start-up" would include the epochs before the loss
    while trainer.epoch < max_epochs:
        _fault_hook(rank, world, trainer.epoch)
        if measure_startup:  # trial driver started -> this fold's first batch about to train
            started = loop["trial_started"]
            startup, measure_startup = (entered - started, time.time() - started), False
        cpu0 = time.process_time()  # CPU seconds of this process (all its threads) in the epoch
        mine: dict[str, Any] | None
        try:
            validate = not validate_only_scored or trainer.epoch + 1 in scored_epochs
            mine, error = dict(trainer.train_epoch(validate=validate)), None
            validated = carry_validation(mine, validated, scored=validate)
            if shifted is not None and trainer.epoch in scored_epochs:
                mine.update(score_shifted(trainer, shifted))
            mine["cpu_time_s"] = time.process_time() - cpu0  # all threads: training, validation, shifted scoring
            mine["weights"] = trainer.core.weights_source
            mine["precision"] = trainer.precision
        except DivergedError as e:
            mine, error = None, str(e)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (mine, error, node, startup))
        errors = [f"fold {i}: {e}" for i, (_, e, _, _) in enumerate(gathered) if e]
        kind = "diverged"
        if not errors:
            errors, kind = folds_disagree([g[0] for g in gathered], [g[2] for g in gathered])
        if errors:  # every rank sees the same list and stops here; no report, so no Train retry either
            if rank == 0:
                Path(loop["trial_dir"]).mkdir(parents=True, exist_ok=True)
                failure = {"epoch": trainer.epoch + 1, "errors": errors, "kind": kind}
                write_json(Path(loop["trial_dir"]) / DIVERGED_FILE, failure)
            return
        startups = [g[3] for g in gathered if g[3] is not None]
        slowest = max(startups, key=lambda t: t[1]) if startups else None
        names = shifted.names if shifted is not None else ()
        metrics = fold_metrics([g[0] for g in gathered], [g[2] for g in gathered], slowest, names)
        if names:
            carried = carry_shift_figures(metrics, carried, names)
        epoch = trainer.epoch
        stale = None
        if counts_as_best(metrics, metric) and improves(metrics.get(metric), best, mode):
            best = float(metrics[metric])
            stale = best_files.add(save_fold_model(folds_dir, rank, epoch, trainer.core, metric=metric, value=best))
            dist.barrier()  # every fold's file of this epoch exists before the epoch is reported
        if (every and epoch % every == 0) or epoch in rungs or epoch == max_epochs:
            with tempfile.TemporaryDirectory() as tmp:
                state = {**trainer.state_dict(), "lockstep_best": best, "shift_carried": carried}
                state["val_carried"] = validated
                torch.save(state, Path(tmp) / f"fold_{rank}.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if stale is not None:
            stale.unlink(missing_ok=True)


def score_shifted(trainer: Any, shifted: Any) -> dict[str, Any]:
    """The fold's shifted validation subset scored by the model as it stands: per-shift accuracy, and its seconds."""
    from cellnet.train import predict_proba  # in the fold worker's process only (torch), as in fold_worker

    t0 = time.perf_counter()
    probs = predict_proba(
        trainer.core,
        shifted.images,
        mean=trainer.mean,
        std=trainer.std,
        input_size=trainer.input_size_now,  # the size this epoch trained at (progressive resizing)
        batch_size=trainer.config.batch_size * 2,
        device=trainer.device,
    )
    return {
        "shift_accuracy": shifted.accuracy_per_shift(probs.argmax(axis=1)),
        "shift_eval_s": time.perf_counter() - t0,
    }


@dataclass
class BestFiles:
    """A fold's newest two best-epoch model files: Tune may never see the report of the newest best (a trial stopped
    while its last epoch reports), and then the one before it is the trial's best epoch (module doc)."""

    newest: Path | None = None
    previous: Path | None = None

    def add(self, path: Path) -> Path | None:
        """Record `path` as the newest best; returns the file that is no longer needed (delete it once the new best
        is reported), or None."""
        if path == self.newest:  # the same epoch written again (a restarted worker group)
            return None
        stale, self.previous, self.newest = self.previous, self.newest, path
        return stale if stale not in (self.newest, self.previous) else None


def folds_disagree(per_fold: list[dict[str, Any]], nodes: list[str]) -> tuple[list[str], str]:
    """(lines, failure kind): one line when the folds started from different weights ("weights"), else one when
    they trained in different precisions ("precision"); no lines when they agree."""
    weights = weights_disagree([m.get("weights") for m in per_fold], nodes)
    if weights:
        return weights, "weights"
    return precision_disagree([m.get("precision") for m in per_fold], nodes), "precision"


def precision_disagree(precisions: list[str | None], nodes: list[str]) -> list[str]:
    """[] when every fold trained in one precision, else one line naming each fold's: a trial's folds are one
    experiment, and `precision: auto` decided per fold (a node whose CPU has bf16 and one without) would not be."""
    if len(set(precisions)) <= 1:
        return []
    each = "; ".join(f"fold {i} on node {n[:12]}: {p}" for i, (p, n) in enumerate(zip(precisions, nodes)))
    return [f"the folds trained in different precisions ({each}); set train.precision: fp32 or bf16 for every fold"]


def weights_disagree(sources: list[str | None], nodes: list[str]) -> list[str]:
    """[] when every fold started from the same weights (`cellnet.weights.weights_identity`), else one line naming
    each fold's source and node: `pretrained: auto` decides per process, and a node without the weights package
    would silently train its fold from scratch."""
    if len({weights_identity(s) for s in sources}) <= 1:
        return []
    each = "; ".join(
        f"fold {i} on node {n[:12]}: {s or 'none (random)'}" for i, (s, n) in enumerate(zip(sources, nodes))
    )
    return [
        f"the folds started from different weights ({each}); install the same weights on every node (pip install "
        "'cellnet[weights]'), or set pretrained: true to fail where they are missing"
    ]


SHIFT_FIGURES = ("cv_shifted_accuracy", "cv_worst_shift_accuracy", "cv_robust_accuracy")


def carry_shift_figures(metrics: dict[str, Any], carried: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    """The shift suite runs only at scored epochs (ASHA's rungs, the last epoch). A scored epoch's row says
    `shift_scored` 1 and `shift_epoch` its own epoch, and its figures are carried; an epoch in between repeats them
    with `shift_scored` 0 and the epoch they were measured at (NaN before the first): Tune needs the search metric in
    every report, and what it is between scored epochs is said, not made up. Returns what to carry on."""
    keys = (*SHIFT_FIGURES, *(f"cv_shift_{n}" for n in names))
    if "cv_shifted_accuracy" in metrics:
        metrics["shift_scored"], metrics["shift_epoch"] = 1, metrics["epoch"]
        return {k: float(metrics[k]) for k in keys} | {"shift_epoch": float(metrics["epoch"])}
    metrics["shift_scored"] = 0
    metrics.update({k: carried.get(k, float("nan")) for k in (*keys, "shift_epoch")})
    return carried


def carry_validation(mine: dict[str, Any], validated: dict[str, float], *, scored: bool) -> dict[str, float]:
    """A fold's val_* figures: this epoch's when it validated (`val_scored` 1), else the last validated epoch's
    (NaN before any) with `val_scored` 0. Returns the figures to carry on."""
    mine["val_scored"] = int(scored)
    if scored:
        return {k: float(v) for k, v in mine.items() if k.startswith("val_") and k != "val_scored"}
    mine.update(validated or dict.fromkeys(VAL_KEYS, float("nan")))
    return validated


def counts_as_best(metrics: dict[str, Any], metric: str) -> bool:
    """Only an epoch whose search metric was measured there may be a trial's best: for the shift metrics, a scored
    epoch (`carry_shift_figures`)."""
    return metric not in SHIFT_METRICS or metrics.get("shift_scored", 1) == 1


def improves(value: Any, best: float | None, mode: str) -> bool:
    """Is `value` a new best? Strictly better only, so the first of equal epochs stays the best (as in trials.csv)."""
    if value is None or not np.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def fold_model_path(folds_dir: Path, rank: int, epoch: int) -> Path:
    return folds_dir / f"fold_{rank}_epoch{epoch}.safetensors"


def save_fold_model(folds_dir: Path, rank: int, epoch: int, model: Any, *, metric: str, value: float) -> Path:
    """The fold's weights at `epoch` (safetensors, atomically), tagged with the epoch and the metric value."""
    from safetensors.torch import save_file  # imports torch: only fold workers save (see fold_worker)

    folds_dir.mkdir(parents=True, exist_ok=True)
    path = fold_model_path(folds_dir, rank, epoch)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "cellnet-fold", "fold": str(rank), "epoch": str(epoch), "metric": metric, "value": repr(value)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_fold_state(path: Path) -> dict[str, Any]:
    """A fold worker's checkpointed Trainer state, read without unpickling code (torch `weights_only=True`): the run
    directory is shared storage, and whoever can write it must not gain code execution on every node."""
    import torch  # only fold workers read these (see fold_worker)

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for anything but tensors and plain data
        raise CheckpointError(
            f"{path}: not a plain tensor/state file ({type(e).__name__}); refusing to load it "
            "(fold checkpoints never contain Python objects)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise CheckpointError(f"{path}: not a cellnet fold checkpoint")
    return state


def failure(trial_dir: Path) -> CellnetError | None:
    """Why the trial's workers stopped themselves (diverged, or folds on different weights or precisions), as the
    error to raise; None when they did not."""
    path = trial_dir / DIVERGED_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if info.get("kind") == "weights":
        return WeightsMismatchError("; ".join(info["errors"]))
    if info.get("kind") == "precision":
        return PrecisionMismatchError("; ".join(info["errors"]))
    return DivergedError(f"diverged at epoch {info['epoch']}: " + "; ".join(info["errors"]))


def share_ray_address() -> dict[str, str | None]:
    """Make every Ray Train process find *this* cluster through the State API; returns the previous environment.

    Train V2's PlacementGroupCleaner frees a finished trial's worker placement group via the State API, which looks
    the cluster up from $RAY_ADDRESS or, failing that, the newest cluster on the machine. With a second local Ray
    instance on the host (another user, another search) that lookup fails or finds the wrong cluster, the placement
    group is never freed and the next trial waits for workers forever. So: set RAY_ADDRESS to our GCS and let Train
    propagate it to its controller (and from there to the cleaner).
    """
    before = {"RAY_ADDRESS": os.environ.get("RAY_ADDRESS")}
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    train_constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
    return before


def trial_config(cfg: ExperimentConfig, params: dict[str, Any]) -> TrainConfig:
    """What a trial's folds train: its point over `search.max_epochs`, each epoch drawing at most
    `search.epoch_images` training images (a trial's cost stops growing with the data; the refit sees all)."""
    return cfg.train_config(params, epochs=cfg.search.max_epochs, epoch_images=cfg.search.epoch_images)


def run_trial(config: dict[str, Any], *, cfg: ExperimentConfig, plan: ResourcePlan, refs: dict, run_dir: str) -> None:
    """Tune function trainable: one TorchTrainer fit with a worker per fold (see module doc)."""
    # in the trial's own process: Tune (~2 s) and torch (through ray.train.torch) stay out of the driver
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    started = time.time()
    share_ray_address()
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(run_dir) / TRAIN_DIR / trial_id
    reason = failure(trial_dir)
    if reason:  # a resumed search re-queues errored trials; a diverged one stays diverged
        raise reason
    train_config = trial_config(cfg, config["params"])
    trainer = TorchTrainer(
        fold_worker,
        train_loop_config={
            "refs": refs,
            "train_config": dataclasses.asdict(train_config),
            "max_epochs": cfg.search.max_epochs,
            "checkpoint_every": cfg.search.checkpoint_every,
            "metric": cfg.search.metric,
            "mode": cfg.search.mode,
            "rungs": rung_epochs(cfg),
            "threads": plan.threads_per_fold,
            "use_gpu": plan.gpus_per_fold > 0,
            "trial_dir": str(trial_dir),
            "trial_started": started,
        },
        torch_config=TorchConfig(backend="gloo"),  # only small metric dicts travel; no DDP
        scaling_config=ScalingConfig(
            num_workers=plan.folds,
            use_gpu=plan.gpus_per_fold > 0,
            resources_per_worker=plan.worker_resources,
            placement_strategy="SPREAD",
        ),
        run_config=RunConfig(
            name=trial_id,
            storage_path=str(Path(run_dir) / TRAIN_DIR),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=TRAIN_RETRIES),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # a V2 UserCallback
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]  # V2 RunConfig
        ),
    )
    trainer.fit()
    reason = failure(trial_dir)
    if reason:
        raise reason
