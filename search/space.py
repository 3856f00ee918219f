"""A config's `space` as an Optuna define-by-run function, and the searcher built from it.

Define-by-run (not a fixed distribution dict) because parameters can be conditional: `head_width` with
`when: head_layers > 0` is only suggested when the condition holds, so Optuna never learns from a value that did
nothing. An inactive parameter is left out of the trial's params and takes its fixed/TrainConfig default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna

from cellnet.config import ExperimentConfig, Param
from cellnet.errors import ConfigError


def ordered(cfg: ExperimentConfig) -> list[Param]:
    """The searched parameters in an order where every `when` condition refers to a value already known."""
    params = cfg.searched()
    done: list[Param] = []
    pending = list(params.values())
    while pending:
        ready = [p for p in pending if p.when is None or p.when[0] not in params or params[p.when[0]] in done]
        if not ready:
            names = ", ".join(p.name for p in pending)
            raise ConfigError(f"{cfg.path}: space: 'when' conditions form a cycle among {names}")
        done.extend(ready)
        pending = [p for p in pending if p not in ready]
    return done


def suggest(cfg: ExperimentConfig, trial: Any) -> dict[str, Any]:
    """Draw one trial's params through `trial` (an optuna.Trial or Ray's capturing wrapper of one)."""
    known = cfg.fixed_values()
    out: dict[str, Any] = {}
    for p in ordered(cfg):
        if not p.condition_holds({**known, **out}):
            continue
        if p.kind == "choice":
            out[p.name] = trial.suggest_categorical(p.name, list(p.values))
        elif p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=p.step)
        else:
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "loguniform")
    return out


class DefineByRun:
    """The `space=` callable for OptunaSearch (Ray captures the suggested values). A class, not a closure: the
    searcher is pickled into the experiment state for --resume."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def __call__(self, trial: Any) -> None:
        suggest(self.cfg, trial)


def define_by_run(cfg: ExperimentConfig) -> Callable[[Any], None]:
    return DefineByRun(cfg)


def check_points(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """`search.points_to_evaluate`, checked against the space: every key searched, every value in its domain."""
    searched = cfg.searched()
    points = []
    for i, point in enumerate(cfg.search.points_to_evaluate):
        where = f"{cfg.path}: search.points_to_evaluate[{i}]"
        for key, value in point.items():
            p = searched.get(key)
            if p is None:
                raise ConfigError(f"{where}: {key!r} is not a searched parameter; searched: {', '.join(searched)}")
            if not _in_domain(p, value):
                raise ConfigError(f"{where}: {key}={value!r} is outside its domain ({_domain(p)})")
        cfg.train_config(point)  # the whole point must make a valid TrainConfig
        points.append(dict(point))
    return points


def _in_domain(p: Param, value: Any) -> bool:
    if p.kind == "choice":
        return value in p.values
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if p.kind == "int":
        return isinstance(value, int) and p.low <= value <= p.high and (value - int(p.low)) % p.step == 0
    return p.low <= value <= p.high


def _domain(p: Param) -> str:
    if p.kind == "choice":
        return f"choice {list(p.values)}"
    step = f", step {p.step}" if p.kind == "int" and p.step != 1 else ""
    return f"{p.kind} [{p.low:g}, {p.high:g}]{step}"


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: a third of the trials, 3 to 10 (Optuna's default is 10).

    With Optuna's fixed 10, a 6- or 8-trial search (quickstart, a CPU search on real cells) never leaves random
    sampling; a third keeps enough random coverage for TPE's two densities and leaves it trials to act on.
    `search.startup_trials` overrides it, for a search whose trials end by a budget rather than by num_samples.
    """
    return max(3, min(10, num_samples // 3))


def tpe_startup_trials(cfg: ExperimentConfig) -> int:
    """search.startup_trials if set, else the default for search.num_samples."""
    if cfg.search.startup_trials is not None:
        return cfg.search.startup_trials
    return startup_trials(cfg.search.num_samples)


def sampler(cfg: ExperimentConfig) -> optuna.samplers.BaseSampler:
    """search.searcher: tpe or random, both seeded by search.seed (same ask/tell path, only the sampler differs)."""
    if cfg.search.searcher == "random":
        return optuna.samplers.RandomSampler(seed=cfg.search.seed)
    return optuna.samplers.TPESampler(seed=cfg.search.seed, n_startup_trials=tpe_startup_trials(cfg))


def describe(cfg: ExperimentConfig) -> list[str]:
    """One line per searched parameter (what --dry-run prints)."""
    lines = []
    for p in ordered(cfg):
        cond = f"  when {p.when[0]} {p.when[1]} {p.when[2]}" if p.when else ""
        lines.append(f"  {p.name:<18} {_domain(p)}{cond}")
    return lines
