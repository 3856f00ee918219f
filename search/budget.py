"""The time budget spent on trials the search can judge: no trial starts that cannot reach its first rung.

    Tune (`search.time_budget_s`) stops every trial at the deadline, so a trial started with too little time left
    costs its start-up and epochs and is cut before ASHA ever compares it. Before each new trial the searcher asks:

    RungGate.allows()      left   = the budget - the time since the first trial was asked for
                           needed = the slowest observed "trial start -> first rung reported" of the trials so far
                                    (time_total_s at epoch `grace_period`); before any reached it, the slowest first
                                    epoch x grace_period (its start-up counted again: on the safe side); before any
                                    report, nothing is known and the trial starts (the first trial always does)
                           while trials are held at a synchronous first rung (search/first_rung.py), needed also
                           counts the time the kept one takes from its rung to its last epoch (`to_finish`)
                           needed > left: no new trial (the searcher says FINISHED: Tune runs the trials already
                           started to their end or the deadline, and the search ends early), said in one line and
                           in run_dir/budget.json (summary.json's `budget`)

    The same for a trial ASHA lets go on past a rung (the scheduler asks, search/first_rung.py `BudgetedASHA`):

    RungGate.goes_on()     needed = the epochs to its next scored epoch (the next rung, else the last epoch) x its
                                    full-size epoch time: its own when it has some, else the other trials' mean
                                    scaled by how its epoch at this rung compares with theirs at the same epoch
                                    (nothing to go by: it goes on)
                           needed > left: stopped at this rung -- the deadline would cut it before it is scored
                           again, and the time goes to new trials or the deployment -- one line each and
                           run_dir/budget_cuts.json (summary.json's `budget.stopped_at_rung`)

    With `search.deadline_s` (the search and its deployment within that many seconds of the command's start), the
    time left for both questions is also at most the deadline's rest less the deployment's estimate (`Deadline`:
    the refit and the calibration's passes at the slowest trial's full-size training rate), once a full-size epoch
    was measured; the decision says how much was kept for the deployment.

On a resumed search the clock starts again, as Tune's own budget does.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellnet.config import ExperimentConfig
from cellnet.files import write_json

if TYPE_CHECKING:
    from search.first_rung import RungHold

BUDGET_FILE = "budget.json"
CUTS_FILE = "budget_cuts.json"


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
    hold: RungHold | None = None  # trials held at a synchronous first rung
    max_epochs: int = 0
    low_res_epochs: int = 0
    pixel_ratio: float = 1.0  # full-size pixels / low-resolution pixels (progressive resizing)
    epoch_s: dict[tuple[str, int], float] = field(default_factory=dict)  # (trial, epoch) -> seconds of that epoch
    asked: dict[str, float] = field(default_factory=dict)  # trial -> when the searcher gave it out
    rungs: tuple[int, ...] = ()  # ASHA's rungs below max_epochs: the epochs a trial is scored at, besides its last
    cuts: list[dict[str, Any]] = field(default_factory=list)  # trials stopped at a rung for the budget (`goes_on`)
    deadline: Deadline | None = None  # search.deadline_s: the search and its deployment together
    rates: dict[tuple[str, int], float] = field(default_factory=dict)  # (trial, full-size epoch) -> folds' images/s

    def suggested(self, trial_id: str) -> None:
        """The searcher gave `trial_id` out now: its way to the rung counts from here (start-up included)."""
        self.__dict__.setdefault("asked", {})[trial_id] = time.time()

    def observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """Record a trial's report. Tune's `time_total_s` counts from the trial's own start; the way to the rung
        counts from the trial's suggestion when known (the trial's placement and start-up before its clock: a
        trial the gate let in was cut 10 s short of its rung without it). The searcher passes the result a trial
        ends on too (Tune gives a searcher no on_trial_result for the result its scheduler stops a trial on)."""
        epoch, seconds = int(result.get("training_iteration", 0)), result.get("time_total_s")
        if seconds is None:
            return
        if epoch == 1:
            self.first_epoch.setdefault(trial_id, float(seconds))
        if result.get("time_this_iter_s") is not None:
            self.epoch_s.setdefault((trial_id, epoch), float(result["time_this_iter_s"]))
        if result.get("images_per_s") and epoch > max(1, self.low_res_epochs):  # the folds' full-size training rate
            self.__dict__.setdefault("rates", {}).setdefault((trial_id, epoch), float(result["images_per_s"]))
        if epoch == self.grace_period and trial_id not in self.to_rung:
            asked = self.__dict__.get("asked", {}).get(trial_id)
            since_asked = time.time() - asked if asked is not None else 0.0
            self.to_rung[trial_id] = max(float(seconds), since_asked)

    def needed(self) -> float | None:
        """Seconds a new trial needs to reach its first rung, from what the trials so far took (None: unknown)."""
        if self.to_rung:
            return max(self.to_rung.values())
        if self.first_epoch:
            return max(self.first_epoch.values()) * self.grace_period
        return None

    def to_finish(self) -> float:
        """Seconds a trial held at its first rung needs to reach its last epoch: a restart (the first epoch's extra
        over the next) and the epochs left, each as slow as the slowest full-size epoch measured (before any: the
        slowest epoch after the first, scaled by the pixels when it was a low-resolution one). 0 when unknown."""
        left = self.max_epochs - self.grace_period
        later = {(t, e): s for (t, e), s in self.epoch_s.items() if e > 1}
        if left <= 0 or not later:
            return 0.0
        full = [s for (_, e), s in later.items() if e > self.low_res_epochs]
        per_epoch = max(full) if full else max(later.values()) * self.pixel_ratio
        early = [s for (_, e), s in later.items() if e <= self.low_res_epochs] or list(later.values())
        restart = max(0.0, max(self.first_epoch.values(), default=0.0) - min(early))
        return restart + left * per_epoch

    def time_left(self, now: float) -> tuple[float, float]:
        """(seconds the trials may still use, seconds kept for the deployment): the budget's rest, or less where
        `search.deadline_s` must also hold the deployment's estimate (module doc); inf when neither limits."""
        left = self.budget_s - (now - self.started) if self.budget_s is not None and self.started else math.inf
        deadline = self.__dict__.get("deadline")
        if deadline is None:
            return left, 0.0
        reserved = deadline.deployment_s(self.slowest_rate())
        if reserved is None:  # nothing trained at full size yet: nothing to estimate with
            return min(left, deadline.left(now)), 0.0
        return min(left, deadline.left(now) - reserved), reserved

    def slowest_rate(self) -> float | None:
        """The slowest trial's full-size training rate (its folds together): per trial the median of its full-size
        epochs -- its first one can run slow (0.65x in one measured run) after the change of size -- and the
        slowest of those (any trial may win, and the refit runs at its rate). None before any full-size epoch."""
        per_trial: dict[str, list[float]] = {}
        for (trial_id, _), rate in self.__dict__.get("rates", {}).items():
            per_trial.setdefault(trial_id, []).append(rate)
        return min((statistics.median(r) for r in per_trial.values()), default=None)

    def goes_on(self, trial_id: str, epoch: int, seconds: float | None) -> bool:
        """Whether a trial ASHA lets go on past its rung at `epoch` (that epoch took `seconds`) reaches its next
        scored epoch before the deadline (module doc); on False the decision is printed and written."""
        limited = self.budget_s is not None or self.__dict__.get("deadline") is not None
        if not limited or self.started is None or epoch >= self.max_epochs:
            return True
        per_epoch = self.full_epoch_s(trial_id, epoch, seconds)
        if per_epoch is None:
            return True
        upcoming = min([r for r in self.__dict__.get("rungs", ()) if r > epoch] or [self.max_epochs])
        needed = (upcoming - epoch) * per_epoch
        left, _ = self.time_left(time.time())
        if needed <= left:
            return True
        cuts = self.__dict__.setdefault("cuts", [])  # (a state saved before cuts)
        cuts.append(
            {
                "trial_id": trial_id,
                "epoch": epoch,
                "next_scored": upcoming,
                "left_s": round(max(left, 0.0), 1),
                "needed_s": round(needed, 1),
            }
        )
        print(
            f"search: {trial_id} passed its rung at epoch {epoch}, but needs ~{needed:.0f} s to its next scored epoch "
            f"({upcoming}) and {max(left, 0):.0f} s are left: stopped there",
            flush=True,
        )
        if self.path is not None:
            write_json(self.path.with_name(CUTS_FILE), cuts)
        return False

    def full_epoch_s(self, trial_id: str, epoch: int, seconds: float | None) -> float | None:
        """A full-size epoch's seconds for `trial_id` (module doc: `goes_on`); None when nothing tells."""
        first_full = max(1, self.low_res_epochs)  # (epoch 1 carries the start-up)
        full = {(t, e): s for (t, e), s in self.epoch_s.items() if e > first_full}
        own = [s for (t, _), s in full.items() if t == trial_id]
        if own:
            return sum(own) / len(own)
        others = {t for t, _ in full if t != trial_id and (t, epoch) in self.epoch_s}
        if not others or not seconds:
            return None
        theirs = [s for (t, _), s in full.items() if t in others]
        here = [self.epoch_s[(t, epoch)] for t in others]
        return sum(theirs) / len(theirs) * float(seconds) / (sum(here) / len(here))

    def allows(self, trials_started: int) -> bool:
        """True when a new trial may start; on the first False the decision is printed and written."""
        if self.closed is not None:
            return False
        now = time.time()
        if self.started is None:
            self.started = now
        needed = self.needed()
        limited = self.budget_s is not None or self.__dict__.get("deadline") is not None
        if not limited or needed is None:
            return True
        hold = self.__dict__.get("hold")  # (a state saved before the hold)
        finish = self.to_finish() if hold is not None and hold.waiting else 0.0
        needed += finish
        left, reserved = self.time_left(now)
        if needed <= left:
            return True
        self.closed = {
            "closed_after_s": round(now - self.started, 1),
            "left_s": round(max(left, 0.0), 1),
            "needed_s": round(needed, 1),
            "first_rung_epoch": self.grace_period,
            "trials_started": trials_started,
        }
        if finish:
            self.closed["held_to_finish_s"] = round(finish, 1)  # kept for the best held trial to finish
        if reserved:
            self.closed["deployment_reserved_s"] = round(reserved, 1)  # search.deadline_s: kept for the deployment
        also = f" and ~{finish:.0f} s for the best held one to finish" if finish else ""
        kept = f" (~{reserved:.0f} s kept for the deployment, search.deadline_s)" if reserved else ""
        print(
            f"search: {max(left, 0):.0f} s of the budget left{kept}, a new trial needs ~{needed - finish:.0f} s to "
            f"reach its first rung (epoch {self.grace_period}){also}: no new trial after {trials_started}; the rest "
            "goes to the deployment",
            flush=True,
        )
        if self.path is not None:
            write_json(self.path, self.closed)
        return False

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored (resumed) search starts its clock again, as Tune's time budget does (its deadline too)."""
        state["started"], state["closed"] = None, None
        if state.get("deadline") is not None:
            state["deadline"] = dataclasses.replace(state["deadline"], origin=time.time())
        self.__dict__.update(state)


# The deployment's estimate (decision 0018, measured on synthetic:7000: Lite0 and Lite1 winners)
REFIT_OF_FOLD_RATE = 0.85  # the refit (one process, every thread) trained at 0.87-0.92 of a trial's folds together
INFERENCES_PER_STEP = 4.0  # calibration images scored (bf16) in the time of one training image-step: measured 3.9-4.5
DEPLOY_FIXED_S = 30.0  # Ray Train's start, loading and saving checkpoints, the robustness card
TTA_IMAGES = 2000  # = search.oof.TTA_IMAGES: out-of-fold images scored under 8 views
FRAMING_IMAGES = 2000  # = search.winner.FRAMING_IMAGES: cells each framing check scores at 2 zooms


@dataclass(frozen=True)
class Deadline:
    """`search.deadline_s`: the search and its deployment within `seconds` of `origin` (the command's start)."""

    seconds: float
    origin: float
    images: int  # what the refit trains on and the calibration scores
    refit_epochs: int  # the refit's epochs at most (0: no refit, the fold ensemble is deployed)

    def left(self, now: float) -> float:
        return self.seconds - (now - self.origin)

    def deployment_s(self, fold_rate: float | None) -> float | None:
        """The deployment's seconds, estimated from the slowest full-size training rate of a trial's folds together
        (None: none measured yet): the refit's epochs over every image, and the calibration's inference passes --
        out-of-fold (every image, and TTA_IMAGES under 8 views), the refit's and the fold models' features of the
        images, the framing check's 2 zooms -- at INFERENCES_PER_STEP per training image-step."""
        if not fold_rate:
            return None
        n = self.images
        scored = 3 * n + 8 * min(n, TTA_IMAGES) + 2 * min(n, FRAMING_IMAGES)
        steps = self.refit_epochs * n + scored / INFERENCES_PER_STEP
        return steps / (REFIT_OF_FOLD_RATE * fold_rate) + DEPLOY_FIXED_S


def rung_epochs(cfg: ExperimentConfig) -> list[int]:
    """Epochs at which ASHA/HyperBand may stop a trial: grace_period * reduction_factor**i below max_epochs."""
    s = cfg.search
    if s.scheduler == "fifo":
        return []
    out, t = [], float(s.grace_period)
    while t < s.max_epochs:
        out.append(int(t))
        t *= s.reduction_factor
    return out
