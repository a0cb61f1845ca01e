"""notMNIST (Bulatov 2011): 28x28 grey glyphs of the letters A..J in many fonts, 10 classes.

Two layouts are read, both folders of PNG files with one subfolder per letter ``A``..``J``:

* ``notMNIST/Train/<letter>/*.png`` and ``notMNIST/Test/<letter>/*.png``: the fixed split of
  ``notMNIST.zip`` from the Adversarial Continual Learning repository (Ebrahimi et al. 2020),
  which 5-Datasets papers (ACL, GPM and those after them) use. ``train``/``test`` are those
  folders. Prefer it to compare with published 5-Datasets numbers.
* ``notMNIST_small/<letter>/*.png`` (the original ``notMNIST_small.tar.gz``, about 18,700 images),
  which has no split of its own. This project's split, fixed and documented: within each letter,
  files are sorted by name and every tenth (positions 9, 19, 29, ... counting from 0) goes to
  ``test``, the rest to ``train`` -- about 90 % / 10 %, like the ACL split's sizes but not its
  members.

Files that cannot be decoded (``notMNIST_small`` has a couple of empty PNGs) are skipped with a
warning. No md5 sums are published for these files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lance.errors import LanceError
from lance.data.imageset import ImageSet
from lance.data.locate import Search, Source

__all__ = ["NOTMNIST", "LETTERS"]

LETTERS = list("ABCDEFGHIJ")

NOTMNIST = Source(
    name="notmnist", title="notMNIST", homepage="http://yaroslavvb.blogspot.com/2011/09/notmnist-dataset.html",
    files=("https://github.com/facebookresearch/Adversarial-Continual-Learning/raw/main/data/notMNIST.zip "
           "(the 5-Datasets train/test split; unzip it in DIR)",
           "http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz (alternative, without a split: "
           "extract it in DIR)"),
    layout="DIR/notMNIST/{Train,Test}/{A..J}/*.png or DIR/notMNIST_small/{A..J}/*.png",
    splits=("train", "test"),
)


def find(search: Search, split: str) -> Optional[Path]:
    """The ACL split folder if present, else ``notMNIST_small``."""
    if search.root is None:
        return None
    acl, small = search.root / "notMNIST", search.root / "notMNIST_small"
    if (acl / "Train" / "A").is_dir() and (acl / "Test" / "A").is_dir():
        return acl
    search.looked.append(f"{acl}: no Train/A and Test/A folders")
    if (small / "A").is_dir():
        return small
    search.looked.append(f"{small}: no A folder")
    return None


def _read_png(path: Path) -> Optional[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None
    return grey


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")


def read(source: Source, root: Path, split: str, verify: bool = True) -> ImageSet:
    if root.name == "notMNIST" and (root / "Train").is_dir():
        base = root / ("Train" if split == "train" else "Test")
        per_letter = {letter: _files(base / letter) for letter in LETTERS if (base / letter).is_dir()}
    else:
        per_letter = {}
        for letter in LETTERS:
            if (root / letter).is_dir():
                files = _files(root / letter)
                per_letter[letter] = [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]
    missing = [letter for letter in LETTERS if letter not in per_letter]
    if missing:
        raise LanceError(f"{root}: no folder for the letters {', '.join(missing)}")
    images, labels, broken = [], [], []
    for label, letter in enumerate(LETTERS):
        for f in per_letter[letter]:
            img = _read_png(f)
            if img is None:
                broken.append(f.name)
                continue
            if img.shape != (28, 28):
                raise LanceError(f"{f}: a {img.shape[1]}x{img.shape[0]} image; notMNIST images are 28x28")
            images.append(img)
            labels.append(label)
    if broken:
        warnings.warn(f"notMNIST: skipped {len(broken)} unreadable file(s) in {root}: {', '.join(broken[:5])}"
                      f"{' ...' if len(broken) > 5 else ''}", stacklevel=3)
    x = torch.from_numpy(np.stack(images)).unsqueeze(-1) if images else torch.zeros(0, 28, 28, 1, dtype=torch.uint8)
    return ImageSet(x, torch.tensor(labels, dtype=torch.int64), list(LETTERS), "notmnist", split)
