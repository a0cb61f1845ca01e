"""Oxford 102 Flowers (Nilsback and Zisserman 2008): 8,189 photographs of 102 flower species.

Official files: ``102flowers.tgz`` (``jpg/image_00001.jpg`` .. ``jpg/image_08189.jpg``),
``imagelabels.mat`` (``labels``: ``(1, 8189)``, the class 1..102 of image k at position k-1) and
``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image numbers of the train (1,020),
val (1,020) and test (6,149) splits). Labels are the classes minus one. The dataset publishes no
class names in its files, so ``classes`` are the official class numbers ``"1"`` .. ``"102"``.
Reading the .mat files needs scipy; their md5 sums (and the archive's) are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from lance.errors import LanceError
from lance.data.checksums import verify_md5
from lance.data.imageset import ImageSet
from lance.data.locate import Archive, Search, Source
from lance.data.matlab import loadmat

__all__ = ["FLOWERS102"]

_BASE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"

FLOWERS102 = Source(
    name="flowers102", title="Oxford 102 Flowers", homepage=_BASE,
    files=(f"{_BASE}102flowers.tgz (md5 52808999861908f626f3c1f4e79d11fa)",
           f"{_BASE}imagelabels.mat (md5 e0620be6f572b9609742df49c70aed4d)",
           f"{_BASE}setid.mat (md5 a5357ecc9cb78c4bef273ce3793fc85c)"),
    layout="DIR/flowers-102/{jpg/image_00001.jpg..., imagelabels.mat, setid.mat}",
    splits=("train", "val", "test"),
    archives=(Archive("102flowers.tgz", "flowers102/102flowers.tgz", "flowers-102", "flowers-102/jpg"),),
    torchvision="Flowers102",
)

_SETID = {"train": "trnid", "val": "valid", "test": "tstid"}


def find(search: Search, split: str) -> Optional[Path]:
    return search.folder(["flowers-102", "flowers102", "."], ["jpg", "imagelabels.mat", "setid.mat"])


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    for name in ("imagelabels.mat", "setid.mat"):
        verify_md5(root / name, f"flowers102/{name}", verify)
    all_labels = np.asarray(loadmat(root / "imagelabels.mat")["labels"]).reshape(-1).astype(np.int64)
    setid = loadmat(root / "setid.mat")
    if _SETID[split] not in setid:
        raise LanceError(f"{root / 'setid.mat'}: no {_SETID[split]} variable")
    ids = np.asarray(setid[_SETID[split]]).reshape(-1).astype(np.int64)
    if ids.size and (ids.min() < 1 or ids.max() > all_labels.size):
        raise LanceError(f"{root / 'setid.mat'}: image numbers outside 1..{all_labels.size}")
    labels = all_labels[ids - 1] - 1
    images = [root / "jpg" / f"image_{i:05d}.jpg" for i in ids.tolist()]
    n_classes = int(all_labels.max()) if all_labels.size else 0
    return ImageSet(images, labels, [str(c) for c in range(1, n_classes + 1)], "flowers102", split)
