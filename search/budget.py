"""The time budget spent on trials the search can judge: no trial starts that cannot reach its first rung.

    Tune (`search.time_budget_s`) stops every trial at the deadline, so a trial started with too little time left
    costs its start-up and epochs and is cut before ASHA ever compares it. Before each new trial the searcher asks:

    RungGate.allows()      left   = the budget - the time since the first trial was asked for
                           needed = the slowest observed "trial start -> first rung reported" of the trials so far
                                    (time_total_s at epoch `grace_period`); before any reached it, the slowest first
                                    epoch x grace_period (its start-up counted again: on the safe side); before any
                                    report, nothing is known and the trial starts (the first trial always does)
                           needed > left: no new trial (the searcher says FINISHED: Tune runs the trials already
                           started to their end or the deadline, and the search ends early), said in one line and
                           in run_dir/budget.json (summary.json's `budget`)

On a resumed search the clock starts again, as Tune's own budget does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellnet.files import write_json

BUDGET_FILE = "budget.json"


@dataclass
class RungGate:
    """Whether a new trial still fits the budget up to its first rung (module doc)."""

    budget_s: float | None
    grace_period: int
    path: Path | None = None  # where the closing decision is written
    started: float | None = None
    to_rung: dict[str, float] = field(default_factory=dict)  # trial -> seconds from its start to its first rung
    first_epoch: dict[str, float] = field(default_factory=dict)  # trial -> seconds from its start to epoch 1
    closed: dict[str, Any] | None = None

    def observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """Record a trial's report (Tune's `time_total_s` counts from the trial's own start)."""
        epoch, seconds = int(result.get("training_iteration", 0)), result.get("time_total_s")
        if seconds is None:
            return
        if epoch == 1:
            self.first_epoch.setdefault(trial_id, float(seconds))
        if epoch == self.grace_period:
            self.to_rung.setdefault(trial_id, float(seconds))

    def needed(self) -> float | None:
        """Seconds a new trial needs to reach its first rung, from what the trials so far took (None: unknown)."""
        if self.to_rung:
            return max(self.to_rung.values())
        if self.first_epoch:
            return max(self.first_epoch.values()) * self.grace_period
        return None

    def allows(self, trials_started: int) -> bool:
        """True when a new trial may start; on the first False the decision is printed and written."""
        if self.closed is not None:
            return False
        now = time.time()
        if self.started is None:
            self.started = now
        needed = self.needed()
        if self.budget_s is None or needed is None:
            return True
        left = self.budget_s - (now - self.started)
        if needed <= left:
            return True
        self.closed = {
            "closed_after_s": round(now - self.started, 1),
            "left_s": round(max(left, 0.0), 1),
            "needed_s": round(needed, 1),
            "first_rung_epoch": self.grace_period,
            "trials_started": trials_started,
        }
        print(
            f"search: {max(left, 0):.0f} s of the budget left, a new trial needs ~{needed:.0f} s to reach its first "
            f"rung (epoch {self.grace_period}): no new trial after {trials_started}; the rest goes to the deployment",
            flush=True,
        )
        if self.path is not None:
            write_json(self.path, self.closed)
        return False

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored (resumed) search starts its clock again, as Tune's time budget does."""
        state["started"], state["closed"] = None, None
        self.__dict__.update(state)
