"""Writing files so that nobody ever reads half of one: the one atomic-write helper, JSON, and directory swaps.

Every output cellnet or the search writes (checkpoints, reports, CSVs, summary.json, npz) goes through here:

    with atomic_path(path) as tmp:      # write tmp (same folder, so the rename is atomic), then os.replace
        ...
    write_json(path, obj)               # jsonable(obj) -> strict JSON (NaN/inf -> null), atomically
    sha256_file(path)                   # the fingerprint a checkpoint or the weights cache records
    replace_dir(new_dir, dest)          # a finished directory takes dest's place with no moment without dest
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed onto it only if the block finishes: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (checkpoint integrity, the weights cache's key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy/torch scalars -> Python numbers, NaN/inf -> None, tuples -> lists, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if not isinstance(obj, int | float) and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, int | float | bool | str):
        return obj
    return str(obj)


def write_json(path: str | Path, obj: Any, *, fsync: bool = False) -> None:
    """`obj` as indented strict JSON, atomically (`fsync`: flushed to disk before the rename, for checkpoints)."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the OS or filesystem
    cannot (then the caller falls back to two renames).

    Why ctypes: `os.replace(new_dir, dest)` fails with ENOTEMPTY when `dest` is a non-empty directory (rename(2)
    replaces only an empty one), and Python has no binding for renameat2, the one call that swaps two directories
    without a moment in which `dest` is missing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_dir(new: Path, dest: Path) -> str:
    """Move the finished directory `new` to `dest`, deleting the old `dest`. Returns how: "rename" (dest did not
    exist), "exchange" (Linux: both swapped in one atomic step, so `dest` always exists and is either the old or
    the new one), or "two-renames" (elsewhere: old moved aside, new moved in; a reader may find no `dest` for that
    instant, never a mix)."""
    if not dest.exists():
        os.rename(new, dest)
        return "rename"
    if _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old contents
        return "exchange"
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    old.rmdir()
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return "two-renames"
