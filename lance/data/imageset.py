"""The common in-memory form of every dataset: :class:`ImageSet`, and class subsets of it.

``images`` is either a uint8 tensor ``(N, H, W, C)`` (the datasets that fit in memory: CIFAR,
MNIST, Fashion-MNIST, SVHN, notMNIST) or a list of image file paths, read lazily (the large JPEG
datasets: Oxford-IIIT Pets, Flowers-102, CUB-200-2011, miniImageNet). ``labels`` is an int64
tensor ``(N,)`` of indices into ``classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from lance.errors import LanceError

__all__ = ["ImageSet", "split_classes"]


@dataclass
class ImageSet:
    images: Union[Tensor, list[Path]]
    labels: Tensor
    classes: list[str]
    name: str
    split: str
    # where the files came from and their md5 sums (set by lance.data.load, kept by subsets)
    origin: Optional[dict] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.images, Tensor):
            if self.images.dtype != torch.uint8 or self.images.dim() != 4:
                raise LanceError(f"ImageSet images must be a uint8 tensor (N, H, W, C), "
                                 f"got {self.images.dtype} {tuple(self.images.shape)}")
        else:
            self.images = [Path(p) for p in self.images]
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise LanceError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.labels) and not (0 <= int(self.labels.min()) and int(self.labels.max()) < len(self.classes)):
            raise LanceError(f"labels must lie in [0, {len(self.classes)}), got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lazy(self) -> bool:
        """True when ``images`` are file paths read on access."""
        return not isinstance(self.images, Tensor)

    def subset(self, index: Union[Tensor, Sequence[int]]) -> "ImageSet":
        """The images at ``index`` (same classes)."""
        index = torch.as_tensor(index, dtype=torch.int64)
        images = self.images[index] if not self.lazy else [self.images[i] for i in index.tolist()]
        return ImageSet(images, self.labels[index], list(self.classes), self.name, self.split, self.origin)

    def __repr__(self) -> str:
        kind = "files" if self.lazy else f"uint8 {tuple(self.images.shape)}"
        return (f"ImageSet(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)}, images={kind})")


def split_classes(imageset: ImageSet, classes: Sequence[Union[int, str]]) -> ImageSet:
    """Only the images of ``classes`` (indices or names), relabelled ``0..k-1`` in the order given.

    ``split_classes(train, range(50))`` and ``split_classes(train, range(50, 100))`` give the
    paper's pretrain / fine-tune halves of CIFAR-100; ``range(10 * t, 10 * t + 10)`` gives task
    ``t`` of Split CIFAR-100. Images keep their order.
    """
    chosen = []
    for c in classes:
        if isinstance(c, str):
            if c not in imageset.classes:
                raise LanceError(f"{imageset.name} has no class named {c!r}")
            c = imageset.classes.index(c)
        c = int(c)
        if not 0 <= c < len(imageset.classes):
            raise LanceError(f"class {c} out of range for {imageset.name} ({len(imageset.classes)} classes)")
        chosen.append(c)
    if len(set(chosen)) != len(chosen):
        raise LanceError(f"classes given twice: {chosen}")
    new_label = torch.full((len(imageset.classes),), -1, dtype=torch.int64)
    new_label[torch.tensor(chosen, dtype=torch.int64)] = torch.arange(len(chosen))
    mapped = new_label[imageset.labels]
    keep = (mapped >= 0).nonzero().flatten()
    images = imageset.images[keep] if not imageset.lazy else [imageset.images[i] for i in keep.tolist()]
    return ImageSet(images, mapped[keep], [imageset.classes[c] for c in chosen], imageset.name, imageset.split,
                    imageset.origin)
