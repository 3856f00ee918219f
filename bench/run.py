"""Run every benchmark in bench/ one after another: `python -m bench.run [--quick] [--only NAME ...]`.

Each benchmark is a module `bench/bench_<name>.py` with a `main(argv)` that accepts `--quick` and prints its own
side-by-side ratios. Running them in separate processes keeps one benchmark's threads and caches from skewing the next.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads (the `make bench` mode)")
    parser.add_argument("--only", nargs="*", choices=available(), help="run only these benchmarks")
    args = parser.parse_args(argv)
    names = args.only or available()
    failed: list[str] = []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.bench_{name}"] + (["--quick"] if args.quick else [])
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=BENCH_DIR.parent)
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - start:.0f} s")
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
