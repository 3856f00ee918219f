"""One place for class names, their PBC frequencies and normalisation defaults."""

from __future__ import annotations

# BloodMNIST / PBC label order (label i is PBC_CLASSES[i]).
PBC_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

# Image counts per class in the full PBC dataset (Acevedo et al. 2020, 17,092 images): the imbalance
# the synthetic generator reproduces by default.
PBC_COUNTS: tuple[int, ...] = (1218, 3117, 1551, 2895, 1214, 1420, 3329, 2348)

# ImageNet statistics: what timm backbones expect; a checkpoint stores the values it was trained with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DEFAULT_IMAGE_SIZE = 96
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# What an out-of-distribution score measures distances in (`cellnet.model.CellNet.forward_with_features`):
# calibrations written before round 3's decision 0010 measured POOLED only (their meta names no kind).
POOLED, STAGE_STATS, POOLED_AND_STAGE_STATS = "pooled", "stage_stats", "pooled+stage_stats"
FEATURE_KINDS: tuple[str, ...] = (POOLED, STAGE_STATS, POOLED_AND_STAGE_STATS)
DEFAULT_FEATURES = POOLED_AND_STAGE_STATS  # what a new calibration measures where the backbone gives its stages

# The OOD flag's framing check (decisions 0011, 0013): a discriminator of the calibration cells from their copies zoomed
# out by these factors (full-frame PBC images show a cell ~1.8x smaller than the centre crops: 0.55; and a milder 0.7).
FRAMING_ZOOMS: tuple[float, ...] = (0.55, 0.7)

# Floating-point precisions a model runs in (`cellnet.precision`; decision 0014): fp32, or bf16 autocast where the
# device has it. `train.precision` also takes "auto" (bf16 where it trains faster, cellnet.train_precision).
FP32, BF16, AUTO = "fp32", "bf16", "auto"
PRECISIONS: tuple[str, ...] = (FP32, BF16)
TRAIN_PRECISIONS: tuple[str, ...] = (AUTO, FP32, BF16)
