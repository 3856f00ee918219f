"""A synchronous first rung: no trial goes past ASHA's first rung until several trials have reached it.

Asynchronous ASHA lets the first trial to reach a rung go on (nothing to compare it with), so with one trial at a
time and a budget that holds a few trials, the first point always runs to its last epoch and is always the winner
(issue 33: on ~7,000 cells the first trial took 7.6 of the 10 minutes). With `search.first_rung_trials: k` a trial
that reaches the first rung (epoch `grace_period`) is paused there (Tune PAUSE: its worker group stops; the rung
epoch's checkpoint is what it restarts from, search/trainable.py) until k trials have reached it, or until no more
trials will start (the rung gate closed or num_samples reached: nothing pending, nothing running). Then the best
max(1, reached // reduction_factor) go on -- successive halving's rule -- and the rest are stopped. Trials after that
are judged at the rung by ASHA's asynchronous rule, as are the later rungs.

The searcher (search/optuna_pruned.py) starts no trial beyond the concurrency limit counting only trials that are not
held, and the rung gate (search/budget.py) keeps, while trials are held, the time the kept trial needs to finish.

On a resumed search the hold is over: the trials it held go on (a held trial is restarted from its checkpoint).

Measured on cpu_small (decision 0017): its first rung (two 64-px epochs) ranked the space's first point low, and
holding stopped it and, on one of two seeds, deployed a worse model; the shipped spaces keep it off (k = 0).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from cellnet.files import write_json


@dataclass
class RungHold:
    """Which trials wait at the first rung (shared by the scheduler and the searcher)."""

    wanted: int  # trials to reach the first rung before any goes on
    path: Path | None = None  # where the decision is written
    values: dict[str, float] = field(default_factory=dict)  # trial -> its first-rung value (higher is better)
    held: set[str] = field(default_factory=set)  # paused at the rung, waiting for the decision
    released: set[str] = field(default_factory=set)  # kept by the decision, to be restarted
    decided: bool = False

    @property
    def waiting(self) -> bool:
        """True while trials are held and the decision is still to come."""
        return not self.decided and bool(self.held)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A resumed search holds no more: what was held goes on (module doc)."""
        state["held"], state["decided"] = set(), True
        self.__dict__.update(state)


class BudgetedASHA(AsyncHyperBandScheduler):
    """ASHA that stops, at a rung, a trial the time budget cannot take to its next scored epoch (the rung gate's
    `goes_on`, search/budget.py): what ASHA would let go on is otherwise cut by the deadline between scored epochs."""

    def __init__(self, *, gate: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate  # a search.budget.RungGate (not imported: that module names RungHold from this one)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        gate, epoch = self.__dict__.get("gate"), result.get(self._time_attr)
        if action != TrialScheduler.CONTINUE or gate is None or epoch not in self._rungs_at:
            return action
        go_on = gate.goes_on(trial.trial_id, int(epoch), result.get("time_this_iter_s"))
        return action if go_on else TrialScheduler.STOP

    @property
    def _rungs_at(self) -> set[int]:
        """The epochs ASHA judges a trial at, below its last: the gate's (both from the config's rung_epochs)."""
        gate = self.__dict__.get("gate")
        return set(gate.rungs) if gate is not None else set()


class FirstRungASHA(BudgetedASHA):
    """ASHA with a synchronous first rung (module doc)."""

    def __init__(self, *, hold: RungHold, grace_period: int, **kwargs: Any) -> None:
        super().__init__(grace_period=grace_period, **kwargs)
        self.hold = hold
        self.first_rung = grace_period
        self.started = time.time()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        epoch = result.get(self._time_attr)
        first_time_here = epoch == self.first_rung and trial.trial_id not in self.hold.values
        action = super().on_trial_result(tune_controller, trial, result)
        if not first_time_here or self._metric not in result:
            return action
        value = float(self.sign * result[self._metric])
        self.hold.values[trial.trial_id] = value if math.isfinite(value) else -math.inf
        if self.hold.decided or self.first_rung >= self._max_t:
            return action  # after the decision: ASHA's asynchronous rule
        if action != TrialScheduler.STOP:  # (below the cutoff of those already there: stopped now, not held)
            self.hold.held.add(trial.trial_id)
        if len(self.hold.values) < self.hold.wanted:
            if action == TrialScheduler.STOP:
                return action
            print(
                f"first rung: {trial.trial_id} waits at epoch {self.first_rung} "
                f"({len(self.hold.values)} of {self.hold.wanted} trials there)",
                flush=True,
            )
            return TrialScheduler.PAUSE
        kept = self.decide(tune_controller)
        return TrialScheduler.CONTINUE if trial.trial_id in kept else TrialScheduler.STOP

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower (ASHA's metric_op, set once the mode is known)."""
        return float(self._metric_op or 1.0)

    def decide(self, tune_controller: Any) -> set[str]:
        """Keep the best max(1, reached // reduction_factor) of the trials at the rung; stop the held rest. Returns
        the kept trials (the caller continues the one reporting now; the paused ones restart through
        `choose_trial_to_run`)."""
        hold = self.hold
        keep_n = max(1, int(len(hold.values) // self._reduction_factor))
        best = set(sorted(hold.values, key=lambda t: hold.values[t], reverse=True)[:keep_n])
        kept, stopped = hold.held & best, hold.held - best
        by_id = {t.trial_id: t for t in tune_controller.get_trials()}
        for trial_id in stopped:
            t = by_id.get(trial_id)
            if t is not None and (t.status == Trial.PAUSED or t.is_saving):
                tune_controller.stop_trial(t)  # a paused trial (or one being paused); the reporting one: STOP
        hold.released |= kept
        hold.held, hold.decided = set(), True
        record = {
            "wanted": hold.wanted,
            "reached": {t: self.sign * v for t, v in hold.values.items()},  # trial -> its first-rung metric
            "kept": sorted(kept),
            "stopped": sorted(set(hold.values) - kept),  # by this decision or, on arrival, by ASHA's cutoff
            "decided_after_s": round(time.time() - self.started, 1),
        }
        shown = ", ".join(f"{t} ({self.sign * hold.values[t]:.4f})" for t in sorted(kept))
        print(
            f"first rung: {len(hold.values)} trial(s) reached epoch {self.first_rung} (wanted {hold.wanted}); "
            f"going on: {shown or 'none'}; stopped: {len(hold.values) - len(kept)}",
            flush=True,
        )
        if hold.path is not None:
            write_json(hold.path, record)
        return kept

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        for t in trials:
            if t.status == Trial.PAUSED and t.trial_id in self.hold.released:
                return t
        if self.hold.waiting:
            on_the_way = [
                t
                for t in trials
                if t.status == Trial.PENDING or (t.status == Trial.RUNNING and t.trial_id not in self.hold.held)
            ]
            if not on_the_way:  # no trial will start (gate closed, samples used): decide with those there
                self.decide(tune_controller)
                for t in trials:
                    if t.status == Trial.PAUSED and t.trial_id in self.hold.released:
                        return t
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        for t in trials:  # paused by no hold of this run (a resumed search)
            if t.status == Trial.PAUSED and t.trial_id not in self.hold.held:
                return t
        return None

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.forget(trial.trial_id)
        super().on_trial_remove(tune_controller, trial)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self.forget(trial.trial_id)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.forget(trial.trial_id)
        super().on_trial_error(tune_controller, trial)

    def forget(self, trial_id: str) -> None:
        """A trial that ended (stopped, completed, failed) is neither held nor to be restarted."""
        self.hold.held.discard(trial_id)
        self.hold.released.discard(trial_id)
