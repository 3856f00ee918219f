"""The synchronous first rung (search/first_rung.py) against a stand-in for Tune's controller, the searcher's
concurrency that does not count held trials, and the rung gate keeping a held trial's time to finish. The same on a
real search: tests/test_search_e2e.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ray.tune.schedulers import TrialScheduler

from search.first_rung import FirstRungASHA, RungHold


@dataclass
class FakeTrial:
    trial_id: str
    status: str = "PENDING"
    is_saving: bool = False


@dataclass
class FakeController:
    """What the scheduler uses of Tune's controller: the trials, and stopping one (as Tune does for a paused one)."""

    trials: list[FakeTrial]
    scheduler: Any = None
    stopped: list[str] = field(default_factory=list)

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        if trial.status == "PAUSED":
            self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)


def setup(wanted: int, n: int, tmp_path: Path) -> tuple[FirstRungASHA, FakeController, list[FakeTrial]]:
    hold = RungHold(wanted, tmp_path / "first_rung.json")
    sched = FirstRungASHA(
        hold=hold, metric="acc", mode="max", time_attr="training_iteration", max_t=6, grace_period=2,
        reduction_factor=3,
    )  # fmt: skip
    trials = [FakeTrial(f"t{i}") for i in range(n)]
    ctl = FakeController(trials, sched)
    for t in trials:
        sched.on_trial_add(ctl, t)  # type: ignore[arg-type]
    return sched, ctl, trials


def report(sched: FirstRungASHA, ctl: FakeController, t: FakeTrial, epoch: int, acc: float) -> str:
    t.status = "RUNNING"
    action = sched.on_trial_result(ctl, t, {"training_iteration": epoch, "acc": acc})  # type: ignore[arg-type]
    if action == TrialScheduler.PAUSE:
        t.status = "PAUSED"
    elif action == TrialScheduler.STOP:
        t.status = "TERMINATED"
    return action


def test_trials_wait_at_the_first_rung_and_the_best_goes_on(tmp_path: Path) -> None:
    sched, ctl, (t0, t1, t2, t3) = setup(3, 4, tmp_path)
    assert report(sched, ctl, t0, 1, 0.5) == TrialScheduler.CONTINUE  # before the rung: nothing held
    assert report(sched, ctl, t0, 2, 0.80) == TrialScheduler.PAUSE  # the first at the rung waits
    assert sched.choose_trial_to_run(ctl) is t1  # a new trial runs, not the held one
    assert report(sched, ctl, t1, 2, 0.90) == TrialScheduler.PAUSE  # above ASHA's cutoff (0.80): waits too
    assert sched.hold.held == {"t0", "t1"} and sched.hold.waiting
    # the third arrives below the cutoff of those there: stopped on arrival, and the rung is decided
    assert report(sched, ctl, t2, 2, 0.85) == TrialScheduler.STOP
    assert ctl.stopped == ["t0"]  # the held one that is not the best
    assert sched.choose_trial_to_run(ctl) is t1  # the kept one restarts before any new trial
    written = json.loads((tmp_path / "first_rung.json").read_text())
    assert written["kept"] == ["t1"] and written["stopped"] == ["t0", "t2"]
    assert written["reached"] == {"t0": 0.80, "t1": 0.90, "t2": 0.85} and written["wanted"] == 3
    # after the decision: ASHA's asynchronous rule (t3 is above the cutoff: goes on without waiting)
    t1.status = "RUNNING"
    assert report(sched, ctl, t3, 2, 0.95) == TrialScheduler.CONTINUE


def test_the_reporting_trial_goes_on_when_it_is_the_best(tmp_path: Path) -> None:
    sched, ctl, (t0, t1, *_) = setup(2, 3, tmp_path)
    assert report(sched, ctl, t0, 2, 0.60) == TrialScheduler.PAUSE
    assert report(sched, ctl, t1, 2, 0.70) == TrialScheduler.CONTINUE  # the second of two: decided, it is best
    assert ctl.stopped == ["t0"] and not sched.hold.waiting


def test_when_no_trial_will_start_the_held_ones_are_decided(tmp_path: Path) -> None:
    """The gate closed (or the samples ran out): nothing pending or running, so the rung is decided with those
    there and the best restarts."""
    sched, ctl, trials = setup(4, 2, tmp_path)
    t0, t1 = trials
    assert report(sched, ctl, t0, 2, 0.7) == TrialScheduler.PAUSE
    assert report(sched, ctl, t1, 2, 0.75) == TrialScheduler.PAUSE
    assert sched.choose_trial_to_run(ctl) is t1
    assert ctl.stopped == ["t0"]
    assert json.loads((tmp_path / "first_rung.json").read_text())["kept"] == ["t1"]


def test_a_resumed_search_holds_no_more(tmp_path: Path) -> None:
    import pickle

    hold = RungHold(4)
    hold.held.add("t0")
    restored = pickle.loads(pickle.dumps(hold))
    assert not restored.held and restored.decided and not restored.waiting


def test_held_trials_do_not_count_against_the_searchers_concurrency() -> None:
    from cellnet.config import parse_config
    from search.optuna_pruned import make_searcher

    cfg = parse_config({"name": "h", "search": {"first_rung_trials": 3}, "space": {"lr": {"loguniform": [1e-4, 1e-2]}}})
    hold = RungHold(3)
    searcher = make_searcher(cfg, hold=hold, max_live=1)
    assert isinstance(searcher.suggest("t0"), dict)
    assert searcher.suggest("t1") is None  # one trial running: the slot is taken
    hold.held.add("t0")
    assert isinstance(searcher.suggest("t1"), dict)  # t0 waits at the rung: a new trial may start


def test_the_gate_keeps_a_held_trials_time_to_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While trials wait at the rung a new trial needs its way to the rung *and* the time the best held one takes
    to finish: a restart (the first epoch's extra) and the epochs left at the full-size epoch time, estimated from
    a low-resolution epoch by the pixels before any full-size one was measured."""
    from search import budget
    from search.budget import RungGate

    clock = [1000.0]
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    hold = RungHold(4)
    gate = RungGate(600, 2, tmp_path / "budget.json", hold=hold, max_epochs=6, low_res_epochs=2, pixel_ratio=2.25)
    assert gate.allows(0)
    gate.observe("a", {"training_iteration": 1, "time_total_s": 55.0, "time_this_iter_s": 55.0})
    gate.observe("a", {"training_iteration": 2, "time_total_s": 91.0, "time_this_iter_s": 36.0})
    assert gate.to_finish() == pytest.approx((55 - 36) + 4 * 36 * 2.25)  # 343 s
    clock[0] += 150  # 450 s left: enough to reach the rung (91 s) with nothing held
    assert gate.allows(1)
    hold.held.add("a")  # now "a" waits at the rung: 91 + 343 = 434 s needed
    clock[0] += 50  # 400 s left
    assert not gate.allows(1)
    written = json.loads((tmp_path / "budget.json").read_text())
    assert written["needed_s"] == pytest.approx(434.0) and written["held_to_finish_s"] == pytest.approx(343.0)
    gate.observe("a", {"training_iteration": 3, "time_total_s": 80.0, "time_this_iter_s": 80.0})
    assert gate.to_finish() == pytest.approx(19 + 4 * 80.0)  # a full-size epoch measured: it replaces the estimate


def test_first_rung_trials_needs_asha() -> None:
    from cellnet.config import parse_config
    from cellnet.errors import ConfigError

    with pytest.raises(ConfigError, match="first_rung_trials.*scheduler: asha"):
        parse_config({"name": "h", "search": {"first_rung_trials": 3, "scheduler": "fifo"}, "space": {}})
