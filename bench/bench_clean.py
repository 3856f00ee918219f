"""Speed of `cellnet.data.clean` (images/s, seconds for PBC's 17,092 images at 96 px) and where the time goes.

The issue's bar: 17k images at 96 px in under a minute on 2 cores. Also reports recall / false drops on the
synthetic set (scored from the provenance in the ids), and, when /work/shared/data/pbc-sample exists, the real images.

    .venv/bin/python -m bench.bench_clean [--quick] [--n 17092] [--pbc DIR]
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from bench.common import bench_parser
from cellnet.constants import PBC_COUNTS
from cellnet.data.clean import DuplicateSettings, _confirmed_pairs, clean, outlier_scores, signatures
from cellnet.data.dataset import CellData
from cellnet.data.synthetic import generate

PBC_SAMPLE = Path("/work/shared/data/pbc-sample")


def score(data: CellData, cleaned: CellData) -> dict[str, float]:
    """Recall per injected kind and the false-drop rate, from ids like `synthetic/004001~near-of-000123`."""
    ids, kept = [str(i) for i in data.ids], set(cleaned.ids.tolist())
    by_number = {i.split("/")[1]: i for i in ids if "~" not in i}
    hits: dict[str, list[bool]] = {"duplicate": [], "conflict": [], "outlier": []}
    sources = set()
    for i in ids:
        match = re.search(r"~(exact|near|conflict)-of-(\d+)", i)
        if match:
            source = by_number[match.group(2)]
            sources.add(source)
            if match.group(1) == "conflict":
                hits["conflict"].append(i not in kept and source not in kept)
            else:
                hits["duplicate"].append(not (i in kept and source in kept))
        elif i.endswith("~outlier"):
            hits["outlier"].append(i not in kept)
    clean_ids = [i for i in ids if "~" not in i]
    false = sum(i not in kept and i not in sources for i in clean_ids)
    out = {f"{k}_recall": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    out["false_drop_rate"] = false / len(clean_ids)
    return out


def stages(data: CellData) -> dict[str, float]:
    """Seconds per stage (fingerprints, candidate pairs + pixel confirmation, outlier scores)."""
    times = {}
    start = time.perf_counter()
    sig = signatures(data.images)
    times["signatures"] = time.perf_counter() - start
    start = time.perf_counter()
    _confirmed_pairs(data.images, sig, None, None, DuplicateSettings())
    times["pairs+confirm"] = time.perf_counter() - start
    start = time.perf_counter()
    outlier_scores(sig.features, data.labels)
    times["outliers"] = time.perf_counter() - start
    return times


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "4,000 images instead of 17,092", json_help=None)
    parser.add_argument("--n", type=int, default=sum(PBC_COUNTS))
    parser.add_argument("--pbc", type=Path, default=PBC_SAMPLE, help="folder source to clean as well, if present")
    args = parser.parse_args(argv)
    n = 4000 if args.quick else args.n
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")

    start = time.perf_counter()
    data = generate(n, 96, seed=0, duplicate_fraction=0.02, conflict_fraction=0.005, outlier_fraction=0.005)
    print(f"generated {len(data)} synthetic images at 96 px in {time.perf_counter() - start:.1f} s")
    start, cpu = time.perf_counter(), time.process_time()
    cleaned, report = clean(data)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    rate = len(data) / seconds
    print(report.summary())
    print(f"clean: {seconds:.1f} s for {len(data)} images = {rate:.0f} images/s; 17,092 images -> {17092 / rate:.1f} s")
    print(f"  CPU time {cpu:.1f} s (wall on an idle 2-core machine is at least CPU / 2)")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in score(data, cleaned).items()))
    print(f"  candidate pairs {report.settings['candidate_pairs']}, confirmed {report.settings['confirmed_pairs']}")
    print("  stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages(data).items()))

    if args.pbc.is_dir():
        from cellnet.data.sources import load

        start = time.perf_counter()
        real = load(str(args.pbc), 96)
        loaded = time.perf_counter() - start
        _, report = clean(real)
        print(f"\n{args.pbc}: loaded {len(real)} images in {loaded:.1f} s")
        print(report.summary())


if __name__ == "__main__":
    main()
