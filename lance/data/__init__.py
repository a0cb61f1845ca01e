"""The project's data layer.

Datasets, from files the user has (nothing is downloaded unless asked)::

    train = lance.data.load("cifar100", "train")          # ImageSet: uint8 (N, H, W, C), labels, classes
    first = lance.data.split_classes(train, range(50))    # pretrain half, relabelled 0..49
    ds = lance.data.ImageDataset(first, lance.data.transforms(224, train=True))

* :func:`load` ``(name, split, data_dir=None, download=False, verify=True)`` for ``cifar10``,
  ``cifar100``, ``mnist``, ``fashion_mnist``, ``svhn``, ``notmnist``, ``pets``, ``flowers102``,
  ``cub200``, ``miniimagenet``; :func:`data_dir` says which data directory is used
  (``data_dir=``, else ``$LANCE_DATA_DIR``); :mod:`lance.data.locate` explains the search.
* :class:`ImageSet`, :func:`split_classes`: the common in-memory form and class subsets.
* :class:`ImageDataset`, :func:`transforms`: a torch ``Dataset`` and the paper's preprocessing.
* :data:`checksums.KNOWN_MD5`: the published md5 sums every load checks.
* :func:`sample_images`, :func:`augmented_batches`, :func:`normalize`: the 20 ImageNet photographs
  of the book's live demonstrations (:mod:`lance.data.samples`).
* :func:`training_images`: n normalised CIFAR-100 training images at a resolution (the sample
  photographs where CIFAR-100 is missing), for live demonstrations.
"""

from lance.data.catalog import DATASETS, load, source
from lance.data.checksums import KNOWN_MD5, md5_of, verify_md5
from lance.data.dataset import ImageDataset, transforms
from lance.data.imageset import ImageSet, split_classes
from lance.data.locate import ENV_VAR, data_dir
from lance.data.samples import augmented_batches, normalize, sample_images
from lance.data.tensors import Images, training_images

__all__ = [
    "load", "DATASETS", "source", "data_dir", "ENV_VAR",
    "ImageSet", "split_classes", "ImageDataset", "transforms",
    "KNOWN_MD5", "md5_of", "verify_md5",
    "sample_images", "augmented_batches", "normalize", "Images", "training_images",
]
