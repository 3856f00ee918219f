"""Which timm backbones pay on a CPU? Validation accuracy per wall-clock budget on real cells, side by side.

On the training 80% of split seed 0 of ../shared/data/pbc-sample (bench/real_data.py; its test 20% is never touched),
an inner grouped stratified 80/20 holdout: each backbone is trained from scratch with one fixed recipe
(`cellnet.train.fit`, AdamW, cosine, label smoothing 0.1, aug_strength 0.5, 2 threads) for as many epochs as fit in
`--budget-s` (sized from a timed probe of a few batches), and scored on the holdout (best epoch and last epoch).
This is what `spaces/cpu_small.yaml`'s backbone menu and first point are chosen from.

    .venv/bin/python -m bench.bench_backbones [--budget-s 180] [--size 64] [--backbones a,b,...] [--json out.json]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import numpy as np

from bench.common import bench_parser, dump_json, skip

DEFAULT = (
    "resnet18,resnet10t,convnext_atto,mobilenetv3_large_100,efficientnet_b0,mobilenetv4_conv_small,"
    "efficientvit_b0,regnetx_004,edgenext_xx_small,mobilenetv3_small_050"
)


def images_per_s(config, train, batches: int = 6) -> float:
    """Training throughput of `config` on `train`, from a few batches of a throw-away Trainer."""
    from cellnet.train import Trainer

    probe = Trainer(replace(config, epochs=1), train.subset(np.arange(min(len(train), 64 * (batches + 2)))), None)
    t0 = time.perf_counter()
    probe.train_epoch()
    return min(len(train), 64 * (batches + 2)) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (no small mode: ~3 min per backbone)")
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backbones", default=DEFAULT)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    if skip(args, "bench_backbones", quick="~3 min per backbone", real_cells=True):
        return 0
    os.environ.setdefault("CELLNET_NUM_THREADS", "2")
    from bench.real_data import design_split
    from cellnet.config import TrainConfig
    from cellnet.train import fit

    train, val = design_split(args.size)
    print(f"pbc-sample split 0, inner holdout: {len(train)} train / {len(val)} val at {args.size}px", flush=True)
    rows = []
    for name in args.backbones.split(","):
        base = TrainConfig(
            backbone=name,
            head_layers=0,
            dropout=0.1,
            lr=args.lr,
            weight_decay=0.05,
            label_smoothing=0.1,
            aug_strength=0.5,
            batch_size=64,
            warmup_epochs=1,
            device="cpu",
        )
        start = time.perf_counter()
        ips = images_per_s(base, train)
        epochs = max(2, int((args.budget_s - (time.perf_counter() - start)) * ips * 0.85 / len(train)))
        result = fit(replace(base, epochs=epochs), train, val, early_stopping=False)
        wall = time.perf_counter() - start
        accs = [h["val_accuracy"] for h in result.history]
        row = {
            "backbone": name,
            "epochs": epochs,
            "train_img_s": ips,
            "wall_s": wall,
            "val_best": max(accs),
            "val_last": accs[-1],
            "best_epoch": result.best_epoch,
            "val_macro_f1_last": result.history[-1]["val_macro_f1"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n# backbones at {args.size}px, {args.budget_s:.0f} s each, lr {args.lr:g} (val = inner holdout)")
    print(f"{'backbone':<26}{'img/s':>7}{'epochs':>7}{'wall s':>8}{'val best':>9}{'val last':>9}")
    for r in sorted(rows, key=lambda r: -r["val_last"]):
        print(
            f"{r['backbone']:<26}{r['train_img_s']:>7.0f}{r['epochs']:>7}{r['wall_s']:>8.0f}"
            f"{r['val_best']:>9.4f}{r['val_last']:>9.4f}"
        )
    dump_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
