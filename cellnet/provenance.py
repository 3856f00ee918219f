"""Where a checkpoint came from, in two functions every producer of checkpoints shares (`cellnet train`, the
search's retrain and fold ensembles): the exact code version and a fingerprint of the exact pixels and labels."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


def data_hash(images: Any, labels: Any) -> str:
    """sha256 of the image and label bytes: which exact pixels and labels a checkpoint was trained on."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return h.hexdigest()


def git_sha() -> str | None:
    """The commit of the cellnet source tree (with `+dirty` if it has local changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None
