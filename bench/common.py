"""What every benchmark script shares: its argument parser, the skip rules, mean ± sd and the JSON dump.

parser = bench_parser(__doc__)                      # --quick and --json, the doc as help
args = parser.parse_args(argv)
if skip(args, "bench_x", quick="~3 min per run", real_cells=True):
    return 0                                        # a one-line reason was printed
...
print(mean_sd([0.91, 0.93]))                        # "0.9200 ± 0.0141"
dump_json(args.json, rows)                          # no-op without --json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def bench_parser(
    doc: str | None,
    quick_help: str | None = "skip (this benchmark has no small mode)",
    json_help: str | None = "also write the rows as JSON here",
) -> argparse.ArgumentParser:
    """An ArgumentParser with the module doc as its description, `--quick` and `--json PATH`; a help of None leaves
    that flag out (a script with no --quick or no JSON output)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick_help is not None:
        parser.add_argument("--quick", action="store_true", help=quick_help)
    if json_help is not None:
        parser.add_argument("--json", type=Path, help=json_help)
    return parser


def skip(args: argparse.Namespace, name: str, *, quick: str | None = None, real_cells: bool = False) -> bool:
    """True (after printing why) when the benchmark does not run: `--quick` and it has no small mode (`quick` says
    how long a run takes), or it needs ../shared/data/pbc-sample and that folder is absent."""
    if quick is not None and args.quick:
        print(f"{name}: skipped in --quick mode ({quick}; run `python -m bench.{name}`)")
        return True
    if real_cells:
        from bench.real_data import DEFAULT_DATA

        if not DEFAULT_DATA.is_dir():
            print(f"{name}: skipped, no image folder at {DEFAULT_DATA}")
            return True
    return False


def mean_sd(values: list[float], digits: int = 4) -> str:
    """ "m ± sd" over runs (sample sd); the value alone for one run, "-" for none."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def dump_json(path: Path | str | None, rows: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(rows, indent=2, default=str) + "\n")
