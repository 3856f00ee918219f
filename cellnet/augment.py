"""Image augmentation (albumentations 2.x) scaled by one knob, `aug_strength` in [0, 1], plus robustness knobs.

Every transform works on uint8 H×W×3 arrays; normalisation to float happens per batch on the torch side (see
`cellnet.train.prepare_batch`), which keeps the loader cheap. Strength 0 is the identity (plus the optional resize to
`input_size`); at strength s each transform's probability and magnitude are its full-strength values times s.
Blood-cell smears have no canonical orientation, so flips and 90° rotations are label-preserving.

The robustness knobs target the shifts of `cellnet.shifts` (the suite `cellnet evaluate --shifted` measures):
`zoom_aug` (`RandomZoom`, magnification 2**U(-zoom_aug, zoom_aug); a zoom-out mirrors the shrunk image into the
border, `shifts.zoom_out_mirrored`, so the field around the cell keeps its red cells at the new scale, as a wider field
of view shows them: decision 0012) and `stain_aug` (HEStain Macenko re-staining plus Planckian illumination colour).
Both are 0 (off) by default, which leaves the pipeline exactly as without them.

`aug_policy` adds one of the standard automatic policies, torchvision's implementations (`TorchvisionPolicy`):
RandAugment (2 ops at magnitude 30 x aug_magnitude of 31 bins), TrivialAugmentWide (one op at a random strength, on
a share aug_magnitude of the images) or AugMix (severity 10 x aug_magnitude, 3 chains). The shift suite's
"RandAugment/AugMix-style" corruptions are built from albumentations' ops with other parameters (cellnet/shifts.py),
so a model trained with a policy is not scored on that same policy.

    image ─ RandomZoom ─ flips, rot90, affine, colour, blur, noise, dropout (aug_strength) ─ policy ─ stain ─ resize
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from cellnet.config import AUG_POLICIES as POLICIES
from cellnet.shifts import MacenkoStain, zoom, zoom_out_mirrored

ZOOM_P = 0.8  # share of training images RandomZoom rescales when zoom_aug > 0
MAX_ZOOM_AUG = 2.0  # largest zoom_aug: magnification 0.25x-4x


class TorchvisionPolicy(A.ImageOnlyTransform):
    """A torchvision v2 policy (RandAugment, TrivialAugmentWide, AugMix) on one uint8 H×W×3 image, at `magnitude` in
    [0, 1].

    torchvision draws from torch's global generator; here each call saves its state, seeds it from albumentations'
    own per-transform generator (`set_random_state`, as `cellnet.train.ImageDataset` does per sample) and restores it
    afterwards, so the draws are a function of (seed, epoch, sample) and the global stream (dropout) is untouched.
    The ops run on one thread: on a 64 px image, intra-op threads cost more than they save (3x, measured).
    """

    def __init__(self, policy: str = "randaugment", magnitude: float = 0.5, p: float = 1.0) -> None:
        if policy not in POLICIES[1:]:
            raise ValueError(f"policy must be one of {list(POLICIES[1:])}, got {policy!r}")
        if not 0.0 <= magnitude <= 1.0:
            raise ValueError(f"policy magnitude must be in [0, 1], got {magnitude}")
        super().__init__(p=magnitude if policy == "trivialaugment" else p)
        self.policy, self.magnitude = policy, float(magnitude)
        self.op = _torchvision_policy(policy, magnitude)

    def get_params(self) -> dict[str, Any]:
        return {"seed": int(self.py_random.getrandbits(62))}

    def apply(self, img: np.ndarray, seed: int = 0, **params: Any) -> np.ndarray:
        state, threads = torch.get_rng_state(), torch.get_num_threads()
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would also seed every GPU: 100x slower
        torch.set_num_threads(1)
        try:
            out = self.op(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        finally:
            torch.set_rng_state(state)
            torch.set_num_threads(threads)
        return np.ascontiguousarray(out.permute(1, 2, 0).numpy())

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy", "magnitude")


def _torchvision_policy(policy: str, magnitude: float) -> Any:
    from torchvision.transforms import v2  # torchvision (~2 s): only the recipes that use its policies load it

    if policy == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=round(30 * magnitude), num_magnitude_bins=31)
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide(num_magnitude_bins=31)
    return v2.AugMix(severity=max(1, round(10 * magnitude)), mixture_width=3)


def smallest_magnification(zoom_aug: float) -> float:
    """The smallest magnification `RandomZoom(zoom_aug)` trains on, 2**-zoom_aug: framings shown at least this large
    are ones the model was taught (the OOD framing check notes them, decision 0013)."""
    return 2.0 ** -float(zoom_aug)


class RandomZoom(A.ImageOnlyTransform):
    """Magnify about the centre by 2**u, u ~ U(-max_log2, max_log2); a zoom-out fills the border by mirroring the
    shrunk image (`zoom_out_mirrored`): on real cells (decision 0012, validation holdout) that taught full-frame
    cells far better than a flat background (0.82 vs 0.66 right), since a wider real field shows more, smaller red
    cells, not an empty margin.

    Randomness comes from albumentations' per-transform generator (`self.py_random`), so `set_random_state` (as in
    `cellnet.train.ImageDataset`) or `A.Compose(seed=...)` makes it reproducible.
    """

    def __init__(self, max_log2: float = 1.0, p: float = ZOOM_P) -> None:
        if not (isinstance(max_log2, int | float) and 0.0 <= max_log2 <= MAX_ZOOM_AUG):
            raise ValueError(f"RandomZoom max_log2 must be in [0, {MAX_ZOOM_AUG}], got {max_log2!r}")
        super().__init__(p=p)
        self.max_log2 = float(max_log2)

    def get_params(self) -> dict[str, Any]:
        return {"factor": 2.0 ** self.py_random.uniform(-self.max_log2, self.max_log2)}

    def apply(self, img: np.ndarray, factor: float = 1.0, **params: Any) -> np.ndarray:
        return zoom_out_mirrored(img, factor) if factor < 1.0 else zoom(img, factor)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_log2",)


def stain_transforms(stain_aug: float) -> list[A.BasicTransform]:
    """Another lab's stain and another microscope's light, scaled by `stain_aug` = t in [0, 1] (0: none).

    MacenkoStain (HEStain macenko; blank fields left alone) scales the two stain concentrations of each image by
    U(1 - 0.4t, 1 + 0.4t) and adds U(-0.1t, 0.1t), p = 0.5t; PlanckianJitter draws a colour temperature in
    [6000 - 3000t, 6000 + 9000t] K, p = 0.5t. The Macenko step costs ~0.8 ms per image at 64 px (one core).
    """
    t = float(stain_aug)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"stain_aug must be in [0, 1], got {stain_aug}")
    if t == 0:
        return []
    return [
        MacenkoStain((1 - 0.4 * t, 1 + 0.4 * t), (-0.1 * t, 0.1 * t), p=0.5 * t),
        A.PlanckianJitter(
            mode="blackbody", temperature_limit=(round(6000 - 3000 * t), round(6000 + 9000 * t)), p=0.5 * t
        ),
    ]


def train_transform(
    aug_strength: float,
    image_size: int,
    input_size: int | None = None,
    *,
    zoom_aug: float = 0.0,
    stain_aug: float = 0.0,
    policy: str = "none",
    magnitude: float = 0.5,
) -> A.Compose:
    """RandomZoom (zoom_aug > 0); flips, rot90, affine, colour jitter, blur, noise, dropout; the `policy` at
    `magnitude` (TorchvisionPolicy; "none": off); stain; then resize.

    The zoom comes first, so its mirrored field is made of the original image. With zoom_aug > 0 it owns the
    magnification: the Affine keeps its rotation and translation but its scale becomes (1, 1), so the two do not
    multiply into a wider range than zoom_aug says. Stain transforms (`stain_transforms`) run after the other colour
    jitter.
    """
    s = float(aug_strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got {aug_strength}")
    if not 0.0 <= zoom_aug <= MAX_ZOOM_AUG:
        raise ValueError(f"zoom_aug must be in [0, {MAX_ZOOM_AUG}], got {zoom_aug}")
    ops: list[A.BasicTransform] = [RandomZoom(zoom_aug)] if zoom_aug > 0 else []
    if s > 0:
        scale = (1.0, 1.0) if zoom_aug > 0 else (1 - 0.2 * s, 1 + 0.2 * s)
        ops += [
            A.HorizontalFlip(p=0.5 * s),
            A.VerticalFlip(p=0.5 * s),
            A.RandomRotate90(p=s),
            A.Affine(
                rotate=(-45 * s, 45 * s),
                scale=scale,
                translate_percent=(-0.1 * s, 0.1 * s),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7 * s,
            ),
            # stain variation between labs/scanners: hue/saturation shifts plus brightness/contrast
            A.HueSaturationValue(hue_shift_limit=10 * s, sat_shift_limit=25 * s, val_shift_limit=15 * s, p=0.6 * s),
            A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=0.6 * s),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 0.1 + 1.2 * s), p=0.25 * s),
            A.GaussNoise(std_range=(0.005, 0.005 + 0.05 * s), p=0.25 * s),
            A.CoarseDropout(
                num_holes_range=(1, max(1, round(4 * s))),
                hole_height_range=(0.05, 0.05 + 0.15 * s),
                hole_width_range=(0.05, 0.05 + 0.15 * s),
                fill=0,
                p=0.3 * s,
            ),
        ]
    if policy not in POLICIES:
        raise ValueError(f"aug_policy must be one of {list(POLICIES)}, got {policy!r}")
    if policy != "none":
        ops.append(TorchvisionPolicy(policy, magnitude))
    return A.Compose(ops + stain_transforms(stain_aug) + _resize(image_size, input_size))


def eval_transform(image_size: int, input_size: int | None = None) -> A.Compose:
    """Validation/inference: only the resize to `input_size` (if any); normalisation is on the tensor side."""
    return A.Compose(_resize(image_size, input_size))


def _resize(image_size: int, input_size: int | None) -> list[A.BasicTransform]:
    if input_size is None or input_size == image_size:
        return []
    return [A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR)]
