"""Throughput of the synthetic generator in images/s (clean rendering, and with the default injected dirt).

The issue's bar is ≥ 2,000 images/s at 96 px on one core, so run it single-threaded:

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_synthetic [--quick] [--n 4000] [--sizes 32 96]

Both wall-clock and CPU-time rates are printed: on a shared machine the CPU-time rate is what one free core gives.
"""

from __future__ import annotations

import time

from bench.common import bench_parser
from cellnet.data.synthetic import SYNTHETIC_DEFAULTS, generate

DIRT = {k: v for k, v in SYNTHETIC_DEFAULTS.items() if k != "n"}


def _rates(n: int, size: int, repeats: int, **kwargs: float) -> tuple[float, float]:
    """Best (wall, cpu) images/s over `repeats` runs, after one warm-up that builds the per-size assets."""
    generate(min(n, 256), size, seed=7, **kwargs)
    wall = cpu = 0.0
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        count = len(generate(n, size, seed=7, **kwargs))
        wall = max(wall, count / (time.perf_counter() - w))
        cpu = max(cpu, count / max(time.process_time() - c, 1e-9))
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "small workload (bench.run --quick)", json_help=None)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 128])
    args = parser.parse_args(argv)
    n, repeats, sizes = (1000, 2, [32, 96]) if args.quick else (args.n, 3, args.sizes)
    print(f"synthetic.generate, n={n}, best of {repeats} (images/s; bar: >= 2000 at 96 px on one core)")
    for size in sizes:
        wall, cpu = _rates(n, size, repeats)
        dirty_wall, dirty_cpu = _rates(n, size, repeats, **DIRT)
        print(
            f"  image_size={size:4d}  clean {wall:7.0f} wall {cpu:7.0f} cpu"
            f"   default dirt {dirty_wall:7.0f} wall {dirty_cpu:7.0f} cpu"
        )


if __name__ == "__main__":
    main()
