"""Ray's OptunaSearch, telling Optuna the truth about trials a scheduler stopped early.

Ray's OptunaSearch reports every epoch (`trial.report(value, step)`) but, when a trial ends with a value, tells
Optuna COMPLETE, so TPE treats an ASHA-stopped trial's low-budget score as a final score. Here a trial that ended
without error before `max_epochs` is told PRUNED (Optuna keeps its intermediate values; TPE then treats it the way
Optuna's own pruners intend), a diverged or errored trial FAIL, and only a trial that ran all epochs COMPLETE.
`tell_pruned=False` restores Ray's behaviour, for the benchmark that compares the two. See
docs/decisions/0003-pruned-trials-in-optuna.md.

The suggested params are returned under the key `params`, so `result.config["params"]` is what a trial ran.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from cellnet.config import ExperimentConfig
from search.space import check_points, define_by_run, sampler

log = logging.getLogger(__name__)


class PrunedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells PRUNED for early-stopped trials and FAIL for diverged ones (see module doc)."""

    def __init__(self, *args: Any, max_epochs: int, tell_pruned: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = int(max_epochs)
        self.tell_pruned = tell_pruned
        self._reported: dict[str, set[int]] = {}  # trial id -> steps reported to Optuna

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        out = super().suggest(trial_id)
        return {"params": out} if isinstance(out, dict) else out

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._reported.setdefault(trial_id, set()).add(int(result["training_iteration"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        state = self.final_state(result, error)
        if state == TrialState.PRUNED and result and trial_id in self._ot_trials:
            # Tune skips on_trial_result for the result on which the scheduler stops a trial: report it here, so
            # Optuna has the value the trial was pruned at (at least one intermediate value).
            step = int(result.get("training_iteration", 0))
            if step and step not in self._reported.get(trial_id, set()):
                self._ot_trials[trial_id].report(result[self.metric], step)
        if state is None or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        try:
            self.study.tell(self._ot_trials[trial_id], None, state=state)
        except Exception as exc:  # what Ray's own on_trial_complete does with a tell Optuna refuses
            log.warning("optuna refused to record trial %s as %s: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)

    def final_state(self, result: dict[str, Any] | None, error: bool) -> TrialState | None:
        """FAIL / PRUNED, or None where Ray's default (COMPLETE with the last value) is the truth."""
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


def make_searcher(cfg: ExperimentConfig, *, tell_pruned: bool = True) -> PrunedOptunaSearch:
    """The searcher for `cfg`: define-by-run space, seeded TPE or random sampler, points_to_evaluate enqueued."""
    return PrunedOptunaSearch(
        space=define_by_run(cfg),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        sampler=sampler(cfg),
        points_to_evaluate=check_points(cfg) or None,
        max_epochs=cfg.search.max_epochs,
        tell_pruned=tell_pruned,
    )
