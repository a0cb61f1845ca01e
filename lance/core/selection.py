"""Which layers are trained: the paper's "last n layers", and checks on layer names."""

from __future__ import annotations

import difflib
from typing import Iterable

from torch import nn

from lance.errors import LanceError, UnknownLayerError, UnsupportedLayerError

__all__ = ["trainable_layers", "resolve_layers", "layer_spec", "set_trainable", "head_name", "SUPPORTED_TYPES"]

#: Module types LANCE can compress (subclasses included).
SUPPORTED_TYPES: tuple[type, ...] = (nn.Conv2d, nn.Linear)


def trainable_layers(model: nn.Module, n: int, skip_depthwise: bool = False) -> list[str]:
    """Names of the last ``n`` ``nn.Conv2d`` modules of ``model`` in registration order.

    This is the paper's "fine-tune the last n layers": the classifier head is trained too,
    but it is not one of the ``n``. With ``skip_depthwise`` only convolutions with
    ``groups == 1`` count (the selection of the authors' LANCE code: depthwise and other grouped
    convolutions stay frozen, and the n reach further back instead).
    """
    check_model(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LanceError(f"n must be a positive integer (how many conv layers to train), got {n!r}.")
    convs = [name for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d) and not (skip_depthwise and module.groups != 1)]
    if len(convs) < n:
        kind = "ungrouped nn.Conv2d" if skip_depthwise else "nn.Conv2d"
        raise LanceError(
            f"the model has {len(convs)} {kind} modules, fewer than the {n} requested; "
            f"ask for at most {len(convs)}."
        )
    return convs[-n:]


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise LanceError(f"expected a torch.nn.Module, got {type(model).__name__}.")


def resolve_layers(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    """Map each name to its module; unknown names and unsupported types raise clear errors."""
    check_model(model)
    if layers is None:
        raise LanceError("no layers were named: pass e.g. lance.trainable_layers(model, 2).")
    if isinstance(layers, str):
        layers = [layers]
    names = list(layers)
    if not names:
        raise LanceError("no layers were named: pass e.g. lance.trainable_layers(model, 2).")
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [k for k in modules if k], n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownLayerError(
                f"the model has no module named {name!r}.{hint} "
                "List the names with [n for n, _ in model.named_modules()]."
            )
        module = modules[name]
        if not isinstance(module, SUPPORTED_TYPES) or type(module).__name__.startswith("Lazy"):
            raise UnsupportedLayerError(
                f"layer {name!r} is a {type(module).__name__}; LANCE compresses the inputs of "
                "nn.Conv2d and nn.Linear layers only. Name conv or linear layers instead."
            )
        if name in found:
            raise LanceError(f"layer {name!r} is named twice.")
        found[name] = module
    return found


def layer_spec(module: nn.Module) -> dict:
    """What identifies a layer for a calibration: its type, weight shape and geometry."""
    spec = {"type": "Conv2d" if isinstance(module, nn.Conv2d) else "Linear",
            "weight_shape": tuple(module.weight.shape),
            "bias": module.bias is not None}
    if isinstance(module, nn.Conv2d):
        spec.update(stride=tuple(module.stride), dilation=tuple(module.dilation),
                    groups=module.groups, padding=module.padding if isinstance(module.padding, str)
                    else tuple(module.padding), padding_mode=module.padding_mode)
    return spec


def set_trainable(model: nn.Module, modules: Iterable[str]) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` except those of the named modules (and their
    children); returns the trainable parameters, ready for an optimiser."""
    names = [modules] if isinstance(modules, str) else list(modules)
    present = dict(model.named_modules())
    unknown = [n for n in names if n not in present]
    if unknown:
        raise UnknownLayerError(f"the model has no modules {unknown}.")
    trainable = []
    for pname, p in model.named_parameters():
        keep = any(pname.startswith(n + ".") for n in names)
        p.requires_grad_(keep)
        if keep:
            trainable.append(p)
    return trainable


def head_name(model: nn.Module) -> str:
    """Name of the classifier head (always trained, never one of the n layers): ``fc`` for
    ResNets, ``classifier`` for MobileNetV2 and MCUNet."""
    for name in ("fc", "classifier"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise LanceError(f"cannot find the classifier head of {type(model).__name__} (no fc or classifier module).")
