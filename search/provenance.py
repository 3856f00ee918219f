"""Where a search result came from: code version, data fingerprint, library versions and seeds, as one plain dict.

Written into `summary.json` and the retrained checkpoint's `cellnet.json`. The git SHA and data hash are the same
functions `cellnet train` uses for its checkpoints (cellnet/provenance.py), so a searched and a hand-trained
checkpoint of the same cleaned data carry the same data hash.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Any

from cellnet.data.dataset import CellData
from cellnet.provenance import data_hash as _hash_arrays
from cellnet.provenance import git_sha

LIBRARIES = ("cellnet", "torch", "torchvision", "timm", "numpy", "ray", "optuna", "albumentations", "scikit-learn")

__all__ = ["data_hash", "git_sha", "library_versions", "provenance"]


def data_hash(data: CellData) -> str:
    """sha256 of exactly the pixels and labels trained on (order matters); equal to what `cellnet train` records."""
    return _hash_arrays(data.images, data.labels)


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions (None when a library is not installed), plus the Python version."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(data: CellData | None = None, *, seeds: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to trace a result: git SHA, data hash and size, versions, seeds, host, time, plus `extra`.

    >>> provenance(data, seeds={"cv": 0, "search": 0}, data_source="synthetic", data_cleaned=True)  # doctest: +SKIP
    """
    out: dict[str, Any] = {
        "git_sha": git_sha(),
        "data_hash": data_hash(data) if data is not None else None,
        "num_images": len(data) if data is not None else None,
        "versions": library_versions(),
        "seeds": dict(seeds or {}),
        "host": platform.node(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.update(extra)
    return out
