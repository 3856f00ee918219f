"""The one config format: a YAML file (sections name/data/cv/train/search/resources/retrain/space) -> typed objects.

`cellnet train` and `python -m search.run` read the same files. `train` holds fixed training settings, `space` what a
search varies (a plain value there is fixed). Both are fields of `TrainConfig`, the flat argument list of
`cellnet.train.fit`. Every key is checked here, so a typo fails before anything runs, naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cellnet.constants import AUTO, DEFAULT_FEATURES, DEFAULT_IMAGE_SIZE, FEATURE_KINDS, FRAMING_ZOOMS, TRAIN_PRECISIONS
from cellnet.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "lion", "radam", "ranger")
SCHEDULES = ("cosine", "plateau", "constant")
CLASS_WEIGHTS = ("none", "inverse_frequency")
AUG_POLICIES = ("none", "randaugment", "trivialaugment", "augmix")  # = cellnet.augment.POLICIES


@dataclass(frozen=True)
class TrainConfig:
    """Everything one fit needs besides data. Field defaults are the library's defaults."""

    # model
    backbone: str = "mobilenetv3_small_050"
    pretrained: bool | str = False  # true (weights or an error), "auto" (weights where found offline), false
    weights_file: str | None = None
    init_checkpoint: str | None = None  # a deployed cellnet checkpoint to start from (cellnet.parent): a new lab's fit
    head_layers: int = 1
    head_width: int = 256
    head_batchnorm: bool = True
    dropout: float = 0.2
    input_size: int | None = None  # upscale images to this size for backbones that need more; None = native
    # progressive resizing: the first `low_res_epochs` epochs train at `low_res_size` px (None: the stored images'
    # size, no upscaling) -- cheap epochs where ASHA decides; validation always at the full input size
    low_res_epochs: int = 0
    low_res_size: int | None = None
    # the most training images one epoch draws (a fresh seeded subset each epoch; None: every image): set by
    # search.epoch_images for the search's trials only, so a trial's cost stops growing with the data
    epoch_images: int | None = None
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    backbone_lr_mult: float = 1.0
    schedule: str = "cosine"
    warmup_epochs: int = 1
    epochs: int = 20
    batch_size: int = 64
    freeze_epochs: int = 0
    freeze_bn: bool = False
    # loss and regularisation
    label_smoothing: float = 0.0
    class_weights: str = "none"
    mixup: float = 0.0
    cutmix: float = 0.0
    aug_strength: float = 0.5
    zoom_aug: float = 0.0  # RandomZoom's max |log2 magnification| (1 = 0.5x-2x), see cellnet.shifts; 0 = off
    stain_aug: float = 0.0  # HEStain Macenko + Planckian illumination strength in [0, 1]; 0 = off
    aug_policy: str = "none"  # none | randaugment | trivialaugment | augmix (torchvision; cellnet.augment)
    aug_magnitude: float = 0.5  # the policy's strength in [0, 1]
    # single runs (`cellnet train`); inside a search ASHA decides when to stop
    early_stopping_patience: int = 5
    val_fraction: float = 0.2
    # runtime
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    # auto: bf16 autocast on CUDA; on a CPU with bf16, bf16 where this backbone trains faster in it (measured once,
    # cellnet.train_precision), else fp32; fp32 | bf16: as given (decision 0014)
    precision: str = AUTO

    def __post_init__(self) -> None:
        problems = _train_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def _train_problems(c: TrainConfig) -> list[str]:
    p: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            p.append(msg)

    need(isinstance(c.backbone, str) and bool(c.backbone), f"backbone must be a timm model name, got {c.backbone!r}")
    need(
        c.pretrained is True or c.pretrained is False or c.pretrained == "auto",
        f"pretrained must be true, false or auto, got {c.pretrained!r}",
    )
    need(
        c.init_checkpoint is None or (isinstance(c.init_checkpoint, str) and bool(c.init_checkpoint)),
        f"init_checkpoint must be a checkpoint directory or null, got {c.init_checkpoint!r}",
    )
    need(c.head_layers >= 0, f"head_layers must be >= 0, got {c.head_layers}")
    need(c.head_width >= 1, f"head_width must be >= 1, got {c.head_width}")
    need(0.0 <= c.dropout < 1.0, f"dropout must be in [0, 1), got {c.dropout}")
    need(c.input_size is None or c.input_size >= 16, f"input_size must be >= 16 or null, got {c.input_size}")
    need(
        isinstance(c.low_res_epochs, int) and c.low_res_epochs >= 0,
        f"low_res_epochs must be an int >= 0, got {c.low_res_epochs!r}",
    )
    need(c.low_res_size is None or c.low_res_size >= 16, f"low_res_size must be >= 16 or null, got {c.low_res_size}")
    need(
        c.epoch_images is None or (isinstance(c.epoch_images, int) and c.epoch_images >= 2),
        f"epoch_images must be an int >= 2 or null, got {c.epoch_images!r}",
    )
    need(c.optimizer in OPTIMIZERS, f"optimizer must be one of {list(OPTIMIZERS)}, got {c.optimizer!r}")
    need(c.lr > 0 and math.isfinite(c.lr), f"lr must be > 0, got {c.lr}")
    need(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    need(0.0 <= c.momentum < 1.0, f"momentum must be in [0, 1), got {c.momentum}")
    need(0.0 < c.backbone_lr_mult <= 1.0, f"backbone_lr_mult must be in (0, 1], got {c.backbone_lr_mult}")
    need(c.schedule in SCHEDULES, f"schedule must be one of {list(SCHEDULES)}, got {c.schedule!r}")
    need(c.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {c.warmup_epochs}")
    need(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    need(c.batch_size >= 2, f"batch_size must be >= 2, got {c.batch_size}")
    need(c.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {c.freeze_epochs}")
    need(0.0 <= c.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    need(
        c.class_weights in CLASS_WEIGHTS, f"class_weights must be one of {list(CLASS_WEIGHTS)}, got {c.class_weights!r}"
    )
    need(c.mixup >= 0.0, f"mixup (alpha) must be >= 0, got {c.mixup}")
    need(c.cutmix >= 0.0, f"cutmix (alpha) must be >= 0, got {c.cutmix}")
    need(0.0 <= c.aug_strength <= 1.0, f"aug_strength must be in [0, 1], got {c.aug_strength}")
    need(0.0 <= c.zoom_aug <= 2.0, f"zoom_aug (max |log2 scale|) must be in [0, 2], got {c.zoom_aug}")
    need(0.0 <= c.stain_aug <= 1.0, f"stain_aug must be in [0, 1], got {c.stain_aug}")
    need(c.aug_policy in AUG_POLICIES, f"aug_policy must be one of {list(AUG_POLICIES)}, got {c.aug_policy!r}")
    need(0.0 <= c.aug_magnitude <= 1.0, f"aug_magnitude must be in [0, 1], got {c.aug_magnitude}")
    need(c.early_stopping_patience >= 0, f"early_stopping_patience must be >= 0, got {c.early_stopping_patience}")
    need(0.0 < c.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {c.val_fraction}")
    need(c.num_workers >= 0, f"num_workers must be >= 0, got {c.num_workers}")
    need(isinstance(c.device, str), f"device must be a string (auto, cpu, cuda, cuda:N), got {c.device!r}")
    need(
        c.precision in TRAIN_PRECISIONS, f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {c.precision!r}"
    )
    return p


TRAIN_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in fields(TrainConfig)}


# ---------------------------------------------------------------------------------------------------------------
# Search-space parameters


@dataclass(frozen=True)
class Param:
    """One entry of `space`: a distribution kind and its arguments, optionally active only `when` a condition holds.

    kind: fixed (values=(v,)), choice (values), uniform/loguniform (low, high), int (low, high, step).
    """

    name: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: int = 1
    when: tuple[str, str, Any] | None = None  # (other parameter, operator, value)

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def condition_holds(self, params: dict[str, Any]) -> bool:
        if self.when is None:
            return True
        other, op, value = self.when
        return bool(_OPS[op](params[other], value))


_OPS: dict[str, Any] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_WHEN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


# ---------------------------------------------------------------------------------------------------------------
# Experiment sections


@dataclass(frozen=True)
class DataSpec:
    source: str = "synthetic"
    image_size: int = DEFAULT_IMAGE_SIZE
    clean: bool = True
    test: str | None = None


@dataclass(frozen=True)
class CvSpec:
    folds: int = 5
    seed: int = 0


@dataclass(frozen=True)
class SearchSpec:
    metric: str = "cv_accuracy"
    mode: str = "max"
    num_samples: int = 20
    max_epochs: int = 10
    grace_period: int = 2
    reduction_factor: int = 3
    searcher: str = "tpe"
    scheduler: str = "asha"
    seed: int = 0
    time_budget_s: float | None = None
    # search and deployment together, from the command's start: trials stop starting (and going on past a rung) where
    # the time left could not also hold the winner's estimated refit and calibration (search/budget.py)
    deadline_s: float | None = None
    checkpoint_every: int | None = None  # also every N epochs; None = only at ASHA rungs and the last epoch
    startup_trials: int | None = None  # TPE's random start-up; None = a third of num_samples, 3 to 10
    first_rung_trials: int = 0  # ASHA: no trial goes past the first rung before this many reached it (0: async)
    shift_suite: tuple[str, ...] | None = None  # shifts scored in every fold (cellnet.shifts); None = DEFAULT_SUITE
    shift_images: int = 512  # validation images per fold scored under shift, one shift each; 0 = no shift metrics
    epoch_images: int | None = None  # a trial's fold draws at most this many training images an epoch; None = all
    points_to_evaluate: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ResourceSpec:
    cpus_per_fold: float = 1.0
    gpus_per_fold: float = 0.0
    max_concurrent: int | None = None


@dataclass(frozen=True)
class RetrainSpec:
    """What the search deploys from its winner (see search/winner.py): `refit` = retrain on all data (best/),
    `folds` = the winner's k fold models as one ensemble (best/), `both` = the refit in best/ and the ensemble in
    best_folds/. `epochs` (refit only): "best" = the searched schedule (over search.max_epochs) stopped at the
    winner's best epoch; an int N = a fresh N-epoch schedule."""

    mode: str = "refit"
    epochs: int | str = "best"


@dataclass(frozen=True)
class CalibrationSpec:
    """How the deployed checkpoints are calibrated on the winner's out-of-fold predictions (cellnet/calibrate.py):
    the default coverage of prediction sets (`cellnet predict --coverage` overrides it), the false-alarm rate the
    OOD threshold is set for, what the OOD score measures (`ood_features`: cellnet.constants.FEATURE_KINDS; decision
    0010: with the penultimate stage's statistics it sees cells framed smaller, and flags more mild shifts), and
    whether predicting with `--tta` is calibrated too (scores every training image under the 8 dihedral views once
    more: 8 inference passes, no training). `framing_zooms`: the OOD flag's framing check (decision 0013: a
    logistic regression telling the cells from their copies zoomed out by these factors, one more inference pass
    per factor; every winner, zoom-trained or not; [] turns it off)."""

    coverage: float = 0.95
    ood_false_alarm: float = 0.05
    ood_features: str = DEFAULT_FEATURES
    tta: bool = True
    framing_zooms: tuple[float, ...] = FRAMING_ZOOMS


def check_framing_zooms(zooms: Any) -> tuple[float, ...]:
    """Zoom factors of the framing check as a sorted tuple: distinct numbers in (0, 1) (zoom-outs: cells shown
    smaller); empty = no check."""
    if isinstance(zooms, (str, bytes)) or not isinstance(zooms, (list, tuple)):
        raise ConfigError(f"framing_zooms must be a list of numbers in (0, 1), got {zooms!r}")
    ok = all(isinstance(z, (int, float)) and not isinstance(z, bool) and 0.0 < z < 1.0 for z in zooms)
    if not ok or len(set(zooms)) != len(zooms):
        raise ConfigError(f"framing_zooms must be distinct numbers in (0, 1), got {list(zooms)}")
    return tuple(sorted(float(z) for z in zooms))


RETRAIN_MODES = ("refit", "folds", "both")
SEARCHERS = ("tpe", "random")
SCHEDULERS = ("asha", "hyperband", "fifo")
# search.metric -> the mode that optimises it
METRIC_MODES = {
    "cv_accuracy": "max",
    "cv_macro_f1": "max",
    "cv_balanced_accuracy": "max",
    "cv_val_loss": "min",
    "cv_shifted_accuracy": "max",
    "cv_worst_shift_accuracy": "max",
    "cv_robust_accuracy": "max",
}
METRICS = tuple(METRIC_MODES)
SHIFT_METRICS = ("cv_shifted_accuracy", "cv_worst_shift_accuracy", "cv_robust_accuracy")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole YAML file, validated. `train` holds fixed TrainConfig values, `space` the searched ones."""

    name: str
    data: DataSpec = field(default_factory=DataSpec)
    cv: CvSpec = field(default_factory=CvSpec)
    train: dict[str, Any] = field(default_factory=dict)
    search: SearchSpec = field(default_factory=SearchSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    retrain: RetrainSpec = field(default_factory=RetrainSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    space: dict[str, Param] = field(default_factory=dict)
    path: str = "<config>"
    # what `precision: auto` resolved to per backbone on this machine (search/run.py fills it before any trial runs,
    # so every trial and the refit train in one precision); not part of the YAML
    precisions: dict[str, str] = field(default_factory=dict)

    def searched(self) -> dict[str, Param]:
        """The parameters that actually vary."""
        return {k: p for k, p in self.space.items() if not p.is_fixed}

    def backbones(self) -> list[str]:
        """Every backbone a trial of this config can train (the searched choices, or the one fixed value)."""
        p = self.space.get("backbone")
        if p is not None:
            return [str(v) for v in p.values]
        return [str(self.fixed_values().get("backbone", TrainConfig.backbone))]

    def fixed_values(self) -> dict[str, Any]:
        """`train` plus every fixed `space` entry."""
        out = dict(self.train)
        out.update({k: p.values[0] for k, p in self.space.items() if p.is_fixed})
        return out

    def train_config(self, params: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
        """The TrainConfig for one trial: fixed values, then the trial's sampled `params`, then `overrides`."""
        values = self.fixed_values()
        values.update(params or {})
        values.update(overrides)
        values = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
        resolved = self.precisions.get(str(values.get("backbone", TrainConfig.backbone)))
        if values.get("precision", AUTO) == AUTO and resolved is not None:
            values["precision"] = resolved
        try:
            return TrainConfig(**values)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable form of the resolved config (what --dry-run prints)."""
        d = {
            "name": self.name,
            "data": dataclasses.asdict(self.data),
            "cv": dataclasses.asdict(self.cv),
            "train": dict(self.train),
            "search": {
                **dataclasses.asdict(self.search),
                "points_to_evaluate": list(self.search.points_to_evaluate),
                "shift_suite": None if self.search.shift_suite is None else list(self.search.shift_suite),
            },
            "resources": dataclasses.asdict(self.resources),
            "retrain": dataclasses.asdict(self.retrain),
            "calibration": dataclasses.asdict(self.calibration),
            "space": {k: _param_to_yaml(p) for k, p in self.space.items()},
        }
        return d


def _param_to_yaml(p: Param) -> Any:
    if p.kind == "fixed":
        return p.values[0]
    if p.kind == "choice":
        body: dict[str, Any] = {"choice": list(p.values)}
    elif p.kind == "int":
        body = {"int": [int(p.low), int(p.high)]}
        if p.step != 1:
            body["step"] = p.step
    else:
        body = {p.kind: [p.low, p.high]}
    if p.when is not None:
        body["when"] = f"{p.when[0]} {p.when[1]} {p.when[2]}"
    return body


# ---------------------------------------------------------------------------------------------------------------
# Parsing


_SECTIONS = {
    "data": DataSpec,
    "cv": CvSpec,
    "search": SearchSpec,
    "resources": ResourceSpec,
    "retrain": RetrainSpec,
    "calibration": CalibrationSpec,
}
TOP_KEYS = ("name", "data", "cv", "train", "search", "resources", "retrain", "calibration", "space")


def load_config(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> ExperimentConfig:
    """Read and validate a YAML file. `overrides` maps section -> {key: value} (from CLI flags), applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return parse_config(raw, str(path), overrides)


def parse_config(
    raw: Any, where: str = "<config>", overrides: dict[str, dict[str, Any]] | None = None
) -> ExperimentConfig:
    """Validate a mapping already read from YAML (see `load_config`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {list(TOP_KEYS)}, got {type(raw).__name__}")
    _no_unknown(raw, TOP_KEYS, where, "")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, values in (overrides or {}).items():
        base = raw.get(section) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"{where}: {section} must be a mapping, got {type(base).__name__}")
        raw[section] = {**base, **{k: v for k, v in values.items() if v is not None}}

    name = raw.get("name", Path(where).stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where}: name must be letters, digits, '_', '.', '-', got {name!r}")

    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        sections[key] = _parse_section(raw.get(key), cls, where, key)

    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{where}: train must be a mapping of TrainConfig fields, got {type(train).__name__}")
    _no_unknown(train, tuple(TRAIN_FIELDS), where, "train")

    space_raw = raw.get("space") or {}
    if not isinstance(space_raw, dict):
        raise ConfigError(f"{where}: space must be a mapping of parameter -> value or distribution")
    _no_unknown(space_raw, tuple(TRAIN_FIELDS), where, "space")
    both = sorted(set(train) & set(space_raw))
    if both:
        raise ConfigError(f"{where}: {both} appear in both train and space; keep each in one section")
    space = {k: _parse_param(k, v, where) for k, v in space_raw.items()}
    for p in space.values():
        if p.when is not None and p.when[0] not in space and p.when[0] not in train:
            raise ConfigError(f"{where}: space.{p.name}.when refers to unknown parameter {p.when[0]!r}")

    cfg = ExperimentConfig(name=name, train=dict(train), space=space, path=where, **sections)
    _check_sections(cfg)
    _check_values(cfg)
    return cfg


def _no_unknown(d: dict[str, Any], valid: tuple[str, ...], where: str, section: str) -> None:
    unknown = [k for k in d if k not in valid]
    if unknown:
        prefix = f"{section}." if section else ""
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]!r}; valid keys{' in ' + section if section else ''}: "
            f"{', '.join(valid)}"
        )


def _parse_section(raw: Any, cls: type, where: str, name: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name} must be a mapping, got {type(raw).__name__}")
    valid = tuple(f.name for f in fields(cls))
    _no_unknown(raw, valid, where, name)
    values = dict(raw)
    if name == "search" and "points_to_evaluate" in values:
        pts = values["points_to_evaluate"] or []
        if not isinstance(pts, list) or not all(isinstance(x, dict) for x in pts):
            raise ConfigError(f"{where}: search.points_to_evaluate must be a list of mappings")
        values["points_to_evaluate"] = tuple(pts)
    if name == "search" and values.get("shift_suite") is not None:
        from cellnet.shifts import resolve_names  # torch, albumentations (~3 s): only configs naming a shift suite

        suite = values["shift_suite"]
        if not isinstance(suite, list) or not all(isinstance(x, str) for x in suite):
            raise ConfigError(f"{where}: search.shift_suite must be a list of shift names or null, got {suite!r}")
        try:
            values["shift_suite"] = resolve_names(suite)
        except ConfigError as e:
            raise ConfigError(f"{where}: search.shift_suite: {e}") from None
    if name == "calibration" and "framing_zooms" in values:
        try:
            values["framing_zooms"] = check_framing_zooms(values["framing_zooms"] or [])
        except ConfigError as e:
            raise ConfigError(f"{where}: calibration.{e}") from None
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {name}: {e}") from None


def _parse_param(name: str, raw: Any, where: str) -> Param:
    key = f"{where}: space.{name}"
    if not isinstance(raw, dict):
        return Param(name, "fixed", (raw,))
    raw = dict(raw)
    when = raw.pop("when", None)
    step = raw.pop("step", 1)
    kinds = [k for k in raw if k in DISTRIBUTIONS]
    extra = [k for k in raw if k not in DISTRIBUTIONS]
    if extra or len(kinds) != 1:
        raise ConfigError(
            f"{key}: expected exactly one of {list(DISTRIBUTIONS)} (plus optional 'when', 'step'), got {sorted(raw)}"
        )
    kind = kinds[0]
    arg = raw[kind]
    cond = _parse_when(when, key) if when is not None else None
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{key}: choice needs a non-empty list, got {arg!r}")
        return Param(name, "choice", tuple(arg), when=cond)
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, int | float) for x in arg)):
        raise ConfigError(f"{key}: {kind} needs [low, high] numbers, got {arg!r}")
    low, high = arg
    if not low < high:
        raise ConfigError(f"{key}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{key}: loguniform needs low > 0, got {low}")
    if kind == "int":
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{key}: int needs integer bounds, got [{low}, {high}]")
        if not isinstance(step, int) or step < 1 or (high - low) % step:
            raise ConfigError(f"{key}: int step must be a positive integer dividing high - low, got {step!r}")
        return Param(name, "int", low=low, high=high, step=step, when=cond)
    if step != 1:
        raise ConfigError(f"{key}: 'step' applies only to int, not {kind}")
    return Param(name, kind, low=float(low), high=float(high), when=cond)


def _parse_when(text: Any, key: str) -> tuple[str, str, Any]:
    m = _WHEN.match(str(text))
    if not m:
        raise ConfigError(f"{key}.when: expected '<parameter> <op> <value>' with op in {list(_OPS)}, got {text!r}")
    other, op, value = m.groups()
    return other, op, yaml.safe_load(value)


def _check_sections(cfg: ExperimentConfig) -> None:
    w, s, r = cfg.path, cfg.search, cfg.resources
    checks = [
        (isinstance(cfg.data.source, str) and bool(cfg.data.source), "data.source must be a SOURCE string"),
        (isinstance(cfg.data.image_size, int) and cfg.data.image_size >= 16, "data.image_size must be an int >= 16"),
        (isinstance(cfg.cv.folds, int) and cfg.cv.folds >= 2, f"cv.folds must be an int >= 2, got {cfg.cv.folds!r}"),
        (s.metric in METRICS, f"search.metric must be one of {list(METRICS)}, got {s.metric!r}"),
        (s.mode in ("max", "min"), f"search.mode must be max or min, got {s.mode!r}"),
        (
            s.metric not in METRIC_MODES or s.mode == METRIC_MODES[s.metric],
            f"search.mode {s.mode!r} does not fit search.metric {s.metric!r}: {s.metric} is optimised with "
            f"mode {METRIC_MODES.get(s.metric)!r}",
        ),
        (
            isinstance(s.shift_images, int) and not isinstance(s.shift_images, bool) and s.shift_images >= 0,
            f"search.shift_images must be an int >= 0, got {s.shift_images!r}",
        ),
        (
            s.metric not in SHIFT_METRICS or s.shift_images > 0,
            f"search.metric {s.metric!r} needs shift metrics, but search.shift_images is 0",
        ),
        (
            s.epoch_images is None
            or (isinstance(s.epoch_images, int) and not isinstance(s.epoch_images, bool) and s.epoch_images >= 2),
            f"search.epoch_images must be an int >= 2 (training images a fold draws an epoch) or null, got "
            f"{s.epoch_images!r}",
        ),
        (
            isinstance(s.num_samples, int) and s.num_samples >= 1,
            f"search.num_samples must be >= 1, got {s.num_samples!r}",
        ),
        (isinstance(s.max_epochs, int) and s.max_epochs >= 1, f"search.max_epochs must be >= 1, got {s.max_epochs!r}"),
        (
            isinstance(s.grace_period, int) and 1 <= s.grace_period <= s.max_epochs,
            f"search.grace_period must be in [1, max_epochs={s.max_epochs}], got {s.grace_period!r}",
        ),
        (
            isinstance(s.reduction_factor, int | float) and s.reduction_factor >= 2,
            f"search.reduction_factor must be >= 2, got {s.reduction_factor!r}",
        ),
        (s.searcher in SEARCHERS, f"search.searcher must be one of {list(SEARCHERS)}, got {s.searcher!r}"),
        (s.scheduler in SCHEDULERS, f"search.scheduler must be one of {list(SCHEDULERS)}, got {s.scheduler!r}"),
        (
            s.time_budget_s is None or s.time_budget_s > 0,
            f"search.time_budget_s must be > 0 or null, got {s.time_budget_s!r}",
        ),
        (
            s.deadline_s is None or (isinstance(s.deadline_s, int | float) and s.deadline_s > 0),
            f"search.deadline_s must be > 0 (seconds for the search and its deployment) or null, got {s.deadline_s!r}",
        ),
        (
            s.startup_trials is None or (isinstance(s.startup_trials, int) and s.startup_trials >= 0),
            f"search.startup_trials must be an int >= 0 or null, got {s.startup_trials!r}",
        ),
        (
            isinstance(s.first_rung_trials, int) and s.first_rung_trials >= 0,
            f"search.first_rung_trials must be an int >= 0, got {s.first_rung_trials!r}",
        ),
        (
            not s.first_rung_trials or s.scheduler == "asha",
            f"search.first_rung_trials holds trials at ASHA's first rung: it needs search.scheduler: asha, got "
            f"{s.scheduler!r}",
        ),
        (
            s.checkpoint_every is None or (isinstance(s.checkpoint_every, int) and s.checkpoint_every >= 1),
            f"search.checkpoint_every must be an int >= 1 or null, got {s.checkpoint_every!r}",
        ),
        (r.cpus_per_fold > 0, f"resources.cpus_per_fold must be > 0, got {r.cpus_per_fold!r}"),
        (r.gpus_per_fold >= 0, f"resources.gpus_per_fold must be >= 0, got {r.gpus_per_fold!r}"),
        (
            r.max_concurrent is None or (isinstance(r.max_concurrent, int) and r.max_concurrent >= 1),
            f"resources.max_concurrent must be >= 1 or null, got {r.max_concurrent!r}",
        ),
        (
            cfg.retrain.epochs == "best" or (isinstance(cfg.retrain.epochs, int) and cfg.retrain.epochs >= 1),
            f"retrain.epochs must be 'best' or an int >= 1, got {cfg.retrain.epochs!r}",
        ),
        (
            isinstance(cfg.calibration.coverage, float) and 0.0 < cfg.calibration.coverage < 1.0,
            f"calibration.coverage must be in (0, 1), got {cfg.calibration.coverage!r}",
        ),
        (
            isinstance(cfg.calibration.ood_false_alarm, float) and 0.0 < cfg.calibration.ood_false_alarm < 1.0,
            f"calibration.ood_false_alarm must be in (0, 1), got {cfg.calibration.ood_false_alarm!r}",
        ),
        (
            cfg.calibration.ood_features in FEATURE_KINDS,
            f"calibration.ood_features must be one of {list(FEATURE_KINDS)}, got {cfg.calibration.ood_features!r}",
        ),
        (isinstance(cfg.calibration.tta, bool), f"calibration.tta must be true or false, got {cfg.calibration.tta!r}"),
        (
            cfg.retrain.mode in RETRAIN_MODES,
            f"retrain.mode must be one of {list(RETRAIN_MODES)}, got {cfg.retrain.mode!r}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{w}: {msg}")


def _check_values(cfg: ExperimentConfig) -> None:
    """Every value a trial could receive must make a valid TrainConfig: check fixed values, choices and range ends."""
    base = cfg.fixed_values()
    try:
        TrainConfig(**base)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    for p in cfg.space.values():
        candidates = list(p.values) if p.kind in ("fixed", "choice") else [p.low, p.high]
        if p.kind == "int":
            candidates = [int(p.low), int(p.high)]
        expected = TRAIN_FIELDS[p.name].type
        for v in candidates:
            if "int" in str(expected) and "float" not in str(expected) and p.kind in ("uniform", "loguniform"):
                raise ConfigError(f"{cfg.path}: space.{p.name} is an integer; use int: [low, high], not {p.kind}")
            try:
                TrainConfig(**{**base, p.name: v})
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{cfg.path}: space.{p.name}: {e}") from None
    _check_backbones(cfg)


def _check_backbones(cfg: ExperimentConfig) -> None:
    import timm  # ~2 s: only once a config is checked, not for parsing one or `cellnet --help`

    names: list[str] = []
    if "backbone" in cfg.train:
        names.append(cfg.train["backbone"])
    p = cfg.space.get("backbone")
    if p is not None:
        names.extend(p.values)
    if not names:
        names.append(TrainConfig.backbone)
    for n in names:
        if not isinstance(n, str) or not timm.is_model(n):
            close = timm.list_models(f"*{str(n).split('_')[0]}*")[:8] if isinstance(n, str) else []
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ConfigError(f"{cfg.path}: backbone {n!r} is not a timm model name{hint}")
