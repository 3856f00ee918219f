"""Train one model on one split: `fit(config, train, val)`. Read top to bottom: data, model, optimisation, epoch loop.

Design notes (why it looks like this):
- Images stay uint8 in memory; the loader only augments (albumentations, per sample) and stacks; the float
  conversion and normalisation happen per batch on the torch side (`prepare_batch`). This keeps the loader several
  times faster than the model even with `num_workers=0`.
- Every random draw of an epoch is derived from (seed, epoch[, sample index]): the shuffle order, each sample's
  augmentation, dropout and MixUp. An epoch is therefore a pure function of the weights, the optimizer state and the
  epoch number, the same with 0 or 4 loader workers, and a resumed run equals a straight one exactly (on CPU).
- Two-phase fine-tuning: for the first `freeze_epochs` the backbone is frozen (no grad, eval mode: its BatchNorm
  statistics do not move either), then trained at `lr * backbone_lr_mult`. `freeze_bn` keeps the backbone's
  BatchNorm layers frozen throughout (common when fine-tuning on small data).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from cellnet.augment import eval_transform, train_transform
from cellnet.config import TrainConfig
from cellnet.data.dataset import CellData
from cellnet.data.folds import class_weights
from cellnet.errors import ConfigError, DataError, DivergedError
from cellnet.metrics import classification_metrics
from cellnet.model import CellNet, build_model, model_normalisation
from cellnet.parent import check_parent, init_from_parent, load_parent
from cellnet.precision import BF16, autocast, inference_precision
from cellnet.train_precision import training_precision

# timm optimizer names for our menu (timm's 'lookahead_' prefix wraps any optimizer in Lookahead).
TIMM_OPTIMIZERS: dict[str, str] = {
    "adam": "adam",
    "adamw": "adamw",
    "sgd": "sgd",
    "lion": "lion",
    "radam": "radam",
    "ranger": "lookahead_radam",
}
PLATEAU_FACTOR = 0.5  # reduce-on-plateau: halve the LR ...
PLATEAU_PATIENCE = 2  # ... after this many epochs without a lower validation loss
COSINE_FLOOR = 1e-3  # cosine decays to lr * COSINE_FLOOR, not to zero
EVAL_BATCH_MULT = 2  # validation needs no activations for backward: use larger batches
THREADS_ENV = "CELLNET_NUM_THREADS"

EpochCallback = Callable[[dict[str, float], "Trainer"], Any]


# ---------------------------------------------------------------------------------------------------------------
# Device and reproducibility


def select_device(name: str | None = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU (with a sensible thread count); 'cpu', 'cuda', 'cuda:N' as given."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device: auto or cpu")
    if device.type == "cpu":
        configure_cpu_threads()
    return device


def configure_cpu_threads() -> int:
    """Use as many threads as this process may run on: $CELLNET_NUM_THREADS, else $OMP_NUM_THREADS (set by Ray for
    its workers), else the CPU affinity count. Never more, so parallel folds do not oversubscribe the cores."""
    n = 0
    for var in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.strip().isdigit() and int(value) > 0:
            n = int(value)
            break
    if n == 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) at once."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------------------
# Data: uint8 arrays in memory, per-sample augmentation seeded by (seed, epoch, index), normalisation per batch


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Batches of (uint8 N×H×W×3 images, int64 labels). Indices are (epoch, i) pairs from `EpochBatchSampler`, so
    workers (even persistent ones) know the epoch, and each sample's augmentation is seeded by (seed, epoch, i)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Any,
        seed: int = 0,
        early: tuple[Any, int] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform if len(transform.transforms) else None
        self.seed = seed
        # (transform, epochs): the first `epochs` epochs use this one instead (progressive resizing: smaller images)
        self.early = (early[0] if len(early[0].transforms) else None, early[1]) if early else None

    def __len__(self) -> int:
        return len(self.labels)

    def transform_for(self, epoch: int) -> Any:
        """The transform of epoch `epoch` (0-based): the early one during the first epochs, if any."""
        return self.early[0] if self.early is not None and epoch < self.early[1] else self.transform

    def __getitems__(self, index: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.fromiter((i for _, i in index), dtype=np.int64, count=len(index))
        batch = self.images[idx]
        transform = self.transform_for(index[0][0]) if len(index) else self.transform
        if transform is not None:
            out = []
            for (epoch, i), image in zip(index, batch, strict=True):
                rng = np.random.default_rng([self.seed, epoch, i])
                transform.set_random_state(rng, random.Random(int(rng.integers(2**62))))
                out.append(transform(image=image)["image"])
            batch = np.stack(out)
        return torch.from_numpy(np.ascontiguousarray(batch)), torch.from_numpy(self.labels[idx])

    def __getitem__(self, index: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index); the shuffle order of epoch e comes from a generator seeded with (seed, e).
    `limit` (shuffled only): an epoch takes the first `limit` images of its order, a fresh subset each epoch."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 0, limit: int | None = None
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = n, batch_size, shuffle, drop_last, seed
        self.drawn = min(n, limit) if shuffle and limit is not None else n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()[: self.drawn]
        else:
            order = list(range(self.n))
        for start in range(0, self.drawn, self.batch_size):
            chunk = order[start : start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield [(self.epoch, i) for i in chunk]

    def __len__(self) -> int:
        return self.drawn // self.batch_size if self.drop_last else math.ceil(self.drawn / self.batch_size)


def _first(batch: Any) -> Any:
    return batch  # the dataset's __getitems__ already returns the stacked batch


def make_loader(
    data: CellData,
    transform: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    early: tuple[Any, int] | None = None,
    epoch_images: int | None = None,
) -> DataLoader[Any]:
    """A loader yielding (uint8 images N×H×W×3, labels). Training batches are shuffled and drop the last partial
    batch (even sizes for MixUp; no batch of 1 for BatchNorm) unless an epoch draws less than one batch. `early`:
    (a transform, n): the first n epochs use it instead of `transform`. `epoch_images` (training): an epoch draws at
    most this many images, a fresh seeded subset each epoch."""
    drawn = min(len(data), epoch_images) if train and epoch_images is not None else len(data)
    drop_last = train and drawn > batch_size
    sampler = EpochBatchSampler(
        len(data), batch_size, shuffle=train, drop_last=drop_last, seed=seed, limit=epoch_images if train else None
    )
    return DataLoader(
        ImageDataset(data.images, data.labels, transform, seed, early),
        batch_sampler=sampler,
        collate_fn=_first,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        # a private generator: the loader's per-iterator base-seed draw must not consume the global torch RNG
        # (dropout), or in-process and persistent-worker loaders would diverge after the first epoch
        generator=torch.Generator().manual_seed(seed),
    )


def prepare_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 N×H×W×3 → normalised float N×3×H×W on `device` (channels_last memory layout on request)."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(dtype=torch.float32, memory_format=fmt)
    m, s = _norm_tensors(tuple(mean), tuple(std), device)
    return x.sub_(m).div_(s)


@functools.lru_cache(maxsize=8)
def _norm_tensors(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std scaled to uint8 range, on the device once (not a host-to-device copy per batch)."""
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return m, s


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Softmax probabilities (N×k float32) for uint8 N×S×S×3 `images`: the exact preprocessing of validation, in
    `precision` (default: bf16 on CUDA, as validation there; on CPU `cellnet.precision.inference_precision`, bf16
    where the CPU has it)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = precision or (BF16 if device.type == "cuda" else inference_precision(device))
    model.eval()
    transform = eval_transform(int(images.shape[1]), input_size)
    labels = np.zeros(len(images), dtype=np.int64)
    data = CellData(images, labels, ("?",), np.arange(len(images)).astype(str))
    out = []
    for x, _ in make_loader(data, transform, batch_size=batch_size, train=False):
        with autocast(precision, device):
            logits = model(prepare_batch(x, mean, std, device, channels_last=True))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(model: CellNet, config: TrainConfig) -> torch.optim.Optimizer:
    """timm optimizer over four groups: backbone/head × decayed/not (biases and norm weights get no weight decay);
    the backbone's groups use `lr * backbone_lr_mult`."""

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        out = []
        for part, lr in ((model.backbone, config.lr * config.backbone_lr_mult), (model.head, config.lr)):
            decay = [p for p in part.parameters() if p.ndim > 1]
            no_decay = [p for p in part.parameters() if p.ndim <= 1]
            out += [
                {"params": decay, "lr": lr, "weight_decay": config.weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            ]
        return [g for g in out if g["params"]]

    kwargs: dict[str, Any] = {}
    if config.optimizer == "sgd":
        kwargs["nesterov"] = config.momentum > 0  # torch refuses nesterov without momentum
    return create_optimizer_v2(
        model,
        opt=TIMM_OPTIMIZERS[config.optimizer],
        lr=config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        param_group_fn=groups,
        **kwargs,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    """cosine: linear warm-up for `warmup_epochs`, then cosine decay to lr x COSINE_FLOOR by the end of `epochs`;
    constant: the same warm-up, then flat -- both timm schedulers stepped per iteration (`step_update`);
    plateau: torch's ReduceLROnPlateau on the validation loss, stepped per epoch."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
        )
    warm = min(config.warmup_epochs, config.epochs - 1)  # at least one epoch of the schedule itself
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=config.schedule,
        num_epochs=config.epochs - warm,
        warmup_epochs=warm,
        warmup_prefix=True,  # warm-up first, then the whole cosine: `epochs` in all
        warmup_lr=config.lr / max(1, warm * steps_per_epoch),
        min_lr=config.lr * COSINE_FLOOR,
        step_on_epochs=False,
        updates_per_epoch=max(1, steps_per_epoch),
    )
    return scheduler


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against soft targets (MixUp/CutMix); with class weights it is the weighted mean that
    `F.cross_entropy(weight=...)` computes for one-hot targets."""
    logp = F.log_softmax(logits.float(), dim=1)
    if weight is None:
        return -(target * logp).sum(dim=1).mean()
    wt = target * weight
    return -(wt * logp).sum() / wt.sum()


# ---------------------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class FitResult:
    """What `fit` returns: the model with the best epoch's weights (eval mode) and the per-epoch history."""

    model: CellNet
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    config: TrainConfig = field(default_factory=TrainConfig)
    stopped_early: bool = False


@dataclass
class BestEpoch:
    """The best epoch so far of one run -- by val_accuracy (the first of equal ones), or simply the last epoch when
    there is no validation -- and a CPU copy of its weights (None: the live weights are the best ones)."""

    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module, *, has_val: bool) -> bool:
        """Record `epoch` if it is the new best; True when it was."""
        if has_val and self.metrics and not metrics["val_accuracy"] > self.metrics["val_accuracy"]:
            return False
        self.epoch, self.metrics = epoch, dict(metrics)
        self.weights = _copy_state(model) if has_val else None
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.epoch,
            "best_metrics": dict(self.metrics),
            "best_weights": None if self.weights is None else dict(self.weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["best_epoch"])
        self.metrics = dict(state["best_metrics"])
        self.weights = None if state["best_weights"] is None else dict(state["best_weights"])


class Trainer:
    """One model, one train/val split, stepped an epoch at a time (`train_epoch`); `fit` drives it.

    `state_dict()` holds everything needed to continue exactly: weights, optimizer, scheduler, epoch, the best epoch
    and its weights, the history. (Random state needs no saving: each epoch reseeds from (seed, epoch).)
    """

    def __init__(
        self, config: TrainConfig, train: CellData, val: CellData | None, *, device: str | None = None
    ) -> None:
        _check_data(train, val)
        self.device = select_device(device or config.device)
        self.cuda = self.device.type == "cuda"
        self.num_classes = len(train.classes)
        self.image_size = train.image_size
        self.has_val = val is not None and len(val) > 0
        self.init_note: str | None = None  # where an init_checkpoint's weights went (None: not started from one)
        # what it trains in: `precision` as given, or auto decided (cellnet.train_precision); it validates as the
        # model will predict: on a CPU in bf16 where the CPU has it (1.7x faster, issue 33), else as it trains
        self.precision = training_precision(config, self.device, config.input_size or self.image_size)
        self.config = config = replace(config, precision=self.precision)
        self.eval_precision = self.precision if self.cuda else inference_precision(self.device)

        seed_everything(config.seed)  # the initial weights depend on the seed only
        # channels_last on every device: on CPU too it is oneDNN's fast layout (bench/bench_train.py: 1.2x for
        # resnet10t, 1.5-2.6x for EfficientNet-Lite's depthwise convolutions)
        model = self._initial_model(config, train.classes).to(self.device).to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.model: nn.Module = model  # callers may wrap it (DDP); `core` is always the CellNet
        self.mean, self.std = model_normalisation(model)
        self.train_loader, self.val_loader = self._loaders(train, val)
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config, len(self.train_loader))
        self.class_weight = (
            torch.tensor(class_weights(train.labels, self.num_classes), dtype=torch.float32).to(self.device)
            if config.class_weights == "inverse_frequency"
            else None
        )
        self.mixup = (
            Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                label_smoothing=config.label_smoothing,
                num_classes=self.num_classes,
            )
            if config.mixup > 0 or config.cutmix > 0
            else None
        )

        self.epoch = 0  # epochs completed
        self.best = BestEpoch()
        self.history: list[dict[str, float]] = []

    def _initial_model(self, config: TrainConfig, classes: tuple[str, ...]) -> CellNet:
        """The model before its first step: `build_model`'s (ImageNet weights or random), or with
        `init_checkpoint` a deployed model's weights (`cellnet.parent`: the backbone, and the head when the classes
        are its)."""
        if config.init_checkpoint is None:
            return build_model(config, self.num_classes)
        parent = load_parent(config.init_checkpoint)
        check_parent(parent, config)
        model = build_model(replace(config, pretrained=False, weights_file=None), self.num_classes)
        self.init_note = init_from_parent(model, parent, classes)
        return model

    # -- one epoch ----------------------------------------------------------------------------------------------

    def _loaders(self, train: CellData, val: CellData | None) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
        """The augmented, shuffled training loader and the plain validation loader (None without validation)."""
        c = self.config
        kw: dict[str, Any] = {"seed": c.seed, "num_workers": c.num_workers, "pin_memory": self.cuda}

        def augment(size: int | None) -> Any:
            return train_transform(
                c.aug_strength,
                self.image_size,
                size,
                zoom_aug=c.zoom_aug,
                stain_aug=c.stain_aug,
                policy=c.aug_policy,
                magnitude=c.aug_magnitude,
            )

        early = (augment(c.low_res_size or self.image_size), c.low_res_epochs) if c.low_res_epochs else None
        train_loader = make_loader(
            train,
            augment(c.input_size),
            batch_size=c.batch_size,
            train=True,
            early=early,
            epoch_images=c.epoch_images,
            **kw,
        )
        if val is None or not self.has_val:
            return train_loader, None
        plain = eval_transform(self.image_size, c.input_size)
        early_val = (eval_transform(self.image_size, c.low_res_size or self.image_size), c.low_res_epochs)
        val_loader = make_loader(
            val, plain, batch_size=c.batch_size * EVAL_BATCH_MULT, train=False, early=early_val if early else None, **kw
        )
        return train_loader, val_loader

    # -- one epoch ----------------------------------------------------------------------------------------------

    def train_epoch(self, *, validate: bool = True) -> dict[str, float]:
        """Train one epoch, validate, update the best-so-far; returns the epoch's metrics (CONTRACTS keys).
        `validate=False` (the search, between the epochs it scores) skips the validation pass: no val_* keys, and
        the epoch cannot become the best one (under ReduceLROnPlateau it must validate: the schedule reads it)."""
        if not validate and self.config.schedule == "plateau":
            raise ValueError("the plateau schedule steps on each epoch's validation loss: validate=False is refused")
        t0 = time.perf_counter()
        loss, accuracy, seen, lr = self._train_batches()
        train_time = time.perf_counter() - t0
        metrics: dict[str, float] = {"epoch": float(self.epoch + 1), "train_loss": loss, "train_accuracy": accuracy}
        validated = validate and self.val_loader is not None
        if validated:
            metrics.update(self._validate())
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics.get("val_loss", metrics["train_loss"]))
        metrics["lr"] = lr
        metrics["images_per_s"] = seen / train_time if train_time > 0 else 0.0
        metrics["epoch_time_s"] = time.perf_counter() - t0

        self.epoch += 1
        self.history.append(metrics)
        if validated or not self.has_val:
            self.best.update(self.epoch, metrics, self.core, has_val=self.has_val)
        return metrics

    def _train_batches(self) -> tuple[float, float, int, float]:
        """One pass over the training loader: (mean loss, accuracy, images seen, the last learning rate). Every
        random draw of the pass is seeded from (seed, epoch); the loss is checked for NaN/inf as it goes."""
        c, e = self.config, self.epoch
        self._set_trainable(frozen=e < c.freeze_epochs)
        seed = _epoch_seed(c.seed, e)
        torch.manual_seed(seed)  # dropout, drop-path
        np.random.seed(seed)  # timm Mixup draws lambda and the mix/cut choice from numpy
        self.train_loader.batch_sampler.set_epoch(e)  # type: ignore[union-attr]
        per_iter = hasattr(self.scheduler, "step_update")  # timm: the LR is a function of the update count
        steps = e * len(self.train_loader)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        pending: list[tuple[int, torch.Tensor, float]] = []  # (batch, loss, lr) not yet checked for NaN
        check_every = 25 if self.cuda else 1  # .item() syncs the GPU; on CPU it is free
        lr = self._lr()
        for b, (images, labels) in enumerate(self.train_loader):
            lr = self._lr()
            loss, hits = self._step(images, labels)
            if per_iter:
                steps += 1
                self.scheduler.step_update(num_updates=steps)
            loss_sum += loss * len(labels)
            correct += hits
            seen += len(labels)
            pending.append((b, loss, lr))
            if len(pending) >= check_every:
                self._check_finite(pending)
        self._check_finite(pending)
        return float(loss_sum) / max(1, seen), float(correct) / max(1, seen), seen, lr

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a uint8 batch (MixUp/CutMix when set and the batch is even): (loss, correct)."""
        x = prepare_batch(images, self.mean, self.std, self.device, channels_last=True)
        y = labels.to(self.device, non_blocking=True)
        with autocast(self.precision, self.device):  # bf16 autocast needs no loss scaling; the loss is float32
            if self.mixup is not None and len(y) % 2 == 0:
                x, target = self.mixup(x, y)
                logits = self.model(x)
                loss = soft_cross_entropy(logits, target, self.class_weight)
            else:
                logits = self.model(x)
                loss = F.cross_entropy(
                    logits.float(), y, weight=self.class_weight, label_smoothing=self.config.label_smoothing
                )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()

    def _set_trainable(self, *, frozen: bool) -> None:
        """Frozen backbone: no grads and eval mode (BatchNorm statistics stay put too). `freeze_bn` additionally keeps
        every backbone BatchNorm frozen after unfreezing."""
        self.model.train()
        backbone = self.core.backbone
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            backbone.eval()
        elif self.config.freeze_bn:
            for m in backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
                    for p in m.parameters():
                        p.requires_grad_(False)

    @property
    def core(self) -> CellNet:
        """The CellNet itself, also when a caller has wrapped `.model` (e.g. in DistributedDataParallel)."""
        model = getattr(self.model, "module", self.model)
        assert isinstance(model, CellNet)
        return model

    def _lr(self) -> float:
        return float(max(g["lr"] for g in self.optimizer.param_groups))

    def _check_finite(self, pending: list[tuple[int, torch.Tensor, float]]) -> None:
        if not pending:
            return
        values = torch.stack([loss for _, loss, _ in pending]).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            b, _, lr = pending[int(bad[0])]
            raise DivergedError(
                f"training diverged: loss is {float(values[int(bad[0])])} at epoch {self.epoch + 1}, batch {b + 1} "
                f"(lr {lr:.3g}, optimizer {self.config.optimizer}); lower lr (e.g. {self.config.lr / 10:.3g}), "
                f"use warm-up (warmup_epochs) or another optimizer"
            )
        pending.clear()

    @property
    def input_size_now(self) -> int | None:
        """The input size of the last epoch trained (validated and scored at it too): `low_res_size` (default the
        images' own size) during the first `low_res_epochs` epochs, else `input_size`. A model trained at 64 px and
        scored at 96 px reads worse than either (measured on real cells: 0.47 vs 0.82 robust accuracy after 2 epochs),
        so a rung during the low-res epochs compares trials at the size they trained at."""
        c = self.config
        if c.low_res_epochs and 0 < self.epoch <= c.low_res_epochs:
            return c.low_res_size or self.image_size
        return c.input_size

    @torch.inference_mode()
    def _validate(self) -> dict[str, float]:
        assert self.val_loader is not None
        self.val_loader.batch_sampler.set_epoch(self.epoch)  # type: ignore[union-attr]  # early epochs: low res
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        preds, trues = [], []
        n = 0
        for images, labels in self.val_loader:
            x = prepare_batch(images, self.mean, self.std, self.device, channels_last=True)
            y = labels.to(self.device, non_blocking=True)
            with autocast(self.eval_precision, self.device):
                logits = self.model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            preds.append(logits.argmax(dim=1).cpu())
            trues.append(labels)
            n += len(labels)
        m = classification_metrics(torch.cat(trues).numpy(), torch.cat(preds).numpy(), self.num_classes)
        return {"val_loss": float(loss_sum) / max(1, n), **{f"val_{k}": v for k, v in m.items()}}

    # -- best weights and exact resume ----------------------------------------------------------------------

    @property
    def best_epoch(self) -> int:
        return self.best.epoch

    @property
    def best_metrics(self) -> dict[str, float]:
        return self.best.metrics

    def best_weights(self) -> dict[str, torch.Tensor]:
        """A copy of the best epoch's weights (by val_accuracy; the last epoch when there is no validation)."""
        if self.best.weights is None:
            return _copy_state(self.core)
        return {k: v.clone() for k, v in self.best.weights.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue this run exactly (torch.save-able; tensors on CPU)."""
        return {
            "format": 1,
            "epoch": self.epoch,
            "model": _copy_state(self.core),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            **self.best.state_dict(),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a Trainer built with the same config and data."""
        if state.get("format") != 1:
            raise ConfigError(f"not a cellnet Trainer state (format {state.get('format')!r}, expected 1)")
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best.load_state_dict(state)
        self.history = [dict(h) for h in state["history"]]


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return copy.deepcopy(obj)


def _check_data(train: CellData, val: CellData | None) -> None:
    if len(train) < 2:
        raise DataError(f"training needs at least 2 images, got {len(train)}")
    for name, d in (("train", train), ("val", val)):
        if d is None:
            continue
        if d.images.dtype != np.uint8 or d.images.ndim != 4 or d.images.shape[3] != 3:
            raise DataError(f"{name} images must be uint8 N×S×S×3, got {d.images.dtype} {d.images.shape}")
        if len(d) and (d.labels.min() < 0 or d.labels.max() >= len(train.classes)):
            raise DataError(
                f"{name} labels must be in [0, {len(train.classes)}), got [{d.labels.min()}, {d.labels.max()}]"
            )
    if val is not None and (val.classes != train.classes or val.image_size != train.image_size):
        raise DataError(
            f"val must have the train classes and image size: {val.classes}@{val.image_size} vs "
            f"{train.classes}@{train.image_size}"
        )


# ---------------------------------------------------------------------------------------------------------------
# fit


def fit(
    config: TrainConfig,
    train: CellData,
    val: CellData | None,
    *,
    epochs: int | None = None,
    on_epoch: EpochCallback | None = None,
    early_stopping: bool = True,
    resume: dict[str, Any] | None = None,
    device: str | None = None,
) -> FitResult:
    """Train for `epochs` (default `config.epochs`; it also sets the schedule length) and return the best model.

    `early_stopping=True` stops after `config.early_stopping_patience` epochs without a better val_accuracy
    (0 disables); `False` runs exactly `epochs` epochs (lock-step folds in a search). `on_epoch(metrics, trainer)`
    runs after every epoch; returning True stops the run. `resume` is a `Trainer.state_dict()`.
    """
    if epochs is not None and epochs != config.epochs:
        try:
            config = replace(config, epochs=epochs)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    trainer = Trainer(config, train, val, device=device)
    if resume is not None:
        trainer.load_state_dict(resume)
    patience = config.early_stopping_patience if early_stopping and trainer.has_val else 0
    stopped = False
    while trainer.epoch < config.epochs:
        metrics = trainer.train_epoch()
        if on_epoch is not None and on_epoch(metrics, trainer) is True:
            stopped = True
            break
        if patience and trainer.epoch - trainer.best_epoch >= patience:
            stopped = True
            break
    model = trainer.core
    model.load_state_dict(trainer.best_weights())
    model.eval()
    return FitResult(
        model=model,
        history=list(trainer.history),
        best_epoch=trainer.best_epoch,
        best_metrics=dict(trainer.best_metrics),
        mean=trainer.mean,
        std=trainer.std,
        config=trainer.config,  # its precision as trained: auto resolved
        stopped_early=stopped,
    )
