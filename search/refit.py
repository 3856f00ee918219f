"""The Ray refit: the winning configuration trained on all cleaned data into one cellnet checkpoint (`retrain`).

    search/winner.py refit_winner ─┐
    search/retrain.py retrain_run ─┴─ retrain() ─ TorchTrainer.fit() ─ worker(s) `_train_loop` ─ epoch metrics
                                         │                               │        └─ progress queue ─ bar (driver)
                                         │                               └─ rank 0: checkpoint ─ ray.train.report
                                         └─ Ray's storage ─ load_checkpoint (integrity check) ─ out_dir (atomic)

Runs as one Ray Train `TorchTrainer` launched from the driver (outside Tune), when the search is over and nothing
else runs. With several GPUs in the cluster the model is trained data-parallel (DDP, one worker per GPU, each worker
on an equal shard of the images, so the effective batch is `batch_size x workers`); on CPU one worker takes every
CPU of the largest node (as many threads) and runs plain `cellnet.train`. No validation and no early stopping.

Epochs: `retrain.epochs: best` (default) repeats the searched schedule -- the LR schedule built over the trial's
`search.max_epochs` -- and stops at the winner's best epoch, i.e. the weights the fold models had at the epoch the
search ranked them by (a trial stopped before its schedule ended gets a fresh best-epoch-long schedule instead:
`search.results.retrain_epochs`); `retrain.epochs: N` (or `--epochs N`) trains a fresh N-epoch schedule to its end.

Rank 0 writes the checkpoint and reports it to Ray Train, which persists it in `storage_path` (shared storage on a
multi-node cluster, like Tune's); the driver then loads it (a full integrity check) and saves it atomically to
`out_dir`. While it trains, the driver shows a progress bar (epoch, loss, images/s, ETA) fed by rank 0.

Ray is imported inside the functions that use it: `python -m search.retrain` imports this module before it checks
that the `search` extra is installed (and says what to install instead of a traceback).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cellnet.checkpoint import load_checkpoint, save_checkpoint
from cellnet.config import ExperimentConfig, TrainConfig
from cellnet.constants import AUTO
from cellnet.data.dataset import CellData
from cellnet.errors import CellnetError, ConfigError, PrecisionMismatchError, WeightsMismatchError
from cellnet.progress import progress_bar
from cellnet.weights import weights_identity
from search.resources import ray_cluster


@dataclass(frozen=True)
class RetrainScaling:
    """What the retrain asks Ray for: `workers` x `resources_per_worker`, on GPUs or not, with `threads` each."""

    workers: int
    use_gpu: bool
    resources_per_worker: dict[str, float]
    threads: int


def retrain_scaling(
    nodes: Sequence[dict[str, float]],
    *,
    use_gpu: bool | None = None,
    num_workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpu_worker_cpus: float = 1.0,
) -> RetrainScaling:
    """The retrain's resource request for a cluster of `nodes` (per-node CPU/GPU totals, alive nodes).

    GPU (the default when the cluster has one): one worker per GPU (DDP when > 1), `gpu_worker_cpus` CPUs each.
    CPU: one worker with every CPU of the largest node -- the search is over, nothing else runs, and a retrain on one
    core of a 2-core machine takes twice as long as it needs to; `num_workers` > 1 split that node's CPUs between
    them. `cpus_per_worker` overrides the CPU count.
    """
    gpus = int(sum(n.get("GPU", 0.0) for n in nodes))
    use_gpu = gpus >= 1 if use_gpu is None else use_gpu
    if use_gpu:
        cpus = float(cpus_per_worker or gpu_worker_cpus)
        return RetrainScaling(num_workers or max(1, gpus), True, {"CPU": cpus, "GPU": 1.0}, max(1, math.floor(cpus)))
    node_cpus = max((float(n.get("CPU", 0.0)) for n in nodes), default=1.0)
    workers = num_workers or 1
    # Several CPU workers (the DDP path exercised without GPUs) share the node: each asking for all of it would
    # wait forever for a second node.
    cpus = float(cpus_per_worker or max(1.0, math.floor(node_cpus / workers)))
    return RetrainScaling(workers, False, {"CPU": cpus}, max(1, math.floor(cpus)))


def retrain(
    cfg: ExperimentConfig,
    params: dict[str, Any],
    data: Any,
    epochs: int,
    out_dir: str | Path,
    *,
    schedule_epochs: int | None = None,
    use_gpu: bool | None = None,
    num_workers: int | None = None,
    cpus_per_worker: float | None = None,
    cv_metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    expected_weights: str | None = None,
    expected_precision: str | None = None,
    storage_path: str | Path | None = None,
    show_progress: bool | None = None,
) -> Path:
    """Train `cfg.train_config(params)` on all of `data` (a CellData or a Ray ObjectRef to one) for `epochs` epochs
    of a schedule `schedule_epochs` long (default: `epochs`) and save the checkpoint to `out_dir`. Returns `out_dir`.

    Resources: `retrain_scaling` of the connected cluster (use_gpu / num_workers / cpus_per_worker override it).
    cv_metrics (the winner's cross-validation numbers) and the retrain's own train metrics go into the checkpoint's
    metrics; `provenance` as given. Needs `ray.init()` done (search.run's, or the CLI's). `show_progress`: None =
    a bar when stderr is a terminal. `expected_weights` / `expected_precision`: what the winner's folds started from
    and trained in; `precision: auto` trains in the latter, and a refit that did not is refused before it is saved.
    """
    # the search extra, checked by the commands before they get here (module docstring)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    schedule_epochs = int(schedule_epochs or epochs)
    if epochs < 1 or schedule_epochs < epochs:
        raise ConfigError(f"retrain epochs must be in [1, {schedule_epochs}] (the schedule's length), got {epochs}")
    if not ray.is_initialized():
        ray.init()
    out_dir = Path(out_dir).resolve()
    config = refit_config(cfg, params, schedule_epochs, expected_precision)
    scaling = retrain_scaling(
        ray_cluster().nodes,
        use_gpu=use_gpu,
        num_workers=num_workers,
        cpus_per_worker=cpus_per_worker,
        gpu_worker_cpus=max(1.0, cfg.resources.cpus_per_fold),
    )
    ref = data if isinstance(data, ray.ObjectRef) else ray.put(data)
    storage = Path(storage_path).resolve() if storage_path else out_dir.parent
    storage.mkdir(parents=True, exist_ok=True)
    name = f".ray-retrain-{out_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = Queue(actor_options={"num_cpus": 0})
    where = f"{scaling.workers} GPU worker(s)" if scaling.use_gpu else f"{scaling.threads} CPU thread(s)"
    print(f"retrain: {epochs} epochs (schedule {schedule_epochs}) on {where}", flush=True)

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "data": ref,
            "config": dataclasses.asdict(config),
            "run_epochs": int(epochs),
            "threads": scaling.threads,
            "cv_metrics": cv_metrics or {},
            "provenance": provenance or {},
            "progress": progress,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.workers, use_gpu=scaling.use_gpu, resources_per_worker=scaling.resources_per_worker
        ),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    stop = threading.Event()
    watcher = threading.Thread(
        target=_show_progress, args=(progress, int(epochs), stop, show_progress), daemon=True, name="retrain-bar"
    )
    watcher.start()
    try:
        result = trainer.fit()
    except Exception as e:
        _raise_user_error(e)
        raise
    finally:
        stop.set()
        watcher.join(timeout=5)
        ray.kill(progress.actor)  # type: ignore[arg-type]
    if result.checkpoint is None:
        raise CellnetError(f"retrain finished without a checkpoint (Ray Train run {storage / name})")
    with tempfile.TemporaryDirectory(prefix=".retrain-", dir=storage) as tmp:
        refit = load_checkpoint(result.checkpoint.to_directory(tmp))  # loading verifies weights and shapes
        if expected_weights is not None:
            check_same_start(refit.metrics["retrain"]["weights"], expected_weights)
        if expected_precision is not None:
            check_same_precision(refit.metrics["retrain"].get("precision"), expected_precision)
        refit.save(out_dir)
    shutil.rmtree(storage / name, ignore_errors=True)  # Ray's copy; the checkpoint now lives in out_dir
    return out_dir


def refit_config(
    cfg: ExperimentConfig, params: dict[str, Any], schedule_epochs: int, expected_precision: str | None
) -> TrainConfig:
    """What the refit trains: the trial's config over `schedule_epochs`, at full size throughout (progressive
    resizing makes the search's early epochs cheap where ASHA decides; the deployed model trains as well as it can:
    on real cells the low-res start cost 0.5-0.9 points after 6 epochs), on every image each epoch (whatever
    `search.epoch_images` capped the trials at), in the winner's folds' precision."""
    config = cfg.train_config(params, epochs=schedule_epochs, low_res_epochs=0, epoch_images=None)
    if expected_precision is not None:
        if config.precision == AUTO:  # as the winner's folds did, not decided again on this machine
            config = dataclasses.replace(config, precision=expected_precision)
        check_same_precision(config.precision, expected_precision)  # before training, when the config says
    return config


def check_same_start(refit: str, winner: str) -> None:
    """The refit must start from the weights its winner's folds started from (`cellnet.weights.weights_identity`):
    under `pretrained: auto` a process decides by itself, and a retrain on a node without the weights package would
    train from scratch what the search fine-tuned. A WeightsMismatchError naming both, before anything is saved."""
    if weights_identity(refit) != weights_identity(winner):
        raise WeightsMismatchError(
            f"the refit started from {refit or 'none (random)'}, but the winner's folds from {winner or 'none'}: "
            "install the same weights where the refit runs (pip install 'cellnet[weights]'), or set pretrained: true "
            "to fail where they are missing; nothing was deployed"
        )


def check_same_precision(refit: str | None, winner: str) -> None:
    """The refit must train in the precision its winner's folds trained in (fp32 or bf16): their epochs and
    calibration describe that model. A PrecisionMismatchError naming both, before anything is saved."""
    if refit != winner:
        raise PrecisionMismatchError(
            f"the refit trained in {refit or 'an unrecorded precision'}, but the winner's folds in {winner}: set "
            f"train.precision: {winner} (or leave it auto) where the refit runs; nothing was deployed"
        )


def _show_progress(queue: Any, epochs: int, stop: threading.Event, enabled: bool | None) -> None:
    """The retrain's bar, fed by rank 0's per-epoch metrics: epoch, loss, images/s, ETA (tqdm's, from epoch times).

    Without a terminal (a log file) the bar is off and each epoch prints one line, so a log still shows progress.
    """
    from ray.util.queue import Empty  # the search extra (module docstring)

    with progress_bar(epochs, "retrain", "epoch", enabled=enabled) as bar:
        while not stop.is_set() and bar.n < epochs:
            try:
                m = queue.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the retrain ended or failed; fit() reports which
                return
            bar.set_postfix(loss=f"{m['train_loss']:.3f}", img_s=f"{m['images_per_s']:.0f}", refresh=False)
            bar.update(int(m["epoch"]) - bar.n)
            if bar.disable and enabled is None:  # no terminal (a log, a pipe): one plain line per epoch instead
                print(
                    f"retrain: epoch {int(m['epoch'])}/{epochs}, loss {m['train_loss']:.3f}, "
                    f"{m['images_per_s']:.0f} images/s",
                    flush=True,
                )


def _raise_user_error(error: BaseException) -> None:
    """A worker's CellnetError (e.g. DivergedError: NaN loss) reaches the user as itself, not as a Ray traceback."""
    failures = getattr(error, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        cause = getattr(failure, "cause", failure)
        if isinstance(cause, CellnetError):
            raise type(cause)(f"retrain (worker {rank}): {cause}") from None


# ---------------------------------------------------------------------------------------------------------------
# The worker loop


def _train_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of the data (all of it with one worker), `epochs` epochs, rank 0 saves."""
    # the search extra (module docstring); cellnet.train (timm, torchvision) only in the worker, the driver never trains
    import ray
    import ray.train
    import ray.train.torch

    from cellnet.train import Trainer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ["CELLNET_NUM_THREADS"] = str(loop_config["threads"])
    data = loop_config["data"]
    data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    config = TrainConfig(**loop_config["config"])
    device = ray.train.torch.get_device()

    if world > 1:
        data = shard(data, rank, world, seed=config.seed)
        # rank-specific seed: different augmentation/dropout draws per shard; DDP copies rank 0's initial weights
        trainer = Trainer(dataclasses.replace(config, seed=config.seed + rank), data, None, device=str(device))
        trainer.model = _DDP(
            trainer.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.freeze_epochs > 0 or config.freeze_bn,
        )
    else:
        trainer = Trainer(config, data, None, device=str(device))

    run_epochs = int(loop_config["run_epochs"])
    progress = loop_config["progress"] if rank == 0 else None
    metrics: dict[str, float] = {}
    for _ in range(run_epochs):
        m = trainer.train_epoch()
        metrics = {k: float(m[k]) for k in ("epoch", "train_loss", "train_accuracy", "lr", "images_per_s")}
        if world > 1:  # mean loss/accuracy over equal shards, summed throughput
            t = torch.tensor([metrics["train_loss"], metrics["train_accuracy"], metrics["images_per_s"]])
            torch.distributed.all_reduce(t)
            metrics.update(train_loss=float(t[0]) / world, train_accuracy=float(t[1]) / world, images_per_s=float(t[2]))
        if progress is not None:
            progress.put_nowait(metrics)
        if trainer.epoch < run_epochs:
            ray.train.report(metrics)

    model = trainer.model.module if isinstance(trainer.model, _DDP) else trainer.model
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            retrain_metrics = {
                **{k: v for k, v in metrics.items() if k != "epoch"},
                "epochs": run_epochs,
                "schedule_epochs": config.epochs,
                "num_images": len(data) * world,
                "workers": world,
                "weights": model.weights_source or "none",
                "precision": trainer.precision,
            }
            path = save_checkpoint(
                Path(tmp) / "checkpoint",
                model,
                config=config,
                classes=data.classes,
                image_size=data.image_size,
                mean=trainer.mean,
                std=trainer.std,
                metrics={**loop_config["cv_metrics"], "retrain": retrain_metrics},
                provenance=loop_config["provenance"],
            )
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
        ray.train.report(metrics, checkpoint=checkpoint)  # every rank reports the same number of times


def shard(data: CellData, rank: int, world: int, *, seed: int = 0) -> CellData:
    """Rank `rank`'s equal share, as torch's DistributedSampler draws it (a seeded permutation, padded by wrapping),
    so every worker runs the same number of batches: DDP needs every rank in every all-reduce. Drawn once; each
    worker's loader then shuffles its share per epoch."""
    everything: Any = range(len(data))  # the sampler only needs len()
    sampler: DistributedSampler[int] = DistributedSampler(everything, num_replicas=world, rank=rank, seed=seed)
    return data.subset(np.fromiter(iter(sampler), dtype=np.int64))


class _ForwardingDDP(DistributedDataParallel):
    """DDP that also answers `.backbone`/`.head` (Trainer freezes and unfreezes the backbone by attribute)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


_DDP: Any = _ForwardingDDP  # Any: it stands in for the CellNet `Trainer.model` is typed as
