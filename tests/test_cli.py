"""`cellnet` command line: train end to end on synthetic pixels, clean, and readable errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cellnet import __version__
from cellnet.cli import main
from cellnet.data.clean import save_npz
from cellnet.data.synthetic import generate

TINY_SIZE = 32


def tiny_config(path: Path, source: str, *, space: str = "  lr: 0.003\n", epochs: int = 2) -> Path:
    """A `cellnet train` YAML for a seconds-long CPU run: test_resnet at 32 px, no cleaning."""
    path.write_text(
        f"name: tiny\n"
        f"data: {{source: {source}, image_size: {TINY_SIZE}, clean: false}}\n"
        f"train: {{backbone: test_resnet, pretrained: false, batch_size: 32, epochs: {epochs}, warmup_epochs: 0,\n"
        f"        head_layers: 0, dropout: 0.0, aug_strength: 0.0, val_fraction: 0.2, early_stopping_patience: 5}}\n"
        f"space:\n{space}"
    )
    return path


def train_tiny(root: Path, n: int = 240) -> tuple[Path, Path]:
    """Train a real tiny model through `cellnet train`; returns (checkpoint dir, data npz)."""
    root.mkdir(parents=True, exist_ok=True)
    npz = save_npz(generate(n=n, image_size=TINY_SIZE, seed=0), root / "data.npz")
    config = tiny_config(root / "tiny.yaml", str(npz))
    out = root / "ckpt"
    assert main(["train", str(config), "--out", str(out), "--seed", "1"]) == 0
    return out, npz


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny(tmp_path_factory.mktemp("cli"))


def assert_one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_train_writes_checkpoint_history_and_curve(trained: tuple[Path, Path]) -> None:
    from cellnet.checkpoint import load_checkpoint

    out, _ = trained
    for name in ("model.safetensors", "cellnet.json", "history.csv", "training_curve.png"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out)
    assert ckpt.image_size == TINY_SIZE
    assert ckpt.config.backbone == "test_resnet" and ckpt.config.seed == 1
    assert len(ckpt.classes) == 8
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") or "epoch" in history[0].split(",")
    assert len(history) == 3  # header + 2 epochs (patience 5: no early stop)
    meta = json.loads((out / "cellnet.json").read_text())
    text = json.dumps(meta)
    assert "data_hash" in text and "git_sha" in text and __version__ in text
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_train_rejects_searched_space_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path / "s.yaml", "synthetic:50", space="  lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys.readouterr().err, "space.lr", "fixed")
    assert not (tmp_path / "o").exists()


def test_train_refuses_to_overwrite_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path / "t.yaml", "synthetic:50")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "thesis.tex").write_text("keep me")
    assert main(["train", str(config), "--out", str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a cellnet checkpoint")
    assert (tmp_path / "o" / "thesis.tex").read_text() == "keep me"


def test_clean_command_writes_npz_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = save_npz(generate(n=150, image_size=TINY_SIZE, seed=3, duplicate_fraction=0.1), tmp_path / "d.npz")
    assert main(["clean", str(npz), "--out", str(tmp_path / "c"), "--image-size", str(TINY_SIZE)]) == 0
    assert (tmp_path / "c" / "clean.npz").is_file()
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["predict", "--checkpoint", "{tmp}/no-such-ckpt", "x.png"], ["no-such-ckpt"]),
        (["train", "{tmp}/missing.yaml", "--out", "{tmp}/o"], ["missing.yaml"]),
        (["evaluate", "synthetic:20", "--checkpoint", "{tmp}/nope", "--out", "{tmp}/r"], ["nope"]),
        (["export", "--checkpoint", "{tmp}/nope", "--out", "{tmp}/m.onnx"], ["nope"]),
        (["predict", "--checkpoint", "c", "--bogus", "x.png"], ["--bogus"]),
        (["predict", "--checkpoint", "c", "x.png", "--min-confidence", "2"], ["min-confidence"]),
        (["frobnicate"], ["frobnicate"]),
        (["train"], ["CONFIG.yaml"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *needles)


def test_bad_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    assert main(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys.readouterr().err, "bad.yaml")


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    from cellnet.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    for command in ("train", "predict", "evaluate", "export", "clean"):
        assert main([command, "--help"]) == 0
        assert f"usage: cellnet {command}" in capsys.readouterr().out


def test_console_entry_runs() -> None:
    """The real entry point, as a user runs it (`python -m cellnet`, same as the `cellnet` script)."""
    result = subprocess.run([sys.executable, "-m", "cellnet", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "predict" in result.stdout
    script = Path(sys.executable).with_name("cellnet")
    if script.exists():
        result = subprocess.run([str(script), "predict", "--checkpoint"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
