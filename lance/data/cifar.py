"""CIFAR-10 and CIFAR-100, python version (Krizhevsky 2009).

On disk (official tarballs, extracted): ``cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}`` and ``cifar-100-python/{train, test, meta}``. Each batch is a Python 2 pickle of a
dict: ``data``, a uint8 array ``(N, 3072)`` whose rows hold the 1024 red, then 1024 green, then
1024 blue values of a 32x32 image in row-major order; ``labels`` (CIFAR-10) or ``fine_labels`` and
``coarse_labels`` (CIFAR-100). The meta pickle names the classes (``label_names``;
``fine_label_names``). Every file's md5 is checked before it is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lance.errors import LanceError
from lance.data.checksums import verify_md5
from lance.data.imageset import ImageSet
from lance.data.locate import Archive, Search, Source
from lance.data.pickles import load_pickle, str_keys

__all__ = ["CIFAR10", "CIFAR100"]

CIFAR10 = Source(
    name="cifar10", title="CIFAR-10 (python version)",
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    files=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a)",),
    layout="DIR/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}",
    splits=("train", "test"),
    archives=(Archive("cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz", ".",
                      "cifar-10-batches-py/batches.meta"),),
    torchvision="CIFAR10",
)

CIFAR100 = Source(
    name="cifar100", title="CIFAR-100 (python version)",
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    files=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (md5 eb9058c3a382ffc7106e4002c42a8d85)",),
    layout="DIR/cifar-100-python/{train, test, meta}",
    splits=("train", "test"),
    archives=(Archive("cifar-100-python.tar.gz", "cifar100/cifar-100-python.tar.gz", ".",
                      "cifar-100-python/meta"),),
    torchvision="CIFAR100",
)

_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"},
}
_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_LABELS = {"cifar10": ("labels", "label_names"), "cifar100": ("fine_labels", "fine_label_names")}


def find(search: Search, split: str) -> Optional[Path]:
    name = search.source.name
    return search.folder([_FOLDER[name]], _FILES[name][split] + [_FILES[name]["meta"]])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = load_pickle(f)
    if not isinstance(d, dict):
        raise LanceError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    return str_keys(d)


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    name = source.name
    label_key, names_key = _LABELS[name]
    for fname in [_FILES[name]["meta"]] + _FILES[name][split]:  # every md5 before any unpickling
        verify_md5(root / fname, f"{name}/{fname}", verify)
    meta = _unpickle(root / _FILES[name]["meta"])
    classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in meta[names_key]]
    rows, labels = [], []
    for fname in _FILES[name][split]:
        batch = _unpickle(root / fname)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = np.asarray(batch[label_key], dtype=np.int64)
        except KeyError as e:
            raise LanceError(f"{root / fname}: no {e} entry; is this the python version of {source.title}?") from e
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise LanceError(f"{root / fname}: data of shape {data.shape} with {len(lab)} labels, "
                             "expected (N, 3072) with N labels")
        rows.append(data)
        labels.append(lab)
    data = np.concatenate(rows)
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)))
    return ImageSet(images, torch.from_numpy(np.concatenate(labels)), classes, name, split)
