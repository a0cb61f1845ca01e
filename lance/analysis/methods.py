"""The four methods the paper compares, in one table: what each swaps into the trained layers.

* ``bp``: nothing (full backprop keeps whole activations);
* ``lance``: LANCE layers with the one-shot calibration's fixed bases (:mod:`lance.core.layers`);
* ``hosvd``: a fresh truncated HOSVD of every activation at every step (:mod:`lance.analysis.baselines`);
* ``asi``: fixed ranks, one warm-started subspace iteration per step.

Fine-tuning, the latency experiment and the step benchmark all go through :func:`apply_method`
and :func:`ranks_of`, so a method means the same in all three.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from lance.analysis.baselines import asi_factory, hosvd_factory
from lance.core.calibration import Calibration
from lance.core.layers import compress
from lance.errors import LanceError

__all__ = ["METHODS", "CALIBRATED", "apply_method", "ranks_of", "check_method"]

METHODS = ("bp", "hosvd", "asi", "lance")
CALIBRATED = ("lance", "asi")  # the methods whose ranks come from the calibration


def check_method(method: str) -> str:
    if method not in METHODS:
        raise LanceError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    return method


def apply_method(model: nn.Module, method: str, calibration: Optional[Calibration], *, hosvd_energy: float = 0.8,
                 compress_batch: bool = True, hosvd_solver: str = "gram") -> nn.Module:
    """Swap ``method``'s layers into ``model`` in place (nothing for BP); returns ``model``."""
    if check_method(method) == "bp":
        return model
    if calibration is None:
        raise LanceError(f"method {method!r} needs a calibration (lance.calibrate) of the trained layers.")
    factory = {"lance": None, "asi": asi_factory(),
               "hosvd": hosvd_factory(hosvd_energy, compress_batch, solver=hosvd_solver)}[method]
    return compress(model, calibration, factory=factory)


def ranks_of(model: nn.Module, layers: list[str], method: str, calibration: Optional[Calibration]) -> dict:
    """The ranks ``method`` keeps per layer: the calibration's for LANCE and ASI, the last step's
    for HOSVD (they change from step to step), none for BP."""
    if method in CALIBRATED:
        return {n: list(calibration[n].ranks) for n in layers}
    if method == "hosvd":
        return {n: list(model.get_submodule(n).last_ranks) for n in layers}
    return {}
