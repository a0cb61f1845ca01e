"""Oxford-IIIT Pets (Parkhi et al. 2012): 7,349 photographs of 37 cat and dog breeds.

Official archives ``images.tar.gz`` (``images/<Breed_name>_<n>.jpg``) and ``annotations.tar.gz``
(``annotations/trainval.txt``, ``annotations/test.txt``: one line ``<image name> <class id 1..37>
<species 1 cat, 2 dog> <breed id>`` per image; ``#`` lines are comments). Splits: ``trainval``
(3,680 images; ``train`` is the same) and ``test`` (3,669). Labels are the class ids minus one;
class names are the breed part of the image names (``Abyssinian``, ``american_bulldog``, ...).
Images stay on disk and are read lazily. The archives' md5 sums are checked when they are
extracted from the data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lance.errors import LanceError
from lance.data.imageset import ImageSet
from lance.data.locate import Archive, Search, Source

__all__ = ["PETS"]

PETS = Source(
    name="pets", title="Oxford-IIIT Pets", homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    files=("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz (md5 5c4f3ee8e5d25df40f4fd59a7f44e54c)",
           "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz (md5 95a8c909bbe2e81eed6a22bccdf3f68f)"),
    layout="DIR/oxford-iiit-pet/{images/*.jpg, annotations/trainval.txt, annotations/test.txt} "
           "(extract both archives inside DIR/oxford-iiit-pet/)",
    splits=("train", "trainval", "test"),
    archives=(Archive("images.tar.gz", "pets/images.tar.gz", "oxford-iiit-pet", "oxford-iiit-pet/images"),
              Archive("annotations.tar.gz", "pets/annotations.tar.gz", "oxford-iiit-pet",
                      "oxford-iiit-pet/annotations")),
    torchvision="OxfordIIITPet",
)

_LIST = {"train": "trainval.txt", "trainval": "trainval.txt", "test": "test.txt"}


def find(search: Search, split: str) -> Optional[Path]:
    return search.folder(["oxford-iiit-pet", "pets", "."], ["images", f"annotations/{_LIST[split]}"])


def _entries(path: Path) -> list[tuple[str, int]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            rows.append((parts[0], int(parts[1])))
        except (IndexError, ValueError) as e:
            raise LanceError(f"{path}:{n}: expected '<name> <class id> <species> <breed id>', got {line!r}") from e
    return rows


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    rows = _entries(root / "annotations" / _LIST[split])
    # Class names from every list at hand, so that both splits name the same 37 classes.
    names: dict[int, str] = {}
    for other in ("trainval.txt", "test.txt"):
        path = root / "annotations" / other
        for name, cid in (_entries(path) if path.is_file() else []):
            names.setdefault(cid, name.rsplit("_", 1)[0])
    n_classes = max(names) if names else 0
    if any(cid < 1 for cid in names):
        raise LanceError(f"{root / 'annotations'}: class ids must start at 1")
    classes = [names.get(i, str(i)) for i in range(1, n_classes + 1)]
    images = [root / "images" / f"{name}.jpg" for name, _ in rows]
    labels = [cid - 1 for _, cid in rows]
    return ImageSet(images, labels, classes, "pets", split)
