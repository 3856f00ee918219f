"""Which floating-point precision a model runs in: fp32, or bf16 autocast where the device has it (decision 0014).

    cpu_has_bf16() .............. this CPU runs bf16 natively (AVX-512 BF16 / AMX; asked once), unless $CELLNET_BF16
    inference_precision(device) . bf16 on such a CPU (1.7x fp32's images/s measured there), fp32 everywhere else --
                                  CUDA included, as before: inference there was always fp32
    supports(precision, device) . can the device run it natively (a checkpoint calibrated in bf16 predicts in fp32 on
                                  a CPU without bf16: `cellnet.predict.checkpoint_precision`)
    autocast(precision, device) . the context a forward pass or a training step runs under

Training has its own rule (`train.precision: auto`: bf16 on CUDA, and on a bf16 CPU only for a backbone measured to
train faster in it; cellnet/train_precision.py): depthwise convolutions gain nothing from bf16 on CPU.

$CELLNET_BF16: `0` treats this CPU as having no bf16 -- fp32 inference, and `auto` trains in fp32 on CPU (for users
who want fp32 everywhere, and for the tests, which pin it); `1` treats it as having bf16 (emulated, slowly, on a CPU
without the instructions: for tests of the bf16 paths); unset, the CPU is asked. Read at every call, so setting it
in a running process takes effect; only the hardware answer is cached.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch

from cellnet.constants import AUTO, BF16, FP32, PRECISIONS, TRAIN_PRECISIONS  # their home: config reads them, no torch
from cellnet.errors import ConfigError

__all__ = [
    "AUTO",
    "BF16",
    "BF16_ENV",
    "FP32",
    "PRECISIONS",
    "TRAIN_PRECISIONS",
    "autocast",
    "check_precision",
    "cpu_has_bf16",
    "inference_precision",
    "supports",
]

BF16_ENV = "CELLNET_BF16"


@functools.cache
def _bf16_instructions() -> bool:
    """oneDNN's answer for this CPU (cached: it does not change while the process runs)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_bf16() -> bool:
    """Whether this process treats its CPU as having bf16 instructions: $CELLNET_BF16 (0 or 1) when set, else the
    CPU's own answer."""
    value = os.environ.get(BF16_ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ConfigError(
            f"${BF16_ENV} must be 0 (fp32 on this CPU) or 1 (bf16), or unset (ask the CPU), got {value!r}"
        )
    return _bf16_instructions()


def check_precision(value: Any, allowed: tuple[str, ...] = PRECISIONS, where: str = "precision") -> str:
    """`value` when it is one of `allowed`, else a ConfigError naming `where` and the choices."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def supports(precision: str, device: torch.device | str) -> bool:
    """Can `device` run `precision` natively: fp32 always; bf16 on a CPU with bf16 (`cpu_has_bf16`) or a CUDA GPU
    that has it."""
    if check_precision(precision) == FP32:
        return True
    kind = torch.device(device).type
    if kind == "cpu":
        return cpu_has_bf16()
    return kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def inference_precision(device: torch.device | str) -> str:
    """The precision a model predicts in on `device` when nothing was fitted in another: bf16 on a CPU with bf16,
    fp32 elsewhere (CUDA too, as it always was)."""
    return BF16 if torch.device(device).type == "cpu" and cpu_has_bf16() else FP32


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """What a forward pass (or training step) on `device` runs under: nothing for fp32, bf16 autocast for bf16
    (convolutions and matrix products in bf16; losses, softmax of float32 inputs and the weights stay float32)."""
    if check_precision(precision) == FP32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
