"""One row of the trials table (trials.csv, search/results.py): the params its trial ran, and which cells are empty.

A leaf both the table's writer (search/results.py) and its readers (search/plots.py, search/retrain.py) import, so
none of them has to import another to read a row.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd


def params_of(row: pd.Series) -> dict[str, Any]:
    """The searched params of a trials-table row, exactly as the trial ran them (the `params_json` column; the
    `param_<name>` columns are for people and lose types through CSV)."""
    text = row.get("params_json")
    if isinstance(text, str) and text:
        return dict(json.loads(text))
    out = {}
    for col, value in row.items():
        if isinstance(col, str) and col.startswith("param_") and not missing(value):
            out[col[6:]] = value.item() if isinstance(value, np.generic) else value
    return out


def missing(value: Any) -> bool:
    """An empty cell: None, or NaN (what pandas reads an empty CSV cell as)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
