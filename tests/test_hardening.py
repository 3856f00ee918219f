"""--resume continues a search on exactly what it started with: changed data, folds, seeds, space, metric or epochs
are refused (naming the flag and the stored value) before anything is touched; resume-safe flags still work."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellnet.config import load_config
from search.run import SEARCH_CONFIG, SPACE_AS_GIVEN, TUNE_DIR, build_parser, main, resolve, write_yaml
from tests.test_search_space import BASE


@pytest.fixture()
def started(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory as a search leaves it (the configs it wrote and a Tune folder), without running one."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(BASE))
    run = tmp_path / "run"
    (run / TUNE_DIR).mkdir(parents=True)
    (run / TUNE_DIR / "experiment_state.json").write_text("{}")
    cfg = load_config(space, {"data": {"source": "synthetic:300"}})
    write_yaml(run / SEARCH_CONFIG, cfg.to_dict())
    write_yaml(run / SPACE_AS_GIVEN, load_config(space).to_dict())
    return space, run


def _digest(run: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(run.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--folds", "3"], "--folds 3 (stored cv.folds: 2)"),
        (["--seed", "7"], "--seed 7 (stored cv.seed: 0)"),
        (["--max-epochs", "9"], "--max-epochs 9 (stored search.max_epochs: 4)"),
        (["--data", "synthetic:999"], "--data 'synthetic:999' (stored data.source: 'synthetic:300')"),
    ],
)
def test_resume_refuses_a_changed_flag_and_leaves_the_run_untouched(
    started: tuple[Path, Path], flags: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    space, run = started
    before = _digest(run)
    assert main([str(space), "--storage", str(run), "--resume", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume:") and needle in err and "Traceback" not in err
    assert _digest(run) == before


def test_resume_refuses_an_edited_space(started: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    space, run = started
    edited = {**BASE, "space": {**BASE["space"], "lr": {"loguniform": [1.0e-3, 1.0e-2]}}}
    space.write_text(yaml.safe_dump(edited))
    assert main([str(space), "--storage", str(run), "--resume"]) == 2
    assert "space.lr" in capsys.readouterr().err


def test_resume_refuses_changed_data_naming_both(
    started: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Same --data, other content (new files in the folder): the fingerprint recorded at the start does not match."""
    import json

    space, run = started
    stored = {"data_hash": "0" * 64, "num_images": 123, "classes": [], "source": "synthetic:300"}
    (run / "data.json").write_text(json.dumps(stored))
    before = _digest(run)
    assert main([str(space), "--storage", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: the data has changed") and "Traceback" not in err
    assert "the search ran on 123 images (hash 000000000000" in err and "synthetic:300 now gives" in err
    assert _digest(run) == before


def test_resume_safe_flags_keep_working(started: tuple[Path, Path]) -> None:
    space, run = started
    args = build_parser().parse_args(
        [str(space), "--storage", str(run), "--resume", "--num-samples", "9", "--time-budget", "60"]
        + ["--max-concurrent", "1", "--data", "synthetic:300"]  # repeating a flag with its stored value is fine
    )
    cfg, run_dir = resolve(args)
    assert run_dir == run.resolve()
    assert cfg.search.num_samples == 9 and cfg.search.time_budget_s == 60 and cfg.resources.max_concurrent == 1
    assert cfg.data.source == "synthetic:300" and cfg.cv.folds == 2  # the stored data and folds, not the YAML's


def _without_ray(module: str, *args: str) -> Any:
    """`python -m module args` as without the `search` extra: None in sys.modules makes `import ray` raise
    ModuleNotFoundError."""
    import subprocess
    import sys

    code = f"import sys, runpy; sys.modules['ray'] = None; runpy.run_module({module!r}, run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_the_search_extra_search_run_says_what_to_install() -> None:
    """`pip install -e .` without [search]: python -m search.run exits 2 with one line (the import simulated
    missing: `_without_ray`)."""
    proc = _without_ray("search.run", "spaces/quickstart.yaml")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cellnet[search]" in lines[0] and "missing: ray" in lines[0]


def test_without_the_search_extra_search_retrain_says_what_to_install() -> None:
    """The same for `python -m search.retrain`: it imports search.refit at module level, which keeps Ray (and
    search.winner, which imports it) out of its module level for this."""
    proc = _without_ray("search.retrain", "runs/none", "--trial", "x")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cellnet[search]" in lines[0] and "missing: ray" in lines[0]


# ---------------------------------------------------------------------------------------------------------------
# the search's data: groups without cleaning, the --test leak check against the raw data


def _npz(path: Path, images: Any, labels: Any) -> str:
    import numpy as np

    np.savez(path, images=images, labels=np.asarray(labels, dtype=np.int64))
    return str(path)


def _jpeg(image: Any, quality: int = 60) -> Any:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _cfg(tmp_path: Path, source: str, *, clean: bool, test: str | None = None, folds: int = 3) -> Any:
    from cellnet.config import parse_config

    raw = {
        "name": "d",
        "data": {"source": source, "image_size": 64, "clean": clean, "test": test},
        "cv": {"folds": folds},
    }
    return parse_config(raw, str(tmp_path / "d.yaml"))


def test_clean_false_still_keeps_near_duplicates_in_one_fold(tmp_path: Path) -> None:
    import numpy as np

    from cellnet.data.synthetic import generate
    from search.data import load_data

    base = generate(240, 64, seed=4)
    twins = [_jpeg(base.images[i]) for i in range(0, 60, 3)]  # near duplicates (re-encoded) of 20 images
    images = np.concatenate([base.images, np.stack(twins)])
    labels = np.concatenate([base.labels, base.labels[0:60:3]])
    loaded = load_data(_cfg(tmp_path, _npz(tmp_path / "d.npz", images, labels), clean=False))
    assert len(loaded.data) == len(images)  # clean: false drops nothing ...
    fold_of = np.empty(len(images), dtype=int)
    for k, (_, val) in enumerate(loaded.folds):
        fold_of[val] = k
    for j, i in enumerate(range(0, 60, 3)):  # ... but each image and its near duplicate share a fold
        assert fold_of[i] == fold_of[len(base.images) + j]


def test_test_set_duplicating_an_image_cleaning_dropped_is_caught(tmp_path: Path) -> None:
    """A label conflict (one image under two labels) is dropped by cleaning; a --test copy of it is still a leak."""
    import json

    import numpy as np

    from cellnet.data.synthetic import generate
    from search.data import load_data

    base = generate(240, 64, seed=6)
    conflict = base.images[5]
    other = (int(base.labels[5]) + 1) % len(base.classes)
    images = np.concatenate([base.images, conflict[None]])
    labels = np.concatenate([base.labels, [other]])
    train = _npz(tmp_path / "train.npz", images, labels)
    held = generate(40, 64, seed=99)
    test = _npz(tmp_path / "test.npz", np.concatenate([held.images, conflict[None]]), [*held.labels, base.labels[5]])
    loaded = load_data(_cfg(tmp_path, train, clean=True, test=test))
    kept = {bytes(im) for im in loaded.data.images}
    assert bytes(conflict) not in kept  # cleaning dropped both copies of the conflicting image
    assert loaded.test is not None and len(loaded.test) == len(held.images)  # and the test copy was dropped too
    summary = loaded.test_summary(test)
    assert summary is not None and summary["leaks_dropped"]["count"] == 1
    json.dumps(summary)


def test_a_fold_checkpoint_holding_a_python_object_is_refused(tmp_path: Path) -> None:
    import torch

    from cellnet.errors import CheckpointError
    from search.trainable import read_fold_state

    good = tmp_path / "fold_0.pt"
    torch.save({"format": 1, "epoch": 2, "model": {"w": torch.zeros(2)}, "history": [{"epoch": 1.0}]}, good)
    assert read_fold_state(good)["epoch"] == 2
    evil = tmp_path / "fold_1.pt"
    torch.save({"format": 1, "payload": Path("/etc/passwd")}, evil)  # any pickled object, here a PosixPath
    with pytest.raises(CheckpointError, match="refusing to load it"):
        read_fold_state(evil)
