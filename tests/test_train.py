"""The training engine on real tiny timm models and synthetic cell images (32 px, a few hundred images)."""

from __future__ import annotations

import os
from dataclasses import replace

os.environ.setdefault("CELLNET_NUM_THREADS", "1")  # one thread: fast and exactly reproducible on a shared CPU

import numpy as np
import pytest
import torch

from cellnet.config import OPTIMIZERS, TrainConfig
from cellnet.data.dataset import CellData
from cellnet.data.synthetic import generate
from cellnet.errors import DivergedError
from cellnet.model import build_model
from cellnet.train import (
    Trainer,
    build_optimizer,
    build_scheduler,
    fit,
    prepare_batch,
    select_device,
)

TIME_KEYS = ("images_per_s", "epoch_time_s")
TINY = TrainConfig(backbone="test_resnet", epochs=3, batch_size=32, lr=3e-3, warmup_epochs=0, aug_strength=0.3)


@pytest.fixture(scope="module")
def split() -> tuple[CellData, CellData]:
    data = generate(480, image_size=32, seed=0)
    return data.subset(np.arange(320)), data.subset(np.arange(320, 480))


@pytest.fixture(scope="module")
def small(split: tuple[CellData, CellData]) -> tuple[CellData, CellData]:
    """Enough for tests that compare runs rather than measure learning."""
    return split[0].subset(np.arange(128)), split[1].subset(np.arange(64))


def _no_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in TIME_KEYS} for h in history]


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learns_and_keeps_best_epoch(split: tuple[CellData, CellData]) -> None:
    train, val = split
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def remember(metrics: dict[str, float], trainer: Trainer) -> None:
        snapshots[int(metrics["epoch"])] = _params(trainer.model)

    result = fit(replace(TINY, epochs=6), train, val, on_epoch=remember, early_stopping=False)
    assert len(result.history) == 6
    chance = 1 / len(train.classes)
    assert result.best_metrics["val_accuracy"] >= 0.5 > 3 * chance, result.history
    assert result.best_metrics["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    assert _same(_params(result.model), snapshots[result.best_epoch])  # the best epoch's weights are kept
    keys = {
        "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_precision",
        "val_macro_recall", "val_macro_f1", "val_balanced_accuracy", "lr", "images_per_s", "epoch_time_s",
    }  # fmt: skip
    assert set(result.history[0]) == keys
    assert not result.model.training


def test_same_seed_same_history_with_or_without_workers(small: tuple[CellData, CellData]) -> None:
    train, val = small
    cfg = replace(TINY, epochs=2, aug_strength=1.0, mixup=0.2, dropout=0.3)
    a = fit(cfg, train, val, early_stopping=False)
    b = fit(replace(cfg, num_workers=2), train, val, early_stopping=False)
    assert _no_time(a.history) == _no_time(b.history)
    assert _same(_params(a.model), _params(b.model))
    c = fit(replace(cfg, seed=1), train, val, early_stopping=False)
    assert _no_time(c.history) != _no_time(a.history)


def test_resume_equals_straight_run(small: tuple[CellData, CellData]) -> None:
    train, val = small
    cfg = replace(TINY, epochs=3, optimizer="ranger", freeze_epochs=1, warmup_epochs=1, mixup=0.2, cutmix=0.5)
    straight = fit(cfg, train, val, early_stopping=False)

    first = Trainer(cfg, train, val)
    first.train_epoch()
    first.train_epoch()
    state = first.state_dict()
    resumed = fit(cfg, train, val, resume=state, early_stopping=False)
    assert _no_time(resumed.history) == _no_time(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    assert _same(_params(resumed.model), _params(straight.model))


def test_divergence_raises(small: tuple[CellData, CellData]) -> None:
    train, val = small
    cfg = replace(TINY, optimizer="sgd", lr=1e6, epochs=2, head_batchnorm=False, schedule="constant")
    with pytest.raises(DivergedError, match=r"epoch 1, batch \d+ .*lr"):
        fit(cfg, train, val)


def test_poisoned_batch_raises(small: tuple[CellData, CellData], monkeypatch: pytest.MonkeyPatch) -> None:
    train, val = small
    trainer = Trainer(replace(TINY, epochs=1), train, val)
    calls = {"n": 0}
    original = trainer.model.forward

    def poisoned(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = original(x)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(trainer.model, "forward", poisoned)
    with pytest.raises(DivergedError, match=r"epoch 1, batch 3 "):
        trainer.train_epoch()


def test_freeze_phases(small: tuple[CellData, CellData]) -> None:
    train, val = small
    trainer = Trainer(replace(TINY, freeze_epochs=1, freeze_bn=True), train, val)
    backbone0, head0 = _params(trainer.model.backbone), _params(trainer.model.head)
    trainer.train_epoch()
    backbone1, head1 = _params(trainer.model.backbone), _params(trainer.model.head)
    assert _same(backbone0, backbone1)  # weights and BatchNorm statistics untouched while frozen
    assert not _same(head0, head1)
    trainer.train_epoch()
    backbone2 = _params(trainer.model.backbone)
    bn = {n for n, m in trainer.model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    is_bn = {k: k.rsplit(".", 1)[0] in bn for k in backbone2}
    assert bn and all(torch.equal(backbone2[k], backbone1[k]) for k in backbone2 if is_bn[k])  # freeze_bn
    assert any(not torch.equal(backbone2[k], backbone1[k]) for k in backbone2 if not is_bn[k])  # unfrozen


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name: str) -> None:
    cfg = replace(TINY, optimizer=name, backbone_lr_mult=0.1, weight_decay=0.01)
    model = build_model(cfg, 3)
    opt = build_optimizer(model, cfg)
    lrs = {round(g["lr"], 12) for g in opt.param_groups}
    assert lrs == {round(cfg.lr, 12), round(cfg.lr * 0.1, 12)}
    before = _params(model)
    x = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not _same(before, _params(model))


def test_schedules() -> None:
    model = build_model(TINY, 2)

    def lrs(schedule: str, epochs: int = 4, steps: int = 5) -> list[float]:
        cfg = replace(TINY, schedule=schedule, warmup_epochs=1, epochs=epochs)
        opt = build_optimizer(model, cfg)
        sched = build_scheduler(opt, cfg, steps)
        out = []
        for step in range(epochs * steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_update(num_updates=step + 1)  # timm: per-iteration, as Trainer.train_epoch does
        return out

    cos = lrs("cosine")
    assert cos[0] < cos[4] < cos[5] == pytest.approx(TINY.lr)  # warm-up over the first epoch's 5 steps
    assert all(a >= b for a, b in zip(cos[5:], cos[6:], strict=False)) and cos[-1] < 0.05 * TINY.lr
    const = lrs("constant")
    assert const[5:] == [pytest.approx(TINY.lr)] * 15
    cfg = replace(TINY, schedule="plateau")
    opt = build_optimizer(model, cfg)
    plateau = build_scheduler(opt, cfg, 5)
    for _ in range(6):
        plateau.step(1.0)  # never improves
    assert max(g["lr"] for g in opt.param_groups) < TINY.lr


def test_early_stopping_and_no_validation(small: tuple[CellData, CellData]) -> None:
    train, val = small
    # a frozen backbone, no head BatchNorm and a negligible LR: val_accuracy cannot improve after epoch 1
    cfg = replace(
        TINY, epochs=10, freeze_epochs=10, head_batchnorm=False, lr=1e-12, schedule="constant", aug_strength=0.0
    )
    stopped = fit(replace(cfg, early_stopping_patience=2), train, val)
    assert len(stopped.history) == 3 and stopped.best_epoch == 1 and stopped.stopped_early
    exact = fit(replace(cfg, early_stopping_patience=2, epochs=4), train, val, early_stopping=False)
    assert len(exact.history) == 4
    on_epoch_stop = fit(cfg, train, val, on_epoch=lambda m, t: m["epoch"] >= 2)
    assert len(on_epoch_stop.history) == 2

    retrain = fit(replace(TINY, epochs=2, class_weights="inverse_frequency", label_smoothing=0.1), train, None)
    assert retrain.best_epoch == 2 and "val_accuracy" not in retrain.history[-1]
    assert np.isfinite(retrain.history[-1]["train_loss"])


def test_prepare_batch_normalises() -> None:
    images = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    images[:, :, :, 1] = 0
    x = prepare_batch(images, (0.5, 0.5, 0.5), (0.25, 0.5, 0.5))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.tensor(2.0)) and torch.allclose(x[:, 1], torch.tensor(-1.0))
    assert select_device("auto").type in ("cpu", "cuda")


def test_wrapped_model_keeps_plain_state(small: tuple[CellData, CellData]) -> None:
    """A caller may wrap `trainer.model` (search.retrain uses DDP); freezing and states still address the CellNet."""
    train, val = small

    class Wrap(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    trainer = Trainer(replace(TINY, epochs=1, freeze_epochs=1), train, val)
    trainer.model = Wrap(trainer.model)
    trainer.train_epoch()
    assert set(trainer.state_dict()["model"]) == set(trainer.core.state_dict())
    assert not any(k.startswith("module.") for k in trainer.best_weights())


def test_progressive_resizing_trains_the_first_epochs_smaller(small: tuple[CellData, CellData]) -> None:
    """low_res_epochs: the first epochs' batches are at low_res_size (default: the stored images' size, here 32 px),
    the rest at input_size; validation always at input_size; an epoch stays a function of (seed, epoch)."""
    from cellnet.train import Trainer

    train, val = small
    config = replace(TINY, input_size=48, low_res_epochs=2, epochs=3, device="cpu")
    trainer = Trainer(config, train, val, device="cpu")
    loader = trainer.train_loader
    sizes = []
    for epoch in range(3):
        loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        images, _ = next(iter(loader))
        sizes.append(images.shape[1])
    assert sizes == [32, 32, 48]
    assert trainer.val_loader is not None
    for epoch, size in ((0, 32), (1, 32), (2, 48)):  # validated at the size the epoch trained at
        trainer.val_loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
        assert next(iter(trainer.val_loader))[0].shape[1] == size
    assert trainer.input_size_now == 48  # nothing trained yet: the full size
    trainer.train_epoch()
    assert trainer.input_size_now == 32  # the rung after a low-res epoch is scored at low res
    trainer.train_epoch()
    trainer.train_epoch()
    assert trainer.input_size_now == 48
    explicit = Trainer(replace(config, low_res_size=40), train, val, device="cpu").train_loader
    assert next(iter(explicit))[0].shape[1] == 40
    history = fit(config, train, val, early_stopping=False).history
    assert len(history) == 3 and all(np.isfinite(h["train_loss"]) for h in history)
    with pytest.raises(ValueError, match="low_res_size must be >= 16"):
        replace(config, low_res_size=8)


def test_an_epoch_without_validation_trains_the_same_and_cannot_be_the_best(small: tuple[CellData, CellData]) -> None:
    """The search skips the clean validation pass between the epochs it scores: the weights are those of a
    validated run (validation draws nothing from the training RNG), no val_* figure is made up, and the best epoch
    stays a validated one; the plateau schedule, which steps on the validation loss, refuses it."""
    train, val = small
    cfg = replace(TINY, epochs=2)
    validated, skipped = Trainer(cfg, train, val), Trainer(cfg, train, val)
    validated.train_epoch()
    validated.train_epoch()
    first = skipped.train_epoch()
    second = skipped.train_epoch(validate=False)
    assert "val_accuracy" in first and not any(k.startswith("val_") for k in second)
    assert _same(_params(validated.model), _params(skipped.model))
    assert skipped.best.epoch == 1  # epoch 2 was not validated
    with pytest.raises(ValueError, match="plateau"):
        Trainer(replace(cfg, schedule="plateau"), train, val).train_epoch(validate=False)


def test_epoch_images_draws_a_fresh_subset_each_epoch(small: tuple[CellData, CellData]) -> None:
    """epoch_images (search.epoch_images): an epoch trains on at most that many images, a different seeded subset
    each epoch that over epochs reaches other images; the LR schedule counts the shorter epochs; validation whole."""
    from cellnet.train import EpochBatchSampler

    train, val = small  # 128 training images, batch 32
    trainer = Trainer(replace(TINY, epoch_images=64), train, val, device="cpu")
    assert len(trainer.train_loader) == 2 and len(trainer.val_loader or []) == 1
    sampler = EpochBatchSampler(128, 32, shuffle=True, drop_last=True, seed=0, limit=64)
    drawn = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn.append({i for batch in sampler for _, i in batch})
    assert [len(d) for d in drawn] == [64, 64, 64] and drawn[0] != drawn[1] and len(set.union(*drawn)) > 64
    sampler.set_epoch(0)
    assert {i for batch in sampler for _, i in batch} == drawn[0]  # a function of (seed, epoch)
    whole = EpochBatchSampler(128, 32, shuffle=True, drop_last=True, seed=0, limit=500)  # more than the data: all
    assert len(whole) == 4 and sorted(i for batch in whole for _, i in batch) == list(range(128))
    metrics = trainer.train_epoch()
    assert np.isfinite(metrics["train_loss"]) and metrics["images_per_s"] > 0
    small_cap = Trainer(replace(TINY, epoch_images=20), train, val, device="cpu")  # under one batch: one batch of 20
    assert [len(b[1]) for b in small_cap.train_loader] == [20]
    with pytest.raises(ValueError, match="epoch_images must be an int >= 2"):
        replace(TINY, epoch_images=1)
