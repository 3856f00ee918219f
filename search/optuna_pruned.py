"""Ray's OptunaSearch, telling Optuna the truth about trials a scheduler stopped early.

Ray's OptunaSearch reports every epoch (`trial.report(value, step)`) but, when a trial ends with a value, tells
Optuna COMPLETE, so TPE treats an ASHA-stopped trial's low-budget score as a final score. Here a trial that ended
without error before `max_epochs` is told PRUNED (Optuna keeps its intermediate values; TPE then treats it the way
Optuna's own pruners intend), a diverged or errored trial FAIL, and only a trial that ran all epochs COMPLETE --
with the value the leaderboard ranks it by: its best epoch's metric, not the last epoch's (which is what Ray tells).
`tell_pruned=False` restores Ray's behaviour, for the benchmark that compares the two. See
docs/decisions/0003-pruned-trials-in-optuna.md.

A tell Optuna refuses (a value it cannot store) would leave the trial RUNNING in the study for ever: it is told FAIL
instead, with a warning.

The suggested params are returned under the key `params`, so `result.config["params"]` is what a trial ran.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from cellnet.config import SHIFT_METRICS, ExperimentConfig
from search.budget import Deadline, RungGate, rung_epochs
from search.first_rung import RungHold
from search.space import check_points, define_by_run, sampler

log = logging.getLogger(__name__)


class PrunedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells PRUNED for early-stopped trials and FAIL for diverged ones (see module doc)."""

    def __init__(
        self,
        *args: Any,
        max_epochs: int,
        tell_pruned: bool = True,
        gate: RungGate | None = None,
        hold: RungHold | None = None,
        max_live: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = int(max_epochs)
        self.tell_pruned = tell_pruned
        self.gate = gate  # no trial that cannot reach its first rung in the time left (search/budget.py)
        # with a synchronous first rung (search/first_rung.py) the searcher limits concurrency itself: a trial held
        # at the rung is paused and must not count (Tune's ConcurrencyLimiter would count it)
        self.hold, self.max_live = hold, max_live
        self._values: dict[str, dict[int, float]] = {}  # trial id -> {epoch: metric} reported to Optuna

    def live_trials(self) -> int:
        """Trials started and not ended, less those held at the first rung."""
        hold = self.__dict__.get("hold")
        held = hold.held if hold is not None else set()
        return sum(1 for t in self._ot_trials if t not in self._completed_trials and t not in held)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        max_live = self.__dict__.get("max_live")
        if max_live is not None and self.live_trials() >= max_live:
            return None  # a trial slot frees later: asked again then (the gate too, so it judges at the start)
        gate = self.__dict__.get("gate")  # (a state saved before the gate)
        if gate is not None and not gate.allows(len(self._ot_trials)):
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray types suggest() without its FINISHED
        if gate is not None:
            gate.suggested(trial_id)
        out = super().suggest(trial_id)
        return {"params": out} if isinstance(out, dict) else out

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._record(trial_id, result)
        if self.__dict__.get("gate") is not None:
            self.gate.observe(trial_id, result)  # type: ignore[union-attr]

    def _record(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Remember the epoch's value; False if that epoch was already recorded."""
        step, value = int(result.get("training_iteration", 0)), result.get(self.metric)
        seen = self.__dict__.setdefault("_values", {}).setdefault(trial_id, {})  # (a state saved before _values)
        if not step or value is None or step in seen:
            return False
        if self.metric in SHIFT_METRICS and result.get("shift_scored", 1) == 0:
            return False  # a value carried from the last scored epoch (search/trainable.py): not this epoch's
        seen[step] = float(value)
        return True

    def best_value(self, trial_id: str) -> float | None:
        """The trial's best reported value (the leaderboard's best-epoch metric), None if none is finite."""
        values = [v for v in self.__dict__.get("_values", {}).get(trial_id, {}).values() if math.isfinite(v)]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result and self.__dict__.get("gate") is not None:
            self.gate.observe(trial_id, result)  # type: ignore[union-attr]  # e.g. the rung result ASHA stopped on
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        state = self.final_state(result, error)
        ot_trial = self._ot_trials[trial_id]
        if result and self._record(trial_id, result) and state == TrialState.PRUNED:
            # Tune skips on_trial_result for the result on which the scheduler stops a trial: report it here, so
            # Optuna has the value the trial was pruned at (at least one intermediate value).
            ot_trial.report(result[self.metric], int(result["training_iteration"]))
        value = None
        if state is None:  # ran every epoch
            state = TrialState.COMPLETE
            value = self.best_value(trial_id) if self.tell_pruned else (result or {}).get(self.metric)
            if value is None:
                state = TrialState.FAIL
        self.tell(trial_id, value, state)

    def tell(self, trial_id: str, value: float | None, state: TrialState) -> None:
        """study.tell; if Optuna refuses, the trial is told FAIL (with a warning) rather than left RUNNING."""
        ot_trial = self._ot_trials[trial_id]
        try:
            self.study.tell(ot_trial, value, state=state)
        except Exception as exc:
            log.warning("optuna refused to record trial %s as %s (%s); recording it as FAIL", trial_id, state.name, exc)
            try:
                self.study.tell(ot_trial, None, state=TrialState.FAIL)
            except Exception as again:
                log.warning("optuna refused FAIL for trial %s too: %s", trial_id, again)
        self._completed_trials.add(trial_id)

    def final_state(self, result: dict[str, Any] | None, error: bool) -> TrialState | None:
        """FAIL / PRUNED, or None for a trial that ran every epoch (COMPLETE; `on_trial_complete` picks the value)."""
        if error or (result and result.get("diverged")):
            return TrialState.FAIL
        if not result or result.get(self.metric) is None:
            return TrialState.FAIL if error else TrialState.PRUNED
        if self.tell_pruned and int(result.get("training_iteration", self.max_epochs)) < self.max_epochs:
            return TrialState.PRUNED
        return None

    @property
    def study(self) -> optuna.Study:
        study: optuna.Study = self._ot_study  # type: ignore[assignment]  # set up in __init__ (space given)
        return study


def make_searcher(
    cfg: ExperimentConfig,
    *,
    tell_pruned: bool = True,
    budget_file: Path | None = None,
    hold: RungHold | None = None,
    max_live: int | None = None,
    deadline_from: tuple[float, int] | None = None,
) -> PrunedOptunaSearch:
    """The searcher for `cfg`: define-by-run space, seeded TPE or random sampler, points_to_evaluate enqueued; with a
    time budget and a scheduler with rungs, the rung gate (search/budget.py; its decision written to
    `budget_file`); with a synchronous first rung, the `hold` it shares with the scheduler and the concurrency limit
    `max_live` it keeps itself; with `search.deadline_s`, the gate counts from `deadline_from` = (the command's start,
    the images the refit trains on)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" / per-trial INFO lines
    return PrunedOptunaSearch(
        space=define_by_run(cfg),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        sampler=sampler(cfg),
        points_to_evaluate=check_points(cfg) or None,
        max_epochs=cfg.search.max_epochs,
        tell_pruned=tell_pruned,
        gate=gate_for(cfg, budget_file, hold, deadline_from)
        if cfg.search.time_budget_s or cfg.search.deadline_s
        else None,
        hold=hold,
        max_live=max_live,
    )


def gate_for(
    cfg: ExperimentConfig,
    budget_file: Path | None,
    hold: RungHold | None,
    deadline_from: tuple[float, int] | None = None,
) -> RungGate:
    """The rung gate of `cfg`'s budget; with a hold, what it needs to know to keep a held trial's time to finish;
    with a deadline, what the deployment's estimate needs (search/budget.py `Deadline`)."""
    t = cfg.train_config({}, epochs=cfg.search.max_epochs)  # the space's fixed training settings
    full = t.input_size or cfg.data.image_size
    low_res = min(t.low_res_size or cfg.data.image_size, full) if t.low_res_epochs else full
    return RungGate(
        cfg.search.time_budget_s,
        first_rung(cfg),
        budget_file,
        hold=hold,
        max_epochs=cfg.search.max_epochs,
        low_res_epochs=t.low_res_epochs,
        pixel_ratio=(full / low_res) ** 2,
        rungs=tuple(rung_epochs(cfg)),
        deadline=deadline_of(cfg, deadline_from),
    )


def deadline_of(cfg: ExperimentConfig, deadline_from: tuple[float, int] | None) -> Deadline | None:
    """`search.deadline_s` as the gate keeps it (None without one)."""
    if cfg.search.deadline_s is None:
        return None
    origin, images = deadline_from if deadline_from is not None else (time.time(), 0)
    refit = cfg.retrain.mode in ("refit", "both")
    return Deadline(float(cfg.search.deadline_s), origin, images, cfg.search.max_epochs if refit else 0)


def first_rung(cfg: ExperimentConfig) -> int:
    """The epoch a new trial must reach to be judged: ASHA's first rung (grace_period), else its last epoch."""
    return cfg.search.grace_period if cfg.search.scheduler != "fifo" else cfg.search.max_epochs
