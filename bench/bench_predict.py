"""How much does `cellnet predict`'s library path cost over bare batched inference, and what does calibration add?

All run the same model on the same images with the same batch size. `library` is `cellnet.predict.predict_images`
on uint8 N×S×S×3 arrays of an uncalibrated checkpoint (host->device copy, resize, normalisation, fp32, softmax, copy
back). `bare` is `model(x)` on tensors preprocessed beforehand and already on the device. ratio = library images/s ÷
bare images/s; the target is >= 0.9 (the preprocessing must not be what limits a prediction run).
`preprocessing_fraction` is the preprocessing alone timed against bare inference: the overhead even when a busy
machine makes the ratio noisy. `calibrated` is `predict_batch` on the same model with a calibration (temperature,
conformal sets at 0.95, the OOD score from the same forward pass's features); calibrated_ratio = calibrated
images/s ÷ library images/s, target >= 0.9 (issue 22: two backbone passes made it ~0.5).

    python -m bench.bench_predict                       # mobilenetv3_small_050 (the default backbone) at 96 px
    python -m bench.bench_predict --quick               # 256 images (the `make bench` mode)
    python -m bench.bench_predict --backbone convnext_atto --n 1024 --device cuda --json out.json
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from bench.common import bench_parser, dump_json
from cellnet.checkpoint import load_checkpoint, save_checkpoint
from cellnet.config import TrainConfig
from cellnet.constants import PBC_CLASSES
from cellnet.model import build_model, model_normalisation
from cellnet.predict import infer, predict_batch, predict_images, preprocess
from cellnet.train import select_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _calibrated(ckpt: Any, images: np.ndarray) -> Any:
    """A copy of `ckpt` with a calibration fitted on its own outputs for `images` under random labels: the numbers
    mean nothing, the work predict does with them is the real one (framing check included, as deployed)."""
    import dataclasses

    from cellnet.calibrate import fit_calibration
    from cellnet.constants import FRAMING_ZOOMS
    from cellnet.shifts import zoomed_copies

    out = infer(ckpt, images, features=True)
    zoomed = [
        infer(ckpt, copy, features=True, feature_kind=out.feature_kind).features
        for copy in zoomed_copies(images, FRAMING_ZOOMS)
    ]
    labels = np.arange(len(images)) % len(ckpt.classes)
    cal = fit_calibration(
        out.logits,
        labels,
        len(ckpt.classes),
        out.features,
        feature_kind=out.feature_kind,
        framing_features=np.stack(zoomed),
        framing_zooms=FRAMING_ZOOMS,
        coverage=0.95,
    )
    return dataclasses.replace(ckpt, calibration=cal)


def run(
    backbone: str = "mobilenetv3_small_050",
    image_size: int = 96,
    n: int = 2048,
    batch_size: int = 256,
    device: str = "auto",
    repeats: int = 3,
) -> dict[str, Any]:
    """Median images/s of the library path and of bare inference over `repeats` timed passes (after a warm-up)."""
    dev = select_device(device)
    config = TrainConfig(backbone=backbone, pretrained=False, device=str(dev))
    model = build_model(config, len(PBC_CLASSES)).eval()
    mean, std = model_normalisation(model)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(
            tmp, model, config=config, classes=PBC_CLASSES, image_size=image_size, mean=mean, std=std, metrics={}
        )
        ckpt = load_checkpoint(tmp, device=str(dev))
    images = np.random.default_rng(0).integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    calibrated = _calibrated(ckpt, images[:512])

    # The library's tensors are channels_last (a permuted NHWC array; explicit on GPU), which is also the faster
    # layout for CPU convolutions: give bare inference the same layout, so the ratio measures only the overhead.
    fmt = torch.channels_last
    with torch.inference_mode():
        batches = [
            preprocess(
                torch.from_numpy(images[i : i + batch_size]).to(dev),
                image_size=image_size,
                input_size=ckpt.input_size,
                mean=ckpt.mean,
                std=ckpt.std,
            ).contiguous(memory_format=fmt)
            for i in range(0, n, batch_size)
        ]

    def bare() -> None:
        with torch.inference_mode():
            for x in batches:
                ckpt.model(x)
        _sync(dev)

    def library() -> None:
        predict_images(ckpt, images, batch_size=batch_size)
        _sync(dev)

    def with_calibration() -> None:
        predict_batch(calibrated, images, batch_size=batch_size)
        _sync(dev)

    def preprocessing() -> None:  # what the library adds before the model: copy to device, resize, normalise
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                x = torch.from_numpy(images[i : i + batch_size]).to(dev)
                preprocess(x, image_size=image_size, input_size=ckpt.input_size, mean=ckpt.mean, std=ckpt.std)
        _sync(dev)

    runs = (("bare", bare), ("library", library), ("calibrated", with_calibration), ("preprocessing", preprocessing))
    timings: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _, fn in runs:  # warm-up: cuDNN autotuning, allocator, thread pools
        fn()
    for _ in range(repeats):  # interleaved so a noisy neighbour hurts all alike
        for name, fn in runs:
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    ips = {name: n / statistics.median(t) for name, t in timings.items()}
    return {
        "backbone": backbone,
        "image_size": image_size,
        "images": n,
        "batch_size": batch_size,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "bare_images_per_s": round(ips["bare"], 1),
        "library_images_per_s": round(ips["library"], 1),
        "ratio": round(ips["library"] / ips["bare"], 3),
        "calibrated_images_per_s": round(ips["calibrated"], 1),
        "calibrated_ratio": round(ips["calibrated"] / ips["library"], 3),
        # preprocessing time as a fraction of bare inference time: the overhead a quiet machine would show
        "preprocessing_fraction": round(ips["bare"] / ips["preprocessing"], 4),
        "target_ratio": 0.9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "256 images per pass", "also write the result to this file")
    parser.add_argument("--backbone", default="mobilenetv3_small_050")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--n", type=int, default=2048, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 256)
    result = run(args.backbone, args.image_size, args.n, args.batch_size, args.device, args.repeats)
    print(json.dumps(result, indent=2))
    dump_json(args.json, result)
    for key in ("ratio", "calibrated_ratio"):
        if result[key] < result["target_ratio"]:
            print(f"{key} {result[key]} is below the target {result['target_ratio']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
