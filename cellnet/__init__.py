"""cellnet: leak-free training, evaluation and export of blood-cell image classifiers (no Ray in here)."""

from __future__ import annotations

__version__ = "0.1.0"
