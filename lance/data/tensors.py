"""Small in-memory training sets for the book's live demonstrations: :func:`training_images`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lance.errors import LanceError

__all__ = ["Images", "training_images"]


@dataclass
class Images:
    """Normalised images ``x`` (N, 3, S, S) with labels ``y`` and where they come from."""

    x: Tensor
    y: Tensor
    num_classes: int
    source: str


def training_images(n: int, resolution: int, seed: int = 0, data_dir=None) -> Images:
    """``n`` random CIFAR-100 training images upscaled to ``resolution`` (the paper's
    preprocessing: resize and ImageNet normalisation). Where CIFAR-100 is not on this machine,
    ``n`` random crops and flips of the 20 ImageNet sample photographs instead, as a small new
    task: their ImageNet classes relabelled ``0..k-1`` (``num_classes`` is ``k``), so that in both
    cases a new classifier head is trained."""
    from lance.data.catalog import load
    from lance.data.dataset import transforms
    from lance.data.samples import augmented_batches, sample_images

    try:
        train = load("cifar100", "train", data_dir)
    except LanceError:
        photos, labels = sample_images(resolution)
        x, y = next(augmented_batches(photos, n, 1, seed=seed, labels=labels))
        classes, y = torch.unique(y, return_inverse=True)
        return Images(x, y, len(classes), f"the {len(photos)} ImageNet sample photographs as a {len(classes)}-class "
                      "task (CIFAR-100 is not on this machine)")
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:n]
    raw = train.images[order].permute(0, 3, 1, 2).float().div(255)
    x = transforms(resolution, train=False)(raw)  # acts on the whole batch at once
    return Images(x.contiguous(), torch.as_tensor(train.labels)[order], len(train.classes), "CIFAR-100")
