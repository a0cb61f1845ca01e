"""Claims on running work, so that processes started in parallel (two sweeps, `plan --run` jobs)
share it instead of repeating it or writing the same file at once."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Optional

__all__ = ["claim", "wait_and_claim"]


def claim(lock: Path) -> Optional[Path]:
    """Claim ``lock`` for this process: the file, ``PID@HOST``, is written by the results' exclusive
    atomic writer (:func:`lance.experiments.results.write_atomic`), so that it appears whole or not
    at all and of two claimants exactly one wins. ``None`` if a process that still runs holds it;
    a claim left by a process of this host that no longer runs is taken over (one of another host
    is taken as live: its process cannot be checked from here)."""
    from lance.errors import LanceError
    from lance.experiments.results import write_atomic

    lock = Path(lock)
    for _ in range(2):
        try:
            write_atomic(lock, f"{os.getpid()}@{socket.gethostname()}\n")
            return lock
        except LanceError:  # held: by a live process, or left behind
            if _holder_alive(lock):
                return None
            lock.unlink(missing_ok=True)  # stale, or released meanwhile: try again
    return None


def _holder_alive(lock: Path) -> bool:
    try:
        pid, _, host = lock.read_text().strip().partition("@")
        if host and host != socket.gethostname():
            return True
        os.kill(int(pid or 0), 0)
        return True
    except (ProcessLookupError, ValueError, FileNotFoundError):
        return False
    except PermissionError:  # another user's live process
        return True


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
