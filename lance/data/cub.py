"""CUB-200-2011 (Wah et al. 2011): 11,788 photographs of 200 bird species.

The official archive ``CUB_200_2011.tgz`` extracts to ``CUB_200_2011/`` with ``images.txt``
(``<image id> <path under images/>``), ``image_class_labels.txt`` (``<image id> <class id 1..200>``),
``train_test_split.txt`` (``<image id> <1 train, 0 test>``: 5,994 / 5,794), ``classes.txt``
(``<class id> <nnn.Name>``) and ``images/<nnn.Name>/*.jpg``. Labels are the class ids minus one;
class names drop the ``nnn.`` prefix (``Black_footed_Albatross``). Images are read lazily. The
archive's md5 is checked when it is extracted from the data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lance.errors import LanceError
from lance.data.imageset import ImageSet
from lance.data.locate import Archive, Search, Source

__all__ = ["CUB200"]

CUB200 = Source(
    name="cub200", title="CUB-200-2011", homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
    files=("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz "
           "(md5 97eceeb196236b17998738112f37df78)",),
    layout="DIR/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}",
    splits=("train", "test"),
    archives=(Archive("CUB_200_2011.tgz", "cub200/CUB_200_2011.tgz", ".", "CUB_200_2011/images.txt"),),
)

_MARKERS = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "images"]


def find(search: Search, split: str) -> Optional[Path]:
    return search.folder(["CUB_200_2011", "cub200/CUB_200_2011", "."], _MARKERS)


def _table(path: Path) -> dict[int, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        try:
            out[int(key)] = value.strip()
        except ValueError as e:
            raise LanceError(f"{path}:{n}: expected '<id> <value>', got {line!r}") from e
    return out


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    paths = _table(root / "images.txt")
    labels = {k: int(v) for k, v in _table(root / "image_class_labels.txt").items()}
    is_train = {k: v == "1" for k, v in _table(root / "train_test_split.txt").items()}
    if not (paths.keys() == labels.keys() == is_train.keys()):
        raise LanceError(f"{root}: images.txt, image_class_labels.txt and train_test_split.txt "
                         "list different image ids")
    if (root / "classes.txt").is_file():
        named = _table(root / "classes.txt")
    else:  # the class folder of each image
        named = {labels[k]: paths[k].split("/", 1)[0] for k in paths}
    n_classes = max(max(named, default=0), max(labels.values(), default=0))
    classes = [named.get(c, str(c)).split(".", 1)[-1] for c in range(1, n_classes + 1)]
    ids = [k for k in sorted(paths) if is_train[k] == (split == "train")]
    return ImageSet([root / "images" / paths[k] for k in ids], [labels[k] - 1 for k in ids],
                    classes, "cub200", split)
