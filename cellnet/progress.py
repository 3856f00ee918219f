"""One way to show progress: a tqdm bar on stderr, so stdout stays clean for CSV output."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr. `enabled=None` shows it only when stderr is a terminal (no bars in logs and pipes)."""
    disable = None if enabled is None else not enabled
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)
