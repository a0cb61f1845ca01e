"""Phase II: the compressed layers (paper Sec. 2.2, Eq. 4), and swapping them into a model.

A LANCE layer computes the same forward as the layer it replaces. When its weight needs a
gradient, its autograd function keeps for backward only the projected core of the input
``S = x ×_1 U_1^T ... ×_N U_N^T`` plus the fixed factors (and the weight, which any backward
needs), all through ``ctx.save_for_backward``. Backward computes the weight gradient from
them (Eq. 4) by the cheapest contraction, never rebuilding the full input; the input
gradient is the exact one, since it needs the weight only.

``compress(model, calibration)`` swaps layers in place; ``decompress(model)`` undoes it. The
swapped layers share the original ``nn.Parameter`` objects, so an optimiser built before
or after the swap works unchanged, and ``state_dict()`` keys do not change.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.core.calibration import Calibration, LayerCalibration, check_patchable
from lance.errors import BatchSizeError, CalibrationMismatchError, InputShapeError, LanceError, UnsupportedLayerError
from lance.core.hosvd import expand, is_channels_last, mode_product, project
from lance.core.selection import check_model, layer_spec, resolve_layers

__all__ = [
    "ConvGeometry",
    "LanceConv2d",
    "LancePatchConv2d",
    "LanceLinear",
    "LanceLayer",
    "compress",
    "decompress",
    "compressed_layers",
    "lance_conv2d",
    "lance_patch_conv2d",
    "lance_linear",
    "exact_backward",
]


# ---------------------------------------------------------------------------------------
# Convolution geometry: padding of every kind reduced to what the kernels accept
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Stride, dilation, groups and padding of a 2-D convolution.

    ``pads`` is ``(left, right, top, bottom)``. When the padding is symmetric and of zeros,
    it is handed to the convolution kernel (``native``); otherwise the input is padded
    explicitly with ``F.pad`` (string padding with even kernels, ``padding_mode`` other than
    zeros) and the convolution runs with padding 0.
    """

    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pads: tuple[int, int, int, int]
    mode: str  # F.pad mode: constant, reflect, replicate, circular

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        kh, kw = conv.kernel_size
        dh, dw = conv.dilation
        if isinstance(conv.padding, str):
            if conv.padding == "valid":
                ph = pw = (0, 0)
            else:  # "same": PyTorch puts the odd extra pixel on the right / bottom
                th, tw = dh * (kh - 1), dw * (kw - 1)
                ph, pw = (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
        else:
            ph, pw = (conv.padding[0],) * 2, (conv.padding[1],) * 2
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        return cls(tuple(conv.stride), tuple(conv.dilation), conv.groups, (pw[0], pw[1], ph[0], ph[1]), mode)

    @property
    def native(self) -> bool:
        l, r, t, b = self.pads
        return self.mode == "constant" and l == r and t == b

    @property
    def kernel_padding(self) -> tuple[int, int]:
        """Padding to pass to the convolution kernel."""
        return (self.pads[2], self.pads[0]) if self.native else (0, 0)

    def pad(self, x: Tensor) -> Tensor:
        """The input as the kernel sees it (explicit padding where the kernel cannot do it)."""
        if self.native or not any(self.pads):
            return x
        return F.pad(x, self.pads, mode=self.mode)

    def pointwise(self, weight_shape: Sequence[int]) -> bool:
        """A 1x1 convolution without padding or groups: its weight gradient is a contraction
        (``_pointwise_weight_grad_from_core``)."""
        return self.groups == 1 and tuple(weight_shape[2:]) == (1, 1) and not any(self.pads)

    def padded_shape(self, shape: Sequence[int]) -> list[int]:
        if self.native:
            return list(shape)
        l, r, t, b = self.pads
        return [shape[0], shape[1], shape[2] + t + b, shape[3] + l + r]

    def conv(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return F.conv2d(self.pad(x), weight, bias, self.stride, self.kernel_padding, self.dilation, self.groups)

    def input_grad(self, input_shape: Sequence[int], weight: Tensor, grad_out: Tensor,
                   memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """Exact gradient with respect to the (unpadded) input, laid out in ``memory_format``
        (that of the input: the frozen layers before it then get their gradient in the layout of
        their own saved tensors, as in plain backprop, and need no conversions)."""
        stand_in = torch.empty(self.padded_shape(input_shape), dtype=grad_out.dtype, device=grad_out.device,
                               memory_format=memory_format)
        g = self._backward(stand_in, weight, grad_out, input_grad=True)
        if self.native or not any(self.pads):
            return g
        l, r, t, b = self.pads
        if self.mode == "constant":
            return g[:, :, t: g.shape[2] - b, l: g.shape[3] - r].contiguous(memory_format=memory_format)
        # reflect / replicate / circular: the adjoint of F.pad, by autograd on a shape-only input
        with torch.enable_grad():
            dummy = torch.zeros(input_shape, dtype=g.dtype, device=g.device, requires_grad=True)
            (gx,) = torch.autograd.grad(F.pad(dummy, self.pads, mode=self.mode), dummy, g)
        return gx.contiguous(memory_format=memory_format)

    def weight_grad(self, x: Tensor, weight_shape: Sequence[int], grad_out: Tensor) -> Tensor:
        """Weight gradient of the convolution for input ``x`` (unpadded) and ``grad_out``."""
        weight = torch.empty(list(weight_shape), dtype=grad_out.dtype, device=grad_out.device)
        return self._backward(self.pad(x), weight, grad_out, input_grad=False)

    def _backward(self, x: Tensor, weight: Tensor, grad_out: Tensor, input_grad: bool) -> Tensor:
        """One of the two gradients of the convolution, by the kernel autograd itself calls. Only
        the shape of the tensor whose gradient is not wanted matters; unlike the
        ``torch.nn.grad`` helpers, which pass a broadcast (stride-0) stand-in, it is handed a real
        contiguous one here: with the stand-in, oneDNN takes a much slower route on the CPU
        (for depthwise convolutions especially)."""
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, list(self.stride), list(self.kernel_padding), list(self.dilation), False,
            [0, 0], self.groups, [input_grad, not input_grad, False])[0 if input_grad else 1]


# ---------------------------------------------------------------------------------------
# The weight gradient from a core and factors (Eq. 4), without rebuilding the input
# ---------------------------------------------------------------------------------------
def conv_weight_grad_from_core(core: Tensor, factors: Sequence[Optional[Tensor]], grad_out: Tensor,
                               geometry: ConvGeometry, weight_shape: Sequence[int]) -> Tensor:
    """``dL/dW`` of a conv whose input is ``core ×_1 U_1 ... ×_4 U_4``.

    The batch factor is applied to the output gradient (``dy ×_1 U_1^T``), the spatial
    factors expand the core to full height and width, the convolution's weight gradient is
    taken with ``r_1`` samples and ``r_2`` channels, and the channel factor is applied last,
    to the small weight-shaped result. Grouped convolutions need real channels, so there the
    channel factor is expanded before the convolution.
    """
    u_b, u_c, u_h, u_w = factors
    if geometry.pointwise(weight_shape):
        return _pointwise_weight_grad_from_core(core, factors, grad_out, geometry.stride, weight_shape)
    dy = grad_out if u_b is None else mode_product(grad_out, u_b.t(), 0)
    z = expand(core, [None, None, u_h, u_w])
    if u_c is None:
        return geometry.weight_grad(z, weight_shape, dy)
    if geometry.groups == 1:
        out_ch, _, kh, kw = weight_shape
        g = geometry.weight_grad(z, (out_ch, u_c.shape[1], kh, kw), dy)
        return mode_product(g, u_c, 1)
    return geometry.weight_grad(mode_product(z, u_c, 1), weight_shape, dy)


def _pointwise_weight_grad_from_core(core: Tensor, factors: Sequence[Optional[Tensor]], grad_out: Tensor,
                                     stride: Sequence[int], weight_shape: Sequence[int]) -> Tensor:
    """A 1x1 convolution without padding is a contraction over batch and positions,
    ``dW[o, c] = sum_{b,h,w} dy[b, o, h, w] x[b, c, s h, s w]``: the output gradient is projected
    onto the batch and (strided) spatial factors, shrinking it from ``B x H x W`` to
    ``r_b x r_h x r_w`` per output channel, contracted with the core, and the channel factor is
    applied to the ``(out, r_c)`` result. Nothing input-sized is rebuilt (on MobileNetV2's last 1x1
    layer at batch 128, about 7x fewer multiply-adds than projecting the batch and running the conv's
    weight gradient)."""
    u_b, u_c, u_h, u_w = factors
    (sh, sw), (oh, ow) = stride, grad_out.shape[2:]
    # the input rows and columns a strided 1x1 conv reads: 0, s, 2s, ...
    u_h = None if u_h is None else u_h[::sh][:oh]
    u_w = None if u_w is None else u_w[::sw][:ow]
    if u_h is None and sh > 1:  # an uncompressed mode read with a stride: the core's rows that are read
        core = core[:, :, ::sh][:, :, :oh]
    if u_w is None and sw > 1:
        core = core[:, :, :, ::sw][:, :, :, :ow]
    dy = project(grad_out, [u_b, None, u_h, u_w])  # (r_b, out, r_h, r_w)
    g = torch.tensordot(dy, core, dims=([0, 2, 3], [0, 2, 3]))  # (out, r_c)
    if u_c is not None:
        g = g @ u_c.t()
    return g.reshape(weight_shape)


def patch_weight_grad_from_core(core: Tensor, factors: Sequence[Optional[Tensor]], grad_out: Tensor,
                                weight_shape: Sequence[int]) -> Tensor:
    """``dL/dW`` of a conv whose unfolded input (B, C*k*k, L) is ``core ×_1 U_b ×_2 U_p ×_3 U_l``:
    the output gradient, seen as (B, out, L), is projected onto the batch and position factors
    and contracted with the core; the patch factor is applied last, to an ``(out, r_p)`` matrix.
    Every row of the result lies in the span of ``U_p``."""
    u_b, u_p, u_l = factors
    dy = project(grad_out.reshape(grad_out.shape[0], grad_out.shape[1], -1), [u_b, None, u_l])
    g = torch.tensordot(dy, core, dims=([0, 2], [0, 2]))  # (out, r_p)
    if u_p is not None:
        g = g @ u_p.t()
    return g.reshape(weight_shape)


def linear_weight_grad_from_core(core: Tensor, factors: Sequence[Optional[Tensor]], grad_out: Tensor) -> Tensor:
    """``dL/dW`` of a linear layer whose input is ``core ×_1 U_1 ... ×_N U_N``.

    The leading (batch, token) modes are shared by input and output: the output gradient is
    projected onto their factors and contracted with the core; the feature factor is applied
    last, to an ``(out, r_N)`` matrix.
    """
    lead = list(factors[:-1])
    dy = project(grad_out, lead + [None])
    dims = list(range(core.dim() - 1))
    g = torch.tensordot(dy, core, dims=(dims, dims))  # (out, r_N)
    u_f = factors[-1]
    return g if u_f is None else g @ u_f.t()


# ---------------------------------------------------------------------------------------
# Autograd functions
# ---------------------------------------------------------------------------------------
class _LanceConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geometry, u_b, u_c, u_h, u_w):
        factors = (u_b, u_c, u_h, u_w)
        y = geometry.conv(x, weight, bias)
        ctx.geometry = geometry
        ctx.input_shape = tuple(x.shape)
        ctx.memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        ctx.weight_shape = tuple(weight.shape)
        ctx.has_bias = bias is not None
        core = project(x.detach(), factors) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(core, weight if ctx.needs_input_grad[0] else None, *factors)
        shape = ctx.weight_shape  # captured by value: a closure over ctx would make a reference cycle
        ctx.weight_grad = lambda core, factors, grad_out: conv_weight_grad_from_core(
            core, factors, grad_out, geometry, shape)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        core, weight, *factors = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.geometry.input_grad(ctx.input_shape, weight, grad_out, ctx.memory_format)
        if ctx.needs_input_grad[1]:
            grad_w = ctx.weight_grad(core, factors, grad_out)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return (grad_x, grad_w, grad_b, None) + (None,) * len(factors)


class _LancePatchConv2dFunction(_LanceConv2dFunction):
    """The conv's autograd function with the core taken of the unfolded patches; the backward is
    the conv's, with the patch-space weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry, u_b, u_p, u_l):
        factors = (u_b, u_p, u_l)
        y = geometry.conv(x, weight, bias)
        ctx.geometry = geometry
        ctx.input_shape = tuple(x.shape)
        ctx.memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        ctx.weight_shape = tuple(weight.shape)
        ctx.has_bias = bias is not None
        core = None
        if ctx.needs_input_grad[1]:
            # the batch projection commutes with unfolding (both act on other modes): apply it first,
            # so that only r_b samples are unfolded
            z = x.detach() if u_b is None else mode_product(x.detach(), u_b.t(), 0)
            patches = F.unfold(z, weight.shape[2:], geometry.dilation, geometry.kernel_padding, geometry.stride)
            core = project(patches, (None, u_p, u_l))
        ctx.save_for_backward(core, weight if ctx.needs_input_grad[0] else None, *factors)
        shape = ctx.weight_shape
        ctx.weight_grad = lambda core, factors, grad_out: patch_weight_grad_from_core(core, factors, grad_out, shape)
        return y


class _LanceLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, *factors):
        y = F.linear(x, weight, bias)
        ctx.has_bias = bias is not None
        ctx.n_factors = len(factors)
        core = project(x.detach(), factors) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(core, weight if ctx.needs_input_grad[0] else None, *factors)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        core, weight, *factors = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight
        if ctx.needs_input_grad[1]:
            grad_w = linear_weight_grad_from_core(core, factors, grad_out)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return (grad_x, grad_w, grad_b) + (None,) * ctx.n_factors


def lance_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], geometry: ConvGeometry,
                 factors: Sequence[Optional[Tensor]]) -> Tensor:
    """Functional form: a conv that keeps only the core of ``x`` (and the factors) for backward."""
    return _LanceConv2dFunction.apply(x, weight, bias, geometry, *factors)


def lance_patch_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], geometry: ConvGeometry,
                       factors: Sequence[Optional[Tensor]]) -> Tensor:
    """Functional form of the patch-space conv: keeps only the core of ``x``'s unfolded patches
    (batch, patch, position factors) for backward."""
    return _LancePatchConv2dFunction.apply(x, weight, bias, geometry, *factors)


def lance_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], factors: Sequence[Optional[Tensor]]) -> Tensor:
    """Functional form of the compressed ``nn.Linear``."""
    return _LanceLinearFunction.apply(x, weight, bias, *factors)


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------
class _ExactFlag(threading.local):
    active = False


_EXACT = _ExactFlag()


@contextlib.contextmanager
def exact_backward():
    """Inside this block every LANCE layer runs as the plain layer it replaced (full input kept,
    exact gradients): how the gradient-fidelity diagnostics get the reference gradient."""
    previous, _EXACT.active = _EXACT.active, True
    try:
        yield
    finally:
        _EXACT.active = previous


class LanceLayer:
    """Mixin of the compressed layers: fixed factors as (non-persistent) buffers.

    Subclasses of a LANCE layer may override :meth:`factors_for` to choose factors per
    batch (that is how the per-iteration HOSVD and ASI baselines reuse this backward).
    """

    layer_name: str
    input_shape: tuple[int, ...]
    n_modes: int

    def _init_factors(self, lc: Optional[LayerCalibration], n_modes: int) -> None:
        self.n_modes = n_modes
        self.layer_name = lc.name if lc is not None else ""
        self.input_shape = tuple(lc.input_shape) if lc is not None else ()
        for m in range(n_modes):
            f = None if lc is None else lc.modes[m].factor
            if f is not None:
                f = f.to(dtype=self.weight.dtype, device=self.weight.device)
            self.register_buffer(f"factor_{m}", f, persistent=False)

    @property
    def factors(self) -> list[Optional[Tensor]]:
        return [getattr(self, f"factor_{m}") for m in range(self.n_modes)]

    @property
    def ranks(self) -> list[Optional[int]]:
        return [None if f is None else f.shape[1] for f in self.factors]

    def factors_for(self, x: Tensor) -> list[Optional[Tensor]]:
        """The factors to project this input with: the calibrated ones, after shape checks."""
        factors = self.factors
        if x.dim() != self.n_modes:
            raise InputShapeError(f"layer {self.layer_name!r} was calibrated for {self.n_modes}-D inputs, "
                                  f"got shape {tuple(x.shape)}.")
        if factors[0] is not None and x.shape[0] != factors[0].shape[0]:
            raise BatchSizeError(
                f"layer {self.layer_name!r} was calibrated with batch size {factors[0].shape[0]} and projects the "
                f"batch mode with a fixed factor, but got a batch of {x.shape[0]}. Train with that batch size "
                "(DataLoader(..., drop_last=True)), recalibrate with the new batch size, or calibrate with "
                "compress_batch=False to leave the batch mode uncompressed.")
        if tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise InputShapeError(
                f"layer {self.layer_name!r} was calibrated for inputs of shape (B, "
                f"{', '.join(map(str, self.input_shape[1:]))}), got {tuple(x.shape)}. Feed the model the "
                "calibration's input resolution, or recalibrate.")
        return factors

    def _wants_compression(self, x: Tensor) -> bool:
        params_need_grad = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        return torch.is_grad_enabled() and params_need_grad and not _EXACT.active


class LanceConv2d(LanceLayer, nn.Conv2d):
    """Drop-in ``nn.Conv2d`` that keeps only the projected core of its input for backward."""

    n_input_modes = 4  # batch, channel, height, width

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, calibration: Optional[LayerCalibration]) -> "LanceConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                  device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        new._init_factors(calibration, cls.n_input_modes)
        new.geometry = ConvGeometry.of(conv)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if not self._wants_compression(x):
            return super().forward(x)
        return lance_conv2d(x, self.weight, self.bias, self.geometry, self.factors_for(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ranks={tuple(self.ranks)}"


class LancePatchConv2d(LanceConv2d):
    """Drop-in ``nn.Conv2d`` calibrated in the patch space (``calibrate(..., space="patch")``): it
    keeps the core of its input's unfolded patches ``(B, C*k*k, L)`` for backward, and its
    weight gradient's rows lie in the span of the patch factor, which is how a patch-space
    memory (GPM's) protects earlier tasks. ``groups == 1`` and numeric zero padding only."""

    n_input_modes = 3  # batch, patch, position

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, calibration: Optional[LayerCalibration]) -> "LancePatchConv2d":
        check_patchable(conv)
        return super().from_conv(conv, calibration)

    def factors_for(self, x: Tensor) -> list[Optional[Tensor]]:
        if x.dim() != 4:
            raise InputShapeError(f"layer {self.layer_name!r} takes 4-D (B, C, H, W) inputs, got shape "
                                  f"{tuple(x.shape)}.")
        (ph, pw), (sh, sw), (dh, dw), (kh, kw) = self.padding, self.stride, self.dilation, self.kernel_size
        positions = (((x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1)
                     * ((x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1))
        factors = self.factors
        if factors[0] is not None and x.shape[0] != factors[0].shape[0]:
            raise BatchSizeError(
                f"layer {self.layer_name!r} was calibrated with batch size {factors[0].shape[0]} and projects the "
                f"batch mode with a fixed factor, but got a batch of {x.shape[0]}. Train with that batch size "
                "(drop_last=True), or calibrate with compress_batch=False.")
        if (x.shape[1] * kh * kw, positions) != tuple(self.input_shape[1:]):
            raise InputShapeError(
                f"layer {self.layer_name!r} was calibrated for {self.input_shape[1]} numbers per patch at "
                f"{self.input_shape[2]} positions, but an input of shape {tuple(x.shape)} gives "
                f"{x.shape[1] * kh * kw} at {positions}. Feed the calibration's input resolution, or recalibrate.")
        return factors

    def forward(self, x: Tensor) -> Tensor:
        if not self._wants_compression(x):
            return nn.Conv2d.forward(self, x)
        return lance_patch_conv2d(x, self.weight, self.bias, self.geometry, self.factors_for(x))

    def extra_repr(self) -> str:
        return nn.Conv2d.extra_repr(self) + f", space=patch, ranks={tuple(self.ranks)}"


class LanceLinear(LanceLayer, nn.Linear):
    """Drop-in ``nn.Linear`` (2-D or 3-D input) that keeps only the core of its input."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, calibration: Optional[LayerCalibration]) -> "LanceLinear":
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.train(linear.training)
        new._init_factors(calibration, len(calibration.input_shape) if calibration else 2)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if not self._wants_compression(x):
            return super().forward(x)
        return lance_linear(x, self.weight, self.bias, self.factors_for(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ranks={tuple(self.ranks)}"


# ---------------------------------------------------------------------------------------
# Swapping layers in and out
# ---------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _swap_in(module: nn.Module, lc: LayerCalibration,
             factory: Optional[Callable[[nn.Module, LayerCalibration], nn.Module]]) -> nn.Module:
    if factory is not None:
        return factory(module, lc)
    if isinstance(module, nn.Conv2d):
        return (LancePatchConv2d if lc.patches else LanceConv2d).from_conv(module, lc)
    return LanceLinear.from_linear(module, lc)


def compress(model: nn.Module, calibration: Calibration, layers: Optional[Sequence[str]] = None, *,
             factory: Optional[Callable[[nn.Module, LayerCalibration], nn.Module]] = None) -> nn.Module:
    """Swap the calibrated layers of ``model`` (in place) for LANCE layers; returns ``model``.

    ``layers`` restricts the swap to some of the calibrated layers. Raises
    :class:`CalibrationMismatchError` if a layer differs from the one that was calibrated.
    """
    check_model(model)
    if not isinstance(calibration, Calibration):
        raise LanceError(f"compress needs a lance.Calibration (from lance.calibrate), got {type(calibration).__name__}.")
    if isinstance(layers, str):  # one name, not a list of its letters
        layers = [layers]
    names = list(calibration.names if layers is None else layers)
    present = dict(model.named_modules())
    for name in names:
        lc = calibration[name]
        if name in present and not isinstance(present[name], (nn.Conv2d, nn.Linear)):
            raise CalibrationMismatchError(
                f"the calibration was made for another model: layer {name!r} is a {type(present[name]).__name__} "
                f"here but a {lc.spec['type']} in the calibration. Calibrate this model with lance.calibrate.")
    modules = resolve_layers(model, names)
    for name, module in modules.items():
        if isinstance(module, LanceLayer):
            raise LanceError(f"layer {name!r} is already compressed; call lance.decompress(model) first.")
        _check_plain(name, module)
        lc = calibration[name]
        spec = layer_spec(module)
        if spec != lc.spec:
            raise CalibrationMismatchError(
                f"the calibration was made for another model: layer {name!r} is {spec} here but the "
                f"calibration recorded {lc.spec}. Calibrate this model with lance.calibrate.")
    for name, module in modules.items():
        new = _swap_in(module, calibration[name], factory)
        if not isinstance(new, nn.Module):
            raise LanceError(f"the factory returned a {type(new).__name__} for layer {name!r}; it must return the "
                             "nn.Module that replaces the layer.")
        _carry_hooks(module, new)
        _set_submodule(model, name, new)
    return model


# the module's hook tables: they travel with the layer when it is swapped in or out
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    for table in _HOOK_TABLES:
        if hasattr(old, table):
            setattr(new, table, getattr(old, table))
    new._is_full_backward_hook = getattr(old, "_is_full_backward_hook", None)


def _check_plain(name: str, module: nn.Module) -> None:
    """Only the exact layer types LANCE implements: a subclass (weight standardisation, fake
    quantisation, a parametrisation) or a weight recomputed by a hook (``weight_norm``) would lose
    its behaviour silently once swapped."""
    if type(module) not in (nn.Conv2d, nn.Linear):
        raise UnsupportedLayerError(
            f"layer {name!r} is a {type(module).__name__}, a subclass of {type(module).__mro__[1].__name__} with "
            "behaviour of its own that a LANCE layer would drop; LANCE compresses plain nn.Conv2d and nn.Linear: "
            "leave this layer out of `layers`, or remove the subclass's behaviour first.")
    if any(n.endswith(("_g", "_v", "_orig")) for n, _ in module.named_parameters(recurse=False)):
        raise UnsupportedLayerError(
            f"layer {name!r} recomputes its weight in a hook (weight_norm or spectral_norm); LANCE would train "
            "a stale copy: remove it first (torch.nn.utils.remove_weight_norm) or leave the layer out of `layers`.")


def compressed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The LANCE layers of a model, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LanceLayer)}


def decompress(model: nn.Module) -> nn.Module:
    """Undo :func:`compress`: put plain ``nn.Conv2d`` / ``nn.Linear`` back (same parameters)."""
    check_model(model)
    for name, m in compressed_layers(model).items():
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                              m.groups, m.bias is not None, m.padding_mode, device="meta")
        else:
            plain = nn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        plain.train(m.training)
        _carry_hooks(m, plain)
        _set_submodule(model, name, plain)
    return model
