"""SVHN, cropped digits (Netzer et al. 2011): 32x32 RGB house-number digits, 10 classes.

Official files: ``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032) and
``extra_32x32.mat`` (531,131), MATLAB v5 files holding ``X``, a uint8 array ``(32, 32, 3, N)``,
and ``y``, ``(N, 1)`` with labels 1..10 where 10 stands for the digit 0 (here it becomes label 0).
Reading them needs scipy (``scipy.io.loadmat``); each file's md5 is checked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lance.errors import LanceError
from lance.data.checksums import verify_md5
from lance.data.imageset import ImageSet
from lance.data.locate import Search, Source
from lance.data.matlab import loadmat

__all__ = ["SVHN"]

SVHN = Source(
    name="svhn", title="SVHN (cropped digits)", homepage="http://ufldl.stanford.edu/housenumbers/",
    files=("http://ufldl.stanford.edu/housenumbers/train_32x32.mat (md5 e26dedcc434d2e4c54c9b2d4a06d8373)",
           "http://ufldl.stanford.edu/housenumbers/test_32x32.mat (md5 eb5a983be6a315427106f1b164d9cef3)",
           "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat (md5 a93ce644f1a588dc4d68dda5feec44a7)"),
    layout="DIR/svhn/{train,test,extra}_32x32.mat (or the .mat files directly in DIR)",
    splits=("train", "test", "extra"),
    torchvision="SVHN",
)


def find(search: Search, split: str) -> Optional[Path]:
    return search.folder(["svhn", "SVHN", "."], [f"{split}_32x32.mat"])


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    path = root / f"{split}_32x32.mat"
    verify_md5(path, f"svhn/{path.name}", verify)
    mat = loadmat(path)
    try:
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    except KeyError as e:
        raise LanceError(f"{path}: no {e} variable; expected X (32, 32, 3, N) and y (N, 1)") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise LanceError(f"{path}: X of shape {x.shape} and y of size {y.size}; expected (32, 32, 3, N) and N")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise LanceError(f"{path}: labels must lie in 1..10, got {labels.min()}..{labels.max()}")
    labels[labels == 10] = 0
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2), dtype=np.uint8))
    return ImageSet(images, torch.from_numpy(labels), [str(d) for d in range(10)], "svhn", split)
