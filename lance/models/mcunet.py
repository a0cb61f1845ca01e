"""MCUNet and ProxylessNAS networks built from their model-zoo JSON descriptions.

The MIT HAN Lab model zoo describes each network in the "ProxylessNASNets" JSON format::

    {"name": "ProxylessNASNets", "bn": {"momentum": .., "eps": ..},
     "first_conv": ConvLayer, "blocks": [MobileInvertedResidualBlock, ...],
     "feature_mix_layer": ConvLayer or null, "classifier": LinearLayer, "resolution": 160}

``build_from_config(config)`` turns such a description into a :class:`MCUNet` whose module
names match the zoo's checkpoints (``first_conv.conv.weight``,
``blocks.3.mobile_inverted_conv.depth_conv.bn.running_mean``, ``classifier.linear.bias``...),
so ``model.load_state_dict(state_dict, strict=True)`` works. Every convolution is a plain
``nn.Conv2d`` registered in execution order (inverted bottleneck, depthwise, pointwise), so
``lance.trainable_layers(model, n)`` picks the last ``n`` convolutions the network runs.

Semantics of the layers (the format's, written here from its description):

* ``ConvLayer``: [dropout] conv (padding ``kernel_size // 2 * dilation``) -> BN -> activation
  (``ops_order`` "weight_bn_act").
* ``MBInvertedConvLayer``: 1x1 expansion conv + BN + act when ``expand_ratio != 1`` (width
  ``mid_channels``, or ``round(in_channels * expand_ratio)`` when not given); depthwise kxk
  conv (stride, padding ``k // 2``) + BN + act; 1x1 projection conv + BN, no activation.
  ``act_func`` defaults to relu6 (older ProxylessNAS descriptions leave it out).
* ``MobileInvertedResidualBlock``: ``conv(x) + x`` with an ``IdentityLayer`` shortcut,
  ``conv(x)`` without; a ``ZeroLayer`` (or null) conv with an identity shortcut is the
  identity.
* ``LinearLayer``: [dropout] linear, after global average pooling.

Input normalisation. The zoo's checkpoints were trained on images mapped to [-1, 1]
(mean 0.5, std 0.5 per channel), not ImageNet's mean/std: the first BatchNorm's running
statistics say so (its running mean and variance match the first conv's output on
(x - 0.5) / 0.5, and are about 5 times too small in variance for ImageNet
normalisation), and on the 20 sample photographs mcunet-in2 gets 16/20 right with
(x - 0.5) / 0.5 against 4/20 with ImageNet normalisation. :class:`MCUNet` therefore
records the normalisation its weights expect (``weights_mean``, ``weights_std``) and,
after ``model.set_input_normalization(mean, std)``, accepts inputs normalised with
``mean``/``std`` instead: its forward maps them exactly (per channel, one multiply-add, no
parameters, nothing saved for backward) to what the weights expect. ``lance.models.zoo.build``
does this with ImageNet's mean/std, so every model it builds takes ``lance.data.normalize``'s
output; ``build_from_config`` leaves the network raw (inputs as ``(x - 0.5) / 0.5``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from lance.errors import LanceError

__all__ = ["MCUNet", "ConvLayer", "MBInvertedConv", "MobileInvertedResidualBlock", "LinearLayer",
           "build_from_config", "load_config", "load_checkpoint", "RESOLUTIONS", "ZOO_MEAN", "ZOO_STD"]

#: Per-channel normalisation the zoo's checkpoints were trained with: x in [0, 1] -> [-1, 1].
ZOO_MEAN = (0.5, 0.5, 0.5)
ZOO_STD = (0.5, 0.5, 0.5)

#: Native input size of the zoo's networks, for descriptions without a "resolution" entry.
RESOLUTIONS = {
    "mcunet-256kb-1mb": 160, "mcunet-in2": 160,
    "mcunet-320kb-1mb": 176, "mcunet-in3": 176,
    "proxyless-w0.25-r112": 112, "proxyless-w0.25": 112,
    "proxyless-w0.3-r176": 176, "proxyless-w0.3": 176,
}

_ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "h_swish": nn.Hardswish}


def _activation(name: Optional[str]) -> Optional[nn.Module]:
    if name is None or name == "none":
        return None
    if name not in _ACTIVATIONS:
        raise LanceError(f"unsupported act_func {name!r} in the network description; "
                         f"supported: {sorted(_ACTIVATIONS)} or null.")
    return _ACTIVATIONS[name](inplace=False)


def _batch_norm(channels: int, bn: dict) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=bn.get("eps", 1e-5), momentum=bn.get("momentum", 0.1))


def _check_ops_order(cfg: dict, what: str) -> None:
    order = cfg.get("ops_order", "weight_bn_act")
    if order != "weight_bn_act":
        raise LanceError(f"{what}: ops_order {order!r} is not supported (only 'weight_bn_act').")


class ConvLayer(nn.Module):
    """[Dropout2d] -> ``conv`` (nn.Conv2d) -> [``bn``] -> [``act``]."""

    def __init__(self, cfg: dict, bn: dict):
        super().__init__()
        _check_ops_order(cfg, "ConvLayer")
        if cfg.get("has_shuffle"):
            raise LanceError("ConvLayer with has_shuffle=true is not supported.")
        k, dilation = cfg["kernel_size"], cfg.get("dilation", 1)
        rate = cfg.get("dropout_rate", 0) or 0
        self.dropout = nn.Dropout2d(rate) if rate > 0 else None
        self.conv = nn.Conv2d(cfg["in_channels"], cfg["out_channels"], k, stride=cfg.get("stride", 1),
                              padding=k // 2 * dilation, dilation=dilation, groups=cfg.get("groups", 1),
                              bias=cfg.get("bias", False))
        self.bn = _batch_norm(cfg["out_channels"], bn) if cfg.get("use_bn", True) else None
        self.act = _activation(cfg.get("act_func", "relu6"))

    def forward(self, x: Tensor) -> Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None else self.act(x)


def _conv_bn_act(cin: int, cout: int, k: int, stride: int, groups: int, bn: dict,
                 act: Optional[str]) -> ConvLayer:
    return ConvLayer({"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride,
                      "groups": groups, "bias": False, "use_bn": True, "act_func": act}, bn)


class MBInvertedConv(nn.Module):
    """``inverted_bottleneck`` (1x1, absent when expand_ratio is 1) -> ``depth_conv`` (kxk
    depthwise) -> ``point_linear`` (1x1, BN, no activation)."""

    def __init__(self, cfg: dict, bn: dict):
        super().__init__()
        if cfg.get("use_se"):
            raise LanceError("MBInvertedConvLayer with use_se=true (squeeze-excitation) is not supported "
                             "by lance.models.mcunet; none of the four zoo networks it was written for use it.")
        cin, cout, k = cfg["in_channels"], cfg["out_channels"], cfg["kernel_size"]
        expand = cfg.get("expand_ratio", 6)
        mid = cfg.get("mid_channels")
        if mid is None:
            mid = round(cin * expand)
        act = cfg.get("act_func", "relu6")
        if expand == 1:
            if mid != cin:
                raise LanceError(f"MBInvertedConvLayer with expand_ratio 1 but mid_channels {mid} != "
                                 f"in_channels {cin}.")
            self.inverted_bottleneck = None
        else:
            self.inverted_bottleneck = _conv_bn_act(cin, mid, 1, 1, 1, bn, act)
        self.depth_conv = _conv_bn_act(mid, mid, k, cfg.get("stride", 1), mid, bn, act)
        self.point_linear = _conv_bn_act(mid, cout, 1, 1, 1, bn, None)

    def forward(self, x: Tensor) -> Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class MobileInvertedResidualBlock(nn.Module):
    """``mobile_inverted_conv(x) (+ x)``; with no conv (ZeroLayer) the block is its shortcut."""

    def __init__(self, cfg: dict, bn: dict, index: int = 0):
        super().__init__()
        conv, shortcut = cfg.get("mobile_inverted_conv"), cfg.get("shortcut")
        if shortcut is not None and shortcut.get("name", "IdentityLayer") != "IdentityLayer":
            raise LanceError(f"block {index}: shortcut {shortcut.get('name')!r} is not supported "
                             "(only IdentityLayer or null).")
        self.residual = shortcut is not None
        if conv is None or conv.get("name") == "ZeroLayer":
            if not self.residual:
                raise LanceError(f"block {index}: a ZeroLayer without a shortcut outputs zeros; "
                                 "not supported.")
            if conv is not None and conv.get("stride", 1) != 1:
                raise LanceError(f"block {index}: ZeroLayer with stride {conv['stride']} and an identity "
                                 "shortcut cannot be added; not supported.")
            self.mobile_inverted_conv = None
        elif conv.get("name", "MBInvertedConvLayer") == "MBInvertedConvLayer":
            self.mobile_inverted_conv = MBInvertedConv(conv, bn)
        else:
            raise LanceError(f"block {index}: layer {conv.get('name')!r} is not supported "
                             "(MBInvertedConvLayer or ZeroLayer).")

    def forward(self, x: Tensor) -> Tensor:
        if self.mobile_inverted_conv is None:
            return x
        y = self.mobile_inverted_conv(x)
        return y + x if self.residual else y


class LinearLayer(nn.Module):
    """[Dropout] -> ``linear`` (nn.Linear)."""

    def __init__(self, cfg: dict):
        super().__init__()
        _check_ops_order(cfg, "LinearLayer")
        if cfg.get("use_bn") or cfg.get("act_func"):
            raise LanceError("LinearLayer with use_bn or act_func is not supported.")
        rate = cfg.get("dropout_rate", 0) or 0
        self.dropout = nn.Dropout(rate) if rate > 0 else None
        self.linear = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))

    def forward(self, x: Tensor) -> Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)


class MCUNet(nn.Module):
    """A ProxylessNASNets-format network: ``first_conv``, ``blocks``, optional
    ``feature_mix_layer``, global average pooling, ``classifier``.

    ``resolution`` is the native input size (pixels); ``config`` the description it was built
    from; ``weights_mean``/``weights_std`` the input normalisation the weights expect, and
    ``input_mean``/``input_std`` the one the model accepts (the same unless
    :meth:`set_input_normalization` was called).
    """

    def __init__(self, config: dict, name: Optional[str] = None,
                 weights_mean=ZOO_MEAN, weights_std=ZOO_STD):
        super().__init__()
        if config.get("name", "ProxylessNASNets") != "ProxylessNASNets":
            raise LanceError(f"the network description is a {config.get('name')!r}, not ProxylessNASNets.")
        bn = dict(config.get("bn") or {})
        if bn.get("ws_eps") is not None:
            raise LanceError("weight standardisation (bn.ws_eps) is not supported.")
        self.config = config
        self.name = name
        self.first_conv = ConvLayer(config["first_conv"], bn)
        self.blocks = nn.ModuleList(MobileInvertedResidualBlock(b, bn, i) for i, b in enumerate(config["blocks"]))
        mix = config.get("feature_mix_layer")
        self.feature_mix_layer = ConvLayer(mix, bn) if mix is not None else None
        self.classifier = LinearLayer(config["classifier"])
        res = config.get("resolution")
        if res is None and name is not None:
            res = RESOLUTIONS.get(name)
        self.resolution: Optional[int] = int(res) if res is not None else None
        self.weights_mean, self.weights_std = tuple(weights_mean), tuple(weights_std)
        self.input_mean, self.input_std = self.weights_mean, self.weights_std
        # non-persistent: the checkpoints' state_dicts load with strict=True
        self.register_buffer("input_scale", None, persistent=False)
        self.register_buffer("input_shift", None, persistent=False)

    def set_input_normalization(self, mean, std) -> "MCUNet":
        """Accept inputs normalised as ``(x - mean) / std`` (x in [0, 1]) from now on; the
        forward converts them to the normalisation the weights were trained with."""
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise LanceError(f"mean and std need 3 entries each, std positive; got {mean}, {std}.")
        self.input_mean, self.input_std = mean, std
        if mean == self.weights_mean and std == self.weights_std:
            self.input_scale = self.input_shift = None
            return self
        wm, ws = torch.tensor(self.weights_mean), torch.tensor(self.weights_std)
        m, s = torch.tensor(mean), torch.tensor(std)
        # (x - wm) / ws with x = z * s + m
        ref = self.first_conv.conv.weight
        self.input_scale = (s / ws).view(1, 3, 1, 1).to(ref.device, ref.dtype)
        self.input_shift = ((m - wm) / ws).view(1, 3, 1, 1).to(ref.device, ref.dtype)
        return self

    @property
    def num_classes(self) -> int:
        return self.classifier.linear.out_features

    def reset_classifier(self, num_classes: int) -> nn.Linear:
        """Replace the head by a new ``nn.Linear(features, num_classes)`` (dropout kept)."""
        old = self.classifier.linear
        self.classifier.linear = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        return self.classifier.linear

    def features(self, x: Tensor) -> Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        if self.feature_mix_layer is not None:
            x = self.feature_mix_layer(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_from_config(config: dict, name: Optional[str] = None) -> MCUNet:
    """The network a ProxylessNASNets JSON description (already parsed) describes, with fresh
    weights. ``name`` (e.g. ``"mcunet-in2"``) only serves to find the native resolution when
    the description has none."""
    return MCUNet(config, name=name)


def load_config(path: str | os.PathLike) -> dict:
    """Parse a model-zoo JSON description."""
    with open(path) as f:
        return json.load(f)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a zoo checkpoint (a state_dict, or ``{"state_dict": state_dict}`` as the zoo's
    files are) into ``model``."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and set(sd) == {"state_dict"}:
        sd = sd["state_dict"]
    model.load_state_dict(sd, strict=strict)
    return model
