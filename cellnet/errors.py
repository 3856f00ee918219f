"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class CellnetError(Exception):
    """Bad input or state a user can fix; the message names the file, key or field and what was expected."""


class DataError(CellnetError):
    """A data source is missing, unreadable or malformed."""


class ConfigError(CellnetError):
    """A config/space YAML or a command-line value is invalid."""


class CheckpointError(CellnetError):
    """A checkpoint directory is missing, partial or tampered with."""


class DivergedError(CellnetError):
    """Training produced a NaN/inf loss; the run cannot continue."""


class WeightsMismatchError(ConfigError):
    """Models that must start from the same weights did not: a trial's folds, or the winner and its refit (e.g.
    `pretrained: auto` on a node without the weights package)."""


class PrecisionMismatchError(ConfigError):
    """Models that must train in the same precision did not: a trial's folds, or the winner and its refit (e.g.
    `precision: auto` decided on machines that answer differently)."""


class CalibrationError(CellnetError, ValueError):
    """A calibration cannot be fitted or applied (too few images, a class without any, mismatched shapes).

    Also a ValueError, which is what numerical code raised before; the CLIs print it as one line like every
    CellnetError."""
