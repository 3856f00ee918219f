"""Data: read a SOURCE (`load`), find duplicates/conflicts/outliers (`clean`), split leak-free (`folds`)."""

from __future__ import annotations

from typing import Any

from cellnet.data.clean import CleanReport, clean, find_duplicates_between, run_clean
from cellnet.data.dataset import CellData
from cellnet.data.folds import class_weights, folds, holdout_split
from cellnet.data.sources import load, parse_source, read_image_file

__all__ = [
    "CellData",
    "CleanReport",
    "class_weights",
    "clean",
    "find_duplicates_between",
    "folds",
    "generate",
    "holdout_split",
    "load",
    "parse_source",
    "read_image_file",
    "run_clean",
    "synthetic",
]


def __getattr__(name: str) -> Any:
    """`generate` and the `synthetic` module load on first use (only demos and tests need them)."""
    if name in ("generate", "synthetic"):
        import importlib

        synthetic = importlib.import_module("cellnet.data.synthetic")
        return synthetic if name == "synthetic" else synthetic.generate
    raise AttributeError(f"module 'cellnet.data' has no attribute {name!r}")
