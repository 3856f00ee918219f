"""When the time budget cuts the winner before its schedule ends, how should the refit train?

On a slow machine or large data, `spaces/cpu_small.yaml`'s 10-minute budget can stop the first trial after a few of
its 14 epochs; the winner's best epoch is then its last, and its fold models never reached the low learning rate of
the schedule's end. Side by side on the design split (the inner validation holdout of pbc-sample split 0's training
part; never a test split), resnet10t with cpu_small's first-trial recipe, K epochs either way:

    truncated   the searched 14-epoch schedule stopped after K epochs (what the refit repeated before)
    compressed  a fresh K-epoch schedule run to its end (warm-up, then cosine to the end)

    .venv/bin/python -m bench.bench_cut_refit [--epochs 3] [--seeds 0 1] [--json out.json]
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bench.common import bench_parser, dump_json, mean_sd, skip

SCHEDULE = 14  # spaces/cpu_small.yaml search.max_epochs


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "skip (needs ../shared/data/pbc-sample; ~2 min a run)")
    parser.add_argument("--epochs", type=int, default=3, help="K: the epochs the cut trial reached")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    if skip(args, "bench_cut_refit", quick="real cells, ~2 min a run", real_cells=True):
        return 0
    os.environ.setdefault("CELLNET_NUM_THREADS", "2")
    from bench.real_data import FIRST_TRIAL, design_split
    from cellnet.config import TrainConfig
    from cellnet.train import fit

    train, val = design_split(64)
    print(f"design split: {len(train)} train / {len(val)} val at 64 px; K = {args.epochs} epochs", flush=True)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for name, schedule in (("truncated", SCHEDULE), ("compressed", args.epochs)):
            config = TrainConfig(**FIRST_TRIAL, epochs=schedule, seed=seed)
            start = time.perf_counter()
            result = fit(config, train, val, epochs=None, early_stopping=False, on_epoch=_stop_after(args.epochs))
            acc = float(result.history[-1]["val_accuracy"])
            rows.append({"seed": seed, "refit": name, "val_accuracy": acc, "wall_s": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| refit of a winner cut at epoch {args.epochs} of {SCHEDULE} | validation accuracy |\n|---|---|")
    for name in ("truncated", "compressed"):
        accs = [r["val_accuracy"] for r in rows if r["refit"] == name]
        print(f"| {name} | {mean_sd(accs, 3)} ({', '.join(f'{a:.3f}' for a in accs)}) |")
    dump_json(args.json, rows)
    return 0


def _stop_after(epochs: int):  # type: ignore[no-untyped-def]
    """An on_epoch callback that ends the run after `epochs` epochs, whatever the schedule's length."""
    return lambda metrics, trainer: trainer.epoch >= epochs


if __name__ == "__main__":
    raise SystemExit(main())
