"""Hyper-parameter search over cellnet on Ray Tune + Optuna + Ray Train (the `search` extra: `cellnet[search]`).

    python -m search.run SPACE.yaml ........ search/run.py: the search's story (parse, plan, tune, hand over)
    python -m search.retrain RUN --trial ID  search/retrain.py: a trial retrained on all data, calibrated

Importing the package has no side effects and needs no Ray; each command calls `require_search_extra()` first, so
without the extra it exits 2 with one line saying what to install instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["SEARCH_EXTRA", "require_search_extra"]

SEARCH_EXTRA = ("ray", "optuna", "tensorboard")  # what `pip install 'cellnet[search]'` adds to the library


def require_search_extra() -> None:
    """Exit 2 with one line on stderr when a package of the `search` extra cannot be imported."""
    missing = []
    for name in SEARCH_EXTRA:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            missing.append(name)
    if missing:
        print(
            f"error: the search needs the `search` extra, which is not installed (missing: {', '.join(missing)}); "
            "install it with: pip install -e '.[search]' (a checkout) or pip install 'cellnet[search]'",
            file=sys.stderr,
        )
        raise SystemExit(2)
