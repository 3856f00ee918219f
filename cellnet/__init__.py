"""cellnet: leak-free training, evaluation and export of blood-cell image classifiers (no Ray in here).

    cellnet.data ......... load a SOURCE, clean it (duplicates, conflicts, outliers), grouped stratified folds
    cellnet.config ....... the YAML format: ExperimentConfig (a search space) and TrainConfig (one fit)
    cellnet.model ........ timm backbone + dense head; fold ensembles
    cellnet.train ........ fit(config, train, val): one model on one split
    cellnet.precision .... fp32 or bf16 autocast (a CPU with bf16); train.precision: auto decided by a probe
    cellnet.shifts ....... the shift suite (zoom, stain, colour, blur, JPEG, ...), deterministic
    cellnet.calibrate .... temperature, conformal sets, what a user sees (uncertain); stored in the checkpoint
    cellnet.ood .......... the out-of-distribution score: Mahalanobis distance and the framing check
    cellnet.metrics ...... classification metrics and evaluate's trust metrics (coverage, flags, OOD AUROC)
    cellnet.checkpoint ... one self-describing directory per model
    cellnet.predict / evaluate / export ... using a checkpoint; cellnet.cli is the `cellnet` command

The names below load on first use, so `import cellnet` (and `cellnet --help`) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TrainConfig": "cellnet.config",
    "ExperimentConfig": "cellnet.config",
    "load_config": "cellnet.config",
    "fit": "cellnet.train",
    "build_model": "cellnet.model",
    "Checkpoint": "cellnet.checkpoint",
    "load_checkpoint": "cellnet.checkpoint",
    "save_checkpoint": "cellnet.checkpoint",
    "Calibration": "cellnet.calibrate",
    "predict_images": "cellnet.predict",
    "evaluate": "cellnet.evaluate",
    "export_onnx": "cellnet.export",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cellnet' has no attribute {name!r}")
