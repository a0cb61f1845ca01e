"""Checkpoints of running experiments: saved atomically with the configuration they belong to,
loaded without unpickling code (``weights_only=True``) and refused when the configuration differs.

    save_checkpoint(path, {"model": ..., "epoch": 3}, config)
    state = load_checkpoint(path, config)   # None when there is none

A checkpoint written on a GPU loads on a CPU (``map_location="cpu"``).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from lance.errors import LanceError
from lance.experiments.results import FILE_MODE  # results and checkpoints alike: 0644

__all__ = ["save_checkpoint", "load_checkpoint", "check_checkpoint", "save_weights", "safe_load", "FILE_MODE"]



def safe_load(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU; a file that holds anything but
    tensors and plain containers (a pickle with code in it) or that is damaged gets a one-line
    :class:`LanceError` instead of being run."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LanceError(f"{what} {path} not found.") from None
    except Exception as err:  # any damage or a pickle with code: the loader refuses, we say so
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LanceError(f"{what} {path} is not a plain tensor file that can be loaded safely ({first[:120]}); "
                         "delete it, or pass --force to start the run afresh.") from None


def _save_atomic(obj: Any, path: Path) -> Path:
    """The bytes do not depend on the file's name (torch.save names its archive after the file it
    writes to), so that the same tensors always give the same sha256."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, state: dict, config: dict) -> Path:
    """Write ``state`` and the run's ``config`` to ``path`` through a temporary file renamed into place."""
    return _save_atomic({"config": config, **state}, Path(path))


def save_weights(path: str | os.PathLike, state_dict: dict) -> Path:
    """A plain ``state_dict`` (no configuration: other programs read it), written the same way."""
    return _save_atomic(state_dict, Path(path))


def _differences(stored: dict, config: dict, defaults: dict) -> list[str]:
    keys = list(config) + [k for k in stored if k not in config]
    # a field added since the checkpoint was written had its default value then
    return [f"{k}: {stored.get(k, defaults.get(k))!r} there, {config.get(k)!r} now" for k in keys
            if _plain(stored.get(k, defaults.get(k))) != _plain(config.get(k))]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_checkpoint(path: Optional[str | os.PathLike], config: dict,
                    defaults: Optional[dict] = None) -> Optional[dict]:
    """The state saved at ``path`` for ``config``, or None when there is no checkpoint. A
    checkpoint of another configuration, or one without its configuration, is refused; a key
    of ``config`` that the checkpoint lacks (a field added since) is taken at its value in
    ``defaults``."""
    return _load(path, config, defaults, partial=False)


def check_checkpoint(path: Optional[str | os.PathLike], config: dict, defaults: Optional[dict] = None) -> None:
    """Refuse, before any data is loaded, a checkpoint at ``path`` written for another
    configuration: only the keys of ``config`` are compared (the run adds what it learns from
    its data and weights, such as their checksums, when it resumes with :func:`load_checkpoint`)."""
    _load(path, config, defaults, partial=True)


def _load(path, config: dict, defaults: Optional[dict], partial: bool) -> Optional[dict]:
    if not isinstance(config, dict):
        raise LanceError(f"load_checkpoint needs the run's config as a dict, got {type(config).__name__}.")
    if path is None or not Path(path).exists():
        return None
    saved = safe_load(path, "checkpoint")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise LanceError(f"checkpoint {path} does not record its configuration, so it cannot be told apart from "
                         "another run's; delete it, or pass --force to start the run afresh.")
    stored = {k: v for k, v in saved["config"].items() if k in config} if partial else saved["config"]
    diffs = _differences(stored, config, defaults or {})
    if diffs:
        raise LanceError(f"checkpoint {path} was written for another configuration ({'; '.join(diffs[:3])}); "
                         "pass --force to start afresh, or delete it.")
    return saved
