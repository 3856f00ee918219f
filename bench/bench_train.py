"""Does `cellnet.train.fit` train as fast as a bare PyTorch loop, and does its loader keep up with the model?

Measured side by side in one process, on the same model (`build_model`: timm backbone + head), batch size and images:
- `fit` images/s: `fit()`'s own per-epoch `images_per_s` (training phase: loading, augmentation, normalisation,
  forward/backward/step, LR schedule, NaN checks), with `aug_strength=0` so both sides do the same work;
- `bare` images/s: a plain loop over pre-normalised float tensors already in memory (index shuffle, forward,
  cross-entropy, backward, AdamW step). A bare epoch runs right after each `fit` epoch (from the `on_epoch`
  callback), so both see the same machine load. ratio = fit ÷ bare; target >= 0.95.
- loader images/s: the training DataLoader alone (uint8 arrays → albumentations at `aug_strength` 0.5 and 1.0 →
  stacked batches), compared with the training throughput; target >= 3x.
Ratios are medians over adjacent (fit epoch, bare epoch) pairs, the first (warm-up) pair excluded. Rates per CPU
second of this process are printed too: on a shared machine wall-clock rates swing with other users' load.
Also reported: `fit` with augmentation on (aug_strength 0.5), for information.

    .venv/bin/python -m bench.bench_train [--quick] [--backbone mobilenetv3_small_050] [--image-size 96]
        [--n 1024] [--batch-size 64] [--epochs 4] [--num-workers 0] [--device auto] [--json out.json]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import bench_parser, dump_json
from cellnet.augment import train_transform
from cellnet.config import TrainConfig
from cellnet.data.dataset import CellData
from cellnet.data.synthetic import generate
from cellnet.model import build_model
from cellnet.train import Trainer, fit, make_loader, prepare_batch, select_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """The baseline: what a hand-written PyTorch + timm training loop does per epoch, with data pre-normalised."""

    def __init__(self, config: TrainConfig, data: CellData, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        torch.manual_seed(config.seed)
        self.model = build_model(config, len(data.classes)).to(device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        self.x = prepare_batch(torch.from_numpy(data.images), mean, std, device, channels_last=self.cuda)
        self.y = torch.from_numpy(data.labels).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.batch_size = config.batch_size
        self.g = torch.Generator().manual_seed(0)
        self.cpu_rate = 0.0

    def epoch(self) -> float:
        """One epoch (full batches only, like fit's drop_last); returns images/s (`cpu_rate`: per CPU second)."""
        self.model.train()
        n = (len(self.y) // self.batch_size) * self.batch_size
        order = torch.randperm(len(self.y), generator=self.g)[:n].to(self.device)
        _sync(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                loss = F.cross_entropy(self.model(self.x[idx]).float(), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        _sync(self.device)
        self.cpu_rate = n / (time.process_time() - cpu)
        return n / (time.perf_counter() - start)


def loader_rate(config: TrainConfig, data: CellData, aug_strength: float, epochs: int = 2) -> tuple[float, float]:
    """Images/s of the training DataLoader alone (what `fit` uses: same transform, sampler, workers), per wall
    second and per CPU second of this process (the latter is meaningful with num_workers=0 only)."""
    loader = make_loader(
        data,
        train_transform(aug_strength, data.image_size, config.input_size),
        batch_size=config.batch_size,
        train=True,
        seed=config.seed,
        num_workers=config.num_workers,
    )
    rates, cpu_rates = [], []
    for e in range(epochs + 1):
        loader.batch_sampler.set_epoch(e)  # type: ignore[union-attr]
        start, cpu, n = time.perf_counter(), time.process_time(), 0
        for images, _ in loader:
            n += len(images)
        if e:  # the first pass starts workers
            rates.append(n / (time.perf_counter() - start))
            cpu_rates.append(n / (time.process_time() - cpu))
    return statistics.median(rates), statistics.median(cpu_rates)


def run(
    backbone: str = "mobilenetv3_small_050",
    image_size: int = 96,
    n: int = 1024,
    batch_size: int = 64,
    epochs: int = 4,
    num_workers: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    dev = select_device(device)
    data = generate(n, image_size=image_size, seed=0)
    config = TrainConfig(
        backbone=backbone,
        batch_size=batch_size,
        epochs=epochs,
        aug_strength=0.0,
        schedule="cosine",
        warmup_epochs=0,
        num_workers=num_workers,
        device=str(dev),
    )
    bare = BareLoop(config, data, dev)
    bare.epoch()  # warm-up (allocator, cudnn autotune)
    bare_rates: list[float] = []
    fit_rates: list[float] = []
    bare_cpu: list[float] = []
    fit_cpu: list[float] = []
    mark = [time.process_time()]
    n_train = (len(data) // batch_size) * batch_size

    def interleave(metrics: dict[str, float], _: Trainer) -> None:
        # CPU seconds since the last mark = this fit epoch (no validation: val=None); robust to other processes'
        # load on a shared machine, where wall-clock rates swing by 2x between epochs
        fit_cpu.append(n_train / (time.process_time() - mark[0]))
        fit_rates.append(metrics["images_per_s"])
        bare_rates.append(bare.epoch())
        bare_cpu.append(bare.cpu_rate)
        mark[0] = time.process_time()

    fit(config, data, None, on_epoch=interleave, early_stopping=False)
    aug_rates: list[float] = []
    fit(replace(config, aug_strength=0.5, epochs=max(2, epochs // 2)), data, None, early_stopping=False,
        on_epoch=lambda m, _: aug_rates.append(m["images_per_s"]))  # fmt: skip

    # the first epoch of each run includes one-off costs (allocations, worker start): report the rest
    def med(v: list[float]) -> float:
        return statistics.median(v[1:] or v)

    fit_ips, bare_ips, aug_ips = med(fit_rates), med(bare_rates), med(aug_rates)
    fit_cpu_ips, bare_cpu_ips = med(fit_cpu), med(bare_cpu)
    # ratios: median over adjacent (fit epoch, bare epoch) pairs, which saw the same machine load
    ratio = med([f / b for f, b in zip(fit_rates, bare_rates, strict=True)])
    ratio_cpu = med([f / b for f, b in zip(fit_cpu, bare_cpu, strict=True)])
    loaders = {s: loader_rate(config, data, s) for s in (0.5, 1.0)}
    loader = {s: v[0] for s, v in loaders.items()}
    loader_cpu = {s: v[1] for s, v in loaders.items()}
    return {
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "backbone": backbone,
        "image_size": image_size,
        "n": n,
        "batch_size": batch_size,
        "epochs": epochs,
        "num_workers": num_workers,
        "fit_images_per_s": fit_ips,
        "bare_images_per_s": bare_ips,
        "fit_vs_bare": ratio,
        "fit_images_per_cpu_s": fit_cpu_ips,
        "bare_images_per_cpu_s": bare_cpu_ips,
        "fit_vs_bare_cpu": ratio_cpu,
        "fit_aug0.5_images_per_s": aug_ips,
        "loader_aug0.5_images_per_s": loader[0.5],
        "loader_aug1.0_images_per_s": loader[1.0],
        "loader_vs_train_aug0.5": loader[0.5] / fit_ips,
        "loader_vs_train_aug1.0": loader[1.0] / fit_ips,
        "loader_aug0.5_images_per_cpu_s": loader_cpu[0.5],
        "loader_aug1.0_images_per_cpu_s": loader_cpu[1.0],
        "loader_vs_train_cpu_aug0.5": loader_cpu[0.5] / fit_cpu_ips,
        "loader_vs_train_cpu_aug1.0": loader_cpu[1.0] / fit_cpu_ips,
        "fit_epochs_images_per_s": fit_rates,
        "bare_epochs_images_per_s": bare_rates,
        "fit_epochs_images_per_cpu_s": fit_cpu,
        "bare_epochs_images_per_cpu_s": bare_cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, "512 images, 4 epochs", "also write the results here")
    p.add_argument("--backbone", default="mobilenetv3_small_050")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    n, epochs = (512, 4) if a.quick else (a.n, a.epochs)
    r = run(a.backbone, a.image_size, n, a.batch_size, epochs, a.num_workers, a.device)
    print(
        f"{r['backbone']} @ {r['image_size']} px, batch {r['batch_size']}, {r['n']} images, {r['device']} "
        f"({r['torch_threads']} threads), loader workers {r['num_workers']}"
    )
    print(f"  train  fit(): {r['fit_images_per_s']:8.1f} img/s   bare loop: {r['bare_images_per_s']:8.1f} img/s   "
          f"ratio {r['fit_vs_bare']:.3f}  (target >= 0.95)")  # fmt: skip
    print(f"  per CPU second: fit() {r['fit_images_per_cpu_s']:8.1f}   bare loop: {r['bare_images_per_cpu_s']:8.1f}   "
          f"ratio {r['fit_vs_bare_cpu']:.3f}")  # fmt: skip
    print(f"  fit() with aug_strength 0.5: {r['fit_aug0.5_images_per_s']:8.1f} img/s")
    for s in ("0.5", "1.0"):
        print(f"  loader aug {s}: {r[f'loader_aug{s}_images_per_s']:8.1f} img/s = "
              f"{r[f'loader_vs_train_aug{s}']:.1f}x training  (target >= 3x);  per CPU second "
              f"{r[f'loader_aug{s}_images_per_cpu_s']:.1f} = {r[f'loader_vs_train_cpu_aug{s}']:.1f}x")  # fmt: skip
    print(f"  per-epoch fit: {[round(v) for v in r['fit_epochs_images_per_s']]}  "
          f"bare: {[round(v) for v in r['bare_epochs_images_per_s']]}")  # fmt: skip
    print(f"  per-epoch per CPU s, fit: {[round(v) for v in r['fit_epochs_images_per_cpu_s']]}  "
          f"bare: {[round(v) for v in r['bare_epochs_images_per_cpu_s']]}")  # fmt: skip
    dump_json(a.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
