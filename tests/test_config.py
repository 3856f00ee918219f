"""The one config parser: what it accepts, and that it rejects bad input naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cellnet.config import ExperimentConfig, TrainConfig, load_config, parse_config
from cellnet.errors import ConfigError


def _write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_full_config_round_trips(tmp_path: Path) -> None:
    doc = {
        "name": "demo",
        "data": {"source": "synthetic:400", "image_size": 32},
        "cv": {"folds": 3, "seed": 1},
        "train": {"batch_size": 32},
        "search": {"num_samples": 4, "max_epochs": 3, "grace_period": 1, "points_to_evaluate": [{"lr": 1e-5}]},
        "resources": {"cpus_per_fold": 0.5},
        "retrain": {"epochs": 2},
        "space": {
            "backbone": {"choice": ["test_resnet", "test_efficientnet"]},
            "head_layers": {"int": [0, 2]},
            "head_width": {"choice": [32, 64], "when": "head_layers > 0"},
            "lr": {"loguniform": [1e-4, 1e-2]},
            "dropout": {"uniform": [0.0, 0.5]},
            "freeze_epochs": {"int": [0, 2], "step": 2},
            "optimizer": "adamw",
        },
    }
    cfg = load_config(_write(tmp_path, doc))
    assert cfg.name == "demo" and cfg.cv.folds == 3 and cfg.resources.cpus_per_fold == 0.5
    assert set(cfg.searched()) == {"backbone", "head_layers", "head_width", "lr", "dropout", "freeze_epochs"}
    assert cfg.space["head_width"].when == ("head_layers", ">", 0)
    assert not cfg.space["head_width"].condition_holds({"head_layers": 0})
    assert cfg.space["head_width"].condition_holds({"head_layers": 1})
    tc = cfg.train_config({"lr": 0.003, "backbone": "test_resnet"})
    assert isinstance(tc, TrainConfig) and tc.lr == 0.003 and tc.batch_size == 32 and tc.optimizer == "adamw"
    # The resolved form parses back to the same config.
    again = parse_config(cfg.to_dict(), "again.yaml")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"name": "x", "spaec": {}}, "unknown key 'spaec'"),
        ({"name": "x", "space": {"learning_rate": 0.1}}, "unknown key space.'learning_rate'"),
        ({"name": "x", "search": {"max_epoch": 3}}, "unknown key search.'max_epoch'"),
        ({"name": "x", "space": {"lr": {"loguniform": [0.0, 1.0]}}}, "loguniform needs low > 0"),
        ({"name": "x", "space": {"lr": {"uniform": [0.1, 0.01]}}}, "low < high"),
        ({"name": "x", "space": {"dropout": {"uniform": [0.0, 1.5]}}}, "dropout must be in [0, 1)"),
        (
            {"name": "x", "space": {"zoom_aug": {"uniform": [0.0, 3.0]}}},
            "zoom_aug (max |log2 scale|) must be in [0, 2]",
        ),
        ({"name": "x", "train": {"stain_aug": 1.5}}, "stain_aug must be in [0, 1], got 1.5"),
        ({"name": "x", "space": {"optimizer": {"choice": ["adamw", "adamx"]}}}, "optimizer must be one of"),
        ({"name": "x", "space": {"backbone": "resnet_does_not_exist"}}, "is not a timm model name"),
        ({"name": "x", "space": {"head_layers": {"uniform": [0, 2]}}}, "use int"),
        ({"name": "x", "space": {"head_width": {"choice": [8], "when": "depth > 0"}}}, "unknown parameter 'depth'"),
        ({"name": "x", "space": {"lr": {"loguniform": [1e-4, 1e-2], "choice": [1]}}}, "exactly one of"),
        ({"name": "x", "search": {"grace_period": 9, "max_epochs": 3}}, "grace_period"),
        ({"name": "x", "search": {"scheduler": "pbt"}}, "search.scheduler"),
        ({"name": "x", "search": {"startup_trials": -1}}, "search.startup_trials must be an int >= 0"),
        ({"name": "x", "cv": {"folds": 1}}, "cv.folds"),
        ({"name": "x", "resources": {"cpus_per_fold": 0}}, "cpus_per_fold"),
        ({"name": "x", "train": {"lr": 0.1}, "space": {"lr": 0.2}}, "both train and space"),
        ({"name": "bad name!"}, "name must be"),
        ({"name": "x", "search": {"metric": "cv_magic"}}, "search.metric must be one of"),
        ({"name": "x", "search": {"metric": "cv_val_loss", "mode": "max"}}, "does not fit search.metric 'cv_val_loss'"),
        ({"name": "x", "search": {"metric": "cv_robust_accuracy", "mode": "min"}}, "optimised with mode 'max'"),
        ({"name": "x", "search": {"metric": "cv_robust_accuracy", "shift_images": 0}}, "needs shift metrics"),
        ({"name": "x", "search": {"shift_suite": ["zoom_out_0.55", "warp"]}}, "search.shift_suite"),
        ({"name": "x", "search": {"checkpoint_every": 0}}, "search.checkpoint_every must be an int >= 1 or null"),
        ({"name": "x", "retrain": {"mode": "bagging"}}, "retrain.mode must be one of ['refit', 'folds', 'both']"),
        ({"name": "x", "calibration": {"coverage": 1.0}}, "calibration.coverage must be in (0, 1)"),
        (
            {"name": "x", "calibration": {"ood_features": "logits"}},
            "calibration.ood_features must be one of ['pooled', 'stage_stats', 'pooled+stage_stats'], got 'logits'",
        ),
        (
            {"name": "x", "calibration": {"framing_zooms": [0.55, 1.5]}},
            "calibration.framing_zooms must be distinct numbers in (0, 1), got [0.55, 1.5]",
        ),
        ({"name": "x", "calibration": {"framing_zooms": 0.55}}, "calibration.framing_zooms must be a list of numbers"),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path: Path, doc: dict, needle: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_apply_on_top(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x", "search": {"num_samples": 4}})
    cfg = load_config(path, {"search": {"num_samples": 9, "seed": None}, "cv": {"folds": 4}})
    assert cfg.search.num_samples == 9 and cfg.search.seed == 0 and cfg.cv.folds == 4
    assert isinstance(cfg, ExperimentConfig)


def test_trainconfig_validates_directly() -> None:
    with pytest.raises(ValueError, match="aug_strength"):
        TrainConfig(aug_strength=2.0)
    with pytest.raises(ValueError, match=r"zoom_aug \(max \|log2 scale\|\) must be in \[0, 2\], got -1"):
        TrainConfig(zoom_aug=-1)
    with pytest.raises(ValueError, match=r"stain_aug must be in \[0, 1\], got 2"):
        TrainConfig(stain_aug=2)
    assert TrainConfig().zoom_aug == 0.0 and TrainConfig().stain_aug == 0.0  # off by default


def test_robust_metrics_can_rank_a_search(tmp_path: Path) -> None:
    for metric in ("cv_shifted_accuracy", "cv_worst_shift_accuracy", "cv_robust_accuracy"):
        cfg = load_config(_write(tmp_path, {"name": "x", "search": {"metric": metric, "mode": "max"}}))
        assert cfg.search.metric == metric
    cfg = load_config(_write(tmp_path, {"name": "x", "search": {"shift_suite": ["gamma_0.6", "zoom_out_0.55"]}}))
    assert cfg.search.shift_suite == ("gamma_0.6", "zoom_out_0.55")
    assert parse_config(cfg.to_dict(), "again.yaml").search.shift_suite == cfg.search.shift_suite


def test_the_framing_check_is_on_by_default_sorted_and_can_be_turned_off() -> None:
    from cellnet.config import parse_config
    from cellnet.constants import FRAMING_ZOOMS

    assert parse_config({"name": "x"}).calibration.framing_zooms == FRAMING_ZOOMS
    assert parse_config({"name": "x", "calibration": {"framing_zooms": [0.7, 0.5]}}).calibration.framing_zooms == (
        0.5,
        0.7,
    )
    assert parse_config({"name": "x", "calibration": {"framing_zooms": []}}).calibration.framing_zooms == ()
