"""Image augmentation (albumentations 2.x) scaled by one knob, `aug_strength` in [0, 1].

Every transform works on uint8 H×W×3 arrays; normalisation to float happens per batch on the torch side (see
`cellnet.train.prepare_batch`), which keeps the loader cheap. Strength 0 is the identity (plus the optional resize to
`input_size`); at strength s each transform's probability and magnitude are its full-strength values times s.
Blood-cell smears have no canonical orientation, so flips and 90° rotations are label-preserving.
"""

from __future__ import annotations

import albumentations as A
import cv2


def train_transform(aug_strength: float, image_size: int, input_size: int | None = None) -> A.Compose:
    """Flips, rot90, affine (rotate/scale/shift), stain/colour jitter, blur, noise, coarse dropout; then resize."""
    s = float(aug_strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got {aug_strength}")
    ops: list[A.BasicTransform] = []
    if s > 0:
        ops = [
            A.HorizontalFlip(p=0.5 * s),
            A.VerticalFlip(p=0.5 * s),
            A.RandomRotate90(p=s),
            A.Affine(
                rotate=(-45 * s, 45 * s),
                scale=(1 - 0.2 * s, 1 + 0.2 * s),
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
    return A.Compose(ops + _resize(image_size, input_size))


def eval_transform(image_size: int, input_size: int | None = None) -> A.Compose:
    """Validation/inference: only the resize to `input_size` (if any); normalisation is on the tensor side."""
    return A.Compose(_resize(image_size, input_size))


def _resize(image_size: int, input_size: int | None) -> list[A.BasicTransform]:
    if input_size is None or input_size == image_size:
        return []
    return [A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR)]
