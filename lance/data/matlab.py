"""Reading the MATLAB v5 files of SVHN and Flowers-102 (``scipy.io.loadmat``)."""

from __future__ import annotations

from pathlib import Path

from lance.errors import LanceError

__all__ = ["loadmat"]


def loadmat(path: Path) -> dict:
    """The variables of a MATLAB v5 file; a clear message when scipy is missing."""
    try:
        from scipy.io import loadmat as _loadmat
    except ImportError as e:
        raise LanceError(f"reading {Path(path).name} (a MATLAB file) needs scipy: pip install scipy") from e
    try:
        return _loadmat(path)
    except (ValueError, OSError, NotImplementedError, TypeError) as e:
        raise LanceError(f"{path}: not a readable MATLAB v5 file ({e})") from e
