"""Provenance: which code, which packages and which machine produced a result.

Every result file and the book's status page carry the same record::

    record = lance.experiments.provenance.provenance(config=cfg, seed=42, wall_time_s=t)

with the git commit (``-dirty`` when tracked files have uncommitted changes), the versions of
the packages that matter, the hardware and a UTC timestamp.
The book's "Status and reproducibility" page is :mod:`lance.book.status`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lance.experiments.allocator import allocator_state

__all__ = ["git_commit", "git_diff", "file_sha256", "versions", "hardware", "provenance"]

#: Distributions reported by :func:`versions`, as ``key: distribution name``.
PACKAGES: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "pandas": "pandas",
    "jupyter-book": "jupyter-book",
    "papermill": "papermill",
    "nbval": "nbval",
    "lance": "lance-book",
}


def _git(root: Path, *args: str) -> str:
    # --no-optional-locks: never take index.lock, so that a concurrent `git commit` is not disturbed
    result = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(root), *args],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return result.stdout.strip()


def git_commit(root: str | os.PathLike | None = None) -> str:
    """Short hash of ``HEAD`` of the repository holding ``root``, plus ``-dirty`` when tracked
    files differ from it (as ``git describe --dirty``: untracked files do not count).

    ``root`` defaults to the directory of this package, i.e. the code that is running.
    Returns ``"unknown"`` outside a git work tree or without git.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


MAX_DIFF = 200_000  # characters of `git diff` kept in a record (the sha256 covers all of it)


def git_diff(root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The uncommitted changes to tracked files (``git diff HEAD``), so that a result computed on
    a dirty tree says exactly which code ran; None on a clean tree or without git."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    try:
        diff = _git(root, "diff", "HEAD", "--no-color")
    except (OSError, subprocess.SubprocessError):
        return None
    if not diff:
        return None
    return {"sha256": hashlib.sha256(diff.encode()).hexdigest(), "chars": len(diff),
            "text": diff[:MAX_DIFF], "truncated": len(diff) > MAX_DIFF}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (weights, checkpoints), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages in :data:`PACKAGES` (``None`` if not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, total memory (GiB) and GPU (``None`` if none)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
    }


def _jsonable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


def provenance(config: Any = None, seed: int | None = None, wall_time_s: float | None = None) -> dict[str, Any]:
    """One record for a result file: timestamp (UTC), git commit, versions, hardware, and the
    run's ``config`` (a dataclass is converted with :func:`dataclasses.asdict`), ``seed`` and
    ``wall_time_s``; the command line that started the process, and the diff when the tree is dirty."""
    commit = git_commit()
    record = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "git_commit": commit,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "versions": versions(),
        "hardware": hardware(),
        "allocator": allocator_state(),
        "config": _jsonable(config),
        "seed": seed,
        "wall_time_s": wall_time_s,
    }
    if commit.endswith("-dirty"):
        record["diff"] = git_diff()
    if "SLURM_JOB_ID" in os.environ:  # run by a SLURM job (e.g. `plan --run --executor slurm`)
        record["slurm"] = {key.lower()[6:]: os.environ[key] for key in (
            "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION")
            if key in os.environ}
    return record
