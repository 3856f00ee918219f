"""What a person sees while a search runs: a line per event, like Keras Tuner's summaries, not Ray's status boxes.

    Tune controller --on_trial_start / _result / _complete / _error--> ConsoleReporter --> stdout
        trial 3/8 a1b2c3 started: backbone=resnet10t lr=2.0e-03 dropout=0.1
        trial 3/8 a1b2c3 epoch 4 (rung): cv_accuracy 0.8512 -- continues
        trial 3/8 a1b2c3 stopped early at epoch 4 by ASHA: cv_accuracy 0.8512 (best epoch 4), 1m12s
        best so far: a1b2c3 cv_accuracy 0.8512 (trial 3)

Ray's own tables and config boxes stay behind `--verbose` (Tune verbose=1); Ray's warnings are logging records and
stay visible either way. The leaderboard and the project's own TensorBoard command are printed by search.run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from ray.tune import Callback

from search.results import error_text


def compact(params: Mapping[str, Any], limit: int = 10) -> str:
    """`key=value` pairs, floats short (2 significant digits under 0.01, else 3), at most `limit` of them."""
    parts = []
    for k, v in list(params.items())[:limit]:
        if isinstance(v, float) and not isinstance(v, bool):
            v = f"{v:.1e}" if 0 < abs(v) < 0.01 else f"{v:.3g}"
        parts.append(f"{k}={v}")
    more = len(params) - limit
    return " ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class ConsoleReporter(Callback):
    """Tune callback: one line when a trial starts, at each of its ASHA rungs, when it ends (completed, stopped
    early, failed), and a best-so-far line whenever the best changes."""

    def __init__(
        self,
        metric: str,
        mode: str,
        max_epochs: int,
        rungs: list[int],
        num_samples: int,
        *,
        stream: TextIO | None = None,
    ) -> None:
        self.metric, self.mode, self.max_epochs = metric, mode, int(max_epochs)
        self.rungs, self.num_samples = set(rungs), int(num_samples)
        self.stream = stream
        self._number: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._best_epoch: dict[str, tuple[int, float]] = {}  # trial -> (epoch, value) of its best epoch so far
        self._last: dict[str, dict[str, Any]] = {}
        self._spent: dict[str, dict[int, float]] = {}  # trial -> epoch -> its seconds
        self._best: tuple[str, float] | None = None

    # -- Tune hooks ---------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started(trial.trial_id, dict((getattr(trial, "config", None) or {}).get("params") or {}))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended(trial.trial_id, error=_error_line(trial))

    # -- the work, callable without Tune ------------------------------------------------------------------------
    def started(self, trial_id: str, params: Mapping[str, Any]) -> None:
        if trial_id in self._number:  # restored after a restart or on --resume: already announced
            return
        self._number[trial_id] = len(self._number) + 1
        self._started[trial_id] = time.time()
        self._print(f"{self._name(trial_id)} started: {compact(params) or '(fixed config)'}")

    def result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        if trial_id not in self._number:
            self.started(trial_id, {})
        epoch = int(result.get("epoch") or result.get("training_iteration") or 0)
        value = result.get(self.metric)
        spent = self._spent.setdefault(trial_id, {})  # each epoch's own seconds: Tune's total restarts with the trial
        if result.get("time_this_iter_s") is not None:
            spent.setdefault(epoch, float(result["time_this_iter_s"]))
        took = sum(spent.values()) if spent else result.get("time_total_s")
        self._last[trial_id] = {"epoch": epoch, "value": value, "time": took}
        if isinstance(value, int | float) and math.isfinite(value):
            best = self._best_epoch.get(trial_id)
            if best is None or (value > best[1] if self.mode == "max" else value < best[1]):
                self._best_epoch[trial_id] = (epoch, float(value))
        if epoch in self.rungs and epoch < self.max_epochs:
            self._print(f"{self._name(trial_id)} epoch {epoch} (ASHA rung): {self.metric} {_fmt(value)}")

    def ended(self, trial_id: str, *, error: str | None = None) -> None:
        if trial_id not in self._number:
            self.started(trial_id, {})
        last = self._last.get(trial_id, {})
        took = duration(last.get("time") or (time.time() - self._started.get(trial_id, time.time())))
        epoch = int(last.get("epoch") or 0)
        best = self._best_epoch.get(trial_id)
        score = f"{self.metric} {_fmt(best[1])} (best epoch {best[0]})" if best else "no score"
        if error is not None:
            self._print(f"{self._name(trial_id)} failed at epoch {epoch}: {error}")
            return
        how = "completed" if epoch >= self.max_epochs else f"stopped early at epoch {epoch} (ASHA or time budget)"
        self._print(f"{self._name(trial_id)} {how}: {score}, {took}")
        if best is not None and (
            self._best is None or (best[1] > self._best[1] if self.mode == "max" else best[1] < self._best[1])
        ):
            self._best = (trial_id, best[1])
            self._print(f"best so far: {trial_id} {self.metric} {_fmt(best[1])} (trial {self._number[trial_id]})")

    def _name(self, trial_id: str) -> str:
        return f"trial {self._number[trial_id]}/{self.num_samples} {trial_id}"

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)


def _error_line(trial: Any) -> str:
    """The trial's exception in one line (Tune keeps it in a file next to the trial), else a pointer to it."""
    try:
        error = trial.get_error()
    except Exception:  # an unreadable error file must not end the search's reporting
        error = None
    if error is None:
        return "see trials.csv (column error)"
    return error_text(error)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"
