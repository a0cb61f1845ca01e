"""The datasets by name, and :func:`load`, the one entry point that finds, checks and reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from lance.errors import LanceError
from lance.data import cifar, cub, flowers, locate, miniimagenet, mnist, notmnist, pets, svhn
from lance.data.checksums import md5_of
from lance.data.imageset import ImageSet
from lance.data.locate import PathLike, Search, Source

__all__ = ["DATASETS", "NUM_CLASSES", "load", "source"]


@dataclass(frozen=True)
class _Entry:
    source: Source
    find: Callable[[Search, str], Optional[Path]]
    read: Callable[[Source, Path, str, bool], ImageSet]
    fetch: Optional[Callable[[Path, str], None]] = None   # torchvision download into a root


def _tv(cls_name: str, args: Callable[[str], dict]) -> Callable[[Path, str], None]:
    """Download with ``torchvision.datasets.<cls_name>(root, download=True, **args(split))``; it
    writes the official folder names that :func:`load` then finds."""
    def fetch(root: Path, split: str) -> None:
        import torchvision.datasets as tvd

        getattr(tvd, cls_name)(str(root), download=True, **args(split))
    return fetch


def _train_flag(split: str) -> dict:
    return {"train": split == "train"}


def _split(split: str) -> dict:
    return {"split": split}

DATASETS: dict[str, _Entry] = {
    "cifar10": _Entry(cifar.CIFAR10, cifar.find, cifar.read, _tv("CIFAR10", _train_flag)),
    "cifar100": _Entry(cifar.CIFAR100, cifar.find, cifar.read, _tv("CIFAR100", _train_flag)),
    "mnist": _Entry(mnist.MNIST, mnist.find, mnist.read, _tv("MNIST", _train_flag)),
    "fashion_mnist": _Entry(mnist.FASHION_MNIST, mnist.find, mnist.read, _tv("FashionMNIST", _train_flag)),
    "svhn": _Entry(svhn.SVHN, svhn.find, svhn.read, _tv("SVHN", _split)),
    "notmnist": _Entry(notmnist.NOTMNIST, notmnist.find, notmnist.read),
    "pets": _Entry(pets.PETS, pets.find, pets.read,
                   _tv("OxfordIIITPet", lambda s: {"split": "test" if s == "test" else "trainval"})),
    "flowers102": _Entry(flowers.FLOWERS102, flowers.find, flowers.read, _tv("Flowers102", _split)),
    "cub200": _Entry(cub.CUB200, cub.find, cub.read),
    "miniimagenet": _Entry(miniimagenet.MINIIMAGENET, miniimagenet.find, miniimagenet.read),
}

# classes per dataset (the published label sets), for a classifier built before any data is read
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "svhn": 10, "notmnist": 10,
               "pets": 37, "flowers102": 102, "cub200": 200, "miniimagenet": 100}

# images in the training split, as published, for the datasets whose split has one fixed size; with
# --classes a run has fewer, so a count checked against this before loading is an upper bound
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000, "fashion_mnist": 60_000, "svhn": 73_257}


def source(name: str) -> Source:
    """What is known about dataset ``name``: official files, layout, splits."""
    return _entry(name).source


def _entry(name: str) -> _Entry:
    if name not in DATASETS:
        raise LanceError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load(name: str, split: str = "train", data_dir: Optional[PathLike] = None, *,
         download: bool = False, verify: bool = True) -> ImageSet:
    """Dataset ``name``'s ``split`` as an :class:`ImageSet`.

    Files are looked for in the data directory (``data_dir``, else ``$LANCE_DATA_DIR``) under the
    official folder names, then in registry packages that carry the dataset; with ``download=True``
    torchvision fetches what it can into the data directory (offline: an immediate, clear error).
    Every official file with a published md5 is checked before it is parsed (``verify=False``
    skips this, for knowingly repacked files). Raises :class:`~lance.errors.LanceError` naming
    every place looked at and how to obtain the files when they are not found.
    """
    entry = _entry(name)
    if split not in entry.source.splits:
        raise LanceError(f"{name} has no split {split!r}; it has {', '.join(entry.source.splits)}")
    root_dir = locate.data_dir(data_dir)
    search = Search(entry.source, root_dir, verify)
    found = entry.find(search, split)
    if found is None and download:
        _download(entry, root_dir, split)
        search = Search(entry.source, root_dir, verify)
        found = entry.find(search, split)
    if found is None:
        raise search.not_found(split)
    images = entry.read(entry.source, found, split, verify)
    images.origin = origin(found)
    return images


def origin(found: Path, max_files: int = 16) -> dict:
    """Where a dataset was read from, for a run's provenance: the path and the md5 of each file
    (of a folder's top-level files when there are at most ``max_files``; md5s are remembered per
    process, and the official files' were computed anyway to verify them)."""
    found = Path(found)
    files = [found] if found.is_file() else sorted(f for f in found.iterdir() if f.is_file())
    record = {"path": str(found.resolve()), "files": len(files)}
    if len(files) <= max_files:
        record["md5"] = {f.name: md5_of(f) for f in files}
    return record


def _download(entry: _Entry, root: Optional[Path], split: str) -> None:
    fetch = entry.fetch
    locate.download(entry.source, root, (lambda r: fetch(r, split)) if fetch else (lambda r: None))
