"""Data: read a SOURCE (`load`), find duplicates/conflicts/outliers (`clean`), split leak-free (`folds`); synthetic
cells for demos and tests (`generate`, the `synthetic:N` source)."""

from __future__ import annotations

from cellnet.data import synthetic
from cellnet.data.clean import CleanReport, clean, find_duplicates_between, run_clean
from cellnet.data.dataset import CellData
from cellnet.data.folds import class_weights, folds, holdout_split
from cellnet.data.sources import load, parse_source, read_image_file
from cellnet.data.synthetic import generate

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
