"""ONNX export with the preprocessing inside the graph and a parity check against PyTorch before the file appears.

The exported model takes what a user has: float32 images N×S×S×3 (NHWC, RGB, values 0-255, S = the checkpoint's
image_size) and returns softmax probabilities N×C. Resizing to input_size and the mean/std normalisation happen in
the graph, so no consumer can get them wrong. The batch axis is dynamic. Classes, image_size, mean/std and the input
format are in the model's metadata_props (JSON strings).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cellnet import __version__
from cellnet.errors import CellnetError
from cellnet.files import atomic_path
from cellnet.predict import preprocess

if TYPE_CHECKING:
    from cellnet.checkpoint import Checkpoint

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
INPUT_FORMAT = (
    "float32 NHWC RGB 0-255 at image_size; resizing to input_size and mean/std normalisation are in the graph"
)
FORMATS = ("onnx",)


class _Deployable(nn.Module):
    """softmax(model(preprocess(x)) / T): the whole inference path as one module, the checkpoint's temperature
    (1 without calibration) folded in. A fold ensemble's members are averaged inside `model`."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__()
        self.model = checkpoint.model
        self.image_size = int(checkpoint.image_size)
        self.input_size = checkpoint.input_size
        self.mean = tuple(float(v) for v in checkpoint.mean)
        self.std = tuple(float(v) for v in checkpoint.std)
        self.temperature = checkpoint.temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess(images, image_size=self.image_size, input_size=self.input_size, mean=self.mean, std=self.std)
        return torch.softmax(self.model(x) / self.temperature, dim=1)


def metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """What a consumer of the ONNX file needs to use it, as metadata_props (values are JSON)."""
    return {
        "cellnet_version": json.dumps(__version__),
        "classes": json.dumps(list(checkpoint.classes)),
        "image_size": json.dumps(int(checkpoint.image_size)),
        "input_size": json.dumps(checkpoint.input_size),
        "mean": json.dumps([float(v) for v in checkpoint.mean]),
        "std": json.dumps([float(v) for v in checkpoint.std]),
        "input_name": json.dumps(INPUT_NAME),
        "output_name": json.dumps(OUTPUT_NAME),
        "input_format": json.dumps(INPUT_FORMAT),
        "output_format": json.dumps("float32 N×C softmax probabilities, columns in the order of `classes`"),
        "backbone": json.dumps(getattr(checkpoint.config, "backbone", None)),
        "members": json.dumps(int(getattr(checkpoint, "members", 1))),
        "temperature": json.dumps(checkpoint.temperature),
    }


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from the ONNX file via onnxruntime on CPU (float32 NHWC 0-255 in)."""
    import onnxruntime as ort  # only `cellnet export` (and its check) needs onnxruntime

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: images.astype(np.float32)})[0])


def parity(checkpoint: Checkpoint, path: Path, *, samples: int = 8, seed: int = 0) -> float:
    """Max |p_onnx - p_torch| over `samples` random images, run as single images and as one batch."""
    deployable = _Deployable(checkpoint).eval().cpu()
    s = int(checkpoint.image_size)
    images = np.random.default_rng(seed).integers(0, 256, size=(samples, s, s, 3)).astype(np.float32)
    with torch.inference_mode():
        expected = deployable(torch.from_numpy(images)).numpy()
    batched = _run_onnx(path, images)
    single = np.concatenate([_run_onnx(path, images[i : i + 1]) for i in range(min(samples, 2))])
    return float(max(np.abs(batched - expected).max(), np.abs(single - expected[: len(single)]).max()))


def export_onnx(
    checkpoint: Checkpoint, out: str | Path, *, tolerance: float = 1e-4, opset: int | None = None, samples: int = 8
) -> tuple[Path, float]:
    """Write `checkpoint` as ONNX to `out` after checking parity with PyTorch; returns (path, max abs difference).

    The file is written to a temporary name next to `out` and renamed only when onnxruntime's probabilities agree
    with PyTorch's to within `tolerance`; otherwise CellnetError and nothing is left behind.
    """
    import onnx  # ~0.6 s, only `cellnet export` needs it

    out = Path(out)
    if not out.parent.is_dir():
        raise CellnetError(f"{out}: folder {out.parent} does not exist")
    deployable = _Deployable(checkpoint).eval().cpu()
    s = int(checkpoint.image_size)
    example = torch.rand(2, s, s, 3) * 255
    with atomic_path(out) as tmp:  # renamed onto `out` only when the parity check passes
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                program = torch.onnx.export(
                    deployable,
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                    opset_version=opset,
                    external_data=False,
                    verbose=False,
                )
        except Exception as e:
            raise CellnetError(f"ONNX export of {getattr(checkpoint.config, 'backbone', 'model')} failed: {e}") from e
        assert program is not None
        model = program.model_proto
        onnx.helper.set_model_props(model, metadata(checkpoint))
        onnx.save_model(model, str(tmp))
        diff = parity(checkpoint, tmp, samples=samples)
        if not diff <= tolerance:  # also catches NaN
            raise CellnetError(
                f"ONNX parity check failed: max |p_onnx - p_torch| = {diff:.3g} > tolerance {tolerance:g}; "
                f"{out} not written"
            )
    return out, diff
