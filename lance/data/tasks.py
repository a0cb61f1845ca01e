"""Continual-learning benchmarks as task sequences (paper Sec. 3.2, App. A.2).

A benchmark is a list of :class:`Task`: per task, float tensors for training, validation and
test (normalised, channels first) and the number of classes of its head. Builders:

* :func:`split_cifar100`: 10 tasks of 10 consecutive CIFAR-100 classes, 32x32, 5 % of each
  task's training images held out for validation (4750 / 250 / 1000 per task).
* :func:`permuted_mnist`: 10 tasks, each MNIST with its own fixed pixel permutation,
  flattened to 784 features.
* :func:`five_datasets`: CIFAR-10, MNIST, SVHN, Fashion-MNIST, notMNIST, all 32x32 with 3
  channels (grey images padded 28 -> 32 and replicated), one task each. Datasets that are not
  on this machine are skipped with ``skip_missing=True`` (and listed in ``skipped``).
* :func:`split_miniimagenet`: 20 tasks of 5 miniImageNet classes at 84x84.

Each dataset is normalised with the mean and standard deviation of its own training images:
per channel for images, over all features for flattened vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lance import data as lance_data
from lance.errors import LanceError

__all__ = ["Task", "Benchmark", "BENCHMARKS", "build_benchmark", "split_cifar100", "permuted_mnist",
           "five_datasets", "split_miniimagenet"]


@dataclass
class Task:
    name: str
    classes: int
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]

    def sizes(self) -> dict:
        return {"train": len(self.train[1]), "val": len(self.val[1]), "test": len(self.test[1])}


@dataclass
class Benchmark:
    name: str
    tasks: list[Task]
    input_shape: tuple[int, ...]
    skipped: list[str] = field(default_factory=list)
    shared_head: bool = False  # one head for every task (Permuted MNIST)

    def __len__(self) -> int:
        return len(self.tasks)

    def describe(self):
        import pandas as pd

        return pd.DataFrame([{"task": i, "name": t.name, "classes": t.classes, **t.sizes()}
                             for i, t in enumerate(self.tasks)])


def _to_float(images: Tensor) -> Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Images (N, C, H, W): per channel. Flattened vectors (N, D): one mean and one standard
    deviation for all features (per feature, a pixel that is almost always 0 would be divided by
    almost nothing)."""
    dims = list(range(train.dim())) if train.dim() == 2 else [0] + list(range(2, train.dim()))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _holdout(x: Tensor, y: Tensor, fraction: float, generator: torch.Generator):
    """Split off ``fraction`` of (x, y) for validation, at random but reproducibly."""
    if not 0 <= fraction < 1:
        raise LanceError(f"val_fraction must be in [0, 1), got {fraction}.")
    perm = torch.randperm(len(y), generator=generator)
    n_val = int(round(fraction * len(y)))
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def _limit(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return (x[:n], y[:n]) if n and n < len(y) else (x, y)


def _class_tasks(xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, n_classes: int, tasks: int,
                 val_fraction: float, seed: int, train_limit: int, test_limit: int) -> list[Task]:
    """``tasks`` tasks of consecutive classes, labels relabelled from 0, with a validation hold-out."""
    per = n_classes // tasks
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(tasks):
        classes = torch.arange(t * per, (t + 1) * per)
        mtr, mte = torch.isin(ytr, classes), torch.isin(yte, classes)
        tr, va = _holdout(xtr[mtr], ytr[mtr] - t * per, val_fraction, g)
        out.append(Task(f"classes {t * per}-{(t + 1) * per - 1}", per, _limit(*tr, train_limit), va,
                        _limit(xte[mte], yte[mte] - t * per, test_limit)))
    return out


def split_cifar100(data_dir=None, tasks: int = 10, val_fraction: float = 0.05, seed: int = 0,
                   train_limit: int = 0, test_limit: int = 0) -> Benchmark:
    """Split CIFAR-100: ``tasks`` tasks of ``100 / tasks`` consecutive classes each.
    ``train_limit`` / ``test_limit`` keep only that many images per task (0: all), for demonstrations."""
    if tasks < 1 or 100 % tasks:
        raise LanceError(f"Split CIFAR-100 needs a number of tasks that divides 100, got {tasks}.")
    train = lance_data.load("cifar100", "train", data_dir=data_dir)
    test = lance_data.load("cifar100", "test", data_dir=data_dir)
    xtr, xte = _standardise(_to_float(train.images), _to_float(test.images))
    out = _class_tasks(xtr, train.labels, xte, test.labels, 100, tasks, val_fraction, seed, train_limit, test_limit)
    return Benchmark("split_cifar100", out, (3, 32, 32))


def permuted_mnist(data_dir=None, tasks: int = 10, val_fraction: float = 0.1, seed: int = 0,
                   train_limit: int = 0, test_limit: int = 0) -> Benchmark:
    """Permuted MNIST: task ``t`` is MNIST with a fixed random permutation of its 784 pixels
    (drawn from ``seed``), one shared 10-class head."""
    train = lance_data.load("mnist", "train", data_dir=data_dir)
    test = lance_data.load("mnist", "test", data_dir=data_dir)
    xtr = train.images.reshape(len(train), -1).float().div_(255.0)
    xte = test.images.reshape(len(test), -1).float().div_(255.0)
    xtr, xte = _standardise(xtr, xte)
    g = torch.Generator().manual_seed(seed)
    (xtr_, ytr_), (xva_, yva_) = _holdout(xtr, train.labels, val_fraction, g)
    out = []
    for t in range(tasks):
        perm = torch.randperm(784, generator=g)
        tr = _limit(xtr_[:, perm], ytr_, train_limit)
        te = _limit(xte[:, perm], test.labels, test_limit)
        out.append(Task(f"permutation {t}", 10, tr, (xva_[:, perm], yva_), te))
    return Benchmark("permuted_mnist", out, (784,), shared_head=True)


FIVE_DATASETS = ("cifar10", "mnist", "svhn", "fashion_mnist", "notmnist")


def _as_rgb32(images: Tensor) -> Tensor:
    x = _to_float(images)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-1] != 32 or x.shape[-2] != 32:
        dh, dw = 32 - x.shape[-2], 32 - x.shape[-1]
        if dh >= 0 and dw >= 0:
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        else:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x


def five_datasets(data_dir=None, names: Sequence[str] = FIVE_DATASETS, val_fraction: float = 0.05, seed: int = 0,
                  skip_missing: bool = True, train_limit: int = 0, test_limit: int = 0) -> Benchmark:
    """5-Datasets: one 10-class task per dataset, 32x32x3. With ``skip_missing`` a dataset that
    cannot be found is left out (its name goes to ``Benchmark.skipped``); otherwise the data
    layer's not-found error, which says how to get it, is raised."""
    g = torch.Generator().manual_seed(seed)
    out, skipped = [], []
    for name in names:
        try:
            train = lance_data.load(name, "train", data_dir=data_dir)
            test = lance_data.load(name, "test", data_dir=data_dir)
        except LanceError:
            if not skip_missing:
                raise
            skipped.append(name)
            continue
        xtr, xte = _standardise(_as_rgb32(train.images), _as_rgb32(test.images))
        tr, va = _holdout(xtr, train.labels, val_fraction, g)
        out.append(Task(name, len(train.classes), _limit(*tr, train_limit), va,
                        _limit(xte, test.labels, test_limit)))
    if not out:
        raise LanceError(f"none of the 5-Datasets ({', '.join(names)}) were found; see lance.data.load's "
                         "message for each to learn how to get them.")
    return Benchmark("five_datasets", out, (3, 32, 32), skipped)


def split_miniimagenet(data_dir=None, tasks: int = 20, val_fraction: float = 0.05, seed: int = 0,
                       train_limit: int = 0, test_limit: int = 0) -> Benchmark:
    """Split miniImageNet: 100 classes in ``tasks`` tasks, images resized to 84x84. Needs the
    miniImageNet files (see ``lance.data.load('miniimagenet', ...)``); it is not run here."""
    train = lance_data.load("miniimagenet", "cl_train", data_dir=data_dir)
    test = lance_data.load("miniimagenet", "cl_test", data_dir=data_dir)
    n_classes = len(train.classes)
    if n_classes % tasks:
        raise LanceError(f"{n_classes} classes cannot be split into {tasks} equal tasks.")
    ds_train = lance_data.ImageDataset(train, lance_data.transforms(84, train=False, normalize=False))
    ds_test = lance_data.ImageDataset(test, lance_data.transforms(84, train=False, normalize=False))
    xtr = torch.stack([ds_train[i][0] for i in range(len(ds_train))])
    xte = torch.stack([ds_test[i][0] for i in range(len(ds_test))])
    xtr, xte = _standardise(xtr, xte)
    out = _class_tasks(xtr, train.labels, xte, test.labels, n_classes, tasks, val_fraction, seed, train_limit,
                       test_limit)
    return Benchmark("split_miniimagenet", out, (3, 84, 84))


BENCHMARKS = {
    "split_cifar100": split_cifar100,
    "permuted_mnist": permuted_mnist,
    "five_datasets": five_datasets,
    "split_miniimagenet": split_miniimagenet,
}


def build_benchmark(name: str, data_dir=None, **kwargs) -> Benchmark:
    """The benchmark ``name`` (one of :data:`BENCHMARKS`)."""
    if name not in BENCHMARKS:
        raise LanceError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name](data_dir=data_dir, **kwargs)
