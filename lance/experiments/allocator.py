"""A steady memory allocator for CPU runs: freed memory stays in the process.

Under glibc's defaults every block above a threshold (128 KiB, adapting up to 32 MiB) is mapped
from the system when torch allocates a tensor and unmapped when it is freed, so every batch of
a training loop faults its activations' pages in afresh. On the machines this project runs on
that page-fault time was most of a run's system time (measured once, on two loaded cores:
MobileNetV2's frozen part, four batches of 64 at 224 px on one thread, took 25.7 s, 11.6 s of it
in the kernel, under glibc's defaults, and 11.2 s, 2.1 s in the kernel, with the allocator made
steady; ``python -m lance benchmark --no-steady-allocator`` shows it for a training step).
:func:`steady_allocator` tells glibc to serve every block
from its heap and to keep what is freed, as the caching allocators of GPU frameworks do. It
changes no number a run computes, only where its memory comes from; the process's resident
size grows to its peak and stays there.

``python -m lance`` calls it for the commands that compute; ``LANCE_STEADY_ALLOCATOR=0`` keeps
glibc's defaults. Provenance records which allocator a run had.
"""

from __future__ import annotations

import os

__all__ = ["steady_allocator", "allocator_state", "wanted", "ENV_VAR"]

ENV_VAR = "LANCE_STEADY_ALLOCATOR"

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
# no block is mapped on its own; the heap keeps up to 16 GiB of freed memory instead of trimming it
_STEADY = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 16 << 30), (_M_TOP_PAD, 64 << 20))
_STATE = {"allocator": "glibc's defaults"}


def steady_allocator() -> str:
    """Make glibc keep freed memory in this process, for the rest of its life; returns what was
    done (also :func:`allocator_state`). Off Linux or off glibc nothing changes."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _STATE["allocator"] = f"unchanged ({platform.system()}, no glibc)"
        return _STATE["allocator"]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if all(libc.mallopt(param, value) == 1 for param, value in _STEADY):
        _STATE["allocator"] = "steady (glibc mallopt: no mapped blocks, freed memory kept)"
    else:
        _STATE["allocator"] = "glibc's defaults (glibc refused mallopt)"
    return _STATE["allocator"]


def wanted() -> bool:
    """Whether the command line should make the allocator steady (``LANCE_STEADY_ALLOCATOR``,
    default on)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "no", "off", "false")


def allocator_state() -> str:
    """The allocator this process has, for provenance."""
    return _STATE["allocator"]
