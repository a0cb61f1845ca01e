"""Gradient fidelity: how far a compressed gradient points from the exact one (paper Fig. 2, 4)."""

from __future__ import annotations

import math
from typing import Iterable, Union

import torch
from torch import Tensor

__all__ = ["gradient_angle", "relative_error", "weight_gradients", "compare_gradients", "angle_sweep",
           "position_energy", "gradient_share"]

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

    from lance.core.selection import resolve_layers

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


def angle_sweep(model, layers, batches, calibration, energies, loss_fn=None):
    """The angle between LANCE's and the exact weight gradient, per layer and batch, for each
    energy threshold, with the memory ratio (BP bytes / LANCE bytes) beside it (paper Fig. 4).

    ``model`` is the plain (uncompressed) model, ``batches`` a list of ``(inputs, targets)``;
    ``calibration`` is re-truncated at every energy (:meth:`Calibration.truncate`), so one
    calibration serves the whole sweep."""
    import copy

    import pandas as pd

    from lance.analysis.accounting import activation_memory
    from lance.core.layers import compress

    exact = [weight_gradients(model, layers, x, y, loss_fn) for x, y in batches]
    in_size, batch_size = tuple(batches[0][0].shape[1:]), batches[0][0].shape[0]
    rows = []
    for energy in energies:
        cal = calibration.truncate(energy)
        compressed = compress(copy.deepcopy(model), cal, layers)
        memory = activation_memory(model, layers, in_size, batch_size, calibration=cal).set_index("layer")
        for b, ((x, y), ref) in enumerate(zip(batches, exact)):
            approx = weight_gradients(compressed, layers, x, y, loss_fn)
            for name in layers:
                rows.append({"energy": energy, "layer": name, "batch": b,
                             "angle_deg": gradient_angle(approx[name], ref[name]),
                             "memory_ratio": float(memory.loc[name, "memory_ratio"])})
    return pd.DataFrame(rows)


def position_energy(x: Tensor) -> Tensor:
    """Share of a conv input's energy (its sum of squares over batch and channels) that sits at
    each spatial position: an ``(H, W)`` float64 tensor that sums to 1.

    The energy threshold of Phase I counts uncentred energy, so a few positions that carry most
    of it (a border artefact of a pretrained network, say) decide the spatial ranks."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected a conv input of shape (B, C, H, W), got {getattr(x, 'shape', type(x))}.")
    e = x.detach().to(torch.float64).pow(2).sum((0, 1))
    total = e.sum()
    if total == 0:
        raise ValueError("the input is all zeros: its energy has no distribution.")
    return e / total


def gradient_share(grad: Tensor, basis: Tensor, ks: Iterable[int]) -> list[float]:
    """Share of a weight gradient's squared norm that lies in the span of the first ``k``
    columns of ``basis`` (orthonormal input-channel directions, e.g. a calibration's channel
    basis), for each ``k`` in ``ks``.

    ``grad`` has the input channels in its second dimension (``(out, in, kh, kw)`` for a conv,
    ``(out, in)`` for a linear layer). Set beside the energy share the same ``k`` keeps of the
    activation, it says whether the directions that carry the energy also carry the gradient."""
    g = grad.detach().to(torch.float64)
    if g.dim() < 2 or basis.dim() != 2 or g.shape[1] != basis.shape[0]:
        raise ValueError(f"the gradient's input dimension ({tuple(g.shape)}[1]) must match the basis' rows "
                         f"({tuple(basis.shape)}[0]); a depthwise conv has no input-channel directions to share.")
    unfolded = g.transpose(0, 1).reshape(g.shape[1], -1)  # (in, out * kh * kw)
    total = unfolded.pow(2).sum()
    if total == 0:
        raise ValueError("the gradient is zero: its share in any subspace is undefined.")
    u = basis.to(torch.float64)
    out = []
    for k in ks:
        if not 0 <= int(k) <= u.shape[1]:
            raise ValueError(f"k={k} is outside 0..{u.shape[1]} (the basis has {u.shape[1]} columns).")
        out.append(float((u[:, : int(k)].T @ unfolded).pow(2).sum() / total))
    return out
