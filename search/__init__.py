"""Hyper-parameter search over cellnet on Ray Tune + Optuna + Ray Train (the `search` extra: `cellnet[search]`).

Importing the package checks that the extra is installed; without it `python -m search.run` (or `search.retrain`)
exits 2 with one line saying what to install, instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib
import sys

SEARCH_EXTRA = ("ray", "optuna", "tensorboard")  # what `pip install 'cellnet[search]'` adds to the library


def _require_search_extra() -> None:
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


_require_search_extra()
