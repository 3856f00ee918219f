"""Shared test fixtures. Ray start-up costs seconds, so in-process tests share ONE local cluster per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def cellnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own cellnet cache (converted weights, downloads): nothing a test runs writes into the user's
    ~/.cache/cellnet. Set in the environment before Ray starts (autouse: first), so every Ray worker inherits it."""
    from cellnet.weights import CACHE_ENV

    cache = tmp_path_factory.mktemp("cellnet-cache")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(cache)
    yield cache
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session", autouse=True)
def fp32_only() -> Iterator[None]:
    """Every test runs in fp32 on whatever CPU runs it ($CELLNET_BF16=0, `cellnet.precision`): the same numbers on
    a CPU with bf16 and one without, and no training-precision probe. Set before Ray starts (autouse), so every Ray
    worker inherits it; tests/test_precision.py turns bf16 on where it tests it."""
    from cellnet.precision import BF16_ENV

    with pytest.MonkeyPatch.context() as patch:  # restored when the session ends
        patch.setenv(BF16_ENV, "0")
        yield


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local 2-CPU Ray cluster for the whole session (default ray.init: dashboard/State API on, token auth on)."""
    import ray

    from search.trainable import share_ray_address

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, logging_level="WARNING", log_to_driver=False)
    previous = share_ray_address()
    yield
    if started:
        ray.shutdown()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
