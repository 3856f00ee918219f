"""TensorBoard logs for a search: per-epoch curves per trial and one HParams entry per trial, written by the driver.

Layout under `logdir` (`<run_dir>/tensorboard/`), so `tensorboard --logdir runs/<name>/tensorboard` shows every trial:

    logdir/                 experiment config: every searched parameter (with its domain) and the summary metrics
    logdir/<trial_id>/      one run per trial: the per-epoch scalars (step = epoch), the HParams session start (the
                            trial's parameters) and, when the trial ends, the `hparams/*` summary scalars and the
                            session end (success, or failure for an errored trial)

Per-epoch tags: `cv/accuracy`, `cv/accuracy_std`, `cv/macro_f1`, ... (`cv_*` metrics), `fold<i>/accuracy`, ...
(`fold<i>_*`), `train/lr`, `perf/images_per_s`, `perf/fit_time_s`. Summary tags shown as HParams metric columns:
`hparams/<metric>` (the search metric at the trial's best epoch, e.g. `hparams/cv_accuracy`), `hparams/cv_accuracy`,
`hparams/cv_accuracy_std`, `hparams/cv_macro_f1` (at the best epoch), `hparams/cv_accuracy_last`, `hparams/epochs`,
`hparams/best_epoch`, `hparams/stopped_early` (1 when a scheduler or time budget stopped it before `max_epochs`).

Written with TensorBoard's public, TF-free HParams API (`summary_v2.hparams_config_pb` / `hparams_pb`) and torch's
public `FileWriter`; only the session end, for which that API has no builder, is assembled here (as v1 does).

Resume-safe: opening a trial's run reads what is already there, so a resumed search does not write a second session
start and skips epochs it already logged (a trial restored from an older checkpoint re-reports them).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard.summary import scalar
from torch.utils.tensorboard.writer import FileWriter

from cellnet.config import Param

SUMMARY_PREFIX = "hparams/"
SHIFT_SUMMARY = ("cv_shifted_accuracy", "cv_worst_shift_accuracy", "cv_robust_accuracy")
_FOLD = re.compile(r"^fold(\d+)_(.+)$")
_PERF = ("images_per_s", "fit_time_s")
_NOT_SCALARS = ("epoch", "training_iteration", "diverged")


def scalar_tag(key: str) -> str | None:
    """The TensorBoard tag of a per-epoch metric from the search-layer contract, or None for keys not plotted."""
    if key in _NOT_SCALARS:
        return None
    if key.startswith("cv_"):
        return "cv/" + key[3:]
    m = _FOLD.match(key)
    if m:
        return f"fold{m.group(1)}/{m.group(2)}"
    if key == "lr":
        return "train/lr"
    if key in _PERF:
        return "perf/" + key
    return None


def hparam_value(value: Any) -> str | float | bool:
    """A TensorBoard-friendly value: bools stay bools, numbers become floats, everything else a string (None: none)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return "none" if value is None else str(value)


def _choice_type(values: Sequence[Any]) -> int:
    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _typed(value: Any, p: Param | None) -> str | float | bool:
    """Convert a trial's value to the type its experiment entry declares (a mixed choice is all strings)."""
    if p is not None and p.kind == "choice" and _choice_type(p.values) == api_pb2.DATA_TYPE_STRING:
        return "none" if value is None else str(value)
    return hparam_value(value)


def _hparam(name: str, p: Param | None) -> hp.HParam:
    """The HParams plugin's description of one searched parameter: its domain (a choice's values, a range's ends)."""
    if p is None:
        return hp.HParam(name)
    if p.kind == "choice":
        return hp.HParam(name, hp.Discrete([_typed(v, p) for v in dict.fromkeys(p.values)]))
    if p.kind in ("uniform", "loguniform", "int"):
        return hp.HParam(name, hp.RealInterval(float(p.low), float(p.high)))
    return hp.HParam(name)


def _session_end(failed: bool) -> Summary:
    """The session-end record (success or failure). The HParams plugin's TF-free public API (summary_v2) has no
    builder for it; this is what its TF-based v1 `session_end_pb` writes."""
    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    )
    meta = hp_metadata.create_summary_metadata(data)
    return Summary(value=[Summary.Value(tag=hp_metadata.SESSION_END_INFO_TAG, metadata=meta)])


def summary_metric_tags(metric: str) -> list[str]:
    """The `hparams/*` tags written when a trial ends (the HParams table's metric columns), search metric first."""
    names = [metric, "cv_accuracy", "cv_accuracy_std", "cv_macro_f1", "cv_accuracy_last"]
    names += list(SHIFT_SUMMARY)
    names += ["epochs", "best_epoch", "stopped_early"]
    return [SUMMARY_PREFIX + n for n in dict.fromkeys(names)]


class TensorBoardHParamsCallback(Callback):
    """Tune callback: per-epoch scalars and an HParams entry per trial under `logdir/<trial_id>/`.

    space: the searched parameters (`ExperimentConfig.searched()`), or just their names (then TensorBoard infers the
    types). metric/mode pick each trial's best epoch; max_epochs tells a completed trial from one stopped early.
    """

    def __init__(
        self,
        logdir: str | Path,
        space: Mapping[str, Param] | Sequence[str],
        max_epochs: int,
        metric: str = "cv_accuracy",
        mode: str = "max",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {mode!r}")
        self.logdir = Path(logdir)
        self.space: dict[str, Param | None] = (
            dict(space.items()) if isinstance(space, Mapping) else {name: None for name in space}
        )
        self.max_epochs = int(max_epochs)
        self.metric = metric
        self.mode = mode
        self._writers: dict[str, FileWriter] = {}
        self._last_step: dict[str, int] = {}
        self._ended: set[str] = set()

    # -- Tune hooks ---------------------------------------------------------------------------------------------
    def setup(
        self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any
    ) -> None:
        self.write_experiment()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._writer(trial)

    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._writer(trial)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.log_epoch(trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.end_trial(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.end_trial(trial, failed=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.close()

    # -- the work, callable without Tune ------------------------------------------------------------------------
    def write_experiment(self) -> None:
        """The experiment-level HParams config (once per logdir; a resumed search finds it and writes nothing)."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        if _read_run(self.logdir)[2]:
            return
        experiment = hp.hparams_config_pb(
            [_hparam(n, p) for n, p in self.space.items()],
            [hp.Metric(t) for t in self._metric_tags()],
            time_created_secs=time.time(),
        )
        w = FileWriter(str(self.logdir))
        w.add_summary(experiment)
        w.close()

    def log_epoch(self, trial: Any, result: Mapping[str, Any]) -> None:
        """Per-epoch scalars at step = epoch; an epoch already in the run (resume) is skipped."""
        w = self._writer(trial)
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        if step <= self._last_step.get(trial.trial_id, 0):
            return
        for key, value in result.items():
            tag = scalar_tag(key)
            if tag is not None and isinstance(value, int | float) and not isinstance(value, bool):
                w.add_summary(scalar(tag, float(value)), step)
        self._last_step[trial.trial_id] = step
        w.flush()

    def end_trial(self, trial: Any, *, failed: bool) -> None:
        """Summary metrics (from the trial's logged curves) and the session end; then close the trial's writer."""
        if trial.trial_id in self._ended:
            return
        w = self._writer(trial)
        w.flush()
        curves = _read_run(self.logdir / trial.trial_id)[0]
        summary = _summary_metrics(curves, self.metric, self.mode, self.max_epochs, failed)
        step = int(summary.get("epochs", 0))
        for name, value in summary.items():
            w.add_summary(scalar(SUMMARY_PREFIX + name, value), step)
        w.add_summary(_session_end(failed))
        w.close()
        del self._writers[trial.trial_id]
        self._ended.add(trial.trial_id)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _metric_tags(self) -> list[str]:
        return summary_metric_tags(self.metric) + ["cv/accuracy", "cv/macro_f1", "cv/val_loss"]

    def _writer(self, trial: Any) -> FileWriter:
        """The trial's writer; on first use write the session start unless the run already has one (resume)."""
        tid = trial.trial_id
        if tid in self._writers:
            return self._writers[tid]
        run = self.logdir / tid
        curves, has_start, _ = _read_run(run)
        self._last_step[tid] = max((max(c) for c in curves.values() if c), default=0)
        w = FileWriter(str(run))
        self._writers[tid] = w
        if not has_start:
            params = dict((getattr(trial, "config", None) or {}).get("params") or {})
            typed = {
                name: _typed(value, self.space.get(name))
                for name, value in params.items()
                if name in self.space or not self.space
            }
            w.add_summary(hp.hparams_pb(typed, trial_id=tid, start_time_secs=time.time()))
            w.flush()
        return w


def _read_run(run: Path) -> tuple[dict[str, dict[int, float]], bool, bool]:
    """What a run directory already holds: per-epoch curves {tag: {step: value}}, session start?, experiment?"""
    if not run.is_dir() or not any(run.glob("events.out.tfevents.*")):
        return {}, False, False
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    curves = {
        tag: {e.step: e.value for e in acc.Scalars(tag)}
        for tag in acc.Tags()["scalars"]
        if not tag.startswith(SUMMARY_PREFIX)
    }
    try:
        hp_tags = set(acc.PluginTagToContent(hp_metadata.PLUGIN_NAME))
    except KeyError:  # no HParams data in this run yet
        hp_tags = set()
    return curves, hp_metadata.SESSION_START_INFO_TAG in hp_tags, hp_metadata.EXPERIMENT_TAG in hp_tags


def _summary_metrics(
    curves: Mapping[str, Mapping[int, float]], metric: str, mode: str, max_epochs: int, failed: bool
) -> dict[str, float]:
    """The HParams metric values of one trial: the search metric and friends at its best epoch, epochs run, flags."""
    tag = scalar_tag(metric) or metric
    series = {s: v for s, v in curves.get(tag, {}).items() if not math.isnan(v)}
    epochs = max((max(c) for c in curves.values() if c), default=0)
    if not series:
        return {"epochs": float(epochs), "stopped_early": float(not failed and epochs < max_epochs)} if epochs else {}
    pick = max if mode == "max" else min
    best = pick(series, key=lambda s: (series[s], -s) if mode == "max" else (series[s], s))
    out: dict[str, float] = {metric: series[best]}
    for name in ("cv_accuracy", "cv_accuracy_std", "cv_macro_f1", *SHIFT_SUMMARY):
        value = curves.get(scalar_tag(name) or name, {}).get(best)
        if value is not None:
            out[name] = value
    acc = curves.get("cv/accuracy", {})
    if acc:
        out["cv_accuracy_last"] = acc[max(acc)]
    out.update(epochs=float(epochs), best_epoch=float(best), stopped_early=float(not failed and epochs < max_epochs))
    return out
