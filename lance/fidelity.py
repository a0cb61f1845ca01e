"""Gradient fidelity: how far a compressed gradient points from the exact one (paper Fig. 2, 4)."""

from __future__ import annotations

import math
from typing import Iterable, Union

import torch
from torch import Tensor

__all__ = ["gradient_angle", "relative_error", "weight_gradients", "compare_gradients"]

TensorOrTensors = Union[Tensor, Iterable[Tensor]]


def _flat(g: TensorOrTensors) -> Tensor:
    if isinstance(g, Tensor):
        return g.detach().reshape(-1).to(torch.float64)
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in g])


def gradient_angle(approx: TensorOrTensors, exact: TensorOrTensors) -> float:
    """Angle in degrees between two gradients (tensors, or lists of tensors taken together):
    ``arccos(<g, g_hat> / (|g| |g_hat|))``. 0 means the same direction, below 90 a descent
    direction for the exact gradient. Raises if either gradient is zero."""
    a, b = _flat(approx), _flat(exact)
    if a.shape != b.shape:
        raise ValueError(f"gradients have different sizes: {a.numel()} and {b.numel()} elements.")
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        raise ValueError("the angle to a zero gradient is undefined.")
    cos = float((a @ b) / (na * nb))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def relative_error(approx: TensorOrTensors, exact: TensorOrTensors) -> float:
    """``|approx - exact| / |exact|`` in the Frobenius norm."""
    a, b = _flat(approx), _flat(exact)
    return float((a - b).norm() / b.norm())


def weight_gradients(model, layers, inputs, targets, loss_fn=None) -> dict:
    """The loss gradient with respect to the weight of each named layer, on one batch.

    ``loss_fn(outputs, targets)`` defaults to cross-entropy. Nothing is accumulated into
    ``.grad``; the model's mode is left as it is."""
    import torch.nn.functional as F

    from .selection import resolve_layers

    modules = resolve_layers(model, layers)
    loss = (loss_fn or F.cross_entropy)(model(inputs), targets)
    grads = torch.autograd.grad(loss, [m.weight for m in modules.values()])
    return dict(zip(modules, grads))


def compare_gradients(approx: dict, exact: dict):
    """A pandas table, one row per layer: the angle (degrees) and relative error of an
    approximate weight gradient against the exact one."""
    import pandas as pd

    return pd.DataFrame([{"layer": k, "angle_deg": gradient_angle(approx[k], exact[k]),
                          "relative_error": relative_error(approx[k], exact[k])} for k in exact])
