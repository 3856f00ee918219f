"""A deployed checkpoint as the starting point of a new fit: `train.init_checkpoint: RUN/best` in a space, and
`cellnet finetune`.

    init_checkpoint (one model: a search's refit best/, a finetune's DIR) ─ load_parent (an ensemble refused)
      ─ check_parent: the new fit's backbone, input size and normalisation must be the parent's
      ─ init_from_parent(model, parent, classes): every backbone tensor copied; the head too when the classes (names,
        in order) and the head's shapes are the parent's, else the new head stays as built (said in the result)

What is fixed to the parent is what its weights mean: a backbone name, the input size its features were learned at
and the normalisation they expect. Everything else (augmentation, schedule, head width of a rebuilt head) is the
new fit's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cellnet.checkpoint import Checkpoint, load_checkpoint
from cellnet.config import ExperimentConfig, TrainConfig
from cellnet.errors import ConfigError
from cellnet.model import CellNet, model_normalisation


def load_parent(path: str | Path, where: str = "init_checkpoint") -> Checkpoint:
    """The checkpoint at `path`, which must hold a single model (a fold ensemble has k backbones: which one would a
    new fit start from?). A one-line ConfigError otherwise."""
    parent = load_checkpoint(path)
    if not isinstance(parent.model, CellNet):
        raise ConfigError(
            f"{where} {path} is a fold ensemble ({type(parent.model).__name__}); start from a single model: a "
            "search's refit (retrain.mode: refit, its best/) or a finetune's output"
        )
    return parent


def check_parent(parent: Checkpoint, config: TrainConfig, where: str = "init_checkpoint") -> None:
    """The new fit must use the parent's backbone and input size (its weights were learned for them)."""
    pc = parent.config
    if config.backbone != pc.backbone:
        raise ConfigError(
            f"{where} {parent.path} is a {pc.backbone} model, but the fit asks for backbone {config.backbone!r}; "
            f"fix the backbone to {pc.backbone!r} (a space may not search backbones when starting from a checkpoint)"
        )
    if config.input_size != pc.input_size:
        raise ConfigError(
            f"{where} {parent.path} was trained at input_size {pc.input_size}, the fit asks for {config.input_size}; "
            f"set input_size: {pc.input_size}"
        )


def parent_identity(parent: Checkpoint) -> str:
    """How a model started from `parent` says where its weights came from (trials.csv's `weights`, the refit's):
    the parent's weights hash, the same on every node whatever the path."""
    return f"checkpoint: {parent.meta['weights_sha256'][:16]} ({parent.path})"


def init_from_parent(model: CellNet, parent: Checkpoint, classes: Sequence[str]) -> str:
    """Copy `parent`'s weights into the freshly built `model` (whose backbone and input size `check_parent` passed):
    the backbone always, the head when `classes` are the parent's and the shapes match. Returns one line saying
    which; a normalisation other than the parent's is a ConfigError (the features would not mean the same)."""
    parent_model = parent.model
    assert isinstance(parent_model, CellNet)
    mean, std = model_normalisation(model)
    if (tuple(mean), tuple(std)) != (tuple(parent.mean), tuple(parent.std)):
        raise ConfigError(
            f"init_checkpoint {parent.path} expects inputs normalised with mean {parent.mean} / std {parent.std}, "
            f"the new model's backbone {mean} / {std}"
        )
    with torch.no_grad():
        model.backbone.load_state_dict(parent_model.backbone.state_dict(), strict=True)
        new, old = model.head.state_dict(), parent_model.head.state_dict()
        same_head = list(classes) == list(parent.classes) and {k: v.shape for k, v in new.items()} == {
            k: v.shape for k, v in old.items()
        }
        if same_head:
            model.head.load_state_dict(old, strict=True)
    model.weights_source = parent_identity(parent)
    kept = "backbone and head" if same_head else "backbone (head rebuilt: other classes or head shape)"
    return f"started from {parent.path}: {kept}"


def check_experiment(cfg: ExperimentConfig) -> Checkpoint | None:
    """A space whose trials start from `init_checkpoint` (None without one): the parent loaded and refused in one
    line where a trial could not start from it -- an ensemble, a searched or other backbone or input size. Run once
    before a search or a `cellnet train` starts."""
    path = cfg.fixed_values().get("init_checkpoint")
    searched = cfg.space.get("init_checkpoint")
    if searched is not None and not searched.is_fixed:
        raise ConfigError(f"{cfg.path}: space.init_checkpoint must be one fixed checkpoint, not searched")
    if path is None:
        return None
    parent = load_parent(path, where=f"{cfg.path}: init_checkpoint")
    for backbone in cfg.backbones():
        check_parent(parent, cfg.train_config({"backbone": backbone}), where=f"{cfg.path}: init_checkpoint")
    size = cfg.space.get("input_size")
    if size is not None and not size.is_fixed:
        raise ConfigError(f"{cfg.path}: space.input_size is searched, but init_checkpoint fixes it to the parent's")
    return parent
