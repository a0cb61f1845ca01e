"""Beyond the paper: the memory of the whole training step, not only of the trained layers' inputs.

LANCE shrinks what the trained convolutions keep for their weight gradients. A step also keeps
tensors for what lies between the trained layers: an eval-mode BatchNorm keeps its input, a
ReLU or ReLU6 its output. Plain LANCE and BP keep these the same way, and on MobileNetV2 they
are most of the step's memory. Neither needs those values:

* a frozen BatchNorm in eval mode is a fixed affine map: its input gradient is ``grad * w /
  sqrt(var + eps)``, which needs no activation (:class:`LeanBatchNorm2d`);
* a ReLU's or ReLU6's input gradient is the output gradient where the unit was in its linear
  range, else 0: one bit per element, packed eight to a byte (:class:`LeanReLU`).

(A global average pool to 1 x 1 already keeps nothing: PyTorch computes it as a mean.)

Each lean module computes its forward with the kernel of the module it replaces. Its backward
uses the kernel autograd would call, given an uninitialised stand-in where that kernel reads
only a shape (BatchNorm), or masks the gradient exactly as that kernel does (ReLU). So the
gradients are bit for bit those of the plain modules.
:func:`lean` swaps them into a model in place, and :func:`unlean` puts the plain modules back.
A BatchNorm that trains, or that runs in training mode, is left as it is, since its input
gradient needs the batch statistics.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.core.selection import check_model
from lance.errors import LanceError

__all__ = ["LeanBatchNorm2d", "LeanReLU", "lean", "unlean", "lean_modules", "pack_bits", "unpack_bits"]


# ---------------------------------------------------------------------------------------
# One bit per element
# ---------------------------------------------------------------------------------------
def _weights(device) -> Tensor:
    return torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean tensor as a flat uint8 tensor, eight elements to a byte (in row-major order of
    ``mask``; the last byte padded with zeros)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) * _weights(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape) -> Tensor:
    """The boolean tensor of ``shape`` that :func:`pack_bits` packed."""
    n = 1
    for s in shape:
        n *= s
    bits = (packed.unsqueeze(1) & _weights(packed.device)) != 0
    return bits.reshape(-1)[:n].view(tuple(shape))


# ---------------------------------------------------------------------------------------
# Autograd functions
# ---------------------------------------------------------------------------------------
class _FrozenBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        ctx.eps = eps
        ctx.shape = tuple(x.shape)
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        ctx.save_for_backward(weight, mean, var)  # parameters and buffers: no activation
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        weight, mean, var = ctx.saved_tensors
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        # in eval mode the kernel reads the input only for its shape and layout
        stand_in = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)
        gx, _, _ = torch.ops.aten.native_batch_norm_backward(grad, stand_in, weight, mean, var, None, None, False,
                                                             ctx.eps, [True, False, False])
        return gx, None, None, None, None, None


class _MaskedActivationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high):
        y = F.hardtanh(x, low, high) if high is not None else F.relu(x)
        # the plain modules' backward passes the gradient where low < y < high (ReLU: y > 0)
        inside = (y > low) if high is None else (y > low) & (y < high)
        ctx.shape = tuple(y.shape)
        ctx.save_for_backward(pack_bits(inside.contiguous()))
        return y

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        inside = unpack_bits(packed, ctx.shape)
        return grad.masked_fill(~inside, 0), None, None


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------
class LeanBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` that, frozen and in eval mode, keeps nothing for backward (a fixed affine
    map); otherwise it is the plain module."""

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "LeanBatchNorm2d":
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
        for name in ("weight", "bias"):
            setattr(new, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        new.train(bn.training)
        return new

    def _frozen(self) -> bool:
        params = [p for p in (self.weight, self.bias) if p is not None]
        return (not self.training and self.running_mean is not None and not any(p.requires_grad for p in params)
                and torch.is_grad_enabled())

    def forward(self, x: Tensor) -> Tensor:
        if not self._frozen() or not x.requires_grad:
            return super().forward(x)
        weight = self.weight if self.weight is not None else torch.ones_like(self.running_var)
        bias = self.bias if self.bias is not None else torch.zeros_like(self.running_mean)
        return _FrozenBatchNormFunction.apply(x, weight, bias, self.running_mean, self.running_var, self.eps)


class LeanReLU(nn.Module):
    """ReLU (``high=None``) or ReLU6 (``high=6``) that keeps one bit per element for backward."""

    def __init__(self, high: Optional[float] = None):
        super().__init__()
        self.high = high

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return F.relu(x) if self.high is None else F.hardtanh(x, 0.0, self.high)
        return _MaskedActivationFunction.apply(x, 0.0, self.high)

    def extra_repr(self) -> str:
        return "relu" if self.high is None else f"relu6 (0, {self.high:g})"


# ---------------------------------------------------------------------------------------
# Swapping
# ---------------------------------------------------------------------------------------
def _lean_version(module: nn.Module) -> Optional[nn.Module]:
    kind = type(module)
    if kind is nn.BatchNorm2d:
        return LeanBatchNorm2d.from_batchnorm(module)
    if kind is nn.ReLU:
        return LeanReLU()
    if kind is nn.ReLU6:
        return LeanReLU(6.0)
    return None


def lean(model: nn.Module) -> nn.Module:
    """Swap (in place) every ``BatchNorm2d``, ``ReLU`` and ``ReLU6`` of ``model`` for its lean
    version; returns ``model``. Parameters and buffers are shared, so ``state_dict()`` and an
    optimiser are unaffected. Only these exact types are swapped (a subclass keeps its own
    behaviour); an activation called as a function in ``forward`` is not a module and is left."""
    check_model(model)
    swaps = []
    for name, module in model.named_modules():
        new = _lean_version(module)
        if new is not None:
            swaps.append((name, new))
    for name, new in swaps:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def lean_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The lean modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LeanBatchNorm2d, LeanReLU))}


def unlean(model: nn.Module) -> nn.Module:
    """Undo :func:`lean` (in place); returns ``model``."""
    check_model(model)
    for name, m in lean_modules(model).items():
        if isinstance(m, LeanBatchNorm2d):
            plain = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta")
            for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(plain, attr, getattr(m, attr))
            plain.train(m.training)
        else:
            if m.high not in (None, 6.0):
                raise LanceError(f"module {name!r} clips at {m.high:g}, which no plain ReLU module does.")
            plain = nn.ReLU() if m.high is None else nn.ReLU6()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model
