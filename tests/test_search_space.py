"""The search layer without a Ray cluster: space -> Optuna, PRUNED telling, resource arithmetic, CLI errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cellnet.config import parse_config
from cellnet.errors import ConfigError
from search import resources
from search.optuna_pruned import make_searcher
from search.run import main
from search.space import suggest

SPACE_DIR = Path(__file__).resolve().parents[1] / "spaces"
BASELINE = SPACE_DIR / "baseline.yaml"  # `cellnet train`'s single-model config: every entry fixed
SPACES = sorted(p for p in SPACE_DIR.glob("*.yaml") if p != BASELINE)

BASE: dict[str, Any] = {
    "name": "t",
    "data": {"source": "synthetic:200", "image_size": 32},
    "cv": {"folds": 2},
    "search": {"num_samples": 4, "max_epochs": 4, "grace_period": 1, "reduction_factor": 2, "seed": 3},
    "space": {
        "backbone": {"choice": ["test_resnet", "test_efficientnet"]},
        "head_layers": {"int": [0, 2]},
        "head_width": {"choice": [16, 32], "when": "head_layers > 0"},
        "lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "dropout": {"uniform": [0.0, 0.5]},
    },
}


def config(**sections: Any) -> Any:
    raw = {**BASE, **{k: {**BASE.get(k, {}), **v} for k, v in sections.items()}}
    return parse_config(raw, "test.yaml")


def write(tmp_path: Path, raw: dict[str, Any]) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_conditional_params_only_when_active() -> None:
    cfg = config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = suggest(cfg, trial)
        seen.add(params["head_layers"] > 0)
        assert ("head_width" in params) == (params["head_layers"] > 0)
        assert 1e-4 <= params["lr"] <= 1e-1 and params["backbone"] in ("test_resnet", "test_efficientnet")
        # an inactive parameter takes the TrainConfig default
        assert cfg.train_config(params).head_width == params.get("head_width", 256)
        study.tell(trial, 0.5)
    assert seen == {True, False}


@pytest.mark.parametrize(("num_samples", "startup"), [(6, 3), (8, 3), (18, 6), (60, 10)])
def test_tpe_starts_modelling_within_small_budgets(num_samples: int, startup: int) -> None:
    sampler = make_searcher(config(search={"searcher": "tpe", "num_samples": num_samples})).study.sampler
    assert sampler._n_startup_trials == startup  # Optuna's fixed 10 would leave an 8-trial search all random


def test_startup_trials_override_the_default() -> None:
    cfg = config(search={"searcher": "tpe", "num_samples": 60, "startup_trials": 4})
    assert make_searcher(cfg).study.sampler._n_startup_trials == 4


def test_searcher_kinds_are_seeded() -> None:
    def draws(searcher: str, seed: int) -> list[dict[str, Any]]:
        s = make_searcher(config(search={"searcher": searcher, "seed": seed}))
        return [s.suggest(f"t{i}")["params"] for i in range(3)]

    assert isinstance(make_searcher(config(search={"searcher": "random"})).study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(make_searcher(config(search={"searcher": "tpe"})).study.sampler, optuna.samplers.TPESampler)
    assert draws("random", 1) == draws("random", 1)
    assert draws("tpe", 1) == draws("tpe", 1)
    assert draws("random", 1) != draws("random", 2)


def test_points_to_evaluate_come_first_and_are_checked() -> None:
    point = {"backbone": "test_resnet", "head_layers": 0, "lr": 0.05, "dropout": 0.1}
    s = make_searcher(config(search={"points_to_evaluate": [point]}))
    assert s.suggest("t0")["params"] == point
    with pytest.raises(ConfigError, match=r"points_to_evaluate\[0\].*'momentum' is not a searched"):
        make_searcher(config(search={"points_to_evaluate": [{"momentum": 0.5}]}))
    with pytest.raises(ConfigError, match=r"lr=5.0 is outside its domain"):
        make_searcher(config(search={"points_to_evaluate": [{"lr": 5.0}]}))


@pytest.mark.parametrize("tell_pruned", [True, False])
def test_early_stopped_trial_reaches_optuna_as_pruned(tell_pruned: bool) -> None:
    s = make_searcher(config(), tell_pruned=tell_pruned)
    curves = {"stopped": [0.3, 0.35], "full": [0.4, 0.7, 0.6, 0.5], "errored": [0.2], "diverged": [], "first": [0.1]}
    for tid, values in curves.items():
        s.suggest(tid)
        for epoch, v in enumerate(values, start=1):
            if tid != "first":  # Tune does not pass on the result a scheduler stops a trial on
                s.on_trial_result(tid, {"cv_accuracy": v, "training_iteration": epoch})
        last = {"cv_accuracy": values[-1], "training_iteration": len(values)} if values else None
        if tid == "diverged":
            last = {"diverged": 1}
        s.on_trial_complete(tid, last, error=tid in ("errored", "diverged"))
    by_state = {t.number: t for t in s.study.trials}
    stopped, full, errored, diverged, first = (by_state[i] for i in range(5))
    assert stopped.state == (TrialState.PRUNED if tell_pruned else TrialState.COMPLETE)
    assert stopped.intermediate_values == {1: 0.3, 2: 0.35}
    # a completed trial is told its best epoch's value (what the leaderboard ranks by); Ray's way: the last one
    assert full.state == TrialState.COMPLETE and full.value == (0.7 if tell_pruned else 0.5)
    assert errored.state == TrialState.FAIL and diverged.state == TrialState.FAIL
    if tell_pruned:
        assert first.state == TrialState.PRUNED and first.intermediate_values == {1: 0.1}
    # TPE keeps working on a study with pruned and failed trials
    s.suggest("next")


def test_refused_tell_marks_the_trial_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_searcher(config())
    s.suggest("t0")
    for epoch, v in enumerate([0.4, 0.5, 0.6, 0.7], start=1):
        s.on_trial_result("t0", {"cv_accuracy": v, "training_iteration": epoch})
    real_tell = s.study.tell
    calls: list[Any] = []

    def refuse_first(trial: Any, values: Any = None, state: Any = None) -> Any:
        calls.append(state)
        if len(calls) == 1:
            raise ValueError("refused")
        return real_tell(trial, values, state=state)

    monkeypatch.setattr(s.study, "tell", refuse_first)
    s.on_trial_complete("t0", {"cv_accuracy": 0.7, "training_iteration": 4})
    assert calls == [TrialState.COMPLETE, TrialState.FAIL]
    assert s.study.trials[0].state == TrialState.FAIL


def test_resource_arithmetic() -> None:
    two = resources.Cluster(({"CPU": 2.0, "GPU": 0.0},), "test")
    assert resources.plan(config(), two).max_concurrent == 1  # 2 folds x 1 CPU
    assert resources.plan(config(resources={"cpus_per_fold": 0.5}), two).max_concurrent == 2
    assert resources.plan(config(resources={"cpus_per_fold": 0.5}), two).threads_per_fold == 1
    gpu = resources.Cluster(({"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 1.0}), "test")
    p = resources.plan(config(resources={"cpus_per_fold": 2, "gpus_per_fold": 0.25}), gpu)
    assert p.max_concurrent == 4 and p.worker_resources == {"CPU": 2.0, "GPU": 0.25}
    assert resources.plan(config(resources={"max_concurrent": 3}), two).max_concurrent == 3
    with pytest.raises(ConfigError, match=r"test.yaml: resources.cpus_per_fold=3 but the largest node has 2 CPUs"):
        resources.plan(config(resources={"cpus_per_fold": 3}), two)
    with pytest.raises(ConfigError, match=r"gpus_per_fold=0.5 but the largest node has 0 GPUs"):
        resources.plan(config(resources={"gpus_per_fold": 0.5}), two)
    with pytest.raises(ConfigError, match=r"one trial needs 3 folds x 1 CPU"):
        resources.plan(config(cv={"folds": 3}), two)
    lenient = resources.plan(config(cv={"folds": 3}), two, strict=False)
    assert any("NOT runnable here" in n for n in lenient.notes)


def test_dry_run_prints_config_space_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BASE)
    assert main([path, "--dry-run", "--num-samples", "7", "--storage", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 7" in out
    assert "head_width" in out and "when head_layers > 0" in out
    assert "# resource plan" in out and "concurrent" in out
    assert not (tmp_path / "run").exists()  # nothing ran, nothing written


def test_dry_run_plans_against_the_cluster_at_address(
    ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    path = write(tmp_path, BASE)
    argv = [path, "--dry-run", "--address", os.environ["RAY_ADDRESS"], "--max-concurrent", "3"]
    assert main([*argv, "--storage", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "(ray)" in out  # the connected cluster's nodes, not this machine's guess
    assert "3 trial(s) at once" in out  # --max-concurrent on a cluster that may autoscale
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("change", "argv", "message"),
    [
        ({"search": {**BASE["search"], "num_sample": 3}}, [], r"unknown key search.'num_sample'"),
        (
            {"space": {**BASE["space"], "dropout": {"uniform": [0.5, 0.1]}}},
            [],
            r"space.dropout: uniform needs low < high",
        ),
        ({"space": {**BASE["space"], "backbone": {"choice": ["resnet_nope"]}}}, [], r"backbone 'resnet_nope' is not"),
        ({}, ["--cpus-per-fold", "512"], r"resources.cpus_per_fold=512 but the largest node has"),
        ({}, ["--folds", "1"], r"cv.folds must be an int >= 2"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], argv: list[str], message: str
) -> None:
    path = write(tmp_path, {**BASE, **change})
    rc = main([path, "--storage", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert path in err or "--" in err
    assert pytest.importorskip("re").search(message, err), err


def test_resume_needs_a_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([write(tmp_path, BASE), "--storage", str(tmp_path / "run"), "--resume"]) == 2
    assert "holds no search to resume" in capsys.readouterr().err


@pytest.mark.parametrize("space", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_parses(space: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([str(space), "--dry-run", "--storage", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "# resource plan" in out
    cfg = parse_config(yaml.safe_load(space.read_text()), str(space))
    assert cfg.searched(), f"{space.name} searches nothing"
    make_searcher(cfg).suggest("t0")  # the space and its points_to_evaluate work with Optuna


def test_shipped_baseline_is_a_fixed_single_model_config() -> None:
    from cellnet.cli import fixed_train_config

    cfg = parse_config(yaml.safe_load(BASELINE.read_text()), str(BASELINE))
    assert not cfg.searched()
    assert fixed_train_config(str(BASELINE), cfg).backbone == "mobilenetv3_small_050"
