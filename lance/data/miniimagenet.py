"""miniImageNet (Vinyals et al. 2016; the split of Ravi and Larochelle 2017), from ImageNet.

100 ImageNet classes, 600 images each, defined by three csv files -- ``train.csv`` (64 classes),
``val.csv`` (16), ``test.csv`` (20) -- of ``filename,label`` rows after a header, e.g.
``n0153282900000005.jpg,n01532829``. The label is the ImageNet synset; the filename is the synset
followed by an 8-digit number k, meaning: the k-th (counting from 1) of that synset's ImageNet
training images ``<synset>_<num>.JPEG`` sorted by ``num`` as an integer. That is how the usual
generation scripts pick the images, so it is how they are found here.

Expected layout (DIR is the data directory)::

    DIR/miniimagenet/train.csv, val.csv, test.csv      (also: mini-imagenet/, miniImageNet/, mini_imagenet/)
    and the images, either already extracted by such a script
        DIR/miniimagenet/images/n0153282900000005.jpg   (or images/<synset>/<filename>)
    or read straight from an ImageNet (ILSVRC-2012) root IMAGENET, as the paper's setup does,
        IMAGENET/train/n01532829/n01532829_<num>.JPEG
    where IMAGENET is $LANCE_IMAGENET_DIR, else DIR/imagenet, else DIR/ILSVRC/Data/CLS-LOC.

Splits: ``train``, ``val``, ``test`` are the csv files (disjoint classes, labels 0..63 / 0..15 /
0..19 in order of first appearance). For continual learning over all 100 classes (Split
miniImageNet: 20 tasks of 5 classes), ``cl_train`` and ``cl_test`` take the classes of
train.csv, val.csv, test.csv in that order (labels 0..99) and, per class, the first 500 rows (in
csv order) for training and the remaining 100 for testing -- this project's fixed split. Images
are read lazily; no md5 sums are published for them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

from lance.errors import LanceError
from lance.data.imageset import ImageSet
from lance.data.locate import Search, Source

__all__ = ["MINIIMAGENET", "IMAGENET_ENV_VAR", "CL_TRAIN_PER_CLASS"]

IMAGENET_ENV_VAR = "LANCE_IMAGENET_DIR"
CL_TRAIN_PER_CLASS = 500

_CSV_URL = "https://raw.githubusercontent.com/twitter-research/meta-learning-lstm/master/data/miniImagenet/"

MINIIMAGENET = Source(
    name="miniimagenet", title="miniImageNet (Ravi & Larochelle split)",
    homepage="https://github.com/twitter-research/meta-learning-lstm/tree/master/data/miniImagenet",
    files=tuple(f"{_CSV_URL}{s}.csv" for s in ("train", "val", "test"))
    + ("ImageNet ILSVRC-2012's training images (https://image-net.org/, registration required)",),
    layout=("DIR/miniimagenet/{train,val,test}.csv plus either DIR/miniimagenet/images/<filename> or an "
            f"ImageNet root with train/<synset>/<synset>_<num>.JPEG in ${IMAGENET_ENV_VAR}, DIR/imagenet "
            "or DIR/ILSVRC/Data/CLS-LOC"),
    splits=("train", "val", "test", "cl_train", "cl_test"),
)

_FOLDERS = ["miniimagenet", "mini-imagenet", "miniImageNet", "mini_imagenet"]


def find(search: Search, split: str) -> Optional[Path]:
    return search.folder(_FOLDERS, ["train.csv", "val.csv", "test.csv"])


def _rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise LanceError(f"{path}: expected a 'filename,label' header, got {header}")
        return [(r[0].strip(), r[1].strip()) for r in reader if r]


def _imagenet_roots(root: Path) -> list[Path]:
    data = root.parent
    roots = [Path(os.environ[IMAGENET_ENV_VAR]).expanduser()] if os.environ.get(IMAGENET_ENV_VAR) else []
    return roots + [data / "imagenet", data / "ILSVRC" / "Data" / "CLS-LOC"]


class _ImageNetIndex:
    """The training images of each synset, sorted by their number, listed on first use."""

    def __init__(self, train_dir: Path) -> None:
        self.train_dir = train_dir
        self._lists: dict[str, list[Path]] = {}

    def image(self, synset: str, k: int) -> Path:
        if synset not in self._lists:
            folder = self.train_dir / synset
            if not folder.is_dir():
                raise LanceError(f"ImageNet root {self.train_dir.parent} has no train/{synset}/ folder")
            files = []
            for p in folder.iterdir():
                stem = p.stem
                if stem.startswith(synset + "_") and stem[len(synset) + 1:].isdigit():
                    files.append((int(stem[len(synset) + 1:]), p))
            self._lists[synset] = [p for _, p in sorted(files)]
        files = self._lists[synset]
        if not 1 <= k <= len(files):
            raise LanceError(f"miniImageNet wants image {k} of {synset}, but ImageNet's train/{synset}/ "
                             f"holds {len(files)} images")
        return files[k - 1]


def _resolver(root: Path, rows: list[tuple[str, str]]):
    """A function from a csv filename to its image path."""
    images = root / "images"
    if images.is_dir() and rows:
        name, synset = rows[0]
        for place in (images / name, images / synset / name):
            if place.is_file():
                flat = place.parent == images
                return (lambda n: images / n) if flat else (lambda n: images / n[:9] / n)
    for base in _imagenet_roots(root):
        if (base / "train").is_dir():
            index = _ImageNetIndex(base / "train")

            def resolve(name: str) -> Path:
                stem = name.rsplit(".", 1)[0]
                synset, number = stem[:9], stem[9:]
                if not (synset.startswith("n") and number.isdigit()):
                    raise LanceError(f"miniImageNet filename {name!r} is not <synset><8-digit number>.jpg")
                return index.image(synset, int(number))

            return resolve
    looked = ", ".join(str(p) for p in [images] + _imagenet_roots(root))
    raise LanceError(f"miniImageNet's csv files are in {root}, but its images are not: looked for "
                     f"{images}/<filename> and for an ImageNet root with train/<synset>/ ({looked}). "
                     f"Set {IMAGENET_ENV_VAR} to your ImageNet (ILSVRC-2012) folder, the one holding train/.")


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    if split in ("train", "val", "test"):
        rows = _rows(root / f"{split}.csv")
        all_rows = rows
    else:
        rows, all_rows = [], []
        for part in ("train", "val", "test"):
            per_class: dict[str, list[tuple[str, str]]] = {}
            for row in _rows(root / f"{part}.csv"):
                per_class.setdefault(row[1], []).append(row)
                all_rows.append(row)
            for synset_rows in per_class.values():
                rows += synset_rows[:CL_TRAIN_PER_CLASS] if split == "cl_train" else synset_rows[CL_TRAIN_PER_CLASS:]
    classes: list[str] = []
    index: dict[str, int] = {}
    for _, synset in all_rows:
        if synset not in index:
            index[synset] = len(classes)
            classes.append(synset)
    resolve = _resolver(root, all_rows)
    images = [resolve(name) for name, _ in rows]
    return ImageSet(images, [index[s] for _, s in rows], classes, "miniimagenet", split)
