"""The errors ``lance`` raises. Each message says what was wrong and what to do."""

from __future__ import annotations

__all__ = [
    "LanceError",
    "UnknownLayerError",
    "UnsupportedLayerError",
    "BatchSizeError",
    "InputShapeError",
    "CalibrationMismatchError",
    "NonFiniteActivationError",
    "DivergedError",
]


class LanceError(ValueError):
    """Base class: bad input to a ``lance`` function."""


class UnknownLayerError(LanceError):
    """A layer name that the model does not have."""


class UnsupportedLayerError(LanceError, TypeError):
    """A module type that LANCE cannot compress."""


class BatchSizeError(LanceError):
    """A batch whose size differs from the calibration's fixed batch factor."""


class InputShapeError(LanceError):
    """A layer input whose non-batch shape differs from the calibrated one."""


class CalibrationMismatchError(LanceError):
    """A calibration applied to a model it was not made for."""


class NonFiniteActivationError(LanceError):
    """NaN or infinity in a layer input during calibration."""


class DivergedError(LanceError):
    """A training loss or gradient that became NaN or infinite: the run stops and writes no result."""
