"""The one in-memory dataset every source produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class CellData:
    """Images (uint8 N×S×S×3), labels (int64 N), class names, a stable id per image, optional duplicate groups."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    ids: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: np.ndarray) -> CellData:
        """Rows `index` (a boolean mask or integer indices) as a new CellData."""
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            ids=self.ids[index],
            groups=None if self.groups is None else self.groups[index],
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))
