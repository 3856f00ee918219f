"""The winner's retrain on the whole machine vs on one core (what it asked Ray for before 2026-12-02), same epochs.

`search.refit.retrain` twice on the same data, config and epochs, side by side in one run: `cpus_per_worker=1`
(the old request, `max(1, cpus_per_fold)`) and the default (every CPU of the largest node, as many threads).
Synthetic cells at 64 px, resnet10t from scratch (cpu_small's first trial). Target: whole-node wall <= 0.55x.
Also printed: the last epoch's training throughput of each (from the checkpoint's retrain metrics), i.e. the ratio
without the fixed cost of starting a Ray Train worker group, which a short benchmark weighs far more than a real
retrain does.

    .venv/bin/python -m bench.bench_retrain [--quick] [--images 3000] [--epochs 3]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import bench_parser


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "1,500 images, 2 epochs", json_help=None)
    parser.add_argument("--images", type=int)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args(argv)
    images = args.images or (1500 if args.quick else 3000)
    epochs = args.epochs or (2 if args.quick else 3)
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    from cellnet.checkpoint import load_checkpoint
    from cellnet.config import parse_config
    from cellnet.data import load
    from search.refit import retrain

    cfg = parse_config(
        {
            "name": "bench-retrain",
            "data": {"source": f"synthetic:{images}", "image_size": 64, "clean": False},
            "train": {"backbone": "resnet10t", "head_layers": 0, "aug_strength": 0.25, "device": "cpu"},
        },
        "bench-retrain.yaml",
    )
    data = load(cfg.data.source, 64)
    ray.init(logging_level="WARNING", log_to_driver=False)
    walls: dict[str, float] = {}
    speeds: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, cpus in (("one core (before)", 1.0), ("whole node (now)", None)):
                start = time.perf_counter()
                out = retrain(
                    cfg, {}, data, epochs, Path(tmp) / name.split()[0], cpus_per_worker=cpus, show_progress=False
                )
                walls[name] = time.perf_counter() - start
                speeds[name] = float(load_checkpoint(out).metrics["retrain"]["images_per_s"])
    finally:
        ray.shutdown()
    print(f"\n# retrain: resnet10t, {images} synthetic images at 64 px, {epochs} epochs, {os.cpu_count()} CPUs")
    print(f"{'':<22}{'wall':>8}  {'last epoch, img/s':>18}")
    for name, wall in walls.items():
        print(f"{name:<22}{wall:>7.1f}s  {speeds[name]:>18.0f}")
    ratio = walls["whole node (now)"] / walls["one core (before)"]
    epoch_ratio = speeds["one core (before)"] / speeds["whole node (now)"]
    print(f"whole node / one core: wall {ratio:.3f}   (target <= 0.55), epoch time {epoch_ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
