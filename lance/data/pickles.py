"""Reading the pickled datasets (CIFAR's python version, the classic ``mnist.pkl.gz``).

They were written by Python 2's cPickle: ``encoding="latin1"`` turns their byte strings into
``str`` and keeps numpy's raw array bytes intact. The unpickler here only resolves the few numpy
names an array needs, so a file that is not a plain dataset pickle cannot run code; the readers
check the file's md5 before they call :func:`load_pickle` anyway.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

from lance.errors import LanceError

__all__ = ["load_pickle", "str_keys"]

# (module, name) pairs an ndarray pickle needs; numpy 2 moved numpy.core to numpy._core.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _DatasetUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise LanceError(f"refusing to unpickle {module}.{name}: a dataset pickle holds only "
                             "dicts, lists, strings, numbers and numpy arrays")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        import numpy

        return getattr(numpy, name)


def load_pickle(f: BinaryIO) -> Any:
    """Unpickle a dataset file (open in binary mode) with the restricted unpickler."""
    try:
        return _DatasetUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, io.UnsupportedOperation) as e:
        if isinstance(e, LanceError):
            raise
        raise LanceError(f"{getattr(f, 'name', 'pickle')}: not a readable dataset pickle ({e})") from e


def str_keys(d: dict) -> dict:
    """The dict with ``bytes`` keys decoded (pickles re-saved with ``encoding='bytes'``)."""
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
