"""Lock files, so that processes started in parallel (``plan --run`` in several terminals)
share work instead of repeating it or writing the same file at once."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

__all__ = ["claim", "wait_and_claim"]


def claim(lock: Path) -> Optional[Path]:
    """Create ``lock`` holding this process id; ``None`` if a process that still runs holds it.
    A lock left by a process that no longer runs is taken over."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text().strip() or 0), 0)
                return None  # its owner is alive (or is writing its id right now)
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale, or released meanwhile: try again
                continue
            except PermissionError:
                return None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    return None


def wait_and_claim(lock: Path, *, poll_s: float = 5.0, log=None) -> Path:
    """:func:`claim` ``lock``, waiting while another live process holds it."""
    said = False
    while True:
        got = claim(lock)
        if got is not None:
            return got
        if log and not said:
            log(f"waiting for the process that holds {lock} ...")
            said = True
        time.sleep(poll_s)
