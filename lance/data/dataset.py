"""A torch ``Dataset`` over an :class:`ImageSet`, and the paper's preprocessing.

The paper: images are resized to the model's native resolution and normalised with the ImageNet
mean/std; a random horizontal flip is the only augmentation. :func:`transforms` builds exactly
that, acting on the ``(C, H, W)`` float tensors in [0, 1] that :class:`ImageDataset` yields.
Resizing goes straight to ``resolution x resolution`` (bilinear, antialiased), so non-square
photographs (Pets, Flowers, CUB) are not cropped but squeezed.

Grey images (MNIST, Fashion-MNIST, notMNIST) have one channel; ``channels=3`` replicates it
for models that take RGB (ImageNet normalisation needs three channels). For the 5-Datasets
benchmark the caller asks for ``resolution=32``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lance.errors import LanceError
from lance.models.zoo import IMAGENET_MEAN, IMAGENET_STD
from lance.data.imageset import ImageSet

__all__ = ["ImageDataset", "transforms", "Channels", "Resize", "ImageNetNormalize"]


class Channels:
    """Replicate a one-channel image ``(1, H, W)`` to ``channels`` channels."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-3] == self.channels:
            return x
        if x.shape[-3] != 1:
            raise LanceError(f"cannot turn a {x.shape[-3]}-channel image into {self.channels} channels")
        return x.expand(*x.shape[:-3], self.channels, *x.shape[-2:]).contiguous()

    def __repr__(self) -> str:
        return f"Channels({self.channels})"


class Resize:
    """Bilinear, antialiased resize to ``size x size`` (no-op when already that size)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        import torch.nn.functional as F

        batched = x if x.dim() == 4 else x.unsqueeze(0)
        out = F.interpolate(batched, size=(self.size, self.size), mode="bilinear",
                            align_corners=False, antialias=True)
        return out if x.dim() == 4 else out.squeeze(0)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class ImageNetNormalize:
    """``(x - mean) / std`` with ImageNet's per-channel statistics (as ``lance.data.normalize``)."""

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-3] != 3:
            raise LanceError(f"ImageNet normalisation needs 3 channels, got {x.shape[-3]}: "
                             "pass channels=3 to replicate a grey image")
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return "ImageNetNormalize()"


def transforms(resolution: Optional[int], train: bool, normalize: bool = True,
               channels: Optional[int] = None) -> Callable[[Tensor], Tensor]:
    """The paper's preprocessing of a ``(C, H, W)`` image in [0, 1]: [replicate to ``channels``],
    resize to ``resolution`` (``None``: keep the size), random horizontal flip when ``train``,
    ImageNet mean/std normalisation when ``normalize``."""
    from torchvision import transforms as T

    steps: list = []
    if channels is not None:
        steps.append(Channels(channels))
    if resolution is not None:
        steps.append(Resize(resolution))
    if train:
        steps.append(T.RandomHorizontalFlip())
    if normalize:
        steps.append(ImageNetNormalize())
    return T.Compose(steps)


class ImageDataset(Dataset):
    """``(image, label)`` pairs of an :class:`ImageSet`: the image as a float ``(C, H, W)``
    tensor in [0, 1] (files are read on access and converted to RGB), passed through
    ``transform`` if given; ``channels=3`` replicates grey images before the transform."""

    def __init__(self, imageset: ImageSet, transform: Optional[Callable[[Tensor], Tensor]] = None,
                 channels: Optional[int] = None) -> None:
        self.imageset = imageset
        self.transform = transform
        self.channels = Channels(channels) if channels is not None else None

    def __len__(self) -> int:
        return len(self.imageset)

    def image(self, index: int) -> Tensor:
        """The untransformed image ``index`` as float ``(C, H, W)`` in [0, 1]."""
        if self.imageset.lazy:
            from PIL import Image

            with Image.open(self.imageset.images[index]) as img:
                rgb = img.convert("RGB")
            x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            x = x.view(rgb.height, rgb.width, 3)
        else:
            x = self.imageset.images[index]
        return x.permute(2, 0, 1).to(torch.float32).div_(255)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.image(index)
        if self.channels is not None:
            x = self.channels(x)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.imageset.labels[index])
