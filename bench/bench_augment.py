"""What share of a training epoch does augmentation take? Issue 24's budget: at most 25%.

For each recipe (spaces/cpu_small.yaml's first trial and its augmentation variants), side by side in one process on
the same images: the training loader alone (uint8 arrays -> the recipe's albumentations / torchvision pipeline,
seeded per sample -> stacked batches: everything augmentation costs, nothing else) and a whole training epoch
(`Trainer.train_epoch`, the same loader included). share = loader seconds / epoch seconds, the median of adjacent
pairs after a warm-up pair. 2 threads, as the refit runs; in the search each fold has 1.

    .venv/bin/python -m bench.bench_augment [--quick] [--n 1024] [--size 64] [--json out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from bench.common import bench_parser, dump_json

FIRST = {
    "backbone": "tf_efficientnet_lite0",
    "pretrained": "auto",
    "input_size": 96,
    "head_layers": 0,
    "dropout": 0.2,
    "lr": 3e-3,
    "aug_strength": 0.25,
    "label_smoothing": 0.1,
    "batch_size": 64,
    "device": "cpu",
}
RECIPES: dict[str, dict[str, Any]] = {
    "no augmentation": {"aug_strength": 0.0},
    "aug_strength 0.25": {},
    "+ RandAugment 0.5 (first trial)": {"aug_policy": "randaugment", "aug_magnitude": 0.5},
    "+ TrivialAugment 0.5": {"aug_policy": "trivialaugment", "aug_magnitude": 0.5},
    "+ AugMix 0.5": {"aug_policy": "augmix", "aug_magnitude": 0.5},
    "+ zoom 1 + RandAugment 0.5": {"zoom_aug": 1.0, "aug_policy": "randaugment", "aug_magnitude": 0.5},
    "+ zoom 1 + stain 0.5 + AugMix 0.5": {"zoom_aug": 1.0, "stain_aug": 0.5, "aug_policy": "augmix"},
}


def one(name: str, data: Any, pairs: int) -> dict[str, Any]:
    from cellnet.config import TrainConfig
    from cellnet.train import Trainer

    config = TrainConfig(**{**FIRST, **RECIPES[name], "epochs": pairs + 1})
    trainer = Trainer(config, data, None)
    loader, epoch = [], []
    for i in range(pairs + 1):
        trainer.train_loader.batch_sampler.set_epoch(i)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        for _ in trainer.train_loader:
            pass
        t1 = time.perf_counter()
        trainer.train_epoch()
        t2 = time.perf_counter()
        if i:  # the first pair warms up allocators and oneDNN
            loader.append(t1 - t0)
            epoch.append(t2 - t1)
    shares = [a / b for a, b in zip(loader, epoch)]
    return {
        "recipe": name,
        "loader_s": statistics.median(loader),
        "epoch_s": statistics.median(epoch),
        "share": statistics.median(shares),
        "images_per_s": len(data) / statistics.median(epoch),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "256 images, 1 timed pair")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("CELLNET_NUM_THREADS", "2")
    from cellnet.data.synthetic import generate

    n, pairs = (256, 1) if args.quick else (args.n, args.pairs)
    data = generate(n, args.size, seed=0)
    rows = []
    for name in RECIPES:
        rows.append(one(name, data, pairs))
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n# augmentation's share of a training epoch ({n} images at {args.size} px -> 96 px, 2 threads; "
        "target <= 0.25)"
    )
    print(f"{'recipe':<36}{'loader s':>10}{'epoch s':>10}{'share':>8}{'img/s':>8}")
    for r in rows:
        print(
            f"{r['recipe']:<36}{r['loader_s']:>10.2f}{r['epoch_s']:>10.2f}{r['share']:>8.2f}{r['images_per_s']:>8.0f}"
        )
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
