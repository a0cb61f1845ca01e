"""LANCE: low-rank activation compression for on-device fine-tuning and continual learning.

The three steps of the paper, as functions of this package::

    layers = lance.trainable_layers(model, 2)            # the last 2 conv layers
    calib = lance.calibrate(model, loader, layers)       # Phase I: one-shot HOSVD bases
    lance.compress(model, calib)                         # Phase II: layers keep only cores
    ...ordinary training loop...
    lance.decompress(model)                              # plain layers again
"""

from lance.analysis.accounting import activation_memory, measured_bytes, saved_tensors, step_breakdown
from lance.core.calibration import Calibration, LayerCalibration, ModeBasis, calibrate, layer_inputs
from lance.errors import (
    BatchSizeError,
    CalibrationMismatchError,
    InputShapeError,
    LanceError,
    DivergedError,
    NonFiniteActivationError,
    UnknownLayerError,
    UnsupportedLayerError,
)
from lance.analysis.fidelity import compare_gradients, gradient_angle, relative_error, weight_gradients
from lance.core.hosvd import energy_rank, expand, hosvd, mode_product, project, unfold
from lance.core.layers import LanceConv2d, LancePatchConv2d, LanceLinear, compress, compressed_layers, decompress
from lance.core.lean import lean, unlean
from lance.core.selection import set_trainable, trainable_layers

from lance import data, models  # noqa: E402  (subpackages users reach as lance.data, lance.models)

__version__ = "0.1.0"

__all__ = [
    "activation_memory", "saved_tensors", "measured_bytes", "step_breakdown",
    "Calibration", "LayerCalibration", "ModeBasis", "calibrate", "layer_inputs",
    "LanceError", "UnknownLayerError", "UnsupportedLayerError", "BatchSizeError", "InputShapeError",
    "CalibrationMismatchError", "NonFiniteActivationError", "DivergedError",
    "gradient_angle", "relative_error", "weight_gradients", "compare_gradients",
    "energy_rank", "expand", "hosvd", "mode_product", "project", "unfold",
    "LanceConv2d", "LancePatchConv2d", "LanceLinear", "compress", "compressed_layers", "decompress",
    "lean", "unlean",
    "trainable_layers", "set_trainable",
]
